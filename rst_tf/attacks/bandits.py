"""Bandits-TD (Ilyas, Engstrom & Madry 2019): a black-box L-inf attack with time and tile priors, forward queries
only."""
import numpy as np
import tensorflow as tf

from rst_tf.attacks import config as config_lib
from rst_tf.attacks import core


def _tile_upsample(prior, tile_size, height, width):
    """Nearest-neighbour upsampling: each prior cell covers a tile."""
    if tile_size == 1:
        return prior
    up = tf.repeat(tf.repeat(prior, tile_size, axis=1), tile_size, axis=2)
    return up[:, :height, :width, :]


def bandits(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    """Bandits-TD (Ilyas, Engstrom & Madry 2019), L-inf, untargeted.

    A prior ``v`` (one value per ``tile_size`` x ``tile_size`` tile and
    channel, in [-1, 1]) is the running gradient estimate; it carries over
    between iterations (time prior). Each iteration uses two queries: the
    cross-entropy at ``x + fd_eta * q / |q|`` for ``q`` the upsampled
    ``v + u`` and ``v - u`` (``u`` Gaussian exploration noise scaled by
    ``exploration / sqrt(dim v)``) gives the estimate
    ``g = (l+ - l-) / (fd_eta * exploration) * u``; ``v`` takes an
    exponentiated-gradient step with rate ``online_lr``; ``x`` takes a step
    ``image_lr * sign(upsampled v)`` and is projected onto the epsilon-ball
    and the box. An example stops once it is misclassified or its next
    iteration would exceed ``max_queries`` (the extra forward pass that
    checks the prediction is not counted, as in the authors' code).

    Only forward passes of ``model_fn`` are used. Iteration ``t`` draws its
    noise from ``stateless_fold_in(seed, t)``.
    """
    if images.shape.rank != 4:
        raise ValueError(f"bandits needs images of shape [batch, height, width, channels], got {images.shape}")
    tile = int(config.tile_size)
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    prior_shape = tf.stack([batch, (height + tile - 1) // tile, (width + tile - 1) // tile, channels])
    noise_shape = prior_shape
    if noise_rows is not None:
        first_row, global_batch = noise_rows
        noise_shape = tf.concat([tf.reshape(tf.cast(global_batch, tf.int32), [1]), prior_shape[1:]], axis=0)
    dim = tf.cast(tf.reduce_prod(prior_shape[1:]), tf.float32)
    dtype = images.dtype
    fd_eta = tf.constant(config.fd_eta, tf.float32)
    exploration = tf.constant(config.exploration, tf.float32)
    expand = [-1, 1, 1, 1]

    def losses_and_correct(x):
        logits = tf.cast(model_fn(x), tf.float32)
        correct = tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)
        return core.cross_entropy_loss(logits, labels), correct

    def unit(q):
        length = tf.sqrt(tf.reduce_sum(tf.square(q), axis=[1, 2, 3], keepdims=True))
        return q / tf.where(length > 0, length, tf.ones_like(length))

    def active_mask(x, queries):
        _, correct = losses_and_correct(x)
        return correct & (queries + 2 <= config.max_queries)

    def body(step, adv, prior, queries, active):
        noise = tf.random.stateless_normal(
            noise_shape, core.fold_seed(seed, step),
            dtype=tf.float32, alg=core.RNG_ALG,
        )
        if noise_rows is not None:
            noise = noise[tf.cast(first_row, tf.int32):][:batch]
        noise = noise * exploration / tf.sqrt(dim)
        q_plus = _tile_upsample(prior + noise, tile, height, width)
        q_minus = _tile_upsample(prior - noise, tile, height, width)
        probe = lambda q: tf.clip_by_value(adv + tf.cast(fd_eta * unit(q), dtype), config.clip_min, config.clip_max)
        loss_plus, _ = losses_and_correct(probe(q_plus))
        loss_minus, _ = losses_and_correct(probe(q_minus))
        derivative = (loss_plus - loss_minus) / (fd_eta * exploration)
        gradient = tf.reshape(derivative, expand) * noise
        # Exponentiated-gradient step on the prior mapped to [0, 1]:
        # p' = p e^{lr g} / (p e^{lr g} + (1 - p) e^{-lr g}), written stably.
        p = tf.clip_by_value((prior + 1.0) / 2.0, 1e-6, 1.0 - 1e-6)
        p = tf.sigmoid(tf.math.log(p) - tf.math.log1p(-p) + 2.0 * config.online_lr * gradient)
        new_prior = 2.0 * p - 1.0
        step_direction = tf.sign(_tile_upsample(new_prior, tile, height, width))
        new_adv = adv + tf.cast(config.image_lr * step_direction, dtype)
        new_adv = core.project(images, new_adv, config.epsilon, np.inf, config.clip_min, config.clip_max)
        adv = core.select(active, new_adv, adv)
        prior = core.select(active, new_prior, prior)
        queries = queries + 2 * tf.cast(active, tf.int32)
        return step + 1, tf.stop_gradient(adv), prior, queries, active_mask(adv, queries)

    queries = tf.zeros([batch], tf.int32)
    max_steps = config.max_queries // 2
    _, adv, _, _, _ = tf.while_loop(
        lambda step, adv, prior, queries, active: (step < max_steps) & tf.reduce_any(active),
        body,
        (tf.constant(0), images, tf.zeros(prior_shape, tf.float32), queries, active_mask(images, queries)),
        maximum_iterations=max_steps,
    )
    return adv


def _check(config):
    config_lib.check_int("max_queries", config.max_queries, minimum=2)
    config_lib.check_int("tile_size", config.tile_size, minimum=1)
    for field in ("fd_eta", "exploration", "online_lr", "image_lr"):
        config_lib.check_positive(field, getattr(config, field))


RUNS = {"bandits": bandits}
config_lib.register(("bandits",), config_lib.Rule(check=_check, uses_noise=lambda config: True))
