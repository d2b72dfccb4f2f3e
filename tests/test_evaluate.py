"""AttackedAccuracy: masks once per evaluation, traced and eager-only attacks, reproducible."""
import keras
import numpy as np
import tensorflow as tf

from rst_tf import attacks, evaluate, masking, networks


def small_network():
    return networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                          remaining_ratio=0.3, width_multiplier=1 / 16, seed=5)


def batches():
    images = tf.random.stateless_uniform([24, 32, 32, 3], seed=[1, 2])
    labels = tf.random.stateless_uniform([24], seed=[3, 4], maxval=10, dtype=tf.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)


def test_clean_accuracy_equals_argmax_of_the_network():
    network = small_network()
    correct = evaluate.AttackedAccuracy(network, attacks.AttackConfig(name="none")).per_example(batches())
    expected = np.concatenate([(np.argmax(network(x, training=False).numpy(), -1) == y.numpy())
                               for x, y in batches()])
    np.testing.assert_array_equal(correct, expected.astype(np.int32))


def test_pgd_accuracy_is_reproducible_and_not_above_clean(monkeypatch):
    network = small_network()
    calls = []
    original = masking.top_k_mask
    monkeypatch.setattr(masking, "top_k_mask", lambda *a, **k: calls.append(1) or original(*a, **k))
    pgd = evaluate.AttackedAccuracy(network, attacks.AttackConfig(name="pgd", epsilon=8 / 255, steps=5), seed=1)
    first = pgd.per_example(batches())
    assert len(calls) == 21  # one mask per masked layer per evaluation, not per batch or per PGD step
    np.testing.assert_array_equal(first, pgd.per_example(batches()))
    clean = evaluate.AttackedAccuracy(network, attacks.AttackConfig(name="none")).per_example(batches())
    assert np.all(first <= clean)


def test_eager_only_attack_runs_through_the_same_interface():
    network = small_network()
    config = attacks.AttackConfig(name="cw_l2", epsilon=0.5, steps=5, binary_search_steps=1)
    accuracy = evaluate.AttackedAccuracy(network, config)(batches().take(1))
    clean = evaluate.AttackedAccuracy(network, attacks.AttackConfig(name="none"))(batches().take(1))
    assert 0.0 <= accuracy <= clean
