"""The top-k op, its straight-through gradient, sparsity patterns and bit-packing."""
import math

import numpy as np
import pytest
import tensorflow as tf

from rst_tf import masking

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


@pytest.mark.parametrize("shape", [(7,), (3, 3, 5, 9), (1, 1, 1, 1)])
def test_pack_unpack_round_trip(shape):
    mask = (np.random.RandomState(0).rand(*shape) > 0.6).astype(np.float32)
    packed = masking.pack_mask(mask)
    assert len(packed) == (mask.size + 7) // 8
    np.testing.assert_array_equal(masking.unpack_mask(packed, shape), mask)


def test_pack_rejects_non_binary_and_wrong_sizes():
    with pytest.raises(ValueError, match="binary"):
        masking.pack_mask(np.array([0.0, 0.5]))
    with pytest.raises(ValueError, match="bytes"):
        masking.unpack_mask(b"\x00\x00", (3,))


def test_supplied_masks_nest_and_unwind():
    first, second = object(), object()
    with masking.supplied_masks({first: "a"}):
        with masking.supplied_masks({second: "b"}):
            assert masking.supplied_mask_for(first) == "a"
            assert masking.supplied_mask_for(second) == "b"
        assert masking.supplied_mask_for(second) is None
    assert masking.supplied_mask_for(first) is None
