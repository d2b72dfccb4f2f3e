"""Adversarial attacks for robust mask search and robust evaluation.

All attacks are untargeted and maximise the softmax cross-entropy of the true
labels. Models take images in [clip_min, clip_max] (normally [0, 1]) and return
logits.

Every attack is written with plain TensorFlow ops and explicit
``tf.while_loop``s, so it can be traced inside a Keras ``train_step`` (which
Keras traces with autograph turned off), inside ``tf.function`` and inside a
``tf.distribute`` replica context. The random start uses stateless RNG
(Philox) driven by a caller-supplied seed, so a run resumed from a checkpoint
draws exactly the same noise as an uninterrupted run. Caveat: in TF 2.21, XLA
(``jit_compile=True``, which Keras picks by default for ``train_step``) draws
different values than the non-XLA kernels for the same seed
(tensorflow/tensorflow#121243); keep the jit setting fixed across a resume.

The L-inf sign step, the L2 normalised step and the projection onto the
epsilon-ball come from ``cleverhans.tf2.utils`` (``optimize_linear`` and
``clip_eta``).
"""
import dataclasses
import math

import numpy as np
import tensorflow as tf
from cleverhans.tf2.utils import clip_eta, optimize_linear

ATTACKS = ("none", "fgsm", "fgsm_rs", "pgd", "pgd_l2")

# Stateless RNG algorithm; fixed (not "auto_select") so CPU, GPU and XLA agree.
RNG_ALG = "philox"

# Step of FGSM-RS as a multiple of epsilon (Wong et al. 2020, "Fast is better
# than free").
FGSM_RS_STEP_RATIO = 1.25

_PGD_NAMES = ("pgd", "pgd_l2")
_RANDOM_START_NAMES = ("fgsm_rs",)


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Settings of one attack.

    ``fgsm`` uses only ``epsilon`` (one step of size epsilon, no random
    start); ``fgsm_rs`` uses only ``epsilon`` (random start, one step of
    1.25 * epsilon). ``steps``, ``step_size``, ``random_start`` and
    ``restarts`` apply to ``pgd`` (L-inf) and ``pgd_l2``. For ``pgd_l2``,
    ``epsilon`` and ``step_size`` are L2 norms of the whole per-example
    perturbation.
    """

    name: str = "pgd"
    epsilon: float = 8 / 255
    steps: int = 7
    step_size: float = 2 / 255
    random_start: bool = True
    restarts: int = 1
    clip_min: float = 0.0
    clip_max: float = 1.0

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.name not in ATTACKS:
            raise ValueError(f"AttackConfig.name must be one of {ATTACKS}, got {self.name!r}")
        _check_real("clip_min", self.clip_min)
        _check_real("clip_max", self.clip_max)
        if not self.clip_min < self.clip_max:
            raise ValueError(
                f"AttackConfig.clip_max ({self.clip_max}) must be greater than clip_min ({self.clip_min})"
            )
        if self.name == "none":
            return
        _check_real("epsilon", self.epsilon)
        if self.epsilon < 0:
            raise ValueError(f"AttackConfig.epsilon must be >= 0, got {self.epsilon}")
        if self.name not in _PGD_NAMES:
            return
        _check_int("steps", self.steps, minimum=1)
        _check_real("step_size", self.step_size)
        if self.step_size <= 0:
            raise ValueError(f"AttackConfig.step_size must be > 0 for {self.name}, got {self.step_size}")
        if not isinstance(self.random_start, (bool, np.bool_)):
            raise ValueError(f"AttackConfig.random_start must be a bool, got {self.random_start!r}")
        _check_int("restarts", self.restarts, minimum=1)

    @property
    def uses_noise(self) -> bool:
        """Whether the attack draws random numbers (and so needs a seed)."""
        if self.name in _RANDOM_START_NAMES:
            return True
        return self.name in _PGD_NAMES and bool(self.random_start)


def _check_real(field, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"AttackConfig.{field} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"AttackConfig.{field} must be finite, got {value}")


def _check_int(field, value, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"AttackConfig.{field} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"AttackConfig.{field} must be >= {minimum}, got {value}")


def fgsm_rs_config(epsilon) -> AttackConfig:
    """FGSM with random start (Wong et al. 2020): uniform start in the
    epsilon-ball, one step of 1.25 * epsilon, projection back to the ball."""
    return AttackConfig(
        name="fgsm_rs",
        epsilon=epsilon,
        steps=1,
        step_size=FGSM_RS_STEP_RATIO * epsilon,
        random_start=True,
        restarts=1,
    )


def generate(model_fn, images, labels, config: AttackConfig, seed, noise_rows=None, unroll=False) -> tf.Tensor:
    """Adversarial versions of ``images`` under ``config``.

    Call it outside the training ``GradientTape``: the result carries no
    gradient, and a surrounding tape would only record the attack's ops.

    Args:
      model_fn: callable mapping images to logits. It is called on perturbed
        images; pass e.g. ``lambda x: model(x, training=False)`` so that
        batch-norm statistics are not updated by the attack.
      images: float tensor [batch, ...] with values in [clip_min, clip_max].
      labels: integer class ids, shape [batch] (or [batch, 1]).
      config: the attack; validated here.
      seed: int32/int64 tensor of shape [2] for the stateless random start.
        May be None when the attack draws no noise (``none``, ``fgsm``, PGD
        without random start). Under ``tf.distribute`` every replica gets the
        seed it is given: pass `noise_rows` so replicas draw different rows.
      noise_rows: optional `(first_row, global_batch_size)`: draw the random start for the whole global batch and
        use rows `first_row : first_row + batch`, so a batch split over replicas starts from the same noise as on
        one device.
      unroll: write the PGD iterations out instead of a ``tf.while_loop``; needed when ``model_fn`` holds a
        cross-replica synchronisation point (synchronised BatchNorm in training mode under ``tf.distribute``),
        which TensorFlow does not allow inside a loop. Restarts still loop.

    Returns:
      Tensor like ``images``, inside the epsilon-ball (L-inf, or L2 for
      ``pgd_l2``) around ``images`` and inside [clip_min, clip_max], with no
      gradient path back to the model or the images.
    """
    config.validate()
    images = tf.convert_to_tensor(images, dtype_hint=tf.float32)
    if not images.dtype.is_floating:
        raise ValueError(f"images must be a floating-point tensor, got {images.dtype.name}")
    if images.shape.rank is None or images.shape.rank < 2:
        raise ValueError(f"images must have a known rank >= 2 ([batch, ...]), got shape {images.shape}")
    if config.name == "none":
        return tf.stop_gradient(images)
    labels = _as_class_ids(labels)
    seed = _as_seed(seed) if config.uses_noise else None
    images = tf.stop_gradient(images)

    if config.name == "fgsm":
        adv = _fgsm_step(model_fn, images, images, labels, config.epsilon, config.epsilon, np.inf, config)
    elif config.name == "fgsm_rs":
        start = _random_start(images, seed, config.epsilon, np.inf, config, noise_rows)
        step = FGSM_RS_STEP_RATIO * config.epsilon
        adv = _fgsm_step(model_fn, images, start, labels, step, config.epsilon, np.inf, config)
    else:
        norm = np.inf if config.name == "pgd" else 2
        adv = _pgd_with_restarts(model_fn, images, labels, config, seed, norm, noise_rows, unroll)
    return tf.stop_gradient(adv)


def _as_class_ids(labels):
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype.name}")
    if labels.shape.rank == 2 and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, axis=-1)
    if labels.shape.rank != 1:
        raise ValueError(f"labels must have shape [batch] (class ids), got {labels.shape}")
    return labels


def _as_seed(seed):
    if seed is None:
        raise ValueError("seed is required for attacks with a random start (shape [2], int32 or int64)")
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise ValueError(f"seed must be int32 or int64, got {seed.dtype.name}")
    if not seed.shape.is_compatible_with([2]):
        raise ValueError(f"seed must have shape [2], got {seed.shape}")
    return tf.ensure_shape(seed, [2])


def _per_example_loss(model_fn, x, labels):
    logits = tf.cast(model_fn(x), tf.float32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), logits


def _input_gradient(model_fn, x, labels):
    """Gradient wrt x of the summed per-example loss (each row is that
    example's own gradient)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss, _ = _per_example_loss(model_fn, x, labels)
        total = tf.reduce_sum(loss)
    return tape.gradient(total, x)


def _project(images, adv, epsilon, norm, config):
    """Project ``adv`` onto the epsilon-ball around ``images`` and the box."""
    eta = clip_eta(adv - images, norm, tf.cast(epsilon, images.dtype))
    return tf.clip_by_value(images + eta, config.clip_min, config.clip_max)


def _fgsm_step(model_fn, images, x, labels, step, epsilon, norm, config):
    """One gradient-ascent step from ``x``, projected around ``images``."""
    grad = _input_gradient(model_fn, x, labels)
    x = x + optimize_linear(grad, tf.cast(step, images.dtype), norm)
    return _project(images, x, epsilon, norm, config)


def _random_start(images, seed, epsilon, norm, config, noise_rows=None):
    """``images`` plus noise uniform in the epsilon-ball, clipped to the box."""
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
    return _project(images, images + noise, epsilon, norm, config)


def _pgd(model_fn, images, labels, config, seed, norm, noise_rows=None, unroll=False):
    """One PGD run (Madry et al. 2018) in a ``tf.while_loop``."""
    if config.random_start:
        start = _random_start(images, seed, config.epsilon, norm, config, noise_rows)
    else:
        start = images

    def body(step, adv):
        adv = _fgsm_step(model_fn, images, adv, labels, config.step_size, config.epsilon, norm, config)
        return step + 1, tf.stop_gradient(adv)

    if unroll:
        adv = start
        for step in range(config.steps):
            _, adv = body(step, adv)
        return adv

    _, adv = tf.while_loop(
        lambda step, adv: step < config.steps,
        body,
        (tf.constant(0), start),
        maximum_iterations=config.steps,
    )
    return adv


def _restart_seed(seed, restart):
    if seed is None:
        return None
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(restart, seed.dtype), alg=RNG_ALG)


def _pgd_with_restarts(model_fn, images, labels, config, seed, norm, noise_rows=None, unroll=False):
    """PGD from ``restarts`` starts; per example, keep a misclassified result
    if any, else the one of highest loss. Restart r uses the seed
    ``stateless_fold_in(seed, r)``, so restart 0 is the same for any count."""
    if config.restarts == 1 or not config.random_start:
        # Without a random start every restart would give the same result.
        return _pgd(model_fn, images, labels, config, _restart_seed(seed, 0), norm, noise_rows, unroll)

    batch = tf.shape(images)[0]
    expand = [-1] + [1] * (images.shape.rank - 1)

    def body(restart, best, best_wrong, best_loss):
        adv = _pgd(model_fn, images, labels, config, _restart_seed(seed, restart), norm, noise_rows)
        loss, logits = _per_example_loss(model_fn, adv, labels)
        wrong = tf.not_equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        best = tf.where(tf.reshape(better, expand), adv, best)
        return (
            restart + 1,
            tf.stop_gradient(best),
            best_wrong | wrong,
            tf.where(better, loss, best_loss),
        )

    _, best, _, _ = tf.while_loop(
        lambda restart, *_: restart < config.restarts,
        body,
        (
            tf.constant(0),
            images,
            tf.zeros([batch], tf.bool),
            tf.fill([batch], tf.constant(-np.inf, tf.float32)),
        ),
        maximum_iterations=config.restarts,
    )
    return best
