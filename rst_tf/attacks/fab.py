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
    ``sum_i |w_i| min(lam, room_i)`` is increasing, concave and piecewise linear in ``lam``. Newton's method from
    ``lam = 0`` (`_newton_budget`) stays below the solution and reaches it exactly, on the linear piece that holds
    it, after a few steps; rows it has not settled within `NEWTON_STEPS` fall back to sorting the rooms
    (`_sorted_budget`). Either is the step of the reference FAB's sort-and-bisect ``projection_linf``
    (fra31/auto-attack), unreachable case included, in a box of any bounds.
    """
    points = tf.convert_to_tensor(points)
    normals = tf.convert_to_tensor(normals, points.dtype)
    offsets = tf.convert_to_tensor(offsets, points.dtype)
    return _project_linf(points, normals, tf.reduce_sum(normals * points, axis=-1) - offsets, clip_min, clip_max)


def _project_linf(points, normals, residual, clip_min, clip_max):
    """`project_linf` given each row's ``residual = normals . points - offsets``."""
    # +1: normals . z must rise, -1: it must fall.
    towards = core.select(residual >= 0, -tf.ones_like(residual), tf.ones_like(residual))
    # A coordinate rises where its normal's sign agrees with `towards`. Coordinates of zero normal carry no weight,
    # so their room does not count, and their step is zero (the sign of their normal).
    rising = tf.equal(normals > 0, (towards > 0)[:, None])
    room = core.select(rising, clip_max - points, points - clip_min)
    needed = tf.abs(residual)
    weight = tf.abs(normals)
    budget, settled = _newton_budget(room, weight, needed)
    budget = tf.cond(tf.reduce_all(settled), lambda: budget, lambda: _sorted_budget(room, weight, needed))
    return tf.minimum(budget[:, None], room) * (towards[:, None] * tf.sign(normals))


# Newton steps of the projection before it falls back to sorting (a handful suffice on images).
NEWTON_STEPS = 32


def _newton_budget(room, weight, needed):
    """(L-inf budget per row, settled per row) by Newton's method on the progress: with S the coordinates whose room
    is within the budget, the next budget is ``(needed - sum_S w room) / sum_not_S w``; the budget only grows, and it
    is the solution once it no longer changes (S then no longer changes). +inf where the box does not reach the
    hyperplane."""
    full = weight * room
    reachable = tf.reduce_sum(full, axis=-1) >= needed
    zeros = tf.zeros_like(room)
    tiny = tf.constant(_TINY, room.dtype)

    def body(step, budget, settled):
        saturated = room <= budget[:, None]
        filled = tf.reduce_sum(core.select(saturated, full, zeros), axis=-1)
        active = tf.reduce_sum(core.select(saturated, zeros, weight), axis=-1)
        new_budget = tf.maximum((needed - filled) / tf.maximum(active, tiny), budget)
        new_budget = tf.where(reachable, new_budget, tf.zeros_like(new_budget))
        return step + 1, new_budget, new_budget == budget

    start = (tf.constant(0), tf.zeros_like(needed), tf.zeros_like(needed, tf.bool))
    _, budget, settled = tf.while_loop(lambda step, budget, settled: (step < NEWTON_STEPS) & ~tf.reduce_all(settled),
                                       body, start)
    return tf.where(reachable, budget, tf.constant(np.inf, room.dtype)), settled | ~reachable


def _sorted_budget(room, weight, needed):
    """The L-inf budget per row from the progress at the sorted rooms: the j-th smallest room locates the linear
    piece that holds the solution. +inf where the box does not reach the hyperplane."""
    order = tf.argsort(room, axis=-1)
    sorted_room = tf.gather(room, order, batch_dims=1)
    sorted_weight = tf.gather(weight, order, batch_dims=1)
    # Progress when the budget equals the j-th smallest room: the coordinates below it are at the box edge.
    saturated = tf.cumsum(sorted_weight * sorted_room, axis=-1, exclusive=True)
    active = tf.cumsum(sorted_weight, axis=-1, reverse=True)
    progress = saturated + sorted_room * active
    piece = tf.reduce_sum(tf.cast(progress < needed[:, None], tf.int32), axis=-1)
    features = tf.shape(room)[-1]
    reachable = piece < features
    piece = tf.minimum(piece, features - 1)
    piece_saturated = tf.gather(saturated, piece, batch_dims=1)
    piece_active = tf.gather(active, piece, batch_dims=1)
    budget = (needed - piece_saturated) / tf.maximum(piece_active, tf.constant(_TINY, room.dtype))
    return tf.where(reachable, tf.maximum(budget, tf.zeros_like(budget)), tf.constant(np.inf, room.dtype))


def ranked_targets(logits, labels, count):
    """[batch, count] classes of the ``count`` highest logits other than ``labels``, highest first (ties: lower
    class first)."""
    is_true = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    others = tf.where(is_true, tf.constant(-np.inf, logits.dtype), logits)
    ranked = tf.argsort(others, axis=-1, direction="DESCENDING", stable=True)[:, :count]
    return tf.cast(ranked, labels.dtype)


def _boundary(model_fn, x, image_shape, labels, targets):
    """(z_t - z_y, its input gradient flattened) at the flat points `x`."""
    rows = tf.shape(x)[0]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        points = tf.reshape(x, tf.concat([[rows], image_shape], 0))
        tape.watch(points)
        logits = model_fn(points)
        if logits.shape.rank != 2:
            raise ValueError(f"FAB needs logits of shape [batch, classes], got shape {logits.shape}")
        logits = tf.cast(logits, x.dtype)
        gap = tf.gather(logits, targets, batch_dims=1) - tf.gather(logits, labels, batch_dims=1)
    return gap, tf.reshape(tape.gradient(gap, points), [rows, -1])


def _step(model_fn, x, clean, labels, targets, image_shape, closest, distance, clip_min, clip_max):
    """One FAB iteration of flat points `x` ([rows, features]) from flat images `clean`. Returns (next x, closest,
    distance, moved, fooled, moved_distance)."""
    rows = tf.shape(x)[0]
    gap, normal = _boundary(model_fn, x, image_shape, labels, targets)
    # The linearised boundary normal . z = normal . x - gap: x is `gap` above it, the clean image
    # gap + normal . (clean - x).
    from_current = _project_linf(x, normal, gap, clip_min, clip_max)
    from_clean = _project_linf(clean, normal, gap + tf.reduce_sum(normal * (clean - x), axis=-1), clip_min, clip_max)
    length_current = tf.maximum(tf.reduce_max(tf.abs(from_current), axis=-1), _MIN_STEP)
    length_clean = tf.maximum(tf.reduce_max(tf.abs(from_clean), axis=-1), _MIN_STEP)
    alpha = tf.clip_by_value(length_current / (length_current + length_clean), 0.0, ALPHA_MAX)[:, None]
    moved = (x + OVERSHOOT * from_current) * (1.0 - alpha) + (clean + OVERSHOOT * from_clean) * alpha
    moved = tf.clip_by_value(moved, clip_min, clip_max)
    fooled = core.predicted_wrong(model_fn(tf.reshape(moved, tf.concat([[rows], image_shape], 0))), labels)
    moved_distance = tf.reduce_max(tf.abs(moved - clean), axis=-1)
    closer = fooled & (moved_distance < distance)
    closest = core.select(closer, moved, closest)
    distance = tf.where(closer, moved_distance, distance)
    x = core.select(fooled, clean + (moved - clean) * BACKWARD_STEP, moved)
    return x, closest, distance, moved, fooled, moved_distance


def targeted_run(model_fn, images, labels, targets, steps, clip_min=0.0, clip_max=1.0):
    """One FAB-T run of ``steps`` iterations from the clean images towards ``targets``.

    Returns:
      (closest, distance): the closest misclassified point found per example and its L-inf distance from the
      image; ``distance`` is +inf (and ``closest`` the image) where no misclassified point was found.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    clean = tf.reshape(images, [shape[0], -1])

    def body(step, x, closest, distance):
        x, closest, distance, _, _, _ = _step(model_fn, x, clean, labels, targets, shape[1:], closest, distance,
                                              clip_min, clip_max)
        return step + 1, x, closest, distance

    start = (tf.constant(0), clean, clean, tf.fill([shape[0]], tf.constant(np.inf, images.dtype)))
    _, _, closest, distance = tf.while_loop(lambda step, *_: step < steps, body, start)
    return tf.reshape(closest, shape), distance


def run_until_broken(model_fn, images, labels, targets, steps, epsilon, groups, num_groups, clip_min=0.0,
                     clip_max=1.0):
    """`targeted_run` for verdicts: every row follows its rules step for step, but leaves the batch once it, or
    another row of its group (the same example towards another target), has recorded a misclassified point within
    `epsilon` (its closest point can then only stay within epsilon, so the verdict cannot change).

    Returns (found [num_groups, ...], within [num_groups]): per group the first such point (of its lowest row among
    those that found one at the same iteration) and whether there is one; the group's first image otherwise.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    rows_count = shape[0]
    groups = tf.cast(groups, tf.int32)
    epsilon = tf.cast(tf.convert_to_tensor(epsilon, dtype_hint=images.dtype), images.dtype)
    clean = tf.reshape(images, [rows_count, -1])
    first_rows = tf.math.unsorted_segment_min(tf.range(rows_count), groups, num_groups)
    found = tf.gather(clean, first_rows)
    within = tf.zeros([num_groups], tf.bool)
    state = dict(x=clean, clean=clean, closest=clean, distance=tf.fill([rows_count], tf.constant(np.inf, images.dtype)),
                 labels=labels, targets=targets, groups=groups)

    def body(step, s, found, within):
        x, closest, distance, moved, fooled, moved_distance = _step(
            model_fn, s["x"], s["clean"], s["labels"], s["targets"], shape[1:], s["closest"], s["distance"],
            clip_min, clip_max)
        hit_rows = fooled & (moved_distance <= epsilon)
        big = tf.int32.max
        first = tf.math.unsorted_segment_min(tf.where(hit_rows, tf.range(tf.shape(x)[0]), big), s["groups"],
                                             num_groups)
        hit = first < big
        found = tf.tensor_scatter_nd_update(found, tf.where(hit), tf.gather(moved, tf.boolean_mask(first, hit)))
        within = within | hit
        s = dict(s, x=x, closest=closest, distance=distance)
        keep = tf.where(~tf.gather(within, s["groups"]))[:, 0]
        return step + 1, core.keep_rows(s, keep), found, within

    invariant = lambda t: tf.TensorShape([None]).concatenate(t.shape[1:])  # noqa: E731
    shapes = (tf.TensorShape([]), {key: invariant(value) for key, value in state.items()}, found.shape, within.shape)
    _, _, found, within = tf.while_loop(
        lambda step, s, *_: (step < steps) & (tf.shape(s["x"])[0] > 0), body, (tf.constant(0), state, found, within),
        shape_invariants=shapes, maximum_iterations=steps)
    return tf.reshape(found, tf.concat([[num_groups], shape[1:]], 0)), within


def accepted(model_fn, images, labels, candidates, epsilon):
    """Whether each candidate counts as adversarial: misclassified and within ``epsilon`` (L-inf) of its image."""
    fooled = core.predicted_wrong(model_fn(candidates), labels)
    distance = tf.reduce_max(tf.abs(candidates - images), axis=list(range(1, images.shape.rank)))
    epsilon = tf.cast(tf.convert_to_tensor(epsilon, dtype_hint=images.dtype), images.dtype)
    return fooled & (distance <= epsilon)


def broken_runner(model_fn, steps, epsilon, clip_min=0.0, clip_max=1.0):
    """``run(images, labels, targets, groups, num_groups) -> (found, within)``: `run_until_broken` with these
    settings, as `attack` calls it."""
    def run(images, labels, targets, groups, num_groups):
        return run_until_broken(model_fn, images, labels, targets, steps, epsilon, groups, num_groups, clip_min,
                                clip_max)
    return run


def _attack_targets(model_fn, images, labels, targets, ranks, adversarial, robust, epsilon, run):
    """The target `ranks` (columns of `targets`) of the still-robust examples in one batched `run`; accepted points
    (a fresh forward pass) replace their images. Eagerly, there must be a robust example."""
    remaining = tf.where(robust)[:, 0]

    def attack():
        left = tf.shape(remaining)[0]
        rows = tf.tile(remaining, [len(ranks)])  # rank-major: row k * left + j is example j towards ranks[k]
        flat_targets = tf.concat([tf.gather(targets[:, rank], remaining) for rank in ranks], 0)
        found, _ = run(tf.gather(images, rows), tf.gather(labels, rows), flat_targets,
                       tf.tile(tf.range(left), [len(ranks)]), left)
        subset, subset_labels = tf.gather(images, remaining), tf.gather(labels, remaining)
        broken = accepted(model_fn, subset, subset_labels, found, epsilon)
        where = tf.boolean_mask(remaining, broken)[:, None]
        return (tf.tensor_scatter_nd_update(adversarial, where, tf.boolean_mask(found, broken)),
                tf.tensor_scatter_nd_update(robust, where, tf.zeros(tf.shape(where)[:1], tf.bool)))

    if tf.executing_eagerly():
        return attack()
    # Models need not accept an empty batch.
    return tf.cond(tf.size(remaining) > 0, attack, lambda: (adversarial, robust))


def attack(model_fn, images, labels, epsilon, steps=100, target_classes=STANDARD_TARGET_CLASSES, clip_min=0.0,
           clip_max=1.0, clean_logits=None, run=None):
    """FAB-T as in standard AutoAttack: for the k-th highest non-true clean logit, k = 1 ..
    ``min(target_classes, classes - 1)``, one `targeted_run` of the examples classified correctly; an example is
    broken when a run's closest point is misclassified and within ``epsilon`` (L-inf), and leaves once broken
    (`run_until_broken`): the verdicts of the reference, which runs the targets in turn, each on the examples no
    earlier target broke. Runs eagerly and inside ``tf.function``.

    Eagerly, the targets run in that turn, each call on the examples still robust, several targets batched (rows
    grouped by example) only while those are fewer than `core.MIN_ROWS_PER_CALL` rows; `run` (default
    `broken_runner`'s, traced for any batch) runs every call: pass one traced function to trace it once for many
    calls. In a graph, all targets run batched in one call.

    `clean_logits`: the model's logits on `images`, if already computed.

    Returns:
      (adversarial, broken): the images with the broken examples replaced by their adversarial points (inside
      the epsilon-ball and the box), and a boolean [batch] mask of the broken examples.
    """
    images = tf.convert_to_tensor(images, dtype_hint=tf.float32)
    labels = tf.cast(core.as_class_ids(labels), tf.int64)
    clean_logits = tf.convert_to_tensor(model_fn(images) if clean_logits is None else clean_logits)
    if clean_logits.shape.rank != 2 or clean_logits.shape[-1] is None:
        raise ValueError(f"FAB needs logits of shape [batch, classes] with a known class count, got shape "
                         f"{clean_logits.shape}")
    count = min(target_classes, clean_logits.shape[-1] - 1)
    targets = ranked_targets(clean_logits, labels, count)
    clean_correct = ~core.predicted_wrong(clean_logits, labels)
    if run is None:
        run = broken_runner(model_fn, steps, epsilon, clip_min, clip_max)
        if tf.executing_eagerly():
            run = core.traced_for_any_batch(run)
    if not tf.executing_eagerly():
        adversarial, robust = _attack_targets(model_fn, images, labels, targets, range(count), images, clean_correct,
                                              epsilon, run)
        return adversarial, clean_correct & ~robust
    adversarial, robust, first = images, clean_correct, 0
    while first < count:
        left = int(tf.math.count_nonzero(robust))
        if left == 0:
            break
        ranks = range(first, first + core.targets_per_call(left, count - first))
        first = ranks[-1] + 1
        adversarial, robust = _attack_targets(model_fn, images, labels, targets, ranks, adversarial, robust, epsilon,
                                              run)
    return adversarial, clean_correct & ~robust


def _run_fab_t(model_fn, images, labels, config, seed=None, noise_rows=None, unroll=False):
    """``fab_t``: `attack` with the standard AutoAttack targets; unbroken examples keep their image."""
    adv, _ = attack(model_fn, images, labels, config.epsilon, config.steps, STANDARD_TARGET_CLASSES,
                    config.clip_min, config.clip_max)
    return core.project(images, adv, config.epsilon, np.inf, config.clip_min, config.clip_max)


RUNS = {"fab_t": _run_fab_t}
config_lib.register(("fab_t",), config_lib.Rule(
    check=lambda config: config_lib.check_int("steps", config.steps, minimum=1), eager_only=False))
