"""TRADES's inner maximisation (Zhang et al. 2019): L-inf sign ascent on KL(p_clean || p_adv) from a small Gaussian
start, projected on the ε-ball and the box.

The clean probabilities come from one extra call of ``model_fn`` on the clean images (no gradient path); the
labels are not used by the loss. The start is ``images + 0.001 * N(0, 1)`` (TRADES's code), drawn statelessly from
the seed; ``steps`` and ``step_size`` are those of the config (the search's PGD settings).
"""
import numpy as np
import tensorflow as tf

from rst_tf.attacks import config as config_lib
from rst_tf.attacks import core

START_STD = 0.001  # standard deviation of TRADES's Gaussian start


def kl_from_clean(clean_probabilities):
    """A `loss_fn(logits, rows)` for `core.loss_gradient_logits`: KL(p_clean[rows] || softmax(logits)) per row.

    `rows` index `clean_probabilities`; passing row indices as the "labels" keeps EOT logits ([draws, batch, C],
    whose rows `core.per_example_loss` flattens and whose labels it tiles) lined up with their clean rows.
    """
    def loss_fn(logits, rows):
        clean = tf.gather(clean_probabilities, rows)
        log_clean = tf.math.log(tf.maximum(clean, np.finfo(np.float32).tiny))
        return tf.reduce_sum(clean * (log_clean - tf.nn.log_softmax(logits)), axis=-1)
    return loss_fn


def clean_probabilities(model_fn, images):
    """softmax of the model's clean logits (averaged over draws for EOT logits), with no gradient path."""
    logits = tf.cast(model_fn(images), tf.float32)
    probabilities = tf.nn.softmax(logits)
    if logits.shape.rank == 3:
        probabilities = tf.reduce_mean(probabilities, axis=0)
    return tf.stop_gradient(probabilities)


def gaussian_start(images, seed, config, noise_rows=None):
    """`images + START_STD * N(0, 1)`, projected on the ε-ball and the box; `noise_rows` as `core.random_start`."""
    shape = tf.shape(images)
    if noise_rows is not None:
        shape = tf.concat([tf.reshape(tf.cast(noise_rows[1], tf.int32), [1]), shape[1:]], axis=0)
    noise = START_STD * tf.random.stateless_normal(shape, seed, dtype=images.dtype, alg=core.RNG_ALG)
    if noise_rows is not None:
        noise = noise[tf.cast(noise_rows[0], tf.int32):][:tf.shape(images)[0]]
    return core.project(images, images + noise, config.epsilon, np.inf, config.clip_min, config.clip_max)


def trades_kl(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    """`config.steps` sign steps of `config.step_size` ascending KL(p_clean || p_adv) inside the L-inf ε-ball."""
    loss_fn = kl_from_clean(clean_probabilities(model_fn, images))
    rows = tf.range(tf.shape(images)[0])
    start = gaussian_start(images, seed, config, noise_rows) if config.random_start else images

    def body(adv):
        _, gradient, _ = core.loss_gradient_logits(model_fn, adv, rows, loss_fn)
        moved = core.project(images, adv + core.ascent_step(gradient, tf.cast(config.step_size, images.dtype),
                                                            np.inf),
                             config.epsilon, np.inf, config.clip_min, config.clip_max)
        return tf.stop_gradient(moved)

    return core.iterate(body, start, config.steps, unroll)


def _check(config):
    config_lib.check_int("steps", config.steps, minimum=1)
    config_lib.check_positive("step_size", config.step_size)
    config_lib.check_bool("random_start", config.random_start)


RUNS = {"trades_kl": trades_kl}
config_lib.register(("trades_kl",), config_lib.Rule(check=_check, uses_noise=lambda config: bool(config.random_start)))
