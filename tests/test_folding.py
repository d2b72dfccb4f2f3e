"""The folded inference graph: the network's inference logits and input gradients for every network kind, masks at
several ratios and random BatchNorm statistics (moving, supplied, slots, affine); the exact top-k masks."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import networks
from rst_tf.method import folding, layers, masking, twin
from rst_tf.networks.common import MaskedLayerFactory, batch_norm, network_input

NETWORKS = {  # name: (input shape, width multiplier)
    "resnet18": ((32, 32, 3), 1 / 16),
    "preact_resnet18": ((32, 32, 3), 1 / 16),
    "wrn_34_10": ((16, 16, 3), 1 / 32),
    "resnet18_imagenet": ((32, 32, 3), 1 / 16),
    "resnet50": ((32, 32, 3), 1 / 16),
}


def randomise_statistics(network, seed):
    """Moving means and variances (and slots, gamma, beta where held) far from their initial 0 and 1."""
    for index, norm in enumerate(layers.batch_norm_layers(network) + [
            layer for layer in network.layers if type(layer) is keras.layers.BatchNormalization]):
        for offset, variable in enumerate(norm.weights):
            shape, stream = variable.shape, [seed, 16 * index + offset]
            if "variance" in variable.name:
                variable.assign(tf.random.stateless_uniform(shape, stream, 0.3, 3.0))
            else:  # means, gamma, beta
                variable.assign(tf.random.stateless_normal(shape, stream, stddev=0.5))


def scramble_scores(network, seed):
    for index, layer in enumerate(layers.masked_layers(network)):
        layer.scores.assign(tf.random.stateless_normal(layer.scores.shape, [seed, index]))


def inference_masks(network):
    return folding.exact_masks(network)  # as layers.current_masks (test_exact_masks_...), without XLA compiles


def logits_and_gradient(logits_fn, images):
    with tf.GradientTape() as tape:
        tape.watch(images)
        logits = logits_fn(images)
        gap = logits[:, 1] - logits[:, 0]
    return logits.numpy(), tape.gradient(gap, images).numpy()


def assert_folding_is_exact(network, images, masks=None):
    """Folded and unfolded inference: the same logits and input gradients (float rounding only); returns the
    logits."""
    masks = inference_masks(network) if masks is None else masks
    folded = folding.FoldedNetwork(network)
    parameters = folded.parameters(masks)

    def unfolded(x):
        with masking.supplied_masks(masks):
            return network(x, training=False)

    expected, expected_gradient = logits_and_gradient(unfolded, images)
    found, found_gradient = logits_and_gradient(lambda x: folded.logits(x, parameters), images)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(found, expected, rtol=0, atol=2e-5 * scale)
    gradient_scale = max(1e-6, float(np.abs(expected_gradient).max()))
    np.testing.assert_allclose(found_gradient, expected_gradient, rtol=0, atol=2e-4 * gradient_scale)
    return expected


@pytest.mark.parametrize("name, remaining_ratio", [(name, ratio) for name in sorted(NETWORKS) for ratio in (0.1, 1.0)]
                         + [("resnet18", 0.5)])
def test_folded_logits_and_gradients_equal_the_network(name, remaining_ratio):
    input_shape, width = NETWORKS[name]
    network = networks.build(name, num_classes=10, input_shape=input_shape, dataset="cifar10",
                             remaining_ratio=remaining_ratio, width_multiplier=width, seed=3)
    scramble_scores(network, seed=4)
    randomise_statistics(network, seed=5)
    folded = folding.FoldedNetwork(network)
    assert folded.unfolded_reason is None
    norms = layers.batch_norm_layers(network)
    preact = name in ("preact_resnet18", "wrn_34_10")  # BN before the conv: only the convs' own BNs fold
    assert (len(folded._folded_into) < len(norms)) == preact
    assert len(folded._folded_into) + len(folded._norms) == len(norms)
    images = tf.random.stateless_uniform((4,) + input_shape, [6, 7])
    logits = assert_folding_is_exact(network, images)
    for norm in norms:  # the statistics matter: with the initial ones the logits differ
        norm.moving_mean.assign(tf.zeros_like(norm.moving_mean))
        norm.moving_variance.assign(tf.ones_like(norm.moving_variance))
    with masking.supplied_masks(inference_masks(network)):
        assert np.abs(network(images, training=False).numpy() - logits).max() > 1e-2 * np.abs(logits).max()


def small_network(statistics_slots=0, remaining_ratio=0.3):
    factory = MaskedLayerFactory(remaining_ratio=remaining_ratio, seed=1)
    with layers.statistics_slots(statistics_slots):
        inputs, x = network_input((8, 8, 3), "cifar10")
        x = keras.layers.ReLU()(batch_norm("bn1")(factory.conv(6, 3, name="conv1")(x)))
        x = keras.layers.ReLU()(batch_norm("bn2")(factory.conv(8, 3, 2, name="conv2")(x)))
        x = keras.layers.GlobalAveragePooling2D()(x)
        logits = factory.dense(10, name="classifier")(x)
    return keras.Model(inputs, logits)


def test_ticket_statistics_are_the_ones_selected_now():
    network = small_network(statistics_slots=2)
    randomise_statistics(network, seed=8)
    images = tf.random.stateless_uniform([4, 8, 8, 3], [1, 1])
    norms = layers.batch_norm_layers(network)
    folded = folding.FoldedNetwork(network)
    masks = inference_masks(network)
    found = []
    for slot in (0, 1):
        with layers.supplied_statistics_slots({norm: slot for norm in norms}):
            found.append(assert_folding_is_exact(network, images, masks))
    assert np.abs(found[0] - found[1]).max() > 1e-3
    statistics = {norm: (tf.random.stateless_normal(norm.moving_mean.shape, [9, i]),
                         tf.random.stateless_uniform(norm.moving_mean.shape, [10, i], 0.5, 2.0))
                  for i, norm in enumerate(norms)}
    with layers.supplied_statistics(statistics):
        assert_folding_is_exact(network, images, masks)
        parameters = folded.parameters(masks)
    unsupplied = folded.logits(images, folded.parameters(masks))
    assert np.abs(folded.logits(images, parameters) - unsupplied).max() > 1e-3


def test_affine_batch_norm_after_a_dense_layer_and_unfolded_norms():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    branch = keras.layers.BatchNormalization()(x)  # after an activation: one multiply-add
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same")(branch)
    x = keras.layers.BatchNormalization()(x)  # folded into the conv before it
    x = keras.layers.Flatten()(keras.layers.ReLU()(x))
    x = keras.layers.BatchNormalization()(keras.layers.Dense(12)(x))  # folded into the dense layer
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(x)))
    masked = twin.masked_twin(model, remaining_ratio=0.4, seed=2)
    scramble_scores(masked, seed=3)
    randomise_statistics(masked, seed=4)
    folded = folding.FoldedNetwork(masked)
    assert len(folded._folded_into) == 2 and len(folded._norms) == 1
    assert_folding_is_exact(masked, tf.random.stateless_uniform([4, 8, 8, 3], [5, 5]))

    norm = keras.layers.BatchNormalization(epsilon=1e-3)  # gamma and beta, as Keras's own layer keeps them
    affine = keras.Model(inputs, norm(inputs))
    randomise_statistics(affine, seed=6)
    images = tf.random.stateless_uniform([4, 8, 8, 3], [6, 6])
    scale, shift = folding.inference_scale_and_shift(norm)
    np.testing.assert_allclose(images * scale + shift, norm(images, training=False), atol=1e-5)


def test_structures_it_cannot_fold_run_unfolded():
    inner = small_network()
    inputs = keras.Input((8, 8, 3))
    outer = keras.Model(inputs, inner(inputs))
    randomise_statistics(inner, seed=2)
    folded = folding.FoldedNetwork(outer)
    assert "nested model" in folded.unfolded_reason
    images = tf.random.stateless_uniform([4, 8, 8, 3], [3, 3])
    masks = inference_masks(outer)
    with masking.supplied_masks(masks):
        expected = outer(images, training=False)
    parameters = folded.parameters(masks)
    np.testing.assert_array_equal(folded.logits(images, parameters), expected)
    np.testing.assert_allclose(tf.function(folded.logits)(images, parameters), expected, atol=1e-6)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_exact_masks_equal_the_radix_select_with_ties(scope):
    network = small_network(remaining_ratio=0.35)
    for index, layer in enumerate(layers.masked_layers(network)):  # few distinct magnitudes: many ties
        values = tf.random.stateless_uniform(layer.scores.shape, [4, index], -3, 4, dtype=tf.int32)
        layer.scores.assign(tf.cast(values, tf.float32) / 4)
    layers.set_topk_scope(network, scope)
    expected = layers.current_masks(network)
    found = folding.exact_masks(network)
    assert set(map(id, found)) == set(map(id, expected))
    for layer, mask in expected.items():
        np.testing.assert_array_equal(found[layer], mask, err_msg=layer.name)
    if scope == "layer":
        ratios = {layer: 0.6 for layer in layers.masked_layers(network)}
        with layers.supplied_remaining_ratios(ratios):
            expected, found = layers.current_masks(network), folding.exact_masks(network)
        for layer, mask in expected.items():
            np.testing.assert_array_equal(found[layer], mask, err_msg=layer.name)
