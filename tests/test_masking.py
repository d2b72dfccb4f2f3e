"""The top-k op, its straight-through gradient and sparsity patterns."""
import logging
import math

import numpy as np
import pytest
import tensorflow as tf

import keras

from rst_tf.method import layers, masking

RATIOS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0)


@pytest.mark.parametrize("remaining_ratio", RATIOS)
def test_top_k_keeps_exact_count_and_the_largest(remaining_ratio):
    values = tf.random.stateless_uniform([3, 3, 16, 24], seed=[1, 2])
    mask = masking.top_k_mask(values, remaining_ratio).numpy()
    total = values.shape.num_elements()
    keep = total - math.floor((1 - remaining_ratio) * total)
    assert mask.sum() == keep
    assert set(np.unique(mask)) <= {0.0, 1.0}
    flat = values.numpy().ravel()
    kept, dropped = flat[mask.ravel() == 1], flat[mask.ravel() == 0]
    if dropped.size:
        assert kept.min() >= dropped.max()


def test_top_k_ties_match_top_k_lower_index_first():
    values = tf.round(tf.random.stateless_uniform([4000], seed=[3, 4]) * 7) / 7  # heavy ties
    for ratio in (0.13, 0.5, 0.77):
        keep = masking.kept_count(4000, ratio)
        _, index = tf.math.top_k(values, k=keep)
        reference = np.zeros(4000, np.float32)
        reference[index.numpy()] = 1
        np.testing.assert_array_equal(masking.top_k_mask(values, ratio).numpy(), reference)


def test_padded_top_k_equals_top_k_on_ties_and_zeros_at_awkward_lengths():
    """The select runs on inputs padded with zeros (to 2**14 at least, above that to a multiple of an eighth of a
    power of two): lengths below, at and above those, mostly zeros (the kept entries reach into the zeros, which tie
    with the padding) or few distinct values."""
    for length in (7, 16383, 16385, 36864, 40000):
        for seed, zeros in ((5, 0.9), (6, 0.2)):
            uniform = tf.random.stateless_uniform([length], seed=[seed, length]).numpy()
            values = np.where(uniform < zeros, 0.0, np.round(uniform * 5) / 5).astype(np.float32)
            for ratio in (0.05, 0.5, 0.97):
                keep = masking.kept_count(length, ratio)
                _, index = tf.math.top_k(values, k=keep)
                reference = np.zeros(length, np.float32)
                reference[index.numpy()] = 1
                np.testing.assert_array_equal(masking.top_k_mask(values, ratio).numpy(), reference,
                                              err_msg=f"length {length}, ratio {ratio}")


def test_top_k_handles_zeros_and_large_values():
    values = tf.constant([0.0, 0.0, 3e38, 1e-30, 5.0, 0.0])
    np.testing.assert_array_equal(masking.top_k_mask(values, 0.5).numpy(), [0, 0, 1, 1, 1, 0])


def test_bad_remaining_ratio_is_rejected():
    for ratio in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="remaining_ratio"):
            masking.top_k_mask(tf.ones([10]), ratio)


def test_straight_through_gradient_is_sign_of_scores_times_upstream():
    scores = tf.Variable(tf.random.stateless_uniform([50], minval=-1, maxval=1, seed=[5, 6]))
    upstream = tf.random.stateless_normal([50], seed=[7, 8])
    with tf.GradientTape() as tape:
        mask = masking.score_mask(scores, 0.3)
        loss = tf.reduce_sum(mask * upstream)
    grad = tape.gradient(loss, scores)
    np.testing.assert_allclose(grad.numpy(), (np.sign(scores.numpy()) * upstream.numpy()), rtol=1e-6)
    assert mask.numpy().sum() == masking.kept_count(50, 0.3)


@pytest.mark.parametrize("sparsity,expected", [
    ("element", (3, 3, 8, 16)), ("row", (3, 1, 8, 16)), ("kernel", (1, 1, 8, 16)), ("channel", (1, 1, 1, 16))])
def test_score_shapes_for_conv_kernels(sparsity, expected):
    assert masking.score_shape((3, 3, 8, 16), sparsity) == expected


def test_score_shapes_for_dense_kernels():
    assert masking.score_shape((8, 16), "element") == (8, 16)
    assert masking.score_shape((8, 16), "row") == (8, 16)
    assert masking.score_shape((8, 16), "channel") == (1, 16)
    with pytest.raises(ValueError, match="sparsity"):
        masking.score_shape((8, 16), "block")


def test_supplied_masks_nest_and_unwind():
    first, second = object(), object()
    with masking.supplied_masks({first: "a"}):
        with masking.supplied_masks({second: "b"}):
            assert masking.supplied_mask_for(first) == "a"
            assert masking.supplied_mask_for(second) == "b"
        assert masking.supplied_mask_for(second) is None
    assert masking.supplied_mask_for(first) is None


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_many_layer_shapes_trace_the_top_k_once_and_log_no_tracing_warning():
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for index, (filters, size) in enumerate([(4, 3), (5, 1), (6, 3), (7, 1), (8, 3)]):  # 6 shapes with the dense
        x = layers.MaskedConv2D(filters, size, padding=size // 2, remaining_ratio=0.3, seed=(0, index))(x)
    outputs = layers.MaskedDense(3, remaining_ratio=0.3, seed=(0, 9))(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    records = _Records()
    tf.get_logger().addHandler(records)
    try:
        for layer in layers.masked_layers(model):
            layer.binary_mask()

        @tf.function
        def forward(images):  # as a search step: every mask once, then the network with them
            masks = layers.current_masks(model)
            with masking.supplied_masks(masks):
                return model(images)

        forward(tf.zeros([2, 8, 8, 3]))
    finally:
        tf.get_logger().removeHandler(records)
    assert not [message for message in records.messages
                if "retracing" in message or "AutoGraph could not transform" in message]
    assert masking._top_k_flat.experimental_get_tracing_count() == 1
