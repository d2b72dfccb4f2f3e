"""Adversarial attacks for robust mask search and robust evaluation: `generate` runs any registered attack.

All attacks are untargeted. Models take images in [clip_min, clip_max] (normally [0, 1]) and return logits.
One module per family: `pgd` (fgsm, fgsm_rs, pgd, pgd_l2, cw_inf), `apgd`, `fab`, `square`, `bandits`, `cw_l2`;
`malt` ranks targets (MALT); `autoattack` holds the AutoAttack schedules (``autoattack``, ``autoattack_fast``,
``autoattack_rand``). Every component imports only `config` and `core`.
"""
import tensorflow as tf

from rst_tf.attacks import apgd, autoattack, bandits, core, cw_l2, fab, malt, pgd, square, trades
from rst_tf.attacks.config import (AUTOATTACK_FAST_MALT_TARGETS, AUTOATTACK_FAST_SQUARE_QUERIES,
                                   AUTOATTACK_RAND_EOT_DRAWS, AUTOATTACK_SQUARE_QUERIES, AUTOATTACK_STEPS,
                                   FGSM_RS_STEP_RATIO, PGD_PROTOCOLS, AttackConfig, autoattack_config,
                                   autoattack_fast_config, autoattack_rand_config, bandits_config, cw_l2_config,
                                   fab_t_config, fgsm_rs_config, pgd_eval_config)
from rst_tf.attacks.core import RNG_ALG

# name -> run(model_fn, images, labels, config, seed, noise_rows, unroll)
REGISTRY = {**pgd.RUNS, **cw_l2.RUNS, **bandits.RUNS, **apgd.RUNS, **fab.RUNS, **square.RUNS, **autoattack.RUNS,
            **trades.RUNS}
ATTACKS = ("none",) + tuple(REGISTRY)
EAGER_ONLY_ATTACKS = tuple(name for name in REGISTRY if AttackConfig(name=name).eager_only)
autoattack_settings = autoattack.autoattack_settings
square_config = square.square_config
autoattack_rand_settings = autoattack.autoattack_rand_settings
autoattack_fast_settings = autoattack.autoattack_fast_settings


def generate(model_fn, images, labels, config: AttackConfig, seed, noise_rows=None, unroll=False,
             progress=None) -> tf.Tensor:
    """Adversarial versions of ``images`` under ``config``.

    Call it outside the training ``GradientTape``: the result carries no gradient.

    Args:
      model_fn: callable mapping images to logits. Pass e.g. ``lambda x: model(x, training=False)`` so that
        batch-norm statistics are not updated by the attack. For the gradient attacks (fgsm, fgsm_rs, pgd, pgd_l2,
        cw_inf and the APGD attacks) it may return logits of shape ``[draws, batch, classes]``: the attack then
        ascends the loss averaged over the draws (expectation over transformation, EOT).
      images: float tensor [batch, ...] with values in [clip_min, clip_max].
      labels: integer class ids, shape [batch] (or [batch, 1]).
      config: the attack; validated here.
      seed: int32/int64 tensor of shape [2] for the stateless random start; may be None when the attack draws no
        noise. Under ``tf.distribute`` pass `noise_rows` so replicas draw different rows.
      noise_rows: optional `(first_row, global_batch_size)`: draw the noise for the whole global batch and use rows
        `first_row : first_row + batch`, so a batch split over replicas starts from the same noise as on one device.
      unroll: write the PGD iterations out instead of a ``tf.while_loop``; needed when ``model_fn`` holds a
        cross-replica synchronisation point (synchronised BatchNorm in training mode under ``tf.distribute``),
        which TensorFlow does not allow inside a loop.
      progress: optional callable ``(component, examples_left)``, called by the AutoAttack schedules
        (``autoattack``, ``autoattack_fast``) before each component and with ``"done"`` at the end.

    Attacks in `EAGER_ONLY_ATTACKS` raise a RuntimeError inside ``tf.function``. The AutoAttack schedules keep
    their traced components for the last two (``model_fn``, ``config``) pairs, so batches handed the same
    ``model_fn`` object trace once; hand a new function when what ``model_fn`` computes changes other than through
    variables (e.g. it closes over other tensors). Minimum-norm attacks (``cw_l2``,
    ``fab_t``) keep a result only within ``epsilon`` and otherwise return the clean image.

    Returns:
      Tensor like ``images``, inside the epsilon-ball (L-inf, or L2 for ``pgd_l2`` and ``cw_l2``) around ``images``
      and inside [clip_min, clip_max], with no gradient path back to the model or the images.
    """
    config.validate()
    images = tf.convert_to_tensor(images, dtype_hint=tf.float32)
    if not images.dtype.is_floating:
        raise ValueError(f"images must be a floating-point tensor, got {images.dtype.name}")
    if images.shape.rank is None or images.shape.rank < 2:
        raise ValueError(f"images must have a known rank >= 2 ([batch, ...]), got shape {images.shape}")
    if config.name == "none":
        return tf.stop_gradient(images)
    labels = core.as_class_ids(labels)
    seed = core.as_seed(seed) if config.uses_noise else None
    images = tf.stop_gradient(images)
    if config.eager_only and not tf.executing_eagerly():
        raise RuntimeError(f"attack {config.name!r} runs eagerly only; call attacks.generate outside tf.function "
                           "(e.g. from a Python evaluation loop)")
    extra = {"progress": progress} if progress is not None and config.name in autoattack.REPORTING else {}
    adv = REGISTRY[config.name](model_fn, images, labels, config, seed, noise_rows, unroll, **extra)
    return tf.stop_gradient(adv)
