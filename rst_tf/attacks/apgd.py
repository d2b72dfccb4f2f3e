"""APGD, L-inf (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"): APGD-CE, APGD-DLR and APGD-T, rule for rule as the authors' code (fra31/auto-attack,
``APGDAttack`` and ``APGDAttack_targeted``), with expectation over transformation (EOT) for randomised models.

The rules of one run of ``steps`` iterations:
- start ``x + epsilon * t / max|t|`` with ``t`` uniform in [-1, 1] (stateless, from the seed), clipped to the box;
- step size ``2 * epsilon`` per example; momentum 1.0 at the first iteration, then 0.75;
- checkpoints after ``n_2 = max(int(0.22 steps), 1)`` iterations, then every ``k`` iterations with
  ``k = max(k - max(int(0.03 steps), 1), max(int(0.06 steps), 1))``; at a checkpoint an example halves its step
  size and goes back to its best point and that point's gradient if at most ``0.75 k`` of the last ``k``
  iterations raised the loss over the previous iterate (the loss history is a ring of ``steps`` entries that
  starts at zero, so at the first checkpoint the first iterate is compared with 0), or if it did not halve at the
  previous checkpoint and its best loss has not risen since (never at the first checkpoint);
- the best point is the iterate of highest loss; any misclassified iterate is kept as the adversarial example.

Written with plain TensorFlow ops and ``tf.while_loop``s over the batch (every example has its own state): it
runs eagerly and inside ``tf.function``. ``model_fn`` may hold unseeded random ops: each gradient, loss and logit
is the mean over ``eot_draws`` calls (and over the draws of rank-3 logits).
"""
import numpy as np
import tensorflow as tf

from rst_tf.attacks import config as config_lib
from rst_tf.attacks import core

LOSSES = ("ce", "dlr", "dlr_targeted")
MOMENTUM = 0.75
RHO = 0.75  # an example halves if at most RHO of the last window's iterations raised the loss
INITIAL_STEP_RATIO = 2.0  # the step size starts at 2 * epsilon
_GUARD = 1e-12  # the reference's guard in divisions


def schedule(steps):
    """(first window, smallest window, window decrease) of the reference for ``steps`` iterations."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def checkpoints(steps):
    """[(iterations done, window)]: after that many iterations the step size is checked over the last `window`."""
    window, smallest, decrease = schedule(steps)
    found, done = [], 0
    while done + window <= steps:
        done += window
        found.append((done, window))
        window = max(window - decrease, smallest)
    return found


def _top(logits, count):
    if logits.shape[-1] is not None and logits.shape[-1] < count:
        raise ValueError(f"this DLR loss needs at least {count} classes, got {logits.shape[-1]}")
    return tf.math.top_k(logits, k=count).values


def dlr_loss(logits, labels, targets=None):
    """Difference of logits ratio ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``, z_pi sorted descending."""
    top = _top(logits, 3)
    true_logit = tf.gather(logits, labels, axis=-1, batch_dims=1)
    is_true = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    best_other = tf.reduce_max(tf.where(is_true, tf.constant(-np.inf, logits.dtype), logits), axis=-1)
    return -(true_logit - best_other) / (top[:, 0] - top[:, 2] + _GUARD)


def targeted_dlr_loss(logits, labels, targets):
    """Targeted DLR ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``, z_pi sorted descending."""
    top = _top(logits, 4)
    true_logit = tf.gather(logits, labels, axis=-1, batch_dims=1)
    target_logit = tf.gather(logits, targets, axis=-1, batch_dims=1)
    return -(true_logit - target_logit) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _GUARD)


_LOSS_FNS = {"ce": lambda logits, labels, targets: core.cross_entropy_loss(logits, labels),
             "dlr": dlr_loss, "dlr_targeted": targeted_dlr_loss}


def uniform_start(images, seed, epsilon, clip_min=0.0, clip_max=1.0, noise_rows=None):
    """``images + epsilon * t / max|t|`` per example, ``t`` stateless (Philox) uniform in [-1, 1], clipped to the box.
    `noise_rows`: as in `core.random_start`."""
    shape = tf.shape(images)
    if noise_rows is not None:
        first_row, global_batch = noise_rows
        shape = tf.concat([tf.reshape(tf.cast(global_batch, tf.int32), [1]), shape[1:]], axis=0)
    t = tf.random.stateless_uniform(shape, seed, minval=-1.0, maxval=1.0, dtype=images.dtype, alg=core.RNG_ALG)
    if noise_rows is not None:
        t = t[tf.cast(first_row, tf.int32):][:tf.shape(images)[0]]
    largest = tf.reduce_max(tf.abs(t), axis=list(range(1, images.shape.rank)), keepdims=True)
    return tf.clip_by_value(images + tf.cast(epsilon, images.dtype) * t / (largest + _GUARD), clip_min, clip_max)


def _draw(model_fn, x, labels, targets, loss_fn):
    """(per-example loss, its input gradient, logits) of one call; rank-3 logits are averaged over their draws."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = tf.cast(model_fn(x), tf.float32)
        if logits.shape.rank == 3:
            draws = tf.shape(logits)[0]
            flat = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
            loss = loss_fn(flat, tf.tile(labels, [draws]), tf.tile(targets, [draws]))
            loss = tf.reduce_mean(tf.reshape(loss, [draws, -1]), axis=0)
            logits = tf.reduce_mean(logits, axis=0)
        else:
            loss = loss_fn(logits, labels, targets)
        total = tf.reduce_sum(loss)
    return loss, tape.gradient(total, x), logits


def _evaluate(model_fn, x, labels, targets, loss_fn, eot_draws):
    """(loss, input gradient, logits) per example, each the mean over `eot_draws` calls of `model_fn`."""
    first = _draw(model_fn, x, labels, targets, loss_fn)
    if eot_draws == 1:
        return first

    def body(draw_index, loss_sum, gradient_sum, logits_sum):
        loss, gradient, logits = _draw(model_fn, x, labels, targets, loss_fn)
        return draw_index + 1, loss_sum + loss, gradient_sum + gradient, logits_sum + logits

    _, loss, gradient, logits = tf.while_loop(
        lambda draw_index, *_: draw_index < eot_draws, body, (tf.constant(1),) + first,
        maximum_iterations=eot_draws - 1)
    return loss / eot_draws, gradient / tf.cast(eot_draws, gradient.dtype), logits / eot_draws


def mean_logits(model_fn, x, eot_draws=1):
    """Logits averaged over `eot_draws` calls (and over the draws of rank-3 logits)."""

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


def oscillating(history, iteration, window):
    """Whether at most ``RHO * window`` of the losses ``history[iteration - window + 1 .. iteration]`` exceed the
    entry before them; ``history`` is [steps, batch] and index -1 wraps to the last row, as in the reference."""
    previous = tf.roll(history, shift=1, axis=0)
    rows = tf.range(tf.shape(history)[0])[:, None]
    in_window = (rows <= iteration) & (rows > iteration - window)
    raised = tf.reduce_sum(tf.cast(in_window & (history > previous), tf.float32), axis=0)
    return raised <= RHO * tf.cast(window, tf.float32)


def _check_arguments(steps, eot_draws, epsilon, loss):
    if not callable(loss) and loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
    for name, value in (("steps", steps), ("eot_draws", eot_draws)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    core.check_epsilon(epsilon)


def _initial_state(start, loss, gradient, logits, labels, epsilon, steps):
    batch = tf.shape(start)[0]
    return dict(
        x=start, x_previous=start, gradient=gradient,
        best=start, gradient_best=gradient, best_loss=loss,
        adversarial=start, fooled=core.predicted_wrong(logits, labels),
        step_size=tf.fill([batch], tf.cast(INITIAL_STEP_RATIO, start.dtype) * epsilon),
        history=tf.zeros([steps, batch], tf.float32),
        best_loss_at_check=loss, reduced_at_check=tf.ones([batch], tf.bool),
    )


def _window(steps):
    """[steps] int32: window[i] > 0 marks a checkpoint after iteration i (0-based) over that many iterations."""
    marks = checkpoints(steps)
    window = np.zeros(steps, np.int32)
    window[[done - 1 for done, _ in marks]] = [size for _, size in marks]
    return tf.constant(window)


def _iteration(i, s, lower, upper, labels, evaluate, window):
    """One APGD iteration of every row of state `s`; `evaluate(x)` gives (loss, input gradient, logits)."""
    dtype = s["x"].dtype
    momentum = tf.where(i > 0, tf.constant(MOMENTUM, dtype), tf.constant(1.0, dtype))
    x = s["x"]
    z = tf.clip_by_value(x + core.expand_rows(s["step_size"], x) * tf.sign(s["gradient"]), lower, upper)
    x_new = tf.clip_by_value(x + (z - x) * momentum + (x - s["x_previous"]) * (1 - momentum), lower, upper)
    loss, gradient, logits = evaluate(x_new)
    wrong = core.predicted_wrong(logits, labels)
    adversarial = core.select(wrong, x_new, s["adversarial"])
    history = tf.tensor_scatter_nd_update(s["history"], [[i]], loss[None])
    improved = loss > s["best_loss"]
    best = core.select(improved, x_new, s["best"])
    gradient_best = core.select(improved, gradient, s["gradient_best"])
    best_loss = tf.where(improved, loss, s["best_loss"])

    size = window[i]
    checkpoint = size > 0
    no_improvement = ~s["reduced_at_check"] & (s["best_loss_at_check"] >= best_loss)
    reduce = checkpoint & (oscillating(history, i, size) | no_improvement)
    return dict(
        x=core.select(reduce, best, x_new), x_previous=x,
        gradient=core.select(reduce, gradient_best, gradient),
        best=best, gradient_best=gradient_best, best_loss=best_loss,
        adversarial=adversarial, fooled=s["fooled"] | wrong,
        step_size=tf.where(reduce, s["step_size"] / 2, s["step_size"]),
        history=history,
        best_loss_at_check=tf.where(checkpoint, best_loss, s["best_loss_at_check"]),
        reduced_at_check=tf.where(checkpoint, reduce, s["reduced_at_check"]),
    ), wrong


def run(model_fn, images, labels, start, epsilon, steps, loss="ce", targets=None, eot_draws=1, clip_min=0.0,
        clip_max=1.0):
    """One APGD run of `steps` iterations from `start` (in the epsilon-ball around `images`).

    `loss`: one of `LOSSES`, or a callable ``(logits, labels, targets) -> per-example loss``. `targets` (class ids
    [batch]) is needed by ``loss="dlr_targeted"`` only. Returns a dict: ``adversarial`` (the
    last misclassified iterate, or `start` if none), ``fooled`` (some iterate, the start included, was
    misclassified), ``best`` and ``best_loss`` (the iterate of highest loss) and the final ``step_size``.
    """
    _check_arguments(steps, eot_draws, epsilon, loss)
    loss_fn = loss if callable(loss) else _LOSS_FNS[loss]
    images = tf.stop_gradient(tf.convert_to_tensor(images, dtype_hint=tf.float32))
    labels = core.as_class_ids(labels)
    targets = labels if targets is None else tf.cast(targets, labels.dtype)
    epsilon = tf.cast(epsilon, images.dtype)
    lower = tf.maximum(images - epsilon, clip_min)
    upper = tf.minimum(images + epsilon, clip_max)
    evaluate = lambda x: _evaluate(model_fn, x, labels, targets, loss_fn, eot_draws)  # noqa: E731
    start = tf.cast(start, images.dtype)
    state = _initial_state(start, *evaluate(start), labels, epsilon, steps)
    window = _window(steps)
    body = lambda i, s: (i + 1, _iteration(i, s, lower, upper, labels, evaluate, window)[0])  # noqa: E731
    _, state = tf.while_loop(lambda i, s: i < steps, body, (tf.constant(0), state), maximum_iterations=steps)
    keys = ("adversarial", "fooled", "best", "best_loss", "step_size")
    return {key: tf.stop_gradient(state[key]) for key in keys}


def run_until_fooled(model_fn, images, labels, start, epsilon, steps, loss="ce", targets=None, groups=None,
                     num_groups=None, eot_draws=1, clip_min=0.0, clip_max=1.0):
    """`run` for verdicts: every row follows `run`'s rules step for step, but leaves the batch as soon as it, or
    another row of its group, is misclassified (an example once fooled stays fooled, so its verdict cannot change).

    `loss`: one of `LOSSES`, or a callable ``(logits, labels, targets) -> per-example loss``.
    `groups` (int [rows], values in [0, num_groups)): rows of one example, e.g. the same image towards several
    targets; default: every row its own group. Returns (found, fooled) per group: ``fooled`` [num_groups] (some
    iterate of some row of the group, the start included, was misclassified) and ``found`` [num_groups, ...]: the
    first misclassified iterate (of the lowest such row), or the group's first row image if none.
    """
    _check_arguments(steps, eot_draws, epsilon, loss)
    loss_fn = loss if callable(loss) else _LOSS_FNS[loss]
    images = tf.stop_gradient(tf.convert_to_tensor(images, dtype_hint=tf.float32))
    labels = core.as_class_ids(labels)
    targets = labels if targets is None else tf.cast(targets, labels.dtype)
    rows_count = tf.shape(images)[0]
    if groups is None:
        groups, num_groups = tf.range(rows_count), rows_count
    groups = tf.cast(groups, tf.int32)
    epsilon = tf.cast(epsilon, images.dtype)
    start = tf.cast(start, images.dtype)
    first_rows = tf.math.unsorted_segment_min(tf.range(rows_count), groups, num_groups)
    found = tf.gather(images, first_rows)
    fooled = tf.zeros([num_groups], tf.bool)
    window = _window(steps)
    rows_state = dict(lower=tf.maximum(images - epsilon, clip_min), upper=tf.minimum(images + epsilon, clip_max),
                      labels=labels, targets=targets, groups=groups)

    def record(x, wrong, rows_state, found, fooled):
        """Groups with a misclassified row get its point (the lowest such row's); their rows are dropped."""
        position = tf.range(tf.shape(wrong)[0])
        big = tf.int32.max
        first = tf.math.unsorted_segment_min(tf.where(wrong, position, big), rows_state["groups"], num_groups)
        hit = first < big
        where = tf.where(hit)
        found = tf.tensor_scatter_nd_update(found, where, tf.gather(x, tf.boolean_mask(first, hit)))
        fooled = fooled | hit
        keep = tf.where(~tf.gather(fooled, rows_state["groups"]))[:, 0]
        return keep, found, fooled

    evaluate = lambda x, r: _evaluate(model_fn, x, r["labels"], r["targets"], loss_fn, eot_draws)  # noqa: E731
    state = _initial_state(start, *evaluate(start, rows_state), labels, epsilon, steps)
    keep, found, fooled = record(start, state["fooled"], rows_state, found, fooled)

    def gather(structure, keep):
        return core.keep_rows(structure, keep, {"history": 1})

    def body(i, s, r, found, fooled):
        s, wrong = _iteration(i, s, r["lower"], r["upper"], r["labels"], lambda x: evaluate(x, r), window)
        keep, found, fooled = record(s["adversarial"], wrong, r, found, fooled)
        return i + 1, gather(s, keep), gather(r, keep), found, fooled

    loop_vars = (tf.constant(0), gather(state, keep), gather(rows_state, keep), found, fooled)
    invariant = lambda t: tf.TensorShape([None]).concatenate(t.shape[1:])  # noqa: E731
    shapes = (tf.TensorShape([]),
              {key: (tf.TensorShape([steps, None]) if key == "history" else invariant(value))
               for key, value in loop_vars[1].items()},
              {key: invariant(value) for key, value in loop_vars[2].items()},
              found.shape, fooled.shape)
    _, _, _, found, fooled = tf.while_loop(
        lambda i, s, r, *_: (i < steps) & (tf.shape(s["x"])[0] > 0), body, loop_vars, shape_invariants=shapes,
        maximum_iterations=steps)
    return tf.stop_gradient(found), fooled


def _run_on(robust, images, labels, start, run):
    """`run` (as `targeted_on` takes it, targets: the labels) on the examples flagged `robust`, each its own group;
    those it fools get its adversarial example and leave `robust`. Returns (adversarial, robust)."""
    remaining = tf.where(robust)[:, 0]

    def attack():
        left = tf.shape(remaining)[0]
        subset_labels = tf.gather(labels, remaining)
        found, fooled = run(tf.gather(images, remaining), subset_labels, tf.gather(start, remaining), subset_labels,
                            tf.range(left), left)
        where = tf.boolean_mask(remaining, fooled)[:, None]
        return (tf.tensor_scatter_nd_update(images, where, tf.boolean_mask(found, fooled)),
                tf.tensor_scatter_nd_update(robust, where, tf.zeros(tf.shape(where)[:1], tf.bool)))

    # Models need not accept an empty batch.
    return tf.cond(tf.size(remaining) > 0, attack, lambda: (images, robust))


def untargeted(model_fn, images, labels, epsilon, steps, loss="ce", seed=(0, 0), eot_draws=1, clip_min=0.0,
               clip_max=1.0, noise_rows=None, start=None, clean_logits=None, run=None):
    """APGD-CE (`loss="ce"`) or APGD-DLR (`loss="dlr"`) as the reference's ``perturb``: one run on the examples the
    model classifies correctly, from `start` if given, else from `uniform_start(images, seed, ...)`. An example
    leaves the run once fooled (`run_until_fooled`). `clean_logits`: the model's (mean) logits on `images`, if
    already computed. `run`: the run, as `targeted_on` takes it (default `runner`'s with `loss`), e.g. the CE side
    of a traced `switched_runner`.

    Returns:
      (adversarial, broken): the fooled examples replaced by their adversarial example (the others keep the clean
      image), and a boolean [batch]: classified correctly when clean, fooled by the attack.
    """
    if loss not in ("ce", "dlr"):
        raise ValueError(f"untargeted APGD loss must be 'ce' or 'dlr', got {loss!r}")
    images = tf.convert_to_tensor(images, dtype_hint=tf.float32)
    labels = core.as_class_ids(labels)
    if clean_logits is None:
        clean_logits = mean_logits(model_fn, images, eot_draws)
    core.check_inputs(images, labels, clean_logits, epsilon, clip_min, clip_max)
    correct = ~core.predicted_wrong(clean_logits, labels)
    if start is None:
        start = uniform_start(images, tf.convert_to_tensor(seed), epsilon, clip_min, clip_max, noise_rows)
    run = run or runner(model_fn, epsilon, steps, loss, eot_draws, clip_min, clip_max)
    adversarial, robust = _run_on(correct, images, labels, tf.cast(start, images.dtype), run)
    return adversarial, correct & ~robust


def ranked_targets(clean_logits, labels):
    """[batch, classes - 1]: the other classes by decreasing clean logit (column r: the target of rank r)."""
    is_true = tf.one_hot(labels, tf.shape(clean_logits)[-1], on_value=True, off_value=False)
    masked = tf.where(is_true, tf.constant(-np.inf, clean_logits.dtype), clean_logits)
    return tf.argsort(masked, axis=-1, direction="DESCENDING", stable=True)[:, :-1]


# Rows (example x target) of one batched targeted call in a graph; more targets run in groups of ranks.
MAX_TARGETED_ROWS = 2048


def targeted_on(model_fn, images, labels, robust, targets, epsilon, steps, seed=(0, 0), eot_draws=1, clip_min=0.0,
                clip_max=1.0, noise_rows=None, max_rows=MAX_TARGETED_ROWS, run=None):
    """Targeted-DLR APGD runs of the examples flagged `robust` towards each column of `targets` ([batch, count]).
    Column r starts from the draw of ``stateless_fold_in(seed, r)`` over the whole batch. The verdicts are those of
    one run per target in turn, each on the examples no earlier target fooled; an example's point is the first found.

    Eagerly, the targets run in that turn: each call (`run_until_fooled`) on the examples still robust, several
    targets batched (rows grouped by example) only while those are fewer than `core.MIN_ROWS_PER_CALL` rows
    (`core.targets_per_call`). An example fooled by a target so never costs a pass towards a later one, and a
    call's rows stay few; `run` (default `runner`'s with the targeted DLR loss, traced for any batch) runs every call.
    In a graph, the targets run batched, in groups of at most `max_rows` rows, each on the examples still robust.

    `run`: ``run(images, labels, start, targets, groups, num_groups) -> (found, fooled)``.

    Returns (adversarial, robust): the images with fooled examples replaced, and `robust` without them.
    """
    images = tf.convert_to_tensor(images, dtype_hint=tf.float32)
    labels = core.as_class_ids(labels)
    seed = tf.convert_to_tensor(seed)
    count = targets.shape[-1]
    eager = tf.executing_eagerly()
    if run is None:
        run = runner(model_fn, epsilon, steps, "dlr_targeted", eot_draws, clip_min, clip_max)
        if eager:
            run = core.traced_for_any_batch(run)
    batch_rows = images.shape[0]
    adversarial, first = images, 0
    while first < count:
        if eager:
            left = int(tf.math.count_nonzero(robust))
            if left == 0:
                break
            per_call = core.targets_per_call(left, count - first)
        else:
            per_call = count if not batch_rows else max(1, min(count, max_rows // max(batch_rows, 1)))
        ranks = range(first, min(first + per_call, count))
        first = ranks[-1] + 1
        starts = [uniform_start(images, core.fold_seed(seed, rank), epsilon, clip_min, clip_max, noise_rows)
                  for rank in ranks]

        def attack(robust=robust, adversarial=adversarial, ranks=ranks, starts=starts):
            remaining = tf.where(robust)[:, 0]
            left = tf.shape(remaining)[0]
            rows = tf.tile(remaining, [len(ranks)])  # rank-major: row k * left + j is example j, rank ranks[k]
            found, fooled = run(tf.gather(images, rows), tf.gather(labels, rows),
                                tf.concat([tf.gather(start, remaining) for start in starts], 0),
                                tf.concat([tf.gather(targets[:, rank], remaining) for rank in ranks], 0),
                                tf.tile(tf.range(left), [len(ranks)]), left)
            where = tf.boolean_mask(remaining, fooled)[:, None]
            return (tf.tensor_scatter_nd_update(adversarial, where, tf.boolean_mask(found, fooled)),
                    tf.tensor_scatter_nd_update(robust, where, tf.zeros(tf.shape(where)[:1], tf.bool)))

        if eager:
            adversarial, robust = attack()
        else:
            # Models need not accept an empty batch.
            adversarial, robust = tf.cond(tf.reduce_any(robust), attack, lambda: (adversarial, robust))
    return adversarial, robust


def runner(model_fn, epsilon, steps, loss="dlr_targeted", eot_draws=1, clip_min=0.0, clip_max=1.0):
    """``run(images, labels, start, targets, groups, num_groups) -> (found, fooled)``: `run_until_fooled` with
    these settings, as `untargeted` and `targeted_on` call it."""
    def run(images, labels, start, targets, groups, num_groups):
        return run_until_fooled(model_fn, images, labels, start, epsilon, steps, loss=loss, targets=targets,
                                groups=groups, num_groups=num_groups, eot_draws=eot_draws, clip_min=clip_min,
                                clip_max=clip_max)
    return run


def switched_runner(model_fn, epsilon, steps, eot_draws=1, clip_min=0.0, clip_max=1.0):
    """``run(images, labels, start, targets, groups, num_groups, targeted)``: `runner`'s run with the loss chosen
    when it runs: targeted DLR where the scalar bool `targeted` is true, CE elsewhere. Traced once
    (`core.traced_for_any_batch`), one graph serves APGD-CE (``targeted=False``) and APGD-T (``targeted=True``)."""
    def run(images, labels, start, targets, groups, num_groups, targeted):
        def loss(logits, labels, targets):
            # Both losses are finite with finite gradients, so the one not chosen adds zeros to the gradient.
            return tf.where(targeted, targeted_dlr_loss(logits, labels, targets),
                            core.cross_entropy_loss(logits, labels))
        return runner(model_fn, epsilon, steps, loss, eot_draws, clip_min, clip_max)(
            images, labels, start, targets, groups, num_groups)
    return run


def targeted(model_fn, images, labels, epsilon, steps, seed=(0, 0),
             target_classes=config_lib.AUTOATTACK_TARGET_CLASSES, eot_draws=1, clip_min=0.0, clip_max=1.0,
             noise_rows=None, clean_logits=None, run=None):
    """APGD-T as the reference: for the target of rank r = 1 .. min(target_classes, classes - 1) (the r-th highest
    non-true clean logit), one targeted-DLR run of the examples classified correctly, from the start drawn from
    ``stateless_fold_in(seed, r - 1)``, with the reference's verdicts (`targeted_on`, which `run` is handed to).
    Returns (adversarial, broken) as `untargeted`."""
    images = tf.convert_to_tensor(images, dtype_hint=tf.float32)
    labels = core.as_class_ids(labels)
    if clean_logits is None:
        clean_logits = mean_logits(model_fn, images, eot_draws)
    core.check_inputs(images, labels, clean_logits, epsilon, clip_min, clip_max)
    classes = clean_logits.shape[-1]
    if classes is None or classes < 4:
        raise ValueError(f"APGD-T needs a known number of classes >= 4, got {classes}")
    count = min(target_classes, classes - 1)
    ranked = ranked_targets(clean_logits, labels)[:, :count]
    correct = ~core.predicted_wrong(clean_logits, labels)
    adversarial, robust = targeted_on(model_fn, images, labels, correct, ranked, epsilon, steps, seed, eot_draws,
                                      clip_min, clip_max, noise_rows, run=run)
    return adversarial, correct & ~robust


def _run_untargeted(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    """``apgd_ce`` / ``apgd_dlr``: `untargeted` from ``seed``."""
    adversarial, _ = untargeted(model_fn, images, labels, config.epsilon, config.steps,
                                "ce" if config.name == "apgd_ce" else "dlr", seed, config.eot_draws, config.clip_min,
                                config.clip_max, noise_rows)
    return adversarial


def _run_targeted(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    """``apgd_t``: `targeted` over the standard 9 targets from ``seed``."""
    adversarial, _ = targeted(model_fn, images, labels, config.epsilon, config.steps, seed,
                              eot_draws=config.eot_draws, clip_min=config.clip_min, clip_max=config.clip_max,
                              noise_rows=noise_rows)
    return adversarial


def check_config(config):
    config_lib.check_positive("epsilon", config.epsilon)
    config_lib.check_int("steps", config.steps, minimum=1)
    config_lib.check_int("eot_draws", config.eot_draws, minimum=1)


RUNS = {"apgd_ce": _run_untargeted, "apgd_dlr": _run_untargeted, "apgd_t": _run_targeted}
config_lib.register(tuple(RUNS), config_lib.Rule(check=check_config, uses_noise=lambda config: True))
