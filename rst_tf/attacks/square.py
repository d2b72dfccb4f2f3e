"""Square Attack, L-inf, untargeted (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search"), as standard AutoAttack runs it: one run of
5000 queries, p_init 0.8, the margin loss and the p schedule by iteration without rescaling to the budget.

Forward passes of ``model_fn`` only. Written with plain TensorFlow ops and a ``tf.while_loop``: it runs inside
``tf.function`` (eagerly, `attack` traces itself). Each iteration queries the model only on the examples still
classified correctly (a dynamic-size batch, so not under XLA). The randomness is stateless (Philox): the vertical
stripes of the start from ``fold_in(seed, 0)``, the square of iteration ``i`` from ``fold_in(seed, i + 1)``.
As in the reference code, one square (position and per-channel signs) is drawn per iteration and shared by the
examples still being attacked; the stripes of the start are drawn per example.
"""
import math

import numpy as np
import tensorflow as tf

from rst_tf.attacks import config as config_lib
from rst_tf.attacks import core

P_INIT = 0.8
QUERIES = config_lib.AUTOATTACK_SQUARE_QUERIES
# p is halved after each of these iterations (AutoAttack's schedule, used without rescaling to the budget).
P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(iteration, p_init=P_INIT):
    """The fraction p of the image a square covers at (0-based) `iteration`: `p_init`, halved after each
    threshold in `P_THRESHOLDS` that `iteration` exceeds."""
    return p_init / 2 ** sum(iteration > threshold for threshold in P_THRESHOLDS)


def square_side(p, height, width):
    """Side in pixels of a square covering fraction `p` of a `height` x `width` image: round(sqrt(p h w)) (round
    half to even, as Python's `round`), at least 1."""
    return max(int(round(math.sqrt(p * height * width))), 1)


def side_at(iteration, p_init, height, width):
    """`square_side(p_selection(iteration, p_init), height, width)` as a TensorFlow op; `iteration` may be a
    tensor of any shape."""
    sides = tf.constant([square_side(p_init / 2 ** stage, height, width) for stage in range(len(P_THRESHOLDS) + 1)],
                        tf.int32)
    iteration = tf.convert_to_tensor(iteration, tf.int32)
    stage = tf.reduce_sum(tf.cast(iteration[..., None] > tf.constant(P_THRESHOLDS, tf.int32), tf.int32), axis=-1)
    return tf.gather(sides, stage)


def _margin(logits, labels):
    """z_y - max_{j != y} z_j: positive while the example is classified correctly (the loss Square lowers)."""
    return -core.margin_loss(tf.cast(logits, tf.float32), labels)


def _signs(shape, seed, dtype):
    """+-1 with equal probability."""
    uniform = tf.random.stateless_uniform(shape, seed, alg=core.RNG_ALG)
    return tf.where(uniform < 0.5, tf.constant(-1.0, dtype), tf.constant(1.0, dtype))


def _stripes(images, seed, noise_rows):
    """Per example, channel and column a sign, constant down the column: [batch, 1, width, channels]."""
    rows = tf.shape(images)[0] if noise_rows is None else tf.cast(noise_rows[1], tf.int32)
    signs = _signs(tf.stack([rows, 1, images.shape[2], images.shape[3]]), seed, images.dtype)
    if noise_rows is not None:
        signs = signs[tf.cast(noise_rows[0], tf.int32):][:tf.shape(images)[0]]
    return signs


def _square(seed, side, epsilon, height, width, channels, dtype):
    """The perturbation of one iteration, [height, width, channels]: +-2 epsilon per channel on a `side` x `side`
    square at row floor(u (height - side)) and column floor(u' (width - side)), zero elsewhere."""
    uniform = tf.random.stateless_uniform([2], core.fold_seed(seed, 0), alg=core.RNG_ALG)
    corner = tf.cast(tf.floor(uniform * tf.cast(tf.stack([height - side, width - side]), tf.float32)), tf.int32)
    in_rows = tf.range(height)[:, None, None]
    in_cols = tf.range(width)[None, :, None]
    inside = ((in_rows >= corner[0]) & (in_rows < corner[0] + side)
              & (in_cols >= corner[1]) & (in_cols < corner[1] + side))
    signs = _signs([channels], core.fold_seed(seed, 1), dtype)
    return tf.where(inside, 2 * epsilon * signs, tf.zeros([], dtype))


def _check_arguments(images, epsilon, queries, p_init):
    if images.shape.rank != 4 or not images.shape[1:].is_fully_defined():
        raise ValueError(f"square needs images of shape [batch, height, width, channels] with known height, width "
                         f"and channels, got {images.shape}")
    if not (isinstance(epsilon, (int, float, np.integer, np.floating)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"square epsilon must be a finite number > 0, got {epsilon!r}")
    if isinstance(queries, (bool, np.bool_)) or not isinstance(queries, (int, np.integer)) or queries < 1:
        raise ValueError(f"square queries must be an integer >= 1, got {queries!r}")
    if not (isinstance(p_init, (int, float, np.integer, np.floating)) and 0 < p_init <= 1):
        raise ValueError(f"square p_init must be in (0, 1], got {p_init!r}")


def _search(model_fn, images, labels, epsilon, queries, p_init, seed, clip_min, clip_max, noise_rows):
    height, width, channels = images.shape[1:]
    dtype = images.dtype
    epsilon = tf.cast(epsilon, dtype)
    lower = tf.maximum(images - epsilon, clip_min)
    upper = tf.minimum(images + epsilon, clip_max)

    clean_wrong = core.predicted_wrong(tf.cast(model_fn(images), tf.float32), labels)
    start = tf.clip_by_value(images + epsilon * _stripes(images, core.fold_seed(seed, 0), noise_rows), clip_min,
                             clip_max)
    attacked = tf.where(~clean_wrong)[:, 0:1]
    start_logits = model_fn(tf.gather_nd(start, attacked))
    start_labels = tf.gather_nd(labels, attacked)
    # Examples broken clean are never attacked: margin -inf, no queries.
    margin = tf.tensor_scatter_nd_update(tf.fill(tf.shape(labels), tf.constant(-np.inf)), attacked,
                                         _margin(start_logits, start_labels))
    wrong = tf.tensor_scatter_nd_update(tf.zeros_like(clean_wrong), attacked,
                                        core.predicted_wrong(start_logits, start_labels))
    used = tf.tensor_scatter_nd_update(tf.zeros(tf.shape(labels), tf.int32), attacked,
                                       tf.ones(tf.shape(attacked)[:1], tf.int32))

    def body(iteration, best, margin, wrong, used):
        todo = tf.where(margin > 0)[:, 0:1]
        side = side_at(iteration, p_init, height, width)
        square = _square(core.fold_seed(seed, iteration + 1), side, epsilon, height, width, channels, dtype)
        candidate = tf.clip_by_value(tf.gather_nd(best, todo) + square, tf.gather_nd(lower, todo),
                                     tf.gather_nd(upper, todo))
        logits = model_fn(candidate)
        todo_labels = tf.gather_nd(labels, todo)
        new_margin = _margin(logits, todo_labels)
        # A point is kept only if it lowers the margin (so also whenever it is misclassified).
        better = new_margin < tf.gather_nd(margin, todo)
        kept = tf.boolean_mask(todo, better)
        best = tf.tensor_scatter_nd_update(best, kept, tf.boolean_mask(candidate, better))
        margin = tf.tensor_scatter_nd_update(margin, kept, tf.boolean_mask(new_margin, better))
        wrong = tf.tensor_scatter_nd_update(wrong, kept,
                                            tf.boolean_mask(core.predicted_wrong(logits, todo_labels), better))
        used = tf.tensor_scatter_nd_add(used, todo, tf.ones(tf.shape(todo)[:1], tf.int32))
        return iteration + 1, tf.stop_gradient(best), margin, wrong, used

    _, best, _, wrong, used = tf.while_loop(
        lambda iteration, best, margin, *_: (iteration < queries) & tf.reduce_any(margin > 0), body,
        (tf.constant(0), start, margin, wrong, used), maximum_iterations=queries)
    # As in the reference, an example not broken keeps its clean image.
    adversarial = core.select(wrong, best, images)
    return tf.stop_gradient(adversarial), clean_wrong | wrong, used


def search(model_fn, images, labels, epsilon, queries=QUERIES, p_init=P_INIT, seed=(0, 0), clip_min=0.0,
           clip_max=1.0, noise_rows=None):
    """`attack`, also returning the queries each example used: `(adversarial, broken, queries_used)`.

    `queries_used` counts as the reference does: 1 for the striped start plus 1 per iteration the example was
    still classified correctly at its start, so at most `queries + 1`; 0 for an example broken clean. The model is
    called once more on the whole clean batch (not counted)."""
    images = tf.convert_to_tensor(images, dtype_hint=tf.float32)
    _check_arguments(images, epsilon, queries, p_init)
    labels = core.as_class_ids(labels)
    # int64, so that a seed gives the same draws whether it comes as int32 or int64.
    seed = tf.cast(core.as_seed(tf.convert_to_tensor(seed)), tf.int64)
    if tf.executing_eagerly():
        search_traced = tf.function(lambda x, y, s: _search(model_fn, x, y, epsilon, queries, p_init, s, clip_min,
                                                            clip_max, noise_rows), autograph=False)
        return search_traced(images, labels, seed)
    return _search(model_fn, images, labels, epsilon, queries, p_init, seed, clip_min, clip_max, noise_rows)


def searcher(model_fn, epsilon, queries=QUERIES, p_init=P_INIT, clip_min=0.0, clip_max=1.0):
    """``run(images, labels, seed) -> (adversarial, broken, queries_used)``: `search` with these settings, traced
    once for any batch size (`core.traced_for_any_batch`), for a caller that searches many batches with one model
    (`search` traces itself at every eager call)."""
    traced = core.traced_for_any_batch(lambda images, labels, seed: _search(
        model_fn, images, labels, epsilon, queries, p_init, seed, clip_min, clip_max, None))

    def run(images, labels, seed):
        images = tf.convert_to_tensor(images, dtype_hint=tf.float32)
        _check_arguments(images, epsilon, queries, p_init)
        return traced(images, core.as_class_ids(labels), tf.cast(core.as_seed(tf.convert_to_tensor(seed)), tf.int64))

    return run


def attack(model_fn, images, labels, epsilon, queries=QUERIES, p_init=P_INIT, seed=(0, 0), clip_min=0.0,
           clip_max=1.0, noise_rows=None):
    """Square Attack L-inf on the examples classified correctly, as AutoAttack's `square.py` runs it.

    Start: the clean image plus epsilon times a random sign per example, channel and column (vertical stripes),
    clipped to the box. Iteration i = 0 .. `queries` - 1 draws one square of side `side_at(i, p_init, h, w)` at a
    random position and a random sign per channel; each example still classified correctly adds 2 epsilon times
    that sign on the square to its current point, projects onto the epsilon-ball and the box, and keeps the new
    point if its margin z_y - max_{j != y} z_j is lower. An example stops (no more model calls) once its margin is
    <= 0; the loop ends when all have stopped.

    Args:
      model_fn: images -> logits `[batch, classes]`; it is called on batches of varying size.
      images, labels: `[batch, height, width, channels]` in [clip_min, clip_max] and integer class ids `[batch]`.
      epsilon: the L-inf radius, > 0.
      queries: the iterations (AutoAttack: 5000).
      p_init: the initial fraction of the image a square covers (AutoAttack: 0.8).
      seed: shape [2] int seed of the stateless draws.
      noise_rows: optional `(first_row, global_batch_size)`, as in `core.random_start`, for the start's stripes
        (the squares do not depend on the rows).

    Returns:
      (adversarial, broken): `broken` is a bool `[batch]`, True for examples misclassified clean (which keep their
      image) or at the point found; `adversarial` holds that point for the examples broken by the attack and the
      clean image for the others, inside the epsilon-ball and the box, with no gradient path.
    """
    adversarial, broken, _ = search(model_fn, images, labels, epsilon, queries, p_init, seed, clip_min, clip_max,
                                    noise_rows)
    return adversarial, broken


def square_config(epsilon=8 / 255, queries=QUERIES) -> config_lib.AttackConfig:
    """Square Attack L-inf as in standard AutoAttack: `queries` iterations (5000), p_init 0.8, one run."""
    return config_lib.AttackConfig(name="square", epsilon=epsilon, max_queries=queries, random_start=False)


def run(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    """``square``: `attack` with the config's epsilon, box and `max_queries` (no gradient, so nothing to unroll)."""
    adversarial, _ = attack(model_fn, images, labels, config.epsilon, config.max_queries, P_INIT, seed,
                            config.clip_min, config.clip_max, noise_rows)
    return adversarial


def _check(config):
    config_lib.check_positive("epsilon", config.epsilon)
    config_lib.check_int("max_queries", config.max_queries, minimum=1)


RUNS = {"square": run}
config_lib.register(("square",), config_lib.Rule(check=_check, uses_noise=lambda config: True))
