"""Mask banks: each ticket runs exactly as its source network, draws are uniform, EOT / Ensemble attack what they
claim, and banks of different random networks are refused."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import ticket_fixtures
from rst_tf import attacks
from rst_tf.deployment import r2s
from rst_tf.method import masking


def _images(count=6, seed=3):
    return tf.random.stateless_uniform([count, *ticket_fixtures.IMAGE_SHAPE], [seed, 0])


def test_ticket_keeps_exact_fraction_and_statistics(tiny_bank):
    bank, sources = tiny_bank
    for ticket, ratio in zip(bank.tickets, ticket_fixtures.RATIOS):
        assert ticket.remaining_ratio == ratio
        for mask in ticket.masks.values():
            assert mask.sum() == masking.kept_count(mask.size, ratio)
    first_norm = next(iter(bank.tickets[1].statistics))
    assert not np.array_equal(bank.tickets[0].statistics[first_norm][0], bank.tickets[1].statistics[first_norm][0])


def test_each_ticket_runs_as_its_source_network(tiny_bank):
    bank, sources = tiny_bank
    assert bank._folded.unfolded_reason is None  # the bank runs the folded inference graph
    images = _images()
    for index, source in enumerate(sources):
        np.testing.assert_allclose(bank.logits(images, index), source(images, training=False), atol=1e-5)
    every = bank.all_logits(images)
    assert every.shape == (3, 6, 10)
    np.testing.assert_allclose(bank.ensemble_logits(images), tf.reduce_mean(every, 0), atol=1e-6)
    assert not np.allclose(every[0], every[1])  # the tickets differ


def test_seeded_per_sample_choice_is_reproducible_and_picks_rows(tiny_bank):
    bank, _ = tiny_bank
    images = _images(40)
    choice = bank.random_choice(40, per_sample=True, seed=tf.constant([1, 2], tf.int64))
    assert np.array_equal(choice, bank.random_choice(40, per_sample=True, seed=tf.constant([1, 2], tf.int64)))
    assert set(choice.numpy()) == {0, 1, 2}
    chosen = bank.chosen_logits(images, choice).numpy()
    every = bank.all_logits(images).numpy()
    np.testing.assert_allclose(chosen, every[choice.numpy(), np.arange(40)], atol=1e-6)


def test_unseeded_draws_cover_the_bank_uniformly(tiny_bank):
    bank, _ = tiny_bank
    draws = np.concatenate([bank.random_choice(300, per_sample=True).numpy() for _ in range(10)])
    counts = np.bincount(draws, minlength=3)
    chi_square = ((counts - draws.size / 3) ** 2 / (draws.size / 3)).sum()
    assert chi_square < 13.8  # p > 0.001 for 2 degrees of freedom
    per_call = {int(bank.random_choice(1)[0]) for _ in range(60)}
    assert per_call == {0, 1, 2}


def test_eot_gradient_is_the_mean_of_every_tickets_gradient(tiny_bank):
    bank, _ = tiny_bank
    images = _images(4)
    labels = tf.constant([0, 1, 2, 3])
    fgsm = attacks.AttackConfig(name="fgsm", epsilon=1e-3)
    eot = attacks.generate(bank.all_logits, images, labels, fgsm, None)
    with tf.GradientTape() as tape:
        tape.watch(images)
        losses = [tf.nn.sparse_softmax_cross_entropy_with_logits(labels, bank.logits(images, index))
                  for index in range(3)]
        mean_loss = tf.reduce_sum(tf.add_n(losses) / 3)
    expected = tf.clip_by_value(images + 1e-3 * tf.sign(tape.gradient(mean_loss, images)), 0, 1)
    np.testing.assert_allclose(eot, expected, atol=1e-6)


def test_attacks_on_the_bank_lower_accuracy(tiny_bank):
    bank, sources = tiny_bank
    bank = r2s.MaskBank(sources[0], bank.tickets[:2])  # two tickets keep R2S random at two-thirds the graph size
    images = _images(8, seed=5)
    labels = tf.argmax(bank.logits(images, 0), -1, output_type=tf.int32)  # ticket 0 is right on all of them
    attack = attacks.AttackConfig(name="pgd", epsilon=8 / 255, steps=3, step_size=4 / 255)
    rand_attack = dataclasses.replace(attacks.autoattack_rand_config(8 / 255, eot_draws=2), steps=2)
    evaluation = r2s.BankEvaluation(bank, attack, seed=0, rand_attack=rand_attack)
    batches = [(images, labels)]
    assert evaluation.ticket_accuracy(batches, 0, attacked=False) == 1.0
    assert evaluation.ticket_accuracy(batches, 0) < 0.5
    natural = evaluation.r2s_correct(batches)
    assert 0 < natural.mean() < 1  # the defender's draw picks ticket 1 for some images
    for kind in ("vanilla", "eot", "ensemble"):
        attacked = evaluation.r2s_correct(batches, kind, natural)
        assert attacked.mean() < natural.mean() and np.all(attacked <= natural)
    assert evaluation.r2s_accuracy(batches, "autoattack_rand") <= natural.mean()  # 2 steps: may flip none of these
    assert evaluation.r2s_accuracy(batches, "eot") == evaluation.r2s_accuracy(batches, "eot")  # seeded


def test_refuses_tickets_of_another_random_network(tiny_bank):
    bank, sources = tiny_bank
    base = dataclasses.asdict(ticket_fixtures.tiny_config(0.1))
    with pytest.raises(ValueError, match="b does not share the random network of a: seed is 1"):
        r2s.check_shared_network({"a": base, "b": dict(base, seed=1)})
    other = ticket_fixtures.searched_network(ticket_fixtures.tiny_config(0.1, seed=1))
    with pytest.raises(ValueError, match="other run: the weights of layer .* differ"):
        r2s.check_same_weights(sources[0], other, "other run")
    r2s.check_same_weights(sources[0], sources[2], "same seed")  # same seed, other ratio: accepted


def test_bank_rejects_a_ticket_that_does_not_fit(tiny_bank):
    bank, sources = tiny_bank
    ticket = bank.tickets[0]
    name = next(iter(ticket.masks))
    broken = dataclasses.replace(ticket, masks={**ticket.masks, name: ticket.masks[name][..., :1]})
    with pytest.raises(ValueError, match=f"mask of {name} has shape"):
        r2s.MaskBank(sources[0], [broken])
    with pytest.raises(ValueError, match="at least one ticket"):
        r2s.MaskBank(sources[0], [])
