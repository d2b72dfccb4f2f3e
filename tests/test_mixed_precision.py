"""The mixed_bfloat16 policy (--mixed_precision): a search step, an evaluation and an export, with float32 logits."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks
from rst_tf.deployment import export, r2s
from rst_tf.measuring import attacked
from rst_tf.method import layers
from rst_tf.method.ticket import ticket_of
from rst_tf.search import search_model
from rst_tf.training import build
from rst_tf.training.config import SearchConfig

CONFIG = SearchConfig(network="resnet18", width_multiplier=1 / 16, remaining_ratio=0.2, seed=0)
SHAPE = (32, 32, 3)


@pytest.fixture
def mixed_policy():
    """mixed_bfloat16 for one test; the policy in force before is restored after it."""
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy(before)


def images_and_labels(count=16):
    images = tf.random.stateless_uniform([count, *SHAPE], [5, 0])
    labels = tf.random.stateless_uniform([count], [5, 1], maxval=10, dtype=tf.int32)
    return images, labels


def test_search_step_computes_in_bfloat16_with_a_float32_loss(mixed_policy):
    network = build.build_network(CONFIG, 10, SHAPE)
    assert network.layers[2].compute_dtype == "bfloat16"  # the first conv after the input normalisation
    assert network.outputs[0].dtype == "float32"
    model = search_model.SearchModel(network, attacks.AttackConfig(name="pgd", steps=1, step_size=2 / 255), seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    scores = [layer.scores.numpy().copy() for layer in layers.masked_layers(network)]
    images, labels = images_and_labels()
    logs = model.train_on_batch(images, labels, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["loss"] > 0
    assert all(layer.scores.dtype == "float32" for layer in layers.masked_layers(network))
    assert any(not np.array_equal(before, layer.scores.numpy())
               for before, layer in zip(scores, layers.masked_layers(network)))


def test_attacked_accuracy_under_mixed_precision(mixed_policy):
    network = build.build_network(CONFIG, 10, SHAPE)
    images, labels = images_and_labels()
    assert network(images).dtype == tf.float32
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    natural = attacked.AttackedAccuracy(network, attacks.AttackConfig(name="none"))(batches)
    robust = attacked.AttackedAccuracy(
        network, attacks.AttackConfig(name="pgd", epsilon=8 / 255, steps=2, step_size=4 / 255), seed=0)(batches)
    predictions = np.argmax(network(images).numpy(), axis=-1)
    assert natural == pytest.approx(np.mean(predictions == labels.numpy()))
    assert 0.0 <= robust <= natural


def test_export_under_mixed_precision_serves_float32_logits(mixed_policy, tmp_path):
    network = build.build_network(CONFIG, 10, SHAPE)
    tickets = [ticket_of(network, "a"), ticket_of(network, "b")]
    path = export.save(str(tmp_path / "r2s"), {"cifar10": r2s.MaskBank(network, tickets)}, per_sample=True)
    images, _ = images_and_labels(4)
    outputs = tf.saved_model.load(path).signatures["serving_default"](images=images)
    assert outputs["logits"].dtype == tf.float32 and outputs["logits"].shape == (4, 10)
    np.testing.assert_allclose(outputs["logits"], network(images), rtol=0.05, atol=0.05)
    np.testing.assert_allclose(tf.reduce_sum(outputs["probabilities"], -1), 1.0, atol=1e-5)
