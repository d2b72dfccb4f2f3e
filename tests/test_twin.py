"""masked_twin on a Keras application: masked layers, exact kept fractions, a score-only step, saving."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import rst_tf
from rst_tf import networks
from rst_tf.attacks import core as attack_core
from rst_tf.method import layers, masking, twin


@pytest.fixture(scope="module")
def resnet50_twin():
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10,
                                        classifier_activation=None)
    return model, twin.masked_twin(model, remaining_ratio=0.1, seed=3)


def test_every_conv_and_dense_is_masked_and_every_norm_non_affine(resnet50_twin):
    model, masked = resnet50_twin
    originals = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert [layer.name for layer in layers.masked_layers(masked)] == [layer.name for layer in originals]
    assert len(originals) == 54  # 53 convolutions and the classifier
    assert not [layer for layer in masked.layers
                if type(layer) in (keras.layers.Conv2D, keras.layers.Dense, keras.layers.BatchNormalization)]
    norms = layers.batch_norm_layers(masked)
    assert len(norms) == 53 and not any(norm.center or norm.scale for norm in norms)
    assert {variable.name for variable in masked.trainable_variables} == {"scores"}
    assert masked.output.shape == model.output.shape


def test_kept_fraction_is_exact_in_every_layer(resnet50_twin):
    _, masked = resnet50_twin
    for layer in layers.masked_layers(masked):
        mask = layer.binary_mask().numpy()
        assert mask.sum() == masking.kept_count(mask.size, 0.1), layer.name


def test_one_search_step_trains_only_the_scores(resnet50_twin):
    _, masked = resnet50_twin
    before = {id(v): v.numpy().copy() for v in masked.weights}
    optimizer = keras.optimizers.SGD(0.1)
    images = tf.random.stateless_uniform([4, 32, 32, 3], seed=[1, 2])
    labels = tf.constant([0, 1, 2, 3])
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(labels, masked(images, training=True), from_logits=True)
    variables = masked.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    for layer in layers.masked_layers(masked):
        np.testing.assert_array_equal(layer.kernel.numpy(), before[id(layer.kernel)])
    changed = [layer.name for layer in layers.masked_layers(masked)
               if not np.array_equal(layer.scores.numpy(), before[id(layer.scores)])]
    assert len(changed) == 54


def test_twin_saves_and_loads(resnet50_twin, tmp_path):
    _, masked = resnet50_twin
    path = str(tmp_path / "twin.keras")
    masked.save(path)
    loaded = keras.models.load_model(path)
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[3, 4])
    np.testing.assert_allclose(loaded(images).numpy(), masked(images).numpy(), rtol=1e-4, atol=1e-5)
    for original, restored in zip(layers.masked_layers(masked), layers.masked_layers(loaded)):
        np.testing.assert_array_equal(original.binary_mask().numpy(), restored.binary_mask().numpy())


def test_seed_fixes_the_weights():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs))))
    first, second, other = (rst_tf.masked_twin(model, 0.5, seed=seed) for seed in (1, 1, 2))
    for a, b, c in zip(layers.masked_layers(first), layers.masked_layers(second), layers.masked_layers(other)):
        np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
        assert not np.array_equal(a.kernel.numpy(), c.kernel.numpy())


@pytest.mark.parametrize("layer,message", [
    (keras.layers.DepthwiseConv2D(3), "DepthwiseConv2D"),
    (keras.layers.SeparableConv2D(4, 3), "SeparableConv2D"),
    (keras.layers.Conv2D(4, 3, dilation_rate=2), "dilation"),
    (keras.layers.Conv2D(4, (3, 1)), "kernel size"),
])
def test_unsupported_layers_are_refused_by_name(layer, message):
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, layer(inputs))
    with pytest.raises(ValueError, match=f"layer '{layer.name}'.*{message}"):
        twin.masked_twin(model, 0.5)


def test_activations_become_layers_of_their_own_and_a_softmax_head_is_left_out():
    """A Sequential model with a ReLU convolution and a softmax classifier: each activation follows its masked layer;
    the twin returns the logits, and with logits=False the probabilities from its own softmax layer."""
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(5, activation="softmax", name="head")])
    masked, whole = (twin.masked_twin(model, 0.5, seed=1, logits=logits) for logits in (True, False))
    assert [type(layer).__name__ for layer in whole.layers[1:]] == [
        "MaskedConv2D", "Activation", "Flatten", "MaskedDense", "Activation"]
    assert [layer.name for layer in whole.layers if isinstance(layer, keras.layers.Activation)] == [
        "conv_relu", "head_softmax"]
    assert masked.layers[-1].name == "head" and masked.output.shape == (None, 5)
    images = tf.random.stateless_uniform([3, 6, 6, 3], seed=[1, 1])
    assert np.all(whole.get_layer("conv_relu")(whole.get_layer("conv")(images)).numpy() >= 0)
    np.testing.assert_allclose(tf.nn.softmax(masked(images)).numpy(), whole(images).numpy(), rtol=1e-5, atol=1e-7)


def test_resnet50_as_keras_ships_it_gives_attacks_logits():
    """keras.applications.ResNet50 with its default arguments but weights=None (224x224 images, 1000 classes,
    classifier_activation="softmax"): the classifier's logits pass through a separate softmax layer, which the
    default twin leaves out, so an attack's loss and gradient are those of the logits, not of the probabilities."""
    model = keras.applications.ResNet50(weights=None)
    masked = twin.masked_twin(model, remaining_ratio=0.1, seed=3)
    whole = twin.masked_twin(model, remaining_ratio=0.1, seed=3, logits=False)
    head = whole.layers[-1]
    assert isinstance(head, keras.layers.Activation) and head.name == "predictions_softmax"
    assert head.input is whole.get_layer("predictions").output and isinstance(masked.layers[-1], layers.MaskedDense)
    assert masked.output.shape == (None, 1000) and masked.layers[-1].name == "predictions"

    images = tf.random.stateless_uniform([1, 224, 224, 3], seed=[7, 8], maxval=255)
    labels = tf.constant([3])
    loss, gradient, logits = attack_core.loss_gradient_logits(masked, images, labels)
    probabilities = whole(images).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    assert np.any(logits.numpy() < 0) and not np.allclose(logits.numpy().sum(axis=-1), 1.0)
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), probabilities, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(loss.numpy(), -np.log(probabilities[:, 3]), rtol=1e-4)  # cross-entropy of the logits
    _, gradient_of_probabilities, _ = attack_core.loss_gradient_logits(whole, images, labels)
    scale = np.abs(gradient.numpy()).max()
    assert scale > 0 and np.abs(gradient_of_probabilities.numpy()).max() < scale / 10


def test_keras_network_name_builds_the_twin_behind_the_input_normalisation(resnet50_twin):
    _, masked = resnet50_twin
    network = networks.build("keras:ResNet50", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                             remaining_ratio=0.1, seed=3)
    assert network.layers[1].name == "input_normalization" and network.output.shape == (None, 10)
    ours, theirs = layers.masked_layers(network), layers.masked_layers(masked)
    assert [layer.name for layer in ours] == [layer.name for layer in theirs]
    for a, b in zip(ours, theirs):  # the same random weights as masked_twin of the application at that seed
        np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
        a.scores.assign(b.scores)  # (another test of this module trains the fixture's scores)
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[5, 6])
    mean, std = networks.NORMALIZATION["cifar10"]
    normalized = (images.numpy() - np.array(mean, np.float32)) / np.array(std, np.float32)
    np.testing.assert_allclose(network(images, training=True).numpy(), masked(normalized, training=True).numpy(),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,options,message", [
    ("keras:ResNet", {}, "keras.applications has no model 'ResNet'"),
    ("keras:resnet50", {}, "has no model 'resnet50'"),
    ("keras:ResNet50", {"width_multiplier": 0.5}, "does not take width_multiplier"),
    ("keras:ResNet50", {"dense_classifier": True}, "does not take dense_classifier"),
    ("keras:ResNet50", {"dataset": "mnist"}, "dataset must be one of"),
])
def test_keras_network_names_refuse_what_they_cannot_build(name, options, message):
    arguments = dict(num_classes=10, input_shape=(32, 32, 3), dataset="cifar10", remaining_ratio=0.1) | options
    with pytest.raises(ValueError, match=message):
        networks.build(name, **arguments)
