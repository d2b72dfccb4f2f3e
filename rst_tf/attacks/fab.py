"""FAB-T, L-inf: the targeted Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), with the settings it has inside standard AutoAttack.

FAB looks for the smallest L-inf perturbation that carries an example across the boundary between its true class
``y`` and a target class ``t``. Each iteration linearises ``z_t - z_y`` at the current point, projects both the
current point and the clean image onto that hyperplane inside the image box (smallest L-inf step,
`project_linf`), moves to a convex combination of the two projections (weight at most ``ALPHA_MAX`` on the clean
one, both steps lengthened by ``OVERSHOOT``), and, once the point is misclassified, records it if it is the
closest yet and pulls it back towards the clean image (``BACKWARD_STEP``). Standard AutoAttack runs one restart
from the clean image (no random start, so the attack is deterministic) of 100 iterations for each of the 9
highest non-true clean logits, on the examples still classified correctly.

Written with plain TensorFlow ops and a ``tf.while_loop``; `targeted_run` runs eagerly and inside
``tf.function``, `attack` drives the targets eagerly.
"""
import numpy as np
import tensorflow as tf

from rst_tf.attacks import config as config_lib
from rst_tf.attacks import core

ALPHA_MAX = 0.1
OVERSHOOT = 1.05
BACKWARD_STEP = 0.9
STANDARD_TARGET_CLASSES = 9
# Smallest projection length used in the convex-combination weight (avoids 0 / 0).
_MIN_STEP = 1e-8
# Guards the division in project_linf when every normal coordinate is zero.
_TINY = 1e-30


def project_linf(points, normals, offsets, clip_min=0.0, clip_max=1.0):
    """Smallest L-inf steps from ``points`` onto the hyperplanes ``normals . z = offsets`` inside the box.

    Args:
      points: [rows, features] inside [clip_min, clip_max].
      normals, offsets: [rows, features] and [rows], one hyperplane per row.

    Returns:
      [rows, features] steps ``d`` with ``points + d`` inside the box and on the hyperplane, of the smallest
      L-inf norm. Where the box does not reach the hyperplane, the step that gets closest: every coordinate
      moved to the edge of the box on the side that brings ``normals . z`` towards ``offsets``.

    With L-inf budget ``lam`` each coordinate moves ``min(lam, room_i)`` in its useful direction, so the progress
    ``sum_i |w_i| min(lam, room_i)`` is increasing and piecewise linear in ``lam``; evaluated at the sorted
    ``room_i`` it locates the linear piece that holds the solution.
    """
    points = tf.convert_to_tensor(points)
    normals = tf.convert_to_tensor(normals, points.dtype)
    offsets = tf.convert_to_tensor(offsets, points.dtype)
    residual = tf.reduce_sum(normals * points, axis=-1) - offsets
    # +1: raise the coordinate, -1: lower it, 0: it does not change normals . z.
    towards = tf.where(residual >= 0, -tf.ones_like(residual), tf.ones_like(residual))
    direction = towards[:, None] * tf.sign(normals)
    room = tf.where(direction > 0, clip_max - points, tf.where(direction < 0, points - clip_min, tf.zeros_like(points)))
    needed = tf.abs(residual)
    weight = tf.abs(normals)

    order = tf.argsort(room, axis=-1)
    sorted_room = tf.gather(room, order, batch_dims=1)
    sorted_weight = tf.gather(weight, order, batch_dims=1)
    # Progress when the budget equals the j-th smallest room: the coordinates below it are at the box edge.
    saturated = tf.cumsum(sorted_weight * sorted_room, axis=-1, exclusive=True)
    active = tf.cumsum(sorted_weight, axis=-1, reverse=True)
    progress = saturated + sorted_room * active
    piece = tf.reduce_sum(tf.cast(progress < needed[:, None], tf.int32), axis=-1)
    features = tf.shape(points)[-1]
    reachable = piece < features
    piece = tf.minimum(piece, features - 1)
    piece_saturated = tf.gather(saturated, piece, batch_dims=1)
    piece_active = tf.gather(active, piece, batch_dims=1)
    budget = (needed - piece_saturated) / tf.maximum(piece_active, tf.constant(_TINY, points.dtype))
    budget = tf.where(reachable, tf.maximum(budget, tf.zeros_like(budget)), tf.constant(np.inf, points.dtype))
    return direction * tf.minimum(budget[:, None], room)


def targeted_run(model_fn, images, labels, targets, steps, clip_min=0.0, clip_max=1.0):
    """One FAB-T run from the clean images towards ``targets``.

    Returns:
      (closest, distance): the closest misclassified point found per example and its L-inf distance from the
      image; ``distance`` is +inf (and ``closest`` the image) where no misclassified point was found.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    rows = shape[0]
    clean = tf.reshape(images, [rows, -1])

    def boundary(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model_fn(x)
            if logits.shape.rank != 2:
                raise ValueError(f"FAB needs logits of shape [batch, classes], got shape {logits.shape}")
            gap = tf.gather(logits, targets, batch_dims=1) - tf.gather(logits, labels, batch_dims=1)
        return gap, tf.reshape(tape.gradient(gap, x), [rows, -1])

    def body(step, x, closest, distance):
        gap, normal = boundary(tf.reshape(x, shape))
        # The linearised boundary: normal . z = normal . x - gap.
        offset = tf.reduce_sum(normal * x, axis=-1) - gap
        both = project_linf(
            tf.concat([x, clean], 0), tf.concat([normal, normal], 0), tf.concat([offset, offset], 0),
            clip_min, clip_max,
        )
        from_current, from_clean = both[:rows], both[rows:]
        length_current = tf.maximum(tf.reduce_max(tf.abs(from_current), axis=-1), _MIN_STEP)
        length_clean = tf.maximum(tf.reduce_max(tf.abs(from_clean), axis=-1), _MIN_STEP)
        alpha = tf.clip_by_value(length_current / (length_current + length_clean), 0.0, ALPHA_MAX)[:, None]
        moved = (x + OVERSHOOT * from_current) * (1.0 - alpha) + (clean + OVERSHOOT * from_clean) * alpha
        moved = tf.clip_by_value(moved, clip_min, clip_max)
        predicted = tf.argmax(model_fn(tf.reshape(moved, shape)), axis=-1, output_type=labels.dtype)
        fooled = predicted != labels
        moved_distance = tf.reduce_max(tf.abs(moved - clean), axis=-1)
        closer = fooled & (moved_distance < distance)
        closest = tf.where(closer[:, None], moved, closest)
        distance = tf.where(closer, moved_distance, distance)
        x = tf.where(fooled[:, None], clean + (moved - clean) * BACKWARD_STEP, moved)
        return step + 1, x, closest, distance

    start = (tf.constant(0), clean, clean, tf.fill([rows], tf.constant(np.inf, images.dtype)))
    _, _, closest, distance = tf.while_loop(lambda step, *_: step < steps, body, start)
    return tf.reshape(closest, shape), distance


def attack(model_fn, images, labels, epsilon, steps=100, target_classes=STANDARD_TARGET_CLASSES, clip_min=0.0,
           clip_max=1.0):
    """FAB-T as in standard AutoAttack, eagerly: for the k-th highest non-true clean logit, k = 1 ..
    ``min(target_classes, classes - 1)``, one `targeted_run` on the examples still classified correctly; an
    example is broken when a run finds a misclassified point within ``epsilon`` (L-inf).

    Returns:
      (adversarial, broken): the images with the broken examples replaced by their adversarial points (inside
      the epsilon-ball and the box), and a boolean [batch] mask of the broken examples.
    """
    images = tf.convert_to_tensor(images, dtype_hint=tf.float32)
    labels = tf.cast(labels, tf.int64)

    @tf.function(reduce_retracing=True)
    def run(x, y, t):
        return targeted_run(model_fn, x, y, t, steps, clip_min, clip_max)

    clean_logits = tf.convert_to_tensor(model_fn(images))
    classes = clean_logits.shape[-1]
    is_true = tf.one_hot(labels, classes, on_value=True, off_value=False)
    ranked = tf.argsort(tf.where(is_true, -np.inf, clean_logits), axis=-1, direction="DESCENDING")
    clean_correct = tf.argmax(clean_logits, axis=-1) == labels
    robust = clean_correct
    adversarial = images
    for rank in range(min(target_classes, classes - 1)):
        remaining = tf.where(robust)[:, 0]
        if int(tf.size(remaining)) == 0:
            break
        subset = tf.gather(images, remaining)
        subset_labels = tf.gather(labels, remaining)
        closest, distance = run(subset, subset_labels, tf.gather(ranked[:, rank], remaining))
        # A finite distance belongs to a point `targeted_run` found misclassified.
        broken = distance <= epsilon
        where = tf.boolean_mask(remaining, broken)[:, None]
        adversarial = tf.tensor_scatter_nd_update(adversarial, where, tf.boolean_mask(closest, broken))
        robust = tf.tensor_scatter_nd_update(robust, where, tf.zeros(tf.shape(where)[:1], tf.bool))
    return adversarial, clean_correct & ~robust


def _run_fab_t(model_fn, images, labels, config, seed=None, noise_rows=None, unroll=False):
    """``fab_t``: `attack` with the standard AutoAttack targets; unbroken examples keep their image."""
    adv, _ = attack(model_fn, images, labels, config.epsilon, config.steps, STANDARD_TARGET_CLASSES,
                    config.clip_min, config.clip_max)
    return core.project(images, adv, config.epsilon, np.inf, config.clip_min, config.clip_max)


RUNS = {"fab_t": _run_fab_t}
config_lib.register(("fab_t",), config_lib.Rule(
    check=lambda config: config_lib.check_int("steps", config.steps, minimum=1), eager_only=True))
