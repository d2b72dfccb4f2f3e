"""AutoAttack schedules (Croce & Hein 2020): which components run, in which order, on which examples.
No component imports this module."""
import numpy as np
import tensorflow as tf

from rst_tf.attacks import apgd, fab
from rst_tf.attacks import config as config_lib
from rst_tf.attacks import core

SQUARE_P_INIT = 0.8


def autoattack_settings(config: config_lib.AttackConfig, num_classes: int) -> dict:
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
                p_init=SQUARE_P_INIT,
                nb_restarts=1,
            ),
        ],
        "standard_budgets": config.steps == config_lib.AUTOATTACK_STEPS and config.max_queries == config_lib.AUTOATTACK_SQUARE_QUERIES,
        "acceptance": "a component's result replaces an example only if misclassified and within epsilon "
        "(ART run_attack, relative slack 1e-4, for APGD and Square; FAB-T: L-inf distance <= epsilon); "
        "the output is then projected onto the epsilon-ball and the box",
    }


def _autoattack(model_fn, images, labels, config, seed=None, noise_rows=None, unroll=False):
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

    model_fn = core.input_gradient_only(model_fn)
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
    return core.project(images, adv, config.epsilon, np.inf, config.clip_min, config.clip_max)


def _fab_t(model_fn, images, labels, config):
    """``fab_t``: `rst_tf.fab.attack` with the standard AutoAttack targets; unbroken examples keep their image."""
    adv, _ = fab.attack(model_fn, images, labels, config.epsilon, config.steps, fab.STANDARD_TARGET_CLASSES,
                        config.clip_min, config.clip_max)
    return core.project(images, adv, config.epsilon, np.inf, config.clip_min, config.clip_max)


def autoattack_rand_settings(config: config_lib.AttackConfig) -> dict:
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
        "standard_budgets": (config.steps == config_lib.AUTOATTACK_STEPS
                             and config.eot_draws == config_lib.AUTOATTACK_RAND_EOT_DRAWS),
    }


def _autoattack_rand(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    """``autoattack_rand``: APGD-CE from ``seed``, then APGD-DLR from ``stateless_fold_in(seed, 1)`` on the
    examples APGD-CE did not fool (its results replace only fooled ones)."""
    def run(images, labels, start, loss):
        return apgd.run(model_fn, images, labels, start, config.epsilon, config.steps, loss, config.eot_draws,
                        config.clip_min, config.clip_max)

    def start(seed):
        return apgd.uniform_start(images, seed, config.epsilon, config.clip_min, config.clip_max, noise_rows)

    adv, fooled = run(images, labels, start(seed), "ce")
    remaining = tf.where(~fooled)[:, 0]

    def dlr_stage():
        dlr_start = tf.gather(start(core.fold_seed(seed, 1)), remaining)
        dlr_adv, dlr_fooled = run(tf.gather(images, remaining), tf.gather(labels, remaining), dlr_start, "dlr")
        kept = tf.where(core.expand_rows(dlr_fooled, images), dlr_adv, tf.gather(adv, remaining))
        return tf.tensor_scatter_nd_update(adv, remaining[:, None], kept)

    # Models need not accept an empty batch.
    return tf.cond(tf.size(remaining) > 0, dlr_stage, lambda: adv)


def _check_autoattack(config):
    config_lib.check_int("steps", config.steps, minimum=1)
    config_lib.check_int("max_queries", config.max_queries, minimum=1)


RUNS = {"autoattack": _autoattack, "autoattack_rand": _autoattack_rand}
config_lib.register(("autoattack",), config_lib.Rule(check=_check_autoattack, eager_only=True))
config_lib.register(("autoattack_rand",), config_lib.Rule(check=apgd.check_config, uses_noise=lambda config: True))
