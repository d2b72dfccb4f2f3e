"""First-order attacks with a fixed step: FGSM, FGSM-RS (Wong et al. 2020), PGD L-inf and L2 (Madry et al. 2018)
and CW-Inf (L-inf PGD on the Carlini-Wagner margin).

Written with plain TensorFlow ops and ``tf.while_loop``s, so they trace inside a Keras ``train_step``, inside
``tf.function`` and inside a ``tf.distribute`` replica context. The random start is stateless (Philox) from the
caller's seed, so a resumed run draws the same noise as an uninterrupted one. Caveat: in TF 2.21, XLA draws
different values than the non-XLA kernels for the same seed (tensorflow/tensorflow#121243); keep the jit setting
fixed across a resume.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from rst_tf.attacks import config as config_lib
from rst_tf.attacks import core


def _ascent(model_fn, images, x, labels, step, epsilon, norm, config, loss_fn):
    """(one ascent step from ``x``, projected around ``images``; the logits at ``x``)."""
    _, gradient, logits = core.loss_gradient_logits(model_fn, x, labels, loss_fn)
    moved = core.project(images, x + core.ascent_step(gradient, tf.cast(step, images.dtype), norm), epsilon, norm,
                         config.clip_min, config.clip_max)
    return moved, logits


def _step(model_fn, images, x, labels, step, epsilon, norm, config, loss_fn, active=None):
    """One ascent step from ``x``, projected around ``images``; with `early_stop`, only examples still classified
    correctly at ``x`` move."""
    moved, logits = _ascent(model_fn, images, x, labels, step, epsilon, norm, config, loss_fn)
    if config.early_stop:
        moved = core.select(~core.predicted_wrong(logits, labels), moved, x)
    return moved


def fgsm(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    return _step(model_fn, images, images, labels, config.epsilon, config.epsilon, np.inf, config,
                 core.cross_entropy_loss)


def fgsm_rs(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    start = core.random_start(images, seed, config.epsilon, np.inf, config.clip_min, config.clip_max, noise_rows)
    return _step(model_fn, images, start, labels, config_lib.FGSM_RS_STEP_RATIO * config.epsilon, config.epsilon,
                 np.inf, config, core.cross_entropy_loss)


def _single_run(model_fn, images, labels, config, seed, norm, loss_fn, noise_rows=None, unroll=False):
    """One PGD run in a ``tf.while_loop`` (or written out with `unroll`)."""
    if config.random_start:
        start = core.random_start(images, seed, config.epsilon, norm, config.clip_min, config.clip_max, noise_rows)
    else:
        start = images

    def body(adv):
        return tf.stop_gradient(
            _step(model_fn, images, adv, labels, config.step_size, config.epsilon, norm, config, loss_fn))

    return core.iterate(body, start, config.steps, unroll)


def _with_restarts(model_fn, images, labels, config, seed, norm, loss_fn, noise_rows=None, unroll=False):
    """PGD from ``restarts`` starts; per example, keep a misclassified result if any, else the one of highest loss.
    Restart r uses the seed ``stateless_fold_in(seed, r)``, so restart 0 is the same for any count."""
    if config.restarts == 1 or not config.random_start:
        # Without a random start every restart would give the same result.
        return _single_run(model_fn, images, labels, config, core.fold_seed(seed, 0), norm, loss_fn, noise_rows,
                           unroll)

    batch = tf.shape(images)[0]

    def body(restart, best, best_wrong, best_loss):
        adv = _single_run(model_fn, images, labels, config, core.fold_seed(seed, restart), norm, loss_fn,
                          noise_rows)
        loss, logits = core.per_example_loss(model_fn, adv, labels, loss_fn)
        wrong = core.predicted_wrong(logits, labels)
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        best = core.select(better, adv, best)
        return restart + 1, tf.stop_gradient(best), best_wrong | wrong, tf.where(better, loss, best_loss)

    _, best, _, _ = tf.while_loop(
        lambda restart, *_: restart < config.restarts, body,
        (tf.constant(0), images, tf.zeros([batch], tf.bool), tf.fill([batch], tf.constant(-np.inf, tf.float32))),
        maximum_iterations=config.restarts)
    return best


def pgd(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    return _with_restarts(model_fn, images, labels, config, seed, np.inf, core.cross_entropy_loss, noise_rows, unroll)


def pgd_l2(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    return _with_restarts(model_fn, images, labels, config, seed, 2, core.cross_entropy_loss, noise_rows, unroll)


def cw_inf(model_fn, images, labels, config, seed, noise_rows=None, unroll=False):
    return _with_restarts(model_fn, images, labels, config, seed, np.inf, core.margin_loss, noise_rows, unroll)


def paper_verdicts_follow(standard, paper):
    """Whether the verdicts of PGD config `paper` (the paper protocol: early stop) can be read off a run of `standard`
    on a deterministic model: the same L-inf PGD in every field but `early_stop`, from one start. Then `paper` moves
    each example as `standard` does until the model first misclassifies it, and stops it there."""
    return (standard.name == paper.name == "pgd" and not standard.early_stop and paper.early_stop
            and standard.restarts == 1 and dataclasses.replace(paper, early_stop=False) == standard)


def pgd_with_wrong_iterates(model_fn, images, labels, config, seed, noise_rows=None):
    """`pgd` under `config` (no early stop, one restart; the same iterates), and per example whether the model
    misclassified some iterate before the last, the start included, from the logits the steps compute anyway.

    On a deterministic model, PGD with `config`'s early-stopping twin (`paper_verdicts_follow`) keeps an example's
    first misclassified iterate, so it finds that example robust exactly when this run does and no flag is set:
    both protocols' verdicts for the cost of one attack. Returns (adversarial images, flags [batch] bool)."""
    if config.name != "pgd" or config.early_stop or config.restarts != 1:
        raise ValueError(f"pgd_with_wrong_iterates runs L-inf PGD without early stop from one start, got {config}")
    config.validate()
    images = tf.stop_gradient(tf.convert_to_tensor(images, dtype_hint=tf.float32))
    labels = core.as_class_ids(labels)
    if config.random_start:
        start = core.random_start(images, core.fold_seed(core.as_seed(seed), 0), config.epsilon, np.inf,
                                  config.clip_min, config.clip_max, noise_rows)
    else:
        start = images

    def body(step, x, wrong):
        moved, logits = _ascent(model_fn, images, x, labels, config.step_size, config.epsilon, np.inf, config,
                                core.cross_entropy_loss)
        return step + 1, tf.stop_gradient(moved), wrong | core.predicted_wrong(logits, labels)

    _, adversarial, wrong = tf.while_loop(
        lambda step, *_: step < config.steps, body,
        (tf.constant(0), start, tf.zeros(tf.shape(labels)[:1], tf.bool)), maximum_iterations=config.steps)
    return adversarial, wrong


def _check_pgd(config):
    config_lib.check_int("steps", config.steps, minimum=1)
    config_lib.check_real("step_size", config.step_size)
    if config.step_size <= 0:
        raise ValueError(f"AttackConfig.step_size must be > 0 for {config.name}, got {config.step_size}")
    config_lib.check_bool("random_start", config.random_start)
    config_lib.check_bool("early_stop", config.early_stop)
    config_lib.check_int("restarts", config.restarts, minimum=1)


RUNS = {"fgsm": fgsm, "fgsm_rs": fgsm_rs, "pgd": pgd, "pgd_l2": pgd_l2, "cw_inf": cw_inf}
config_lib.register(("fgsm",), config_lib.Rule(check=lambda config: None))
config_lib.register(("fgsm_rs",), config_lib.Rule(check=lambda config: None, uses_noise=lambda config: True))
config_lib.register(("pgd", "pgd_l2", "cw_inf"),
                    config_lib.Rule(check=_check_pgd, uses_noise=lambda config: bool(config.random_start)))
