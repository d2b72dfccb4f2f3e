"""AutoAttack schedules (Croce & Hein 2020), as the authors' ``AutoAttack.run_standard_evaluation``: which
components run, in which order, on which examples. No component imports this module.

``standard``: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries, p_init 0.8), one run each
of 100 iterations. ``rand`` (randomised defences): APGD-CE and APGD-DLR, one run each, EOT over 20 draws.
Each component runs only on the examples still classified correctly; its result for an example counts when a
fresh forward pass misclassifies it. At the end an example keeps its adversarial image only if it is misclassified,
finite, within epsilon (L-inf) of the clean image and inside the box; the others get the clean image.
"""
import functools

import numpy as np
import tensorflow as tf

from rst_tf.attacks import apgd, fab, malt, square
from rst_tf.attacks import config as config_lib
from rst_tf.attacks import core

SQUARE_P_INIT = square.P_INIT
# Float32 rounding of x + epsilon - x; a result farther than epsilon + this from the clean image is refused.
EPSILON_SLACK = 1e-6


def _standard_budgets(config):
    return config.steps == config_lib.AUTOATTACK_STEPS and config.max_queries == config_lib.AUTOATTACK_SQUARE_QUERIES


def _apgd_settings(config, eot_draws):
    """The settings every APGD component of a schedule records."""
    return dict(implementation="rst_tf.attacks.apgd", norm="Linf", eps=config.epsilon,
                initial_step_size=apgd.INITIAL_STEP_RATIO * config.epsilon, momentum=apgd.MOMENTUM, rho=apgd.RHO,
                max_iter=config.steps, restarts=1, eot_draws=eot_draws)


def autoattack_settings(config: config_lib.AttackConfig, num_classes: int) -> dict:
    """What ``generate`` runs for ``autoattack`` with ``config`` on a ``num_classes``-way classifier, for recording
    next to results. ``"standard_budgets"``: 100 iterations and 5000 queries."""
    config.validate()
    if config.name != "autoattack":
        raise ValueError(f"autoattack_settings needs an autoattack config, got {config.name!r}")
    targets = min(fab.STANDARD_TARGET_CLASSES, num_classes - 1)
    apgd_settings = _apgd_settings(config, eot_draws=1)
    return {
        "attack": "autoattack",
        "version": "standard",
        "norm": "Linf",
        "epsilon": config.epsilon,
        "clip_values": (config.clip_min, config.clip_max),
        "components": [
            dict(name="APGD-CE", loss="ce", targeted=False, **apgd_settings),
            dict(name="APGD-T", loss="dlr_targeted", targeted=True, target_classes=targets, **apgd_settings),
            dict(name="FAB-T", implementation="rst_tf.attacks.fab", norm="Linf", eps=config.epsilon,
                 max_iter=config.steps, target_classes=targets, restarts=1, random_start=False,
                 alpha_max=fab.ALPHA_MAX, eta=fab.OVERSHOOT, beta=fab.BACKWARD_STEP),
            dict(name="Square", implementation="rst_tf.attacks.square", norm="Linf", eps=config.epsilon,
                 n_queries=config.max_queries, p_init=SQUARE_P_INIT, restarts=1),
        ],
        "standard_budgets": _standard_budgets(config),
        "acceptance": "each component runs on the examples still classified correctly; its result counts where a "
                      "fresh forward pass misclassifies it; the output keeps it only if finite, within epsilon "
                      f"(+{EPSILON_SLACK}) of the clean image and inside the box",
    }


def autoattack_rand_settings(config: config_lib.AttackConfig) -> dict:
    """What ``generate`` runs for ``autoattack_rand`` with ``config``, for recording next to results.
    ``"standard_budgets"``: 100 iterations and 20 draws."""
    config.validate()
    if config.name != "autoattack_rand":
        raise ValueError(f"autoattack_rand_settings needs an autoattack_rand config, got {config.name!r}")
    apgd_settings = _apgd_settings(config, config.eot_draws)
    return {
        "attack": "autoattack_rand",
        "version": "rand",
        "norm": "Linf",
        "epsilon": config.epsilon,
        "clip_values": (config.clip_min, config.clip_max),
        "components": [dict(name="APGD-CE", loss="ce", **apgd_settings),
                       dict(name="APGD-DLR", loss="dlr", **apgd_settings)],
        "standard_budgets": (config.steps == config_lib.AUTOATTACK_STEPS
                             and config.eot_draws == config_lib.AUTOATTACK_RAND_EOT_DRAWS),
    }


def final_check(images, adversarial, fooled, epsilon, clip_min, clip_max):
    """The adversarial image where it is fooled, finite, within epsilon and in the box; the clean image elsewhere."""
    axes = list(range(1, images.shape.rank))
    distance = tf.reduce_max(tf.abs(adversarial - images), axis=axes)
    valid = (tf.reduce_all(tf.math.is_finite(adversarial), axis=axes) & (distance <= epsilon + EPSILON_SLACK)
             & tf.reduce_all(adversarial >= clip_min, axis=axes) & tf.reduce_all(adversarial <= clip_max, axis=axes))
    return core.select(fooled & valid, adversarial, images)


# The random stream of each component (`core.fold_seed(seed, stream)`), the same in every schedule.
_STREAMS = {"APGD-CE": 0, "APGD-T": 1, "FAB-T": 2, "Square": 3}


def _run_schedule(forward, images, labels, clean_logits, components, seed, progress):
    """Each (name, component) in turn on the examples still classified correctly; a component's result for an
    example counts when a fresh forward pass misclassifies it. `component(x, y, seed, clean_logits)` returns
    adversarial images. `progress(name, examples left)` is called before each component and with "done" at the
    end. Returns (adversarial, fooled) before the final check."""
    robust = (~core.predicted_wrong(clean_logits, labels)).numpy()
    adversarial = images.numpy().copy()
    for name, component in components:
        remaining = np.flatnonzero(robust)
        if progress is not None:
            progress(name, int(remaining.size))
        if remaining.size == 0:
            break
        subset_labels = tf.gather(labels, remaining)
        found = component(tf.gather(images, remaining), subset_labels, core.fold_seed(seed, _STREAMS[name]),
                          tf.gather(clean_logits, remaining))
        fooled = core.predicted_wrong(tf.cast(forward(found), tf.float32), subset_labels).numpy()
        adversarial[remaining[fooled]] = found.numpy()[fooled]
        robust[remaining[fooled]] = False
    if progress is not None:
        progress("done", int(robust.sum()))
    fooled = tf.constant(~robust) & ~core.predicted_wrong(clean_logits, labels)
    return tf.constant(adversarial), fooled


@functools.lru_cache(maxsize=2)
def _traced_components(model_fn, config):
    """(forward, APGD-CE, APGD-T, MALT-ranked APGD-T, FAB-T, Square) of the schedules, each `(x, y, s, z)` but the
    forward pass, kept for the last two (model function, config): a caller that hands every batch of an evaluation
    the same model function traces them once, not per batch. APGD-CE and the targeted APGDs share one traced run
    (`apgd.switched_runner`); the targeted ones drive their targets in turn eagerly (`core.traced_for_any_batch`)."""
    epsilon, steps, low, high = config.epsilon, config.steps, config.clip_min, config.clip_max

    forward = core.traced_for_any_batch(model_fn)
    apgd_switched = core.traced_for_any_batch(apgd.switched_runner(model_fn, epsilon, steps, 1, low, high))
    fab_run = core.traced_for_any_batch(fab.broken_runner(model_fn, steps, epsilon, low, high))
    malt_ranked = core.traced_for_any_batch(lambda x, y, z: malt.ranked_targets(model_fn, x, y, z,
                                                                                 config.malt_targets))
    square_run = (square.searcher(forward, epsilon, config.max_queries, SQUARE_P_INIT, low, high)
                  if config.max_queries > 0 else None)

    def apgd_run(targeted):
        """The APGD run with the CE or the targeted DLR loss, as `apgd.untargeted` and `apgd.targeted_on` call it:
        one traced graph for both, so its signature (dtypes included) is the same for both."""
        def run(images, labels, start, targets, groups, num_groups):
            return apgd_switched(images, labels, start, tf.cast(targets, labels.dtype), tf.cast(groups, tf.int32),
                                 tf.cast(num_groups, tf.int32), targeted)
        return run

    def apgd_ce(x, y, s, z):
        return apgd.untargeted(model_fn, x, y, epsilon, steps, "ce", s, 1, low, high, clean_logits=z,
                               run=apgd_run(False))[0]

    def apgd_t(x, y, s, z):
        targets = min(fab.STANDARD_TARGET_CLASSES, z.shape[-1] - 1)
        return apgd.targeted(model_fn, x, y, epsilon, steps, s, targets, 1, low, high, clean_logits=z,
                             run=apgd_run(True))[0]

    def malt_apgd_t(x, y, s, z):
        robust = tf.ones(tf.shape(y), tf.bool)
        return apgd.targeted_on(model_fn, x, y, robust, malt_ranked(x, y, z), epsilon, steps, s, 1, low, high,
                                run=apgd_run(True))[0]

    def fab_t(x, y, s, z):
        targets = min(fab.STANDARD_TARGET_CLASSES, z.shape[-1] - 1)
        return fab.attack(forward, x, y, epsilon, steps, targets, low, high, clean_logits=z, run=fab_run)[0]

    return forward, apgd_ce, apgd_t, malt_apgd_t, fab_t, lambda x, y, s, z: square_run(x, y, s)[0]


def _autoattack(model_fn, images, labels, config, seed, noise_rows=None, unroll=False, progress=None):
    """Standard AutoAttack, driven eagerly component by component on the examples still classified correctly, with
    the clean logits computed once: APGD-CE and Square as one traced call each, APGD-T and FAB-T as traced calls
    per target in turn (`_traced_components`). Component c draws its randomness from ``stateless_fold_in(seed, c)``."""
    forward, apgd_ce, apgd_t, _, fab_t, square_t = _traced_components(model_fn, config)
    epsilon, low, high = config.epsilon, config.clip_min, config.clip_max
    clean_logits = tf.cast(forward(images), tf.float32)
    core.check_inputs(images, labels, clean_logits, epsilon, low, high)
    components = (("APGD-CE", apgd_ce), ("APGD-T", apgd_t), ("FAB-T", fab_t), ("Square", square_t))
    adversarial, fooled = _run_schedule(forward, images, labels, clean_logits, components, seed, progress)
    return final_check(images, adversarial, fooled, epsilon, low, high)


def _autoattack_fast(model_fn, images, labels, config, seed, noise_rows=None, unroll=False, progress=None):
    """``autoattack_fast``: APGD-CE, then targeted APGD (targeted DLR, as APGD-T) towards the ``malt_targets``
    best MALT-ranked classes of each example still classified correctly, in turn (`apgd.targeted_on`), then
    Square with ``max_queries`` queries (none if 0) on what survives. Same streams and checks as ``autoattack``."""
    forward, apgd_ce, _, malt_apgd_t, _, square_t = _traced_components(model_fn, config)
    epsilon, low, high = config.epsilon, config.clip_min, config.clip_max
    clean_logits = tf.cast(forward(images), tf.float32)
    core.check_inputs(images, labels, clean_logits, epsilon, low, high)
    malt.check_count(config.malt_targets, clean_logits.shape[-1])
    components = [("APGD-CE", apgd_ce), ("APGD-T", malt_apgd_t)]
    if config.max_queries > 0:
        components.append(("Square", square_t))
    adversarial, fooled = _run_schedule(forward, images, labels, clean_logits, components, seed, progress)
    return final_check(images, adversarial, fooled, epsilon, low, high)


def autoattack_fast_settings(config: config_lib.AttackConfig, num_classes: int) -> dict:
    """What ``generate`` runs for ``autoattack_fast`` with ``config`` on a ``num_classes``-way classifier."""
    config.validate()
    if config.name != "autoattack_fast":
        raise ValueError(f"autoattack_fast_settings needs an autoattack_fast config, got {config.name!r}")
    malt.check_count(config.malt_targets, num_classes)
    apgd_settings = _apgd_settings(config, eot_draws=1)
    components = [dict(name="APGD-CE", loss="ce", targeted=False, **apgd_settings),
                  dict(name="APGD-T", loss="dlr_targeted", targeted=True, target_ranking="MALT",
                       target_classes=config.malt_targets, **apgd_settings)]
    if config.max_queries > 0:
        components.append(dict(name="Square", implementation="rst_tf.attacks.square", norm="Linf",
                               eps=config.epsilon, n_queries=config.max_queries, p_init=SQUARE_P_INIT, restarts=1))
    return {"attack": "autoattack_fast", "version": "fast", "norm": "Linf", "epsilon": config.epsilon,
            "clip_values": (config.clip_min, config.clip_max), "components": components,
            "acceptance": "as autoattack"}


def _autoattack_rand(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    """``autoattack_rand``: APGD-CE from ``seed``, then APGD-DLR from ``stateless_fold_in(seed, 1)`` on the
    examples still classified correctly (by logits averaged over ``eot_draws`` calls); traceable."""
    draws, epsilon, low, high = config.eot_draws, config.epsilon, config.clip_min, config.clip_max
    clean_logits = apgd.mean_logits(model_fn, images, draws)
    core.check_inputs(images, labels, clean_logits, epsilon, low, high)
    clean_wrong = core.predicted_wrong(clean_logits, labels)
    adversarial, fooled = images, tf.zeros_like(clean_wrong)
    for index, loss in enumerate(("ce", "dlr")):
        component_seed = seed if index == 0 else core.fold_seed(seed, index)
        start = apgd.uniform_start(images, component_seed, epsilon, low, high, noise_rows)
        remaining = tf.where(~fooled & ~clean_wrong)[:, 0]

        def stage(remaining=remaining, loss=loss, start=start):
            subset_labels = tf.gather(labels, remaining)
            found, _ = apgd.untargeted(model_fn, tf.gather(images, remaining), subset_labels, epsilon, config.steps,
                                       loss, eot_draws=draws, clip_min=low, clip_max=high,
                                       start=tf.gather(start, remaining))
            # A fresh evaluation decides, as after every component of the reference.
            wrong = core.predicted_wrong(apgd.mean_logits(model_fn, found, draws), subset_labels)
            where = tf.boolean_mask(remaining, wrong)[:, None]
            return (tf.tensor_scatter_nd_update(adversarial, where, tf.boolean_mask(found, wrong)),
                    tf.tensor_scatter_nd_update(fooled, where, tf.ones(tf.shape(where)[:1], tf.bool)))

        adversarial, fooled = tf.cond(tf.size(remaining) > 0, stage, lambda: (adversarial, fooled))
    return final_check(images, adversarial, fooled, epsilon, low, high)


def _check_autoattack(config):
    config_lib.check_positive("epsilon", config.epsilon)
    config_lib.check_int("steps", config.steps, minimum=1)
    config_lib.check_int("max_queries", config.max_queries, minimum=1)


def _check_autoattack_fast(config):
    config_lib.check_positive("epsilon", config.epsilon)
    config_lib.check_int("steps", config.steps, minimum=1)
    config_lib.check_int("max_queries", config.max_queries, minimum=0)
    config_lib.check_int("malt_targets", config.malt_targets, minimum=1)


RUNS = {"autoattack": _autoattack, "autoattack_fast": _autoattack_fast, "autoattack_rand": _autoattack_rand}
# Schedules that report their progress: `run(..., progress=fn)` calls fn(component, examples left).
REPORTING = ("autoattack", "autoattack_fast")
config_lib.register(("autoattack_fast",), config_lib.Rule(check=_check_autoattack_fast,
                                                          uses_noise=lambda config: True, eager_only=True))
config_lib.register(("autoattack",), config_lib.Rule(check=_check_autoattack, uses_noise=lambda config: True,
                                                     eager_only=True))
config_lib.register(("autoattack_rand",), config_lib.Rule(check=apgd.check_config, uses_noise=lambda config: True))
