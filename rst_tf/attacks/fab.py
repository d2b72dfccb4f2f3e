"""FAB-T, L-inf: the targeted Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), step for step as standard AutoAttack (fra31/auto-attack) runs it.

FAB looks for the smallest L-inf perturbation that carries an example across the boundary between its true class
``y`` and a target class ``t``. Each iteration linearises ``z_t - z_y`` at the current point ``x``, projects both
``x`` and the clean image ``x0`` onto that hyperplane inside the image box (smallest L-inf steps ``d1`` and ``d2``,
`project_linf`), and moves to ``clip((x + eta d1)(1 - a) + (x0 + eta d2) a)`` with
``a = min(|d1| / (|d1| + |d2|), ALPHA_MAX)`` (L-inf norms, each at least 1e-8) and ``eta = OVERSHOOT``. A point the
model misclassifies is recorded if it is the closest to ``x0`` yet, and the iterate is pulled back to
``x0 + BACKWARD_STEP (x - x0)``. Standard AutoAttack runs one restart from the clean image (no random start, so the
attack is deterministic) of 100 iterations for each of the 9 highest non-true clean logits in turn, each on the
examples no earlier target has broken; an example is broken when its recorded point is misclassified and within
epsilon (L-inf). Examples misclassified from the start are never attacked.

Plain TensorFlow ops and a ``tf.while_loop``: `attack` runs eagerly (one traced function per call, reused for every
target) and inside ``tf.function``.
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
    ``room_i`` it locates the linear piece that holds the solution. This is the step of the reference FAB's
    sort-and-bisect ``projection_linf`` (fra31/auto-attack), unreachable case included, in a box of any bounds.
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


def ranked_targets(logits, labels, count):
    """[batch, count] classes of the ``count`` highest logits other than ``labels``, highest first (ties: lower
    class first)."""
    is_true = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    others = tf.where(is_true, tf.constant(-np.inf, logits.dtype), logits)
    ranked = tf.argsort(others, axis=-1, direction="DESCENDING", stable=True)[:, :count]
    return tf.cast(ranked, labels.dtype)


def targeted_run(model_fn, images, labels, targets, steps, clip_min=0.0, clip_max=1.0):
    """One FAB-T run of ``steps`` iterations from the clean images towards ``targets``.

    Returns:
      (closest, distance): the closest misclassified point found per example and its L-inf distance from the
      image; ``distance`` is +inf (and ``closest`` the image) where no misclassified point was found.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    rows = shape[0]
    clean = tf.reshape(images, [rows, -1])

    def boundary(x):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            logits = model_fn(x)
            if logits.shape.rank != 2:
                raise ValueError(f"FAB needs logits of shape [batch, classes], got shape {logits.shape}")
            logits = tf.cast(logits, x.dtype)
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
        fooled = core.predicted_wrong(model_fn(tf.reshape(moved, shape)), labels)
        moved_distance = tf.reduce_max(tf.abs(moved - clean), axis=-1)
        closer = fooled & (moved_distance < distance)
        closest = tf.where(closer[:, None], moved, closest)
        distance = tf.where(closer, moved_distance, distance)
        x = tf.where(fooled[:, None], clean + (moved - clean) * BACKWARD_STEP, moved)
        return step + 1, x, closest, distance

    start = (tf.constant(0), clean, clean, tf.fill([rows], tf.constant(np.inf, images.dtype)))
    _, _, closest, distance = tf.while_loop(lambda step, *_: step < steps, body, start)
    return tf.reshape(closest, shape), distance


def accepted(model_fn, images, labels, candidates, epsilon):
    """Whether each candidate counts as adversarial: misclassified and within ``epsilon`` (L-inf) of its image."""
    fooled = core.predicted_wrong(model_fn(candidates), labels)
    distance = tf.reduce_max(tf.abs(candidates - images), axis=list(range(1, images.shape.rank)))
    epsilon = tf.cast(tf.convert_to_tensor(epsilon, dtype_hint=images.dtype), images.dtype)
    return fooled & (distance <= epsilon)


def _attack_target(model_fn, images, labels, targets, adversarial, robust, epsilon, steps, clip_min, clip_max):
    """One target: a `targeted_run` on the still-robust examples; accepted points replace their images."""
    remaining = tf.where(robust)[:, 0]

    def run():
        subset, subset_labels = tf.gather(images, remaining), tf.gather(labels, remaining)
        closest, _ = targeted_run(model_fn, subset, subset_labels, tf.gather(targets, remaining), steps, clip_min,
                                  clip_max)
        broken = accepted(model_fn, subset, subset_labels, closest, epsilon)
        where = tf.boolean_mask(remaining, broken)[:, None]
        return (tf.tensor_scatter_nd_update(adversarial, where, tf.boolean_mask(closest, broken)),
                tf.tensor_scatter_nd_update(robust, where, tf.zeros(tf.shape(where)[:1], tf.bool)))

    # Models need not accept an empty batch.
    return tf.cond(tf.size(remaining) > 0, run, lambda: (adversarial, robust))


def attack(model_fn, images, labels, epsilon, steps=100, target_classes=STANDARD_TARGET_CLASSES, clip_min=0.0,
           clip_max=1.0):
    """FAB-T as in standard AutoAttack: for the k-th highest non-true clean logit, k = 1 ..
    ``min(target_classes, classes - 1)``, one `targeted_run` on the examples still classified correctly; an
    example is broken when the run's closest point is misclassified and within ``epsilon`` (L-inf). Runs eagerly
    and inside ``tf.function``.

    Returns:
      (adversarial, broken): the images with the broken examples replaced by their adversarial points (inside
      the epsilon-ball and the box), and a boolean [batch] mask of the broken examples.
    """
    images = tf.convert_to_tensor(images, dtype_hint=tf.float32)
    labels = tf.cast(core.as_class_ids(labels), tf.int64)
    clean_logits = tf.convert_to_tensor(model_fn(images))
    if clean_logits.shape.rank != 2 or clean_logits.shape[-1] is None:
        raise ValueError(f"FAB needs logits of shape [batch, classes] with a known class count, got shape "
                         f"{clean_logits.shape}")
    count = min(target_classes, clean_logits.shape[-1] - 1)
    targets = ranked_targets(clean_logits, labels, count)
    clean_correct = ~core.predicted_wrong(clean_logits, labels)

    def stage(targets_k, adversarial, robust):
        return _attack_target(model_fn, images, labels, targets_k, adversarial, robust, epsilon, steps, clip_min,
                              clip_max)

    if tf.executing_eagerly():
        stage = tf.function(stage)
    adversarial, robust = images, clean_correct
    for rank in range(count):
        adversarial, robust = stage(targets[:, rank], adversarial, robust)
    return adversarial, clean_correct & ~robust


def _run_fab_t(model_fn, images, labels, config, seed=None, noise_rows=None, unroll=False):
    """``fab_t``: `attack` with the standard AutoAttack targets; unbroken examples keep their image."""
    adv, _ = attack(model_fn, images, labels, config.epsilon, config.steps, STANDARD_TARGET_CLASSES,
                    config.clip_min, config.clip_max)
    return core.project(images, adv, config.epsilon, np.inf, config.clip_min, config.clip_max)


RUNS = {"fab_t": _run_fab_t}
config_lib.register(("fab_t",), config_lib.Rule(
    check=lambda config: config_lib.check_int("steps", config.steps, minimum=1), eager_only=False))
