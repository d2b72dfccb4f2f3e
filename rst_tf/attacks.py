"""Adversarial attacks for robust mask search and robust evaluation.

All attacks are untargeted. ``fgsm``, ``fgsm_rs``, ``pgd``, ``pgd_l2`` and
``bandits`` maximise the softmax cross-entropy of the true labels; ``cw_inf``
maximises the Carlini-Wagner margin; ``cw_l2`` and ``autoattack`` are the
library attacks of cleverhans and the Adversarial Robustness Toolbox (ART).
``apgd_ce`` and ``apgd_dlr`` are APGD (Croce & Hein 2020) on the
cross-entropy and the DLR loss, with EOT over ``eot_draws`` calls of a
randomised model (`rst_tf.apgd`); ``autoattack_rand`` is AutoAttack's
``rand`` version for randomised defences: APGD-CE, then APGD-DLR on the
examples still classified correctly. ``fab_t`` is FAB-T (Croce & Hein
2020), the targeted minimum-norm attack of standard AutoAttack
(`rst_tf.fab`).
Models take images in [clip_min, clip_max] (normally [0, 1]) and return
logits.

Evaluation-only attacks: ``cw_l2``, ``autoattack`` and ``fab_t`` run eagerly
only (they drive Python loops, NumPy code or per-target subsets), so call ``generate`` for them outside
``tf.function``; inside a traced function ``generate`` raises an error.
``bandits`` is gradient-free (forward passes of the model only).

Every other attack is written with plain TensorFlow ops and explicit
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

ATTACKS = (
    "none", "fgsm", "fgsm_rs", "pgd", "pgd_l2", "cw_inf", "cw_l2", "bandits", "autoattack",
    "apgd_ce", "apgd_dlr", "autoattack_rand", "fab_t",
)

# Stateless RNG algorithm; fixed (not "auto_select") so CPU, GPU and XLA agree.
RNG_ALG = "philox"

# Step of FGSM-RS as a multiple of epsilon (Wong et al. 2020, "Fast is better
# than free").
FGSM_RS_STEP_RATIO = 1.25

_PGD_NAMES = ("pgd", "pgd_l2", "cw_inf")
_RANDOM_START_NAMES = ("fgsm_rs",)
_APGD_NAMES = ("apgd_ce", "apgd_dlr", "autoattack_rand")
# Attacks that only run eagerly (Python loops / NumPy inside the library).
EAGER_ONLY_ATTACKS = ("cw_l2", "autoattack", "fab_t")

# Standard AutoAttack (Croce & Hein 2020) settings.
AUTOATTACK_STEPS = 100
AUTOATTACK_SQUARE_QUERIES = 5000
AUTOATTACK_SQUARE_P_INIT = 0.8
# AutoAttack's rand version: EOT draws per gradient.
AUTOATTACK_RAND_EOT_DRAWS = 20


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Settings of one attack.

    ``fgsm`` uses only ``epsilon`` (one step of size epsilon, no random
    start); ``fgsm_rs`` uses only ``epsilon`` (random start, one step of
    1.25 * epsilon). ``steps``, ``step_size``, ``random_start`` and
    ``restarts`` apply to ``pgd`` (L-inf), ``pgd_l2`` and ``cw_inf`` (L-inf
    PGD on the Carlini-Wagner margin ``max_{j != y} z_j - z_y``). For
    ``pgd_l2``, ``epsilon`` and ``step_size`` are L2 norms of the whole
    per-example perturbation.

    ``cw_l2`` (Carlini & Wagner L2, see `cw_l2_config`): ``epsilon`` is the L2
    budget, ``steps`` the Adam iterations per binary-search step, ``step_size``
    the Adam learning rate, plus ``binary_search_steps``, ``initial_const`` and
    ``confidence``.

    ``bandits`` (Ilyas et al. 2019, L-inf, see `bandits_config`): ``epsilon``,
    ``max_queries`` (per example, two per iteration), ``fd_eta``,
    ``exploration``, ``online_lr``, ``image_lr`` and ``tile_size`` (1 = time
    prior only; > 1 adds the tiling data prior).

    ``autoattack`` (ART, see `autoattack_config` and `autoattack_settings`):
    ``epsilon`` (L-inf), ``steps`` the APGD iterations and ``max_queries`` the
    Square Attack queries.

    ``apgd_ce``, ``apgd_dlr`` and ``autoattack_rand`` (L-inf, see
    `autoattack_rand_config`): ``epsilon``, ``steps`` the APGD iterations and
    ``eot_draws`` the calls of ``model_fn`` averaged per gradient (EOT). APGD
    always starts uniformly in the epsilon-ball and sets its own step size.

    ``fab_t`` (L-inf, see `fab_t_config`): ``epsilon`` and ``steps`` the
    iterations per target class (9 targets, no random start, as in standard
    AutoAttack).

    The new fields have defaults, so configs of the older attacks are
    unchanged.
    """

    name: str = "pgd"
    epsilon: float = 8 / 255
    steps: int = 7
    step_size: float = 2 / 255
    random_start: bool = True
    restarts: int = 1
    clip_min: float = 0.0
    clip_max: float = 1.0
    # cw_l2
    binary_search_steps: int = 5
    initial_const: float = 1e-2
    confidence: float = 0.0
    # bandits (max_queries also: Square queries of autoattack)
    max_queries: int = 10_000
    fd_eta: float = 0.1
    exploration: float = 1.0
    online_lr: float = 100.0
    image_lr: float = 0.01
    tile_size: int = 4
    # apgd_ce, apgd_dlr, autoattack_rand
    eot_draws: int = 1

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
        if self.name == "bandits":
            _check_int("max_queries", self.max_queries, minimum=2)
            _check_int("tile_size", self.tile_size, minimum=1)
            for field in ("fd_eta", "exploration", "online_lr", "image_lr"):
                _check_positive(field, getattr(self, field))
            return
        if self.name == "cw_l2":
            _check_int("steps", self.steps, minimum=1)
            _check_positive("step_size", self.step_size)
            _check_int("binary_search_steps", self.binary_search_steps, minimum=1)
            _check_positive("initial_const", self.initial_const)
            _check_real("confidence", self.confidence)
            if self.confidence < 0:
                raise ValueError(f"AttackConfig.confidence must be >= 0, got {self.confidence}")
            return
        if self.name == "autoattack":
            _check_int("steps", self.steps, minimum=1)
            _check_int("max_queries", self.max_queries, minimum=1)
            return
        if self.name == "fab_t":
            _check_int("steps", self.steps, minimum=1)
            return
        if self.name in _APGD_NAMES:
            _check_int("steps", self.steps, minimum=1)
            _check_int("eot_draws", self.eot_draws, minimum=1)
            return
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
        if self.name in _RANDOM_START_NAMES or self.name in _APGD_NAMES or self.name == "bandits":
            return True
        return self.name in _PGD_NAMES and bool(self.random_start)


def _check_real(field, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"AttackConfig.{field} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"AttackConfig.{field} must be finite, got {value}")


def _check_positive(field, value):
    _check_real(field, value)
    if value <= 0:
        raise ValueError(f"AttackConfig.{field} must be > 0, got {value}")


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


def cw_l2_config(epsilon, steps=1000, binary_search_steps=5, learning_rate=5e-3, initial_const=1e-2) -> AttackConfig:
    """Carlini & Wagner L2 with the defaults of cleverhans 4.0.0 (1000 Adam
    iterations per binary-search step, 5 binary-search steps, learning rate
    5e-3, initial constant 1e-2, confidence 0), evaluated at L2 radius
    ``epsilon``."""
    return AttackConfig(
        name="cw_l2",
        epsilon=epsilon,
        steps=steps,
        step_size=learning_rate,
        random_start=False,
        binary_search_steps=binary_search_steps,
        initial_const=initial_const,
    )


def bandits_config(epsilon=8 / 255, max_queries=10_000, tile_size=4) -> AttackConfig:
    """Bandits-TD (Ilyas, Engstrom & Madry 2019, "Prior convictions"), L-inf.

    Step parameters are those of the paper's L-inf setting: finite-difference
    probe ``fd_eta`` 0.1, exploration 1.0, online (prior) learning rate 100,
    image learning rate 0.01, and a 10,000 query budget. The paper attacks
    ImageNet; ``tile_size`` 4 (an 8x8 prior on 32x32 CIFAR images) is our
    choice for small images, not a value from the paper.
    """
    return AttackConfig(
        name="bandits",
        epsilon=epsilon,
        random_start=False,
        max_queries=max_queries,
        fd_eta=0.1,
        exploration=1.0,
        online_lr=100.0,
        image_lr=0.01,
        tile_size=tile_size,
    )


def autoattack_config(epsilon=8 / 255) -> AttackConfig:
    """AutoAttack at L-inf radius ``epsilon`` with the standard budgets: 100
    APGD iterations, 5000 Square Attack queries (see `autoattack_settings`)."""
    return AttackConfig(
        name="autoattack",
        epsilon=epsilon,
        steps=AUTOATTACK_STEPS,
        random_start=False,
        max_queries=AUTOATTACK_SQUARE_QUERIES,
    )


def fab_t_config(epsilon=8 / 255) -> AttackConfig:
    """FAB-T at L-inf radius ``epsilon`` as standard AutoAttack runs it:
    100 iterations for each of the 9 highest non-true clean logits, one run
    from the clean image (see `rst_tf.fab`)."""
    return AttackConfig(name="fab_t", epsilon=epsilon, steps=AUTOATTACK_STEPS, random_start=False)


def autoattack_rand_config(epsilon=8 / 255, eot_draws=AUTOATTACK_RAND_EOT_DRAWS) -> AttackConfig:
    """AutoAttack's ``rand`` version at L-inf radius ``epsilon``: APGD-CE and
    APGD-DLR, 100 iterations, one run each, EOT over 20 draws (see
    `autoattack_rand_settings`)."""
    return AttackConfig(
        name="autoattack_rand",
        epsilon=epsilon,
        steps=AUTOATTACK_STEPS,
        random_start=True,
        eot_draws=eot_draws,
    )


def generate(model_fn, images, labels, config: AttackConfig, seed, noise_rows=None, unroll=False) -> tf.Tensor:
    """Adversarial versions of ``images`` under ``config``.

    Call it outside the training ``GradientTape``: the result carries no
    gradient, and a surrounding tape would only record the attack's ops.

    Args:
      model_fn: callable mapping images to logits. It is called on perturbed
        images; pass e.g. ``lambda x: model(x, training=False)`` so that
        batch-norm statistics are not updated by the attack. For the
        gradient attacks written here (fgsm, fgsm_rs, pgd, pgd_l2, cw_inf and
        the APGD attacks) it may return logits of shape ``[draws, batch, classes]``: the attack
        then ascends the loss averaged over the draws (expectation over
        transformation, EOT), e.g. over every mask of a randomised model.
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
        which TensorFlow does not allow inside a loop. Restarts still loop. The APGD attacks always loop.

    ``cw_l2``, ``autoattack`` and ``fab_t`` run eagerly only: calling them
    inside ``tf.function`` raises a RuntimeError. ``cw_l2`` is a minimum-norm attack;
    evaluated "at epsilon", an example keeps the Carlini-Wagner result only if
    its L2 distance is <= epsilon and otherwise gets its clean image back;
    ``fab_t``, also minimum-norm, follows the same rule in L-inf.
    ``bandits`` calls ``model_fn`` only forward (no gradient), stops per
    example once it is misclassified or has used ``max_queries``.

    Returns:
      Tensor like ``images``, inside the epsilon-ball (L-inf, or L2 for
      ``pgd_l2`` and ``cw_l2``) around ``images`` and inside
      [clip_min, clip_max], with no gradient path back to the model or the
      images.
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
    if config.name in EAGER_ONLY_ATTACKS and not tf.executing_eagerly():
        raise RuntimeError(
            f"attack {config.name!r} runs eagerly only; call attacks.generate outside tf.function "
            "(e.g. from a Python evaluation loop)"
        )

    if config.name == "fgsm":
        adv = _fgsm_step(model_fn, images, images, labels, config.epsilon, config.epsilon, np.inf, config)
    elif config.name == "fgsm_rs":
        start = _random_start(images, seed, config.epsilon, np.inf, config, noise_rows)
        step = FGSM_RS_STEP_RATIO * config.epsilon
        adv = _fgsm_step(model_fn, images, start, labels, step, config.epsilon, np.inf, config)
    elif config.name == "cw_l2":
        adv = _cw_l2(_input_gradient_only(model_fn), images, labels, config)
    elif config.name == "bandits":
        adv = _bandits(model_fn, images, labels, config, seed, noise_rows)
    elif config.name == "autoattack":
        adv = _autoattack(_input_gradient_only(model_fn), images, labels, config)
    elif config.name == "fab_t":
        adv = _fab_t(model_fn, images, labels, config)
    elif config.name in _APGD_NAMES:
        adv = _apgd_attack(model_fn, images, labels, config, seed, noise_rows)
    else:
        norm = 2 if config.name == "pgd_l2" else np.inf
        loss_fn = _margin_loss if config.name == "cw_inf" else _cross_entropy_loss
        adv = _pgd_with_restarts(model_fn, images, labels, config, seed, norm, noise_rows, unroll, loss_fn)
    return tf.stop_gradient(adv)


def _input_gradient_only(model_fn):
    """`model_fn` for libraries that take gradients with an eager tape: traced, and differentiable in its input
    only. An eager tape also watches the model's trainable variables and so computes every convolution's kernel
    gradient, an op that corrupts memory at small batch sizes in TensorFlow 2.21's CPU (oneDNN) build."""
    forward = tf.function(model_fn, reduce_retracing=True)

    @tf.function(reduce_retracing=True)
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


def _cross_entropy_loss(logits, labels):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def _margin_loss(logits, labels):
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (positive iff misclassified)."""
    true_logit = tf.gather(logits, labels, axis=-1, batch_dims=1)
    is_true = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    other = tf.reduce_max(tf.where(is_true, tf.constant(-np.inf, logits.dtype), logits), axis=-1)
    return other - true_logit


def _per_example_loss(model_fn, x, labels, loss_fn=_cross_entropy_loss):
    """Per-example loss and logits. Logits of rank 3, `[draws, batch, classes]`, are an expectation over
    transformations (EOT): the loss is averaged over the draws and the mean logits are returned."""
    logits = tf.cast(model_fn(x), tf.float32)
    if logits.shape.rank == 3:
        draws = tf.shape(logits)[0]
        flat = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
        loss = loss_fn(flat, tf.tile(labels, [draws]))
        return tf.reduce_mean(tf.reshape(loss, [draws, -1]), axis=0), tf.reduce_mean(logits, axis=0)
    return loss_fn(logits, labels), logits


def _input_gradient(model_fn, x, labels, loss_fn=_cross_entropy_loss):
    """Gradient wrt x of the summed per-example loss (each row is that
    example's own gradient)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss, _ = _per_example_loss(model_fn, x, labels, loss_fn)
        total = tf.reduce_sum(loss)
    return tape.gradient(total, x)


def _project(images, adv, epsilon, norm, config):
    """Project ``adv`` onto the epsilon-ball around ``images`` and the box."""
    eta = clip_eta(adv - images, norm, tf.cast(epsilon, images.dtype))
    return tf.clip_by_value(images + eta, config.clip_min, config.clip_max)


def _fgsm_step(model_fn, images, x, labels, step, epsilon, norm, config, loss_fn=_cross_entropy_loss):
    """One gradient-ascent step from ``x``, projected around ``images``."""
    grad = _input_gradient(model_fn, x, labels, loss_fn)
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


def _pgd(model_fn, images, labels, config, seed, norm, noise_rows=None, unroll=False, loss_fn=_cross_entropy_loss):
    """One PGD run (Madry et al. 2018) in a ``tf.while_loop``, ascending
    ``loss_fn(logits, labels)`` (per-example losses)."""
    if config.random_start:
        start = _random_start(images, seed, config.epsilon, norm, config, noise_rows)
    else:
        start = images

    def body(step, adv):
        adv = _fgsm_step(model_fn, images, adv, labels, config.step_size, config.epsilon, norm, config, loss_fn)
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


def _pgd_with_restarts(
    model_fn, images, labels, config, seed, norm, noise_rows=None, unroll=False, loss_fn=_cross_entropy_loss
):
    """PGD from ``restarts`` starts; per example, keep a misclassified result
    if any, else the one of highest loss. Restart r uses the seed
    ``stateless_fold_in(seed, r)``, so restart 0 is the same for any count."""
    if config.restarts == 1 or not config.random_start:
        # Without a random start every restart would give the same result.
        return _pgd(model_fn, images, labels, config, _restart_seed(seed, 0), norm, noise_rows, unroll, loss_fn)

    batch = tf.shape(images)[0]
    expand = [-1] + [1] * (images.shape.rank - 1)

    def body(restart, best, best_wrong, best_loss):
        adv = _pgd(model_fn, images, labels, config, _restart_seed(seed, restart), norm, noise_rows, loss_fn=loss_fn)
        loss, logits = _per_example_loss(model_fn, adv, labels, loss_fn)
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


# ---------------------------------------------------------------- Carlini-Wagner L2.


class _KerasAdam:
    """The optimizer interface cleverhans 4.0.0's CarliniWagnerL2 expects
    (``variables()`` as a method, ``apply_gradients``) on a Keras 3 Adam.

    A fresh Adam is built for each new perturbation variable (one per
    example); resetting ``variables()`` leaves the learning rate alone.
    """

    def __init__(self, learning_rate):
        self.learning_rate = learning_rate
        self._optimizer = None
        self._variable = None

    def variables(self):
        if self._optimizer is None:
            return []
        return [v for v in self._optimizer.variables if v is not self._optimizer._learning_rate]

    def apply_gradients(self, grads_and_vars):
        grads_and_vars = list(grads_and_vars)
        variable = grads_and_vars[0][1]
        if variable is not self._variable:
            import keras

            self._optimizer = keras.optimizers.Adam(self.learning_rate)
            self._variable = variable
        self._optimizer.apply_gradients(grads_and_vars)


def _cw_l2(model_fn, images, labels, config):
    """Carlini & Wagner L2 from cleverhans 4.0.0, kept only within ``epsilon``.

    cleverhans 4.0.0's tf2 CarliniWagnerL2 needs three work-arounds here:
    its optimizer calls ``optimizer.variables()``, a list in Keras 3 (an
    adapter is swapped in); its trade-off constant has the shape of the
    images, which only broadcasts against the per-example loss for one
    example at a time (examples are attacked one by one, with
    ``initial_const`` divided by the number of pixels so that the effective
    constant is ``config.initial_const``); and passing ``y`` turns on its
    targeted mode (the true labels are set on the instance instead, keeping
    the attack untargeted). Examples the model already misclassifies are
    returned clean (distance 0).
    """
    from cleverhans.tf2.attacks.carlini_wagner_l2 import CarliniWagnerL2

    if images.shape.rank != 4:
        raise ValueError(f"cw_l2 needs images of shape [batch, height, width, channels], got {images.shape}")
    x = images.numpy().astype(np.float32)
    y = labels.numpy()
    logits = tf.convert_to_tensor(model_fn(images))
    num_classes = int(logits.shape[-1])
    already_wrong = np.argmax(logits.numpy(), axis=-1) != y
    pixels = int(np.prod(x.shape[1:]))
    attack = CarliniWagnerL2(
        model_fn,
        batch_size=1,
        clip_min=float(config.clip_min),
        clip_max=float(config.clip_max),
        binary_search_steps=config.binary_search_steps,
        max_iterations=config.steps,
        abort_early=True,
        confidence=float(config.confidence),
        initial_const=float(config.initial_const) / pixels,
        learning_rate=float(config.step_size),
    )
    attack.optimizer = _KerasAdam(float(config.step_size))
    adv = np.copy(x)
    for i in np.flatnonzero(~already_wrong):
        attack.y = tf.one_hot(y[i : i + 1], num_classes)
        adv[i] = attack._attack(x[i : i + 1]).numpy()[0]
    distance = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)
    adv = np.where((distance <= config.epsilon)[:, None, None, None], adv, x)
    return tf.constant(np.clip(adv, config.clip_min, config.clip_max), images.dtype)


# ---------------------------------------------------------------- bandits.


def _tile_upsample(prior, tile_size, height, width):
    """Nearest-neighbour upsampling: each prior cell covers a tile."""
    if tile_size == 1:
        return prior
    up = tf.repeat(tf.repeat(prior, tile_size, axis=1), tile_size, axis=2)
    return up[:, :height, :width, :]


def _bandits(model_fn, images, labels, config, seed, noise_rows=None):
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
        return _cross_entropy_loss(logits, labels), correct

    def unit(q):
        length = tf.sqrt(tf.reduce_sum(tf.square(q), axis=[1, 2, 3], keepdims=True))
        return q / tf.where(length > 0, length, tf.ones_like(length))

    def active_mask(x, queries):
        _, correct = losses_and_correct(x)
        return correct & (queries + 2 <= config.max_queries)

    def body(step, adv, prior, queries, active):
        noise = tf.random.stateless_normal(
            noise_shape, tf.random.experimental.stateless_fold_in(seed, tf.cast(step, seed.dtype), alg=RNG_ALG),
            dtype=tf.float32, alg=RNG_ALG,
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
        new_adv = _project(images, new_adv, config.epsilon, np.inf, config)
        keep = tf.reshape(active, expand)
        adv = tf.where(keep, new_adv, adv)
        prior = tf.where(keep, new_prior, prior)
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


# ---------------------------------------------------------------- AutoAttack (ART).


def autoattack_settings(config: AttackConfig, num_classes: int) -> dict:
    """What ``generate`` runs for ``autoattack`` with ``config`` on a
    ``num_classes``-way classifier, for recording next to results.

    The schedule is that of standard AutoAttack (Croce & Hein 2020), each
    component run on the examples still classified correctly: APGD-CE,
    APGD-T (targeted DLR loss, the ``min(9, num_classes - 1)`` highest
    non-true clean logits as targets), FAB-T (same targets), then Square
    Attack. APGD and Square come from the Adversarial Robustness Toolbox
    (ART); FAB-T, which ART lacks, from `rst_tf.fab`.
    ``"standard_budgets"`` says whether the iteration and query budgets are
    the standard ones (100 and 5000).
    """
    config.validate()
    if config.name != "autoattack":
        raise ValueError(f"autoattack_settings needs an autoattack config, got {config.name!r}")
    import art

    from rst_tf import fab

    apgd = dict(
        library_class="art.attacks.evasion.AutoProjectedGradientDescent",
        norm="Linf",
        eps=config.epsilon,
        eps_step=2 * config.epsilon,
        max_iter=config.steps,
        nb_random_init=1,
    )
    return {
        "attack": "autoattack",
        "library": "adversarial-robustness-toolbox",
        "library_version": art.__version__,
        "version": "standard",
        "norm": "Linf",
        "epsilon": config.epsilon,
        "clip_values": (config.clip_min, config.clip_max),
        "components": [
            dict(name="APGD-CE", loss_type="cross_entropy", targeted=False, **apgd),
            dict(
                name="APGD-T",
                loss_type="difference_logits_ratio",
                targeted=True,
                target_classes=min(9, num_classes - 1),
                **apgd,
            ),
            dict(
                name="FAB-T",
                implementation="rst_tf.fab",
                norm="Linf",
                eps=config.epsilon,
                max_iter=config.steps,
                target_classes=min(fab.STANDARD_TARGET_CLASSES, num_classes - 1),
                restarts=1,
                random_start=False,
                alpha_max=fab.ALPHA_MAX,
                eta=fab.OVERSHOOT,
                beta=fab.BACKWARD_STEP,
            ),
            dict(
                name="Square",
                library_class="art.attacks.evasion.SquareAttack",
                norm="Linf",
                eps=config.epsilon,
                max_iter=config.max_queries,
                p_init=AUTOATTACK_SQUARE_P_INIT,
                nb_restarts=1,
            ),
        ],
        "standard_budgets": config.steps == AUTOATTACK_STEPS and config.max_queries == AUTOATTACK_SQUARE_QUERIES,
        "acceptance": "a component's result replaces an example only if misclassified and within epsilon "
        "(ART run_attack, relative slack 1e-4, for APGD and Square; FAB-T: L-inf distance <= epsilon); "
        "the output is then projected onto the epsilon-ball and the box",
    }


def _autoattack(model_fn, images, labels, config):
    """Standard-schedule AutoAttack assembled from ART components (see
    `autoattack_settings`), each run by ``art.attacks.evasion.auto_attack.run_attack``
    (the step ART's own ``AutoAttack`` uses) on the still-robust examples.

    ART's ``AutoAttack`` class is not used directly: its default set is
    APGD-CE, APGD-DLR, DeepFool and Square, and with ``targeted=True`` it
    runs every listed attack against every other class, so it cannot
    express the standard APGD-CE / APGD-T / Square schedule.

    ART's ``TensorFlowV2Classifier`` calls ``model(x, training=...)``; the
    model handed to it ignores that flag and calls ``model_fn`` (which fixes
    the inference mode, e.g. batch norm with moving statistics). Images are
    channels-last and ART's preprocessing is switched off.
    """
    import keras
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
    from art.attacks.evasion.auto_attack import run_attack
    from art.estimators.classification import TensorFlowV2Classifier

    from rst_tf import fab

    x = images.numpy().astype(np.float32)
    y = labels.numpy().astype(np.int64)
    clean_logits = tf.convert_to_tensor(model_fn(images)).numpy()
    num_classes = clean_logits.shape[-1]
    settings = autoattack_settings(config, num_classes)
    batch = max(1, len(x))
    classifier = TensorFlowV2Classifier(
        model=lambda inputs, training=False: model_fn(inputs),
        nb_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        channels_first=False,
        clip_values=(float(config.clip_min), float(config.clip_max)),
        preprocessing=None,
    )
    apgd_ce, apgd_t, fab_t, square = settings["components"]

    def apgd(spec):
        return AutoProjectedGradientDescent(
            estimator=classifier, norm=np.inf, eps=spec["eps"], eps_step=spec["eps_step"],
            max_iter=spec["max_iter"], targeted=spec["targeted"], nb_random_init=spec["nb_random_init"],
            batch_size=batch, loss_type=spec["loss_type"], verbose=False,
        )

    one_hot = np.eye(num_classes, dtype=np.float32)
    adv = np.copy(x)
    robust = np.argmax(clean_logits, axis=-1) == y
    run = lambda attack, targets: run_attack(adv, one_hot[targets], robust, attack, classifier, np.inf, config.epsilon)
    if robust.any():
        adv, robust = run(apgd(apgd_ce), y)
    # Targets: the k-th highest clean logit among the other classes.
    masked = np.where(np.arange(num_classes) == y[:, None], -np.inf, clean_logits)
    ranked = np.argsort(-masked, axis=-1, kind="stable")
    targeted = apgd(apgd_t)
    for k in range(apgd_t["target_classes"]):
        if not robust.any():
            break
        adv, robust = run(targeted, ranked[:, k])
    if robust.any():
        remaining = np.flatnonzero(robust)
        fab_adv, broken = fab.attack(
            model_fn, x[remaining], y[remaining], config.epsilon, fab_t["max_iter"], fab_t["target_classes"],
            config.clip_min, config.clip_max,
        )
        broken = broken.numpy()
        adv[remaining[broken]] = fab_adv.numpy()[broken]
        robust[remaining[broken]] = False
    if robust.any():
        attack = SquareAttack(
            estimator=classifier, norm=np.inf, eps=square["eps"], max_iter=square["max_iter"],
            p_init=square["p_init"], nb_restarts=square["nb_restarts"], batch_size=batch, verbose=False,
        )
        adv, robust = run(attack, y)
    adv = tf.constant(adv, images.dtype)
    return _project(images, adv, config.epsilon, np.inf, config)


def _fab_t(model_fn, images, labels, config):
    """``fab_t``: `rst_tf.fab.attack` with the standard AutoAttack targets; unbroken examples keep their image."""
    from rst_tf import fab

    adv, _ = fab.attack(model_fn, images, labels, config.epsilon, config.steps, fab.STANDARD_TARGET_CLASSES,
                        config.clip_min, config.clip_max)
    return _project(images, adv, config.epsilon, np.inf, config)


# ---------------------------------------------------------------- APGD with EOT, AutoAttack rand.


def autoattack_rand_settings(config: AttackConfig) -> dict:
    """What ``generate`` runs for ``autoattack_rand`` with ``config``, for
    recording next to results: the schedule of the official AutoAttack
    ``version='rand'`` (APGD-CE, then APGD-DLR on the examples still
    classified correctly, one run of ``steps`` iterations each, every
    gradient averaged over ``eot_draws`` calls of the model), run by
    `rst_tf.apgd`. ``"standard_budgets"``: 100 iterations and 20 draws."""
    config.validate()
    if config.name != "autoattack_rand":
        raise ValueError(f"autoattack_rand_settings needs an autoattack_rand config, got {config.name!r}")
    apgd = dict(implementation="rst_tf.apgd", norm="Linf", eps=config.epsilon, initial_step_size=2 * config.epsilon,
                max_iter=config.steps, restarts=1, eot_draws=config.eot_draws)
    return {
        "attack": "autoattack_rand",
        "version": "rand",
        "norm": "Linf",
        "epsilon": config.epsilon,
        "clip_values": (config.clip_min, config.clip_max),
        "components": [
            dict(name="APGD-CE", loss="ce", **apgd),
            dict(name="APGD-DLR", loss="dlr", **apgd),
        ],
        "standard_budgets": config.steps == AUTOATTACK_STEPS and config.eot_draws == AUTOATTACK_RAND_EOT_DRAWS,
    }


def _apgd_attack(model_fn, images, labels, config, seed, noise_rows=None):
    """``apgd_ce`` / ``apgd_dlr``: one APGD run; ``autoattack_rand``: APGD-CE
    from ``seed``, then APGD-DLR from ``stateless_fold_in(seed, 1)`` on the
    examples APGD-CE did not fool (its results replace only fooled ones)."""
    from rst_tf import apgd

    def run(images, labels, start, loss):
        return apgd.run(model_fn, images, labels, start, config.epsilon, config.steps, loss, config.eot_draws,
                        config.clip_min, config.clip_max)

    def start(seed):
        return apgd.uniform_start(images, seed, config.epsilon, config.clip_min, config.clip_max, noise_rows)

    if config.name != "autoattack_rand":
        adv, _ = run(images, labels, start(seed), "ce" if config.name == "apgd_ce" else "dlr")
        return adv
    adv, fooled = run(images, labels, start(seed), "ce")
    remaining = tf.where(~fooled)[:, 0]

    def dlr_stage():
        dlr_start = tf.gather(start(tf.random.experimental.stateless_fold_in(seed, 1, alg=RNG_ALG)), remaining)
        dlr_adv, dlr_fooled = run(tf.gather(images, remaining), tf.gather(labels, remaining), dlr_start, "dlr")
        kept = tf.where(_expand_rows(dlr_fooled, images), dlr_adv, tf.gather(adv, remaining))
        return tf.tensor_scatter_nd_update(adv, remaining[:, None], kept)

    # Models need not accept an empty batch.
    return tf.cond(tf.size(remaining) > 0, dlr_stage, lambda: adv)


def _expand_rows(flags, images):
    return tf.reshape(flags, [-1] + [1] * (images.shape.rank - 1))
