"""Search objectives: what a search step minimises, and the attack that makes its adversarial examples.

- `pgd_at` (Madry et al. 2018; the paper's Eq. 1): cross-entropy on examples of the search's attack (PGD).
- `trades` (Zhang et al. 2019): natural cross-entropy + beta * KL(p_clean || p_adv), beta = 6, with examples that
  maximise that KL (the `trades_kl` attack) from a small Gaussian start, at the search attack's ε, steps and step.

Losses are per example (the caller averages them over the global batch); the KL term keeps the gradient through
both the clean and the adversarial logits, as TRADES's code does.
"""
import dataclasses

import tensorflow as tf

from rst_tf import attacks

OBJECTIVES = ("pgd_at", "trades")
TRADES_BETA = 6.0


def check_objective(objective):
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def cross_entropy(labels, logits):
    """Per-example cross-entropy of integer `labels` under `logits`."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32))


def kl_divergence(clean_logits, adversarial_logits):
    """Per-example KL(softmax(clean) || softmax(adversarial)) = sum_c p_c (log p_c - log q_c)."""
    log_clean = tf.nn.log_softmax(tf.cast(clean_logits, tf.float32))
    log_adversarial = tf.nn.log_softmax(tf.cast(adversarial_logits, tf.float32))
    return tf.reduce_sum(tf.exp(log_clean) * (log_clean - log_adversarial), axis=-1)


def trades_loss(labels, clean_logits, adversarial_logits, beta=TRADES_BETA):
    """Per-example TRADES loss: CE(labels, clean) + beta * KL(p_clean || p_adv)."""
    return cross_entropy(labels, clean_logits) + beta * kl_divergence(clean_logits, adversarial_logits)


def attack_config(objective, attack):
    """The attack that makes `objective`'s examples: `attack` itself for `pgd_at` (and for natural training,
    `attack.name == "none"`); for `trades`, the KL attack at `attack`'s ε, steps and step size.

    TRADES's attack is an L-inf sign ascent, so `trades` takes a multi-step L-inf search attack (`pgd`).
    """
    check_objective(objective)
    if objective == "pgd_at" or attack.name == "none":
        return attack
    if attack.name != "pgd":
        raise ValueError(f"objective 'trades' takes the L-inf PGD settings of attack 'pgd', got {attack.name!r}")
    return dataclasses.replace(attacks.AttackConfig(name="trades_kl"), epsilon=attack.epsilon, steps=attack.steps,
                               step_size=attack.step_size, random_start=True, clip_min=attack.clip_min,
                               clip_max=attack.clip_max)


def loss_and_logits(objective, logits_fn, images, adversarial, labels, beta=TRADES_BETA):
    """(per-example loss, adversarial logits) of `objective`; `logits_fn` maps images to logits under the step's
    masks and BatchNorm mode (call it inside the tape that differentiates the loss).

    `trades` calls `logits_fn` on the clean and on the adversarial batch separately, as TRADES's code does (so
    BatchNorm in training mode normalises each with its own statistics).
    """
    check_objective(objective)
    adversarial_logits = logits_fn(adversarial)
    if objective == "pgd_at":
        return cross_entropy(labels, adversarial_logits), adversarial_logits
    return trades_loss(labels, logits_fn(images), adversarial_logits, beta), adversarial_logits

