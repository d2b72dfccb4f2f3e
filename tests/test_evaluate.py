"""AttackedAccuracy: masks once per evaluation, traced and eager-only attacks, reproducible, honest rows; the 95%
Wilson interval of every reported accuracy."""
import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks, networks
from rst_tf.measuring import attacked, intervals
from rst_tf.method import masking
from rst_tf.reports import suite


def small_network():
    return networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                          remaining_ratio=0.3, width_multiplier=1 / 16, seed=5)


def batches():
    images = tf.random.stateless_uniform([24, 32, 32, 3], seed=[1, 2])
    labels = tf.random.stateless_uniform([24], seed=[3, 4], maxval=10, dtype=tf.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)


def test_clean_accuracy_equals_argmax_of_the_network():
    network = small_network()
    correct = attacked.AttackedAccuracy(network, attacks.AttackConfig(name="none")).per_example(batches())
    expected = np.concatenate([(np.argmax(network(x, training=False).numpy(), -1) == y.numpy())
                               for x, y in batches()])
    np.testing.assert_array_equal(correct, expected.astype(np.int32))


def test_pgd_accuracy_is_reproducible_and_not_above_clean(monkeypatch):
    network = small_network()
    calls = []
    original = masking.sorted_top_k_masks  # evaluation's top-k (tf.math.top_k, no XLA compile)
    monkeypatch.setattr(masking, "sorted_top_k_masks", lambda *a, **k: calls.append(1) or original(*a, **k))
    pgd = attacked.AttackedAccuracy(network, attacks.AttackConfig(name="pgd", epsilon=8 / 255, steps=5), seed=1)
    first = pgd.per_example(batches())
    assert len(calls) == 21  # one mask per masked layer per evaluation, not per batch or per PGD step
    np.testing.assert_array_equal(first, pgd.per_example(batches()))
    clean = attacked.AttackedAccuracy(network, attacks.AttackConfig(name="none")).per_example(batches())
    assert np.all(first <= clean)


def test_eager_only_attack_runs_through_the_same_interface():
    network = small_network()
    images = tf.random.stateless_uniform([8, 32, 32, 3], seed=[1, 2])
    labels = tf.argmax(network(images, training=False), -1, output_type=tf.int32)  # every clean image is right
    one_batch = [(images, labels)]
    config = attacks.AttackConfig(name="cw_l2", epsilon=0.5, steps=3, step_size=0.01, binary_search_steps=1,
                                  initial_const=10.0)
    attack = attacked.AttackedAccuracy(network, config)
    adversarial = attack.generate(one_batch)[0]
    distance = tf.norm(tf.reshape(adversarial - images, [8, -1]), axis=1).numpy()
    assert np.all(distance <= 0.5 + 1e-5)
    accuracy = attack(one_batch)
    clean = attacked.AttackedAccuracy(network, attacks.AttackConfig(name="none"))(one_batch)
    assert clean == 1.0 and 0.0 <= accuracy < clean  # the attack flips at least one of them within its budget
    assert accuracy == attack.correct([adversarial], one_batch).mean()  # deterministic: the same examples again


class MeanCosine(keras.layers.Layer):
    """Two classes from the mean pixel m: logit of class 1 minus class 0 is -100 cos(2 pi m / 0.04). A step of
    8/255 against the gradient moves m by more than half a period, so FGSM can turn a wrong prediction right."""

    def call(self, x):
        mean = tf.reduce_mean(x, axis=[1, 2, 3])
        margin = -100.0 * tf.cos(2 * math.pi * mean / 0.04)
        return tf.stack([tf.zeros_like(margin), margin], axis=-1)


def test_an_example_wrong_on_its_clean_image_never_counts_as_robust():
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, MeanCosine()(inputs))
    # Mean pixel 0.48955: phase 1.5 rad, class 0 (wrong: the label is 1). FGSM moves every pixel by -8/255 to a
    # phase of 2.86 rad, where class 1 wins.
    images = np.full((4, 4, 4, 3), 0.48955, np.float32)
    batches = [(tf.constant(images), tf.constant([1, 1, 1, 1]))]
    fgsm = attacks.AttackConfig(name="fgsm", epsilon=8 / 255)
    attack = attacked.AttackedAccuracy(model, fgsm)
    assert attack.clean_correct(batches).tolist() == [0, 0, 0, 0]
    assert attack.correct(attack.generate(batches), batches).tolist() == [1, 1, 1, 1]  # right after the attack
    assert attack.per_example(batches).tolist() == [0, 0, 0, 0] and attack(batches) == 0.0
    result = suite.evaluate_attacks(model, batches, [fgsm])
    assert result["attacks"][0]["correct"] == [0, 0, 0, 0] and result["attacks"][0]["accuracy"] == 0.0


def test_wilson_interval_matches_the_formula_by_hand():
    # 8 of 10, z = 1.96: centre (0.8 + 1.96^2 / 20) / (1 + 1.96^2 / 10) = 0.99208 / 1.38416 = 0.716738; half width
    # 1.96 / 1.38416 * sqrt(0.8 * 0.2 / 10 + 1.96^2 / 400) = 1.416021 * 0.160012 = 0.226581.
    low, high = intervals.wilson_interval(8, 10, z=1.96)
    assert low == pytest.approx(0.716738 - 0.226581, abs=1e-5) and high == pytest.approx(0.716738 + 0.226581, abs=1e-5)
    low, high = intervals.wilson_interval(0, 50)
    assert low == 0.0 and high == pytest.approx(3.8415 / (50 + 3.8415), abs=1e-4)  # k = 0: z^2 / (n + z^2)
    assert intervals.format_accuracy(0.211, 1000) == "21.1% [18.7, 23.7]"
    record = intervals.with_interval(0.211, 1000)
    assert record["num_examples"] == 1000 and record["interval"] == list(intervals.wilson_interval(211, 1000))
    with pytest.raises(ValueError, match="correct must be in"):
        intervals.wilson_interval(11, 10)


def test_the_paper_protocols_verdicts_read_off_the_standard_run_equal_its_own_attack():
    """PGD with early stop keeps an example's first misclassified iterate, so on a deterministic model its verdicts
    follow from the standard run's trajectory. On MeanCosine (periodic in the mean pixel) steps of 6/255 carry
    examples across class boundaries and back, so the two protocols differ on many examples here."""
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, MeanCosine()(inputs))
    values = np.linspace(0.3, 0.7, 64, dtype=np.float32)
    images = np.broadcast_to(values[:, None, None, None], (64, 4, 4, 3)).copy()
    labels = np.argmax(model(images).numpy(), -1).astype(np.int32)  # every clean image classified correctly
    batches = [(tf.constant(images[start:start + 32]), tf.constant(labels[start:start + 32])) for start in (0, 32)]
    standard = attacks.AttackConfig(name="pgd", epsilon=8 / 255, steps=10, step_size=6 / 255, random_start=True)
    paper = dataclasses.replace(standard, early_stop=True)
    assert attacks.pgd.paper_verdicts_follow(standard, paper)
    both = attacked.AttackedAccuracy(model, standard, seed=3).per_example_with_paper(batches, paper)
    alone = [attacked.AttackedAccuracy(model, config, seed=3).per_example(batches) for config in (standard, paper)]
    np.testing.assert_array_equal(both[0], alone[0])
    np.testing.assert_array_equal(both[1], alone[1])
    assert np.all(both[1] <= both[0]) and both[0].sum() - both[1].sum() >= 10
    # The suite measures the pair with one attack, in the order asked, and says so.
    result = suite.evaluate_attacks(model, batches, [paper, standard], seed=3)
    assert result["attacks"][0]["correct"] == alone[1].tolist() and result["attacks"][1]["correct"] == alone[0].tolist()
    assert result["attacks"][0]["read_off_standard_run"] and result["attacks"][0]["cpu_seconds"] == 0.0
    assert "read_off_standard_run" not in result["attacks"][1]


def test_only_the_early_stopping_twin_of_a_one_start_linf_pgd_is_read_off():
    standard = attacks.pgd_eval_config(8 / 255, "standard")
    assert attacks.pgd.paper_verdicts_follow(standard, attacks.pgd_eval_config(8 / 255, "paper"))
    # At 12/255 the protocols' steps differ (3/255 against 2/255).
    assert not attacks.pgd.paper_verdicts_follow(attacks.pgd_eval_config(12 / 255, "standard"),
                                                 attacks.pgd_eval_config(12 / 255, "paper"))
    assert not attacks.pgd.paper_verdicts_follow(dataclasses.replace(standard, restarts=2),
                                                 attacks.pgd_eval_config(8 / 255, "paper", restarts=2))
    assert not attacks.pgd.paper_verdicts_follow(standard, standard)
    with pytest.raises(ValueError, match="early-stopping twin"):
        attacked.AttackedAccuracy(small_network(), standard).per_example_with_paper(batches(), standard)
