"""Global top-k: one threshold over every masked layer's |scores|, exact in total, deterministic ties, once per step."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks, networks
from rst_tf.method import layers, masking
from rst_tf.search import search_model


def _numpy_global_masks(magnitudes, ratio):
    """Independent reference: a stable sort of the concatenation by decreasing value keeps the first k."""
    flat = np.concatenate([m.reshape(-1) for m in magnitudes]).astype(np.float64)
    keep = flat.size - int(np.floor((1.0 - ratio) * flat.size))
    order = np.argsort(-flat, kind="stable")  # ties: lower concatenated index first
    kept = np.zeros(flat.size, bool)
    kept[order[:keep]] = True
    return np.split(kept, np.cumsum([m.size for m in magnitudes])[:-1])


@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.3, 0.77])
def test_global_masks_equal_numpy_and_keep_the_exact_total(ratio):
    rng = np.random.default_rng(int(ratio * 100))
    shapes = [(3, 3, 3, 8), (3, 3, 8, 16), (1, 1, 8, 16), (16, 10)]
    magnitudes = [np.abs(rng.normal(size=shape)).astype(np.float32) / np.sqrt(np.prod(shape[:-1]))
                  for shape in shapes]
    ours = [m.numpy() for m in masking.global_top_k_masks(magnitudes, ratio)]
    total = sum(m.size for m in magnitudes)
    assert sum(m.sum() for m in ours) == total - np.floor((1 - ratio) * total)
    for mine, reference, shape in zip(ours, _numpy_global_masks(magnitudes, ratio), shapes):
        assert mine.shape == shape
        np.testing.assert_array_equal(mine.reshape(-1).astype(bool), reference)
    # One threshold: every kept entry is at least every dropped one.
    kept = np.concatenate([m.reshape(-1) for m in magnitudes])[np.concatenate([m.reshape(-1) for m in ours]) > 0]
    dropped = np.concatenate([m.reshape(-1) for m in magnitudes])[np.concatenate([m.reshape(-1) for m in ours]) == 0]
    assert kept.min() >= dropped.max()


def test_ties_go_to_the_first_layer_then_the_lower_index():
    # Every entry ties: the first `keep` of the concatenation are kept, spilling from the first tensor to the second.
    first, second = np.ones((2, 5), np.float32), np.ones((3, 4), np.float32)
    ours = [m.numpy() for m in masking.global_top_k_masks([first, second], 0.6)]
    keep = 22 - int(np.floor(0.4 * 22))
    flat = np.concatenate([m.reshape(-1) for m in ours])
    np.testing.assert_array_equal(flat, np.arange(22) < keep)
    # Ties at the threshold only, mixed with larger values in both tensors.
    rng = np.random.default_rng(5)
    tied = [rng.integers(0, 4, size=(6, 7)).astype(np.float32), rng.integers(0, 4, size=(5, 9)).astype(np.float32)]
    for ratio in (0.2, 0.5, 0.9):
        ours = masking.global_top_k_masks(tied, ratio)
        for mine, reference in zip(ours, _numpy_global_masks(tied, ratio)):
            np.testing.assert_array_equal(mine.numpy().reshape(-1).astype(bool), reference)


def test_layer_masks_under_a_global_scope_are_each_layers_share():
    network = networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                             remaining_ratio=0.1, width_multiplier=1 / 16, seed=0, dense_first_conv=True)
    layers.set_topk_scope(network, "global")
    masked = [layer for layer in layers.masked_layers(network) if layer.remaining_ratio < 1.0]
    assert "conv1" not in [layer.name for layer in masked]  # the dense first conv is not in the top-k
    masks = layers.current_masks(network)
    assert list(masks) == masked
    reference = _numpy_global_masks([np.abs(layer.scores.numpy()) for layer in masked], 0.1)
    for layer, expected in zip(masked, reference):
        np.testing.assert_array_equal(masks[layer].numpy().reshape(-1).astype(bool), expected)
        np.testing.assert_array_equal(layer.binary_mask().numpy(), masks[layer].numpy())
    total = sum(layer.scores.shape.num_elements() for layer in masked)
    assert sum(float(m.numpy().sum()) for m in masks.values()) == masking.kept_count(total, 0.1)
    fractions = layers.kept_fractions(network)
    assert set(fractions) == {layer.name for layer in masked}
    assert max(fractions.values()) - min(fractions.values()) > 0.1  # the kept fraction varies by layer
    np.testing.assert_allclose(sum(fractions[l.name] * l.scores.shape.num_elements() for l in masked),
                               masking.kept_count(total, 0.1))
    layers.set_topk_scope(network, "layer")
    for layer in masked[:2]:
        assert layer.binary_mask().numpy().sum() == masking.kept_count(layer.scores.shape.num_elements(), 0.1)


def test_global_scope_needs_element_sparsity_and_one_ratio():
    inputs = keras.Input((8, 8, 3))
    conv = layers.MaskedConv2D(4, 3, padding=1, remaining_ratio=0.2, sparsity="channel", seed=(0, 0))
    model = keras.Model(inputs, conv(inputs))
    with pytest.raises(ValueError, match="needs sparsity 'element'"):
        layers.set_topk_scope(model, "global")
    with pytest.raises(ValueError, match="topk_scope must be one of"):
        layers.set_topk_scope(model, "net")
    first = layers.MaskedConv2D(4, 3, padding=1, remaining_ratio=0.2, seed=(0, 0))
    second = layers.MaskedConv2D(4, 3, padding=1, remaining_ratio=0.2, seed=(0, 1))
    model = keras.Model(inputs, second(first(inputs)))
    layers.set_topk_scope(model, "global")
    second.set_remaining_ratio(0.3)
    with pytest.raises(ValueError, match="one remaining ratio"):
        layers.current_masks(model)


def test_global_scope_survives_saving_once_set_again(tmp_path):
    inputs = keras.Input((8, 8, 3))
    first = layers.MaskedConv2D(4, 3, padding=1, remaining_ratio=0.2, seed=(0, 0))
    second = layers.MaskedConv2D(6, 3, padding=1, remaining_ratio=0.2, seed=(0, 1))
    model = keras.Model(inputs, second(first(inputs)))
    layers.set_topk_scope(model, "global")
    path = str(tmp_path / "global.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    with pytest.raises(ValueError, match="keeps a global top-k: call rst_tf.method.layers.set_topk_scope"):
        layers.masked_layers(loaded)[0].binary_mask()
    layers.set_topk_scope(loaded, "global")
    images = tf.random.stateless_uniform([2, 8, 8, 3], [0, 1])
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-6)


def _top_k_calls(concrete_function):
    """How many calls of the top-k kernel a traced function makes, in its graph and every function it holds."""
    graph = concrete_function.graph.as_graph_def()
    nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
    return sum(1 for node in nodes if node.op in ("PartitionedCall", "StatefulPartitionedCall")
               and "_top_k_flat" in node.attr["f"].func.name)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_a_search_step_computes_the_masks_once(scope):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = layers.MaskedConv2D(8, 3, padding=1, remaining_ratio=0.1, seed=(0, 0))(inputs)
    x = keras.layers.ReLU()(layers.TicketBatchNormalization(center=False, scale=False)(x))
    x = layers.MaskedConv2D(16, 3, strides=2, padding=1, remaining_ratio=0.1, seed=(0, 1))(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    network = keras.Model(inputs, layers.MaskedDense(10, remaining_ratio=0.1, seed=(0, 2))(x))
    layers.set_topk_scope(network, scope)
    model = search_model.SearchModel(network, attacks.AttackConfig(name="pgd", steps=3), seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.optimizer.build(model.trainable_variables)
    step = tf.function(model.replica_step).get_concrete_function(
        tf.TensorSpec([4, 32, 32, 3], tf.float32), tf.TensorSpec([4], tf.int32))
    masked = len(layers.masked_layers(network))
    # Layer scope: one top-k per layer; global: one for the whole network. None inside the attack's loop.
    assert _top_k_calls(step) == (masked if scope == "layer" else 1)
    before = [layer.scores.numpy().copy() for layer in layers.masked_layers(network)]
    images = tf.random.stateless_uniform([4, 32, 32, 3], [1, 2])
    step(images, tf.constant([0, 1, 2, 3]))
    after = layers.current_masks(network)
    total = sum(layer.scores.shape.num_elements() for layer in layers.masked_layers(network))
    if scope == "global":
        assert sum(float(mask.numpy().sum()) for mask in after.values()) == masking.kept_count(total, 0.1)
    assert all(not np.array_equal(scores, layer.scores.numpy())
               for scores, layer in zip(before, layers.masked_layers(network)))
