"""APGD, L-inf, untargeted (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1), with expectation over transformation (EOT) for randomised models.

Written with plain TensorFlow ops and ``tf.while_loop``s: it runs eagerly and inside ``tf.function``. Every
example has its own step size, best point and checkpoint decisions (vectorised over the batch). ``model_fn`` may
hold unseeded random ops (e.g. draw a mask per call): each of the ``eot_draws`` calls per gradient runs them anew.

The checkpoint conditions follow the paper: condition 1 counts the steps whose loss exceeds the previous iterate's
(strictly fewer than 0.75 of the window), and condition 2 may already hold at the first checkpoint. The official
code differs slightly (``<=`` in condition 1, condition 2 off at the first checkpoint).
"""
import math

import numpy as np
import tensorflow as tf

from rst_tf.attacks import config as config_lib
from rst_tf.attacks import core

LOSSES = ("ce", "dlr")
MOMENTUM = 0.75
# Condition 1: fewer than RHO of the steps since the last checkpoint raised the loss.
RHO = 0.75
INITIAL_STEP_RATIO = 2.0  # the step size starts at 2 * epsilon


def checkpoints(steps):
    """The iterations w_j = ceil(p_j * steps) after which the step size may be halved: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), for 0 < w_j <= steps, without repeats."""
    previous, current = 0.0, 0.22
    found = []
    while current <= 1.0:
        # Rounded so that e.g. 0.7000000000000001 * 100 gives 70, not 71.
        iteration = math.ceil(round(current * steps, 9))
        if 0 < iteration <= steps and iteration not in found:
            found.append(iteration)
        previous, current = current, round(current + max(current - previous - 0.03, 0.06), 9)
    return found


def dlr_loss(logits, labels):
    """Difference of logits ratio: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), z_pi sorted descending."""
    if logits.shape[-1] is not None and logits.shape[-1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[-1]}")
    top3 = tf.math.top_k(logits, k=3).values
    true_logit = tf.gather(logits, labels, axis=-1, batch_dims=1)
    is_true = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    best_other = tf.reduce_max(tf.where(is_true, tf.constant(-np.inf, logits.dtype), logits), axis=-1)
    return -(true_logit - best_other) / (top3[:, 0] - top3[:, 2] + 1e-12)


def _loss_fn(loss):
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return core.cross_entropy_loss if loss == "ce" else dlr_loss


def uniform_start(images, seed, epsilon, clip_min=0.0, clip_max=1.0, noise_rows=None):
    """``images`` plus stateless (Philox) noise uniform in the L-inf epsilon-ball, clipped to the box.
    `noise_rows`: as in `core.random_start`."""
    shape = tf.shape(images)
    if noise_rows is not None:
        first_row, global_batch = noise_rows
        shape = tf.concat([tf.reshape(tf.cast(global_batch, tf.int32), [1]), shape[1:]], axis=0)
    noise = tf.random.stateless_uniform(
        shape, seed, minval=-epsilon, maxval=epsilon, dtype=images.dtype, alg=core.RNG_ALG)
    if noise_rows is not None:
        noise = noise[tf.cast(first_row, tf.int32):][:tf.shape(images)[0]]
    return tf.clip_by_value(images + noise, clip_min, clip_max)


def _evaluate(model_fn, x, labels, loss_fn, eot_draws):
    """(loss, input gradient, logits) per example, each averaged over `eot_draws` calls of `model_fn` (rank-3
    logits are averaged within a call too, see `core.per_example_loss`)."""

    def draw():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss, logits = core.per_example_loss(model_fn, x, labels, loss_fn)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, x), logits

    first = draw()
    if eot_draws == 1:
        return first

    def body(draw_index, loss_sum, gradient_sum, logits_sum):
        loss, gradient, logits = draw()
        return draw_index + 1, loss_sum + loss, gradient_sum + gradient, logits_sum + logits

    _, loss, gradient, logits = tf.while_loop(
        lambda draw_index, *_: draw_index < eot_draws, body, (tf.constant(1),) + first,
        maximum_iterations=eot_draws - 1)
    return loss / eot_draws, gradient / tf.cast(eot_draws, gradient.dtype), logits / eot_draws


def _mean_logits(model_fn, x, eot_draws):
    """Logits averaged over `eot_draws` forward passes (and over the draws of rank-3 logits)."""

    def draw():
        logits = tf.cast(model_fn(x), tf.float32)
        return tf.reduce_mean(logits, axis=0) if logits.shape.rank == 3 else logits

    first = draw()
    if eot_draws == 1:
        return first
    _, total = tf.while_loop(lambda draw_index, _: draw_index < eot_draws,
                             lambda draw_index, total: (draw_index + 1, total + draw()),
                             (tf.constant(1), first), maximum_iterations=eot_draws - 1)
    return total / eot_draws


def run(model_fn, images, labels, start, epsilon, steps, loss="ce", eot_draws=1, clip_min=0.0, clip_max=1.0):
    """One APGD run from `start` (in the epsilon-ball around `images`).

    Returns `(adversarial, fooled)`: per example a misclassified point if one was found (the clean image if the
    model already misclassifies it), else the point of highest loss; `fooled` says which. "Misclassified" uses the
    logits averaged over the `eot_draws` calls.
    """
    loss_fn = _loss_fn(loss)
    if isinstance(eot_draws, bool) or not isinstance(eot_draws, (int, np.integer)) or eot_draws < 1:
        raise ValueError(f"eot_draws must be an integer >= 1, got {eot_draws!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    images = tf.stop_gradient(tf.convert_to_tensor(images, dtype_hint=tf.float32))
    labels = core.as_class_ids(labels)
    dtype = images.dtype
    start = tf.cast(start, dtype)
    epsilon = tf.cast(epsilon, dtype)
    lower = tf.maximum(images - epsilon, clip_min)
    upper = tf.minimum(images + epsilon, clip_max)
    project = lambda x: tf.clip_by_value(x, lower, upper)
    rows = lambda flags: tf.reshape(flags, [-1] + [1] * (images.shape.rank - 1))
    predicted_wrong = lambda logits: tf.not_equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)

    clean_wrong = predicted_wrong(_mean_logits(model_fn, images, eot_draws))
    loss, gradient, logits = _evaluate(model_fn, start, labels, loss_fn, eot_draws)
    start_wrong = predicted_wrong(logits) & ~clean_wrong
    fooled = clean_wrong | start_wrong
    adversarial = tf.where(rows(clean_wrong), images, start)

    # Step-size schedule: is iteration k a checkpoint, and how many iterations since the previous one.
    marks = checkpoints(steps)
    is_checkpoint = np.zeros(steps + 1, bool)
    is_checkpoint[marks] = True
    window = np.zeros(steps + 1, np.float32)
    window[marks] = np.diff([0] + marks)
    is_checkpoint, window = tf.constant(is_checkpoint), tf.constant(window)

    batch = tf.shape(images)[0]
    state = dict(
        x=start, x_previous=start, gradient=gradient, loss=loss,
        x_best=start, gradient_best=gradient, loss_best=loss,
        adversarial=adversarial, fooled=fooled,
        step_size=tf.fill([batch], INITIAL_STEP_RATIO * epsilon),
        increases=tf.zeros([batch], tf.float32),
        loss_best_at_checkpoint=loss,
        halved_at_checkpoint=tf.zeros([batch], tf.bool),
    )

    def body(k, s):
        momentum = tf.where(k == 0, tf.constant(1.0, dtype), tf.constant(MOMENTUM, dtype))
        z = project(s["x"] + rows(s["step_size"]) * tf.sign(s["gradient"]))
        x = project(s["x"] + momentum * (z - s["x"]) + (1 - momentum) * (s["x"] - s["x_previous"]))
        loss, gradient, logits = _evaluate(model_fn, x, labels, loss_fn, eot_draws)
        wrong = predicted_wrong(logits)
        adversarial = tf.where(rows(wrong & ~clean_wrong), x, s["adversarial"])
        increases = s["increases"] + tf.cast(loss > s["loss"], tf.float32)
        better = loss > s["loss_best"]
        x_best = tf.where(rows(better), x, s["x_best"])
        gradient_best = tf.where(rows(better), gradient, s["gradient_best"])
        loss_best = tf.where(better, loss, s["loss_best"])

        # Checkpoint after iteration k + 1: halve the step size and go back to the best point if too few steps
        # raised the loss (condition 1), or if the step size and the best loss are unchanged since the
        # previous checkpoint (condition 2).
        checkpoint = is_checkpoint[k + 1]
        condition_1 = increases < RHO * window[k + 1]
        condition_2 = ~s["halved_at_checkpoint"] & (loss_best <= s["loss_best_at_checkpoint"])
        halve = checkpoint & (condition_1 | condition_2)
        return k + 1, dict(
            x=tf.where(rows(halve), x_best, x),
            x_previous=s["x"],
            gradient=tf.where(rows(halve), gradient_best, gradient),
            loss=tf.where(halve, loss_best, loss),
            x_best=x_best, gradient_best=gradient_best, loss_best=loss_best,
            adversarial=tf.stop_gradient(adversarial), fooled=s["fooled"] | wrong,
            step_size=tf.where(halve, s["step_size"] / 2, s["step_size"]),
            increases=tf.where(checkpoint, tf.zeros_like(increases), increases),
            loss_best_at_checkpoint=tf.where(checkpoint, loss_best, s["loss_best_at_checkpoint"]),
            halved_at_checkpoint=tf.where(checkpoint, halve, s["halved_at_checkpoint"]),
        )

    _, state = tf.while_loop(lambda k, s: k < steps, body, (tf.constant(0), state), maximum_iterations=steps)
    adversarial = tf.where(rows(state["fooled"]), state["adversarial"], state["x_best"])
    return tf.stop_gradient(adversarial), state["fooled"]


def apgd(model_fn, images, labels, epsilon, steps, loss="ce", eot_draws=1, seed=(0, 0), clip_min=0.0, clip_max=1.0,
         noise_rows=None):
    """APGD-CE (`loss="ce"`) or APGD-DLR (`loss="dlr"`), L-inf, untargeted, `steps` iterations, one run.

    Args:
      model_fn: images -> logits `[batch, classes]`, or `[draws, batch, classes]` (the loss is averaged over the
        draws, see `core.per_example_loss`). It may be random (unseeded ops): each gradient is the mean of
        `eot_draws` gradients, each from its own call.
      images, labels: a batch in [clip_min, clip_max] and its integer class ids `[batch]`.
      epsilon: the L-inf radius; the step size starts at 2 * epsilon and is halved per example at checkpoints.
      seed: shape [2] int seed of the stateless random start (uniform in the epsilon-ball).
      noise_rows: optional `(first_row, global_batch_size)`, as in `core.random_start`.

    Returns:
      The adversarial images (see `run`), inside the epsilon-ball and the box, with no gradient path.
    """
    images = tf.convert_to_tensor(images, dtype_hint=tf.float32)
    start = uniform_start(images, tf.convert_to_tensor(seed), epsilon, clip_min, clip_max, noise_rows)
    adversarial, _ = run(model_fn, images, labels, start, epsilon, steps, loss, eot_draws, clip_min, clip_max)
    return adversarial


def _run_one(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    """``apgd_ce`` / ``apgd_dlr``: one APGD run from a uniform start drawn from ``seed``."""
    start = uniform_start(images, seed, config.epsilon, config.clip_min, config.clip_max, noise_rows)
    adversarial, _ = run(model_fn, images, labels, start, config.epsilon, config.steps,
                         "ce" if config.name == "apgd_ce" else "dlr", config.eot_draws, config.clip_min,
                         config.clip_max)
    return adversarial


def check_config(config):
    config_lib.check_int("steps", config.steps, minimum=1)
    config_lib.check_int("eot_draws", config.eot_draws, minimum=1)


RUNS = {"apgd_ce": _run_one, "apgd_dlr": _run_one}
config_lib.register(tuple(RUNS), config_lib.Rule(check=check_config, uses_noise=lambda config: True))
