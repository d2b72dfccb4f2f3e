"""MaskedConv2D / MaskedDense: kept fractions, score init, gradients, trainable parts, supplied masks, saving."""
import math

import numpy as np
import pytest
import keras
import tensorflow as tf

from rst_tf.method import layers, masking

RATIOS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.9, 1.0)


def conv_layer(**kwargs):
    layer = layers.MaskedConv2D(16, 3, padding=1, seed=(3, 1), **kwargs)
    layer.build((None, 8, 8, 12))
    return layer


def dense_layer(**kwargs):
    layer = layers.MaskedDense(10, seed=(3, 2), **kwargs)
    layer.build((None, 40))
    return layer


@pytest.mark.parametrize("sparsity", masking.SPARSITY_PATTERNS)
@pytest.mark.parametrize("remaining_ratio", RATIOS)
def test_kept_fraction_is_exact_for_every_pattern(sparsity, remaining_ratio):
    for layer in (conv_layer(remaining_ratio=remaining_ratio, sparsity=sparsity),
                  dense_layer(remaining_ratio=remaining_ratio, sparsity=sparsity)):
        mask = layer.binary_mask().numpy()
        assert mask.shape == tuple(layer.scores.shape)
        assert mask.sum() == masking.kept_count(mask.size, remaining_ratio)
        effective = layer.masked_kernel().numpy()
        group = layer.kernel.shape.num_elements() // mask.size
        assert np.count_nonzero(effective) == mask.sum() * group


def torch_score_fan_in(score_shape_oihw):
    """PyTorch's fan-in of a tensor: size(1) times the product of the sizes after it."""
    return score_shape_oihw[1] * math.prod(score_shape_oihw[2:])


# The paper's code (PyTorch, weight OIHW = (out, in, kh, kw)) draws scores of these shapes with
# kaiming_uniform_(a=sqrt(5)) (element, row, kernel) or normal_(0, 1) (channel).
OUT, IN, KH, KW = 128, 64, 3, 3
TORCH_SCORE_SHAPES = {"element": (OUT, IN, KH, KW), "row": (OUT, IN, KH), "kernel": (OUT, IN)}


@pytest.mark.parametrize("sparsity", ["element", "row", "kernel"])
def test_conv_score_init_is_kaiming_uniform_of_the_score_tensor(sparsity):
    layer = layers.MaskedConv2D(OUT, KH, padding=1, sparsity=sparsity, seed=(5, 1))
    layer.build((None, 8, 8, IN))
    gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))
    bound = gain * math.sqrt(3.0 / torch_score_fan_in(TORCH_SCORE_SHAPES[sparsity]))
    scores = layer.scores.numpy()
    assert scores.max() <= bound and scores.min() >= -bound and scores.max() > 0.98 * bound
    assert scores.var() == pytest.approx(bound ** 2 / 3, rel=0.05)


@pytest.mark.parametrize("sparsity", ["element", "row", "kernel"])
def test_dense_score_init_is_that_of_a_1x1_convolution(sparsity):
    layer = layers.MaskedDense(256, sparsity=sparsity, seed=(5, 2))
    layer.build((None, 300))
    bound = math.sqrt(2.0 / 6.0) * math.sqrt(3.0 / torch_score_fan_in((256, 300, 1, 1)[:len(
        TORCH_SCORE_SHAPES[sparsity])]))
    scores = layer.scores.numpy()
    assert scores.max() <= bound and scores.min() >= -bound and scores.max() > 0.98 * bound


@pytest.mark.parametrize("make", [lambda: layers.MaskedConv2D(4096, 1, sparsity="channel", seed=(5, 3)),
                                  lambda: layers.MaskedDense(4096, sparsity="channel", seed=(5, 4))])
def test_channel_score_init_is_standard_normal(make):
    layer = make()
    layer.build((None, 4, 4, 2) if isinstance(layer, layers.MaskedConv2D) else (None, 2))
    scores = layer.scores.numpy()
    assert scores.size == 4096
    assert abs(scores.mean()) < 0.05 and scores.std() == pytest.approx(1.0, rel=0.04)


def test_masked_layers_walk_nested_models_in_build_order():
    inputs = keras.Input((8, 8, 3))
    x = layers.MaskedConv2D(4, 3, padding=1, seed=(0, 0), name="a")(inputs)
    x = layers.TicketBatchNormalization(center=False, scale=False, name="bn")(x)
    x = layers.MaskedConv2D(4, 1, seed=(0, 1), name="b")(x)
    inner = keras.Model(inputs, layers.MaskedDense(2, seed=(0, 2), name="c")(keras.layers.Flatten()(x)))
    outer = keras.Sequential([inner, layers.MaskedDense(3, seed=(0, 3), name="d")])
    outer.build((None, 8, 8, 3))
    assert [layer.name for layer in layers.masked_layers(outer)] == ["a", "b", "c", "d"]
    assert [layer.name for layer in layers.batch_norm_layers(outer)] == ["bn"]


@pytest.mark.parametrize("sparsity", masking.SPARSITY_PATTERNS)
def test_score_gradient_is_sign_times_kernel_times_effective_kernel_gradient(sparsity):
    layer = conv_layer(remaining_ratio=0.3, sparsity=sparsity)
    inputs = tf.random.stateless_normal([2, 8, 8, 12], seed=[1, 1])
    target = tf.random.stateless_normal([2, 8, 8, 16], seed=[2, 2])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(inputs) * target)
    score_grad, kernel_grad = tape.gradient(loss, [layer.scores, layer.kernel])
    assert kernel_grad is None
    # The same loss written out by hand on the effective kernel.
    effective = tf.Variable(layer.masked_kernel())
    with tf.GradientTape() as tape:
        plain = tf.nn.conv2d(inputs, effective, 1, [[0, 0], [1, 1], [1, 1], [0, 0]])
        loss_plain = tf.reduce_sum(plain * target)
    effective_grad = tape.gradient(loss_plain, effective)
    np.testing.assert_allclose(loss.numpy(), loss_plain.numpy(), rtol=1e-5)
    per_weight = layer.kernel.numpy() * effective_grad.numpy()
    summed = np.sum(per_weight, axis=tuple(i for i, n in enumerate(layer.scores.shape) if n == 1), keepdims=True)
    expected = np.sign(layer.scores.numpy()) * summed
    np.testing.assert_allclose(score_grad.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_optimizer_step_changes_only_scores():
    model = keras.Sequential([keras.Input((8, 8, 3)), layers.MaskedConv2D(4, 3, padding=1, seed=(0, 0)),
                              keras.layers.Flatten(), layers.MaskedDense(3, seed=(0, 1))])
    assert {v.name for v in model.trainable_variables} == {"scores"}
    kernels = [v.numpy().copy() for v in model.non_trainable_variables]
    scores = [v.numpy().copy() for v in model.trainable_variables]
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.RandomState(0).rand(16, 8, 8, 3).astype("float32")
    model.train_on_batch(x, np.arange(16) % 3)
    for before, var in zip(kernels, model.non_trainable_variables):
        np.testing.assert_array_equal(before, var.numpy())
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(scores, model.trainable_variables))


def test_trainable_parts_switch_to_the_kernel():
    layer = conv_layer(remaining_ratio=0.2)
    layer.set_trainable_parts(scores=False, kernel=True)
    inputs = tf.random.stateless_normal([1, 8, 8, 12], seed=[4, 4])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(inputs))
    assert [v.name for v in layer.trainable_variables] == ["kernel"]
    kernel_grad, score_grad = tape.gradient(loss, [layer.kernel, layer.scores])
    assert score_grad is None
    mask = np.broadcast_to(layer.binary_mask().numpy(), layer.kernel.shape)
    assert np.all(kernel_grad.numpy()[mask == 0] == 0) and np.any(kernel_grad.numpy()[mask == 1] != 0)


def test_set_remaining_ratio_changes_the_mask():
    layer = dense_layer(remaining_ratio=0.5)
    layer.set_remaining_ratio(0.1)
    assert layer.binary_mask().numpy().sum() == masking.kept_count(400, 0.1)
    with pytest.raises(ValueError, match="remaining_ratio"):
        layer.set_remaining_ratio(0.0)


def test_supplied_mask_replaces_the_score_mask():
    layer = dense_layer(remaining_ratio=0.5)
    inputs = tf.random.stateless_normal([3, 40], seed=[5, 5])
    other = masking.top_k_mask(tf.random.stateless_uniform([40, 10], seed=[9, 9]), 0.2)
    with masking.supplied_masks({layer: other}):
        supplied = layer(inputs)
    np.testing.assert_allclose(supplied.numpy(), (inputs @ (layer.kernel * other)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(layer(inputs).numpy(),
                               (inputs @ (layer.kernel * layer.binary_mask())).numpy(), rtol=1e-5)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="remaining_ratio"):
        layers.MaskedDense(3, remaining_ratio=1.2)
    with pytest.raises(ValueError, match="sparsity"):
        layers.MaskedDense(3, sparsity="block")
    with pytest.raises(ValueError, match="weight_init"):
        layers.MaskedDense(3, weight_init="zeros")


def test_keras_save_and_load_keep_kernel_scores_and_config(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = layers.InputNormalization((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))(inputs)
    x = layers.MaskedConv2D(4, 3, strides=2, padding=1, remaining_ratio=0.3, sparsity="kernel", seed=(1, 0))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = layers.MaskedDense(3, remaining_ratio=0.4, seed=(1, 1), train_kernel=True)(x)
    model = keras.Model(inputs, outputs)
    model.layers[2].scores.assign(model.layers[2].scores * -3.0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for original, restored in zip(model.layers, loaded.layers):
        assert original.get_config() == restored.get_config()
        for a, b in zip(original.weights, restored.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = np.random.RandomState(1).rand(2, 8, 8, 3).astype("float32")
    np.testing.assert_allclose(model(x).numpy(), loaded(x).numpy(), rtol=1e-6)
    assert {v.name for v in loaded.trainable_variables} == {"scores", "kernel"}


def test_a_network_saved_when_the_layers_lived_in_rst_tf_layers_still_loads():
    """tests/fixtures/flat_layout_network.keras was saved when these classes were rst_tf.layers.* and
    rst_tf.ticket_batch_norm.*: the registered names ("rst_tf>MaskedConv2D", ...) load it, with its logits."""
    import json
    import os
    import zipfile

    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
    path = os.path.join(fixtures, "flat_layout_network.keras")
    with zipfile.ZipFile(path) as archive:
        saved_config = archive.read("config.json").decode()
    assert '"module": "rst_tf.layers"' in saved_config and '"module": "rst_tf.ticket_batch_norm"' in saved_config
    with open(os.path.join(fixtures, "flat_layout_network.json")) as handle:
        expected = json.load(handle)
    loaded = keras.models.load_model(path)
    assert [type(layer).__name__ for layer in layers.masked_layers(loaded)] == ["MaskedConv2D", "MaskedDense"]
    assert isinstance(loaded.get_layer("bn"), layers.TicketBatchNormalization)
    assert loaded.get_layer("bn").statistics_slots == 2
    logits = loaded(np.array(expected["images"], dtype="float32"), training=False).numpy()
    np.testing.assert_allclose(logits, np.array(expected["logits"]), rtol=1e-6, atol=1e-6)
