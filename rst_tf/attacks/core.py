"""What the attacks share: losses, input gradients (with EOT over rank-3 logits), projection, stateless random
starts (with noise rows for replicas) and label handling."""
import numpy as np
import tensorflow as tf
from cleverhans.tf2.utils import clip_eta, optimize_linear

# Stateless RNG algorithm; fixed (not "auto_select") so CPU, GPU and XLA agree.
RNG_ALG = "philox"


def as_class_ids(labels):
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype.name}")
    if labels.shape.rank == 2 and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, axis=-1)
    if labels.shape.rank != 1:
        raise ValueError(f"labels must have shape [batch] (class ids), got {labels.shape}")
    return labels


def as_seed(seed):
    if seed is None:
        raise ValueError("seed is required for attacks with a random start (shape [2], int32 or int64)")
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise ValueError(f"seed must be int32 or int64, got {seed.dtype.name}")
    if not seed.shape.is_compatible_with([2]):
        raise ValueError(f"seed must have shape [2], got {seed.shape}")
    return tf.ensure_shape(seed, [2])


def fold_seed(seed, stream):
    """An independent seed for `stream` (a restart, an iteration, a component) derived from `seed`."""
    if seed is None:
        return None
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(stream, seed.dtype), alg=RNG_ALG)


def cross_entropy_loss(logits, labels):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def margin_loss(logits, labels):
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (positive iff misclassified)."""
    true_logit = tf.gather(logits, labels, axis=-1, batch_dims=1)
    is_true = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    other = tf.reduce_max(tf.where(is_true, tf.constant(-np.inf, logits.dtype), logits), axis=-1)
    return other - true_logit


def per_example_loss(model_fn, x, labels, loss_fn=cross_entropy_loss):
    """Per-example loss and logits. Logits of rank 3, `[draws, batch, classes]`, are an expectation over
    transformations (EOT): the loss is averaged over the draws and the mean logits are returned."""
    logits = tf.cast(model_fn(x), tf.float32)
    if logits.shape.rank == 3:
        draws = tf.shape(logits)[0]
        flat = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
        loss = loss_fn(flat, tf.tile(labels, [draws]))
        return tf.reduce_mean(tf.reshape(loss, [draws, -1]), axis=0), tf.reduce_mean(logits, axis=0)
    return loss_fn(logits, labels), logits


def loss_gradient_logits(model_fn, x, labels, loss_fn=cross_entropy_loss):
    """(per-example loss, its gradient wrt x, logits) from one forward and one backward pass; each row of the
    gradient is that example's own."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss, logits = per_example_loss(model_fn, x, labels, loss_fn)
        total = tf.reduce_sum(loss)
    return loss, tape.gradient(total, x), logits


def input_gradient(model_fn, x, labels, loss_fn=cross_entropy_loss):
    """Gradient wrt x of the summed per-example loss."""
    return loss_gradient_logits(model_fn, x, labels, loss_fn)[1]


def project(images, adv, epsilon, norm, clip_min, clip_max):
    """Project ``adv`` onto the epsilon-ball (L-inf or L2) around ``images`` and the box."""
    eta = clip_eta(adv - images, norm, tf.cast(epsilon, images.dtype))
    return tf.clip_by_value(images + eta, clip_min, clip_max)


def ascent_step(gradient, step, norm):
    """The steepest-ascent step of length `step` (sign for L-inf, normalised for L2)."""
    return optimize_linear(gradient, step, norm)


def random_start(images, seed, epsilon, norm, clip_min, clip_max, noise_rows=None):
    """``images`` plus noise uniform in the epsilon-ball (L-inf or L2), clipped to the box.

    `noise_rows`: optional `(first_row, global_batch_size)`: draw the noise for the whole global batch and use rows
    `first_row : first_row + batch`, so a batch split over replicas starts from the same noise as on one device.
    """
    shape = tf.shape(images)
    if noise_rows is not None:
        first_row, global_batch = noise_rows
        shape = tf.concat([tf.reshape(tf.cast(global_batch, tf.int32), [1]), shape[1:]], axis=0)
    dtype = images.dtype
    if norm == np.inf:
        noise = tf.random.stateless_uniform(shape, seed, minval=-epsilon, maxval=epsilon, dtype=dtype, alg=RNG_ALG)
    else:
        # Uniform in the L2 ball: Gaussian direction, radius epsilon * U^(1/d).
        direction_seed, radius_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg=RNG_ALG))
        direction = tf.random.stateless_normal(shape, direction_seed, dtype=dtype, alg=RNG_ALG)
        axes = list(range(1, images.shape.rank))
        length = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(direction), axes, keepdims=True), 1e-12))
        dims = tf.cast(tf.reduce_prod(shape[1:]), dtype)
        radius_shape = tf.concat([shape[:1], tf.ones([images.shape.rank - 1], tf.int32)], axis=0)
        uniform = tf.random.stateless_uniform(radius_shape, radius_seed, dtype=dtype, alg=RNG_ALG)
        noise = direction / length * (epsilon * tf.pow(uniform, 1.0 / dims))
    if noise_rows is not None:
        noise = noise[tf.cast(first_row, tf.int32):][:tf.shape(images)[0]]
    return project(images, images + noise, epsilon, norm, clip_min, clip_max)


def iterate(step_fn, start, steps, unroll=False):
    """`steps` applications of `step_fn` to `start`: a ``tf.while_loop``, or written out with `unroll` (needed when
    `step_fn` holds a cross-replica synchronisation point, which TensorFlow does not allow inside a loop)."""
    if unroll:
        x = start
        for _ in range(steps):
            x = step_fn(x)
        return x
    _, x = tf.while_loop(lambda step, x: step < steps, lambda step, x: (step + 1, step_fn(x)),
                         (tf.constant(0), start), maximum_iterations=steps)
    return x


# Eager drivers of targeted attacks run the targets in turn, but several at once while the examples left are fewer
# than this many rows.
MIN_ROWS_PER_CALL = 32


def targets_per_call(examples_left, targets_left, min_rows=MIN_ROWS_PER_CALL):
    """How many target ranks an eager driver runs in one call on `examples_left` examples: one, or enough for
    `min_rows` rows (a pass over fewer rows is mostly fixed cost), at most `targets_left`."""
    return max(1, min(targets_left, -(-min_rows // max(examples_left, 1))))


def traced_for_any_batch(function):
    """`function` as one traced function for every batch size: the first call fixes its input signature (each
    tensor argument's shape with the first dimension left open, scalars as they are), so later calls on fewer or
    more rows reuse the same graph. For eager drivers that call a traced loop many times on shrinking batches."""
    traced = []

    def call(*args):
        args = [tf.convert_to_tensor(arg) for arg in args]
        if not traced:
            specs = [tf.TensorSpec([None] + arg.shape[1:] if arg.shape.rank else [], arg.dtype) for arg in args]
            traced.append(tf.function(function, input_signature=specs, autograph=False))
        return traced[0](*args)

    return call


def keep_rows(structure, keep, axes=None):
    """Rows `keep` (int [kept], ascending) of every tensor of the dict `structure` (along `axes[key]`, default 0);
    the tensors themselves, not copies, when every row is kept (most iterations of a loop that drops broken rows)."""
    axes = axes or {}
    rows = tf.shape(next(iter(structure.values())))[axes.get(next(iter(structure)), 0)]
    return tf.cond(tf.size(keep) == rows, lambda: dict(structure),
                   lambda: {key: tf.gather(value, keep, axis=axes.get(key, 0)) for key, value in structure.items()})


def select(condition, when_true, when_false):
    """`tf.where` without broadcasting: `condition` has the shape of the others, or is a bool [batch] that picks
    whole rows. TensorFlow's ``Select``: on CPU it is 2 times faster than ``tf.where`` on equal shapes of rank 2,
    and 18 times faster than ``tf.where`` broadcast from [batch, 1, 1, 1] over images (0.02 against 0.43 ms for 49
    CIFAR images, TensorFlow 2.21); attacks pay it at every iteration."""
    return tf.raw_ops.Select(condition=condition, x=when_true, y=when_false)


def expand_rows(flags, images):
    """Per-example flags `[batch]` shaped to broadcast against `images`."""
    return tf.reshape(flags, [-1] + [1] * (images.shape.rank - 1))


def predicted_wrong(logits, labels):
    return tf.not_equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)


# A model whose every output row is non-negative and sums to 1 within this returns probabilities, not logits.
PROBABILITY_TOLERANCE = 1e-3


def check_epsilon(epsilon):
    """ValueError unless a Python `epsilon` is > 0 (a tensor is left to the caller)."""
    if isinstance(epsilon, (int, float, np.integer, np.floating)) and not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")


def check_inputs(images, labels, logits, epsilon, clip_min, clip_max):
    """One clear error for bad input to an attack: epsilon <= 0, images outside [clip_min, clip_max], labels outside
    [0, classes), or a model that returns probabilities (`logits`: the clean outputs, [batch, classes]).
    Eagerly a ValueError; inside ``tf.function`` an assertion that fails at run time with the same message."""
    check_epsilon(epsilon)
    classes = tf.shape(logits, out_type=tf.int64)[-1]
    labels = tf.cast(labels, tf.int64)
    row_sums = tf.reduce_sum(logits, axis=-1)
    probabilities = (tf.size(logits) > 0) & tf.reduce_all(logits >= 0) & tf.reduce_all(
        tf.abs(row_sums - 1.0) <= PROBABILITY_TOLERANCE)
    checks = (
        (tf.reduce_all(images >= clip_min) & tf.reduce_all(images <= clip_max),
         f"images must lie in [clip_min, clip_max] = [{clip_min}, {clip_max}]"),
        (tf.reduce_all((labels >= 0) & (labels < classes)), "labels must be class ids in [0, classes)"),
        (~probabilities, "model_fn must return logits, not probabilities (every output row is non-negative and "
                         f"sums to 1 within {PROBABILITY_TOLERANCE})"),
    )
    if tf.executing_eagerly():
        for passed, message in checks:
            if not bool(passed):
                raise ValueError(message)
        return
    for passed, message in checks:
        tf.debugging.Assert(passed, [message])


def input_gradient_only(model_fn):
    """`model_fn` for code that takes gradients with an eager tape: traced, and differentiable in its input only.
    An eager tape also watches the model's trainable variables and so computes every convolution's kernel gradient,
    an op that corrupts memory at small batch sizes in TensorFlow 2.21's CPU (oneDNN) build."""
    forward = tf.function(model_fn, reduce_retracing=True, autograph=False)

    @tf.function(reduce_retracing=True, autograph=False)
    def input_vjp(x, upstream):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            logits = model_fn(x)
        return tape.gradient(logits, x, output_gradients=upstream)

    @tf.custom_gradient
    def logits(x):
        def gradient(upstream, variables=None):
            return input_vjp(x, upstream), [None] * len(variables or [])
        return forward(x), gradient

    return logits
