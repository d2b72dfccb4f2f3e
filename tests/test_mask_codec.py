"""The mask codec round-trips every mask exactly and stays within a few percent of the entropy bound."""
import math

import numpy as np
import pytest

from rst_tf.deployment import mask_codec


def _random_mask(size, kept_fraction, seed=0):
    mask = np.zeros(size, bool)
    mask[np.random.default_rng(seed).choice(size, int(round(kept_fraction * size)), replace=False)] = True
    return mask


@pytest.mark.parametrize("kept_fraction", [0.0, 0.01, 0.05, 0.3, 0.5, 0.7, 1.0])
def test_round_trip_is_exact(kept_fraction):
    mask = _random_mask(30_011, kept_fraction).reshape(-1, 1)[:30_000].reshape(3, 10, 1000)
    assert np.array_equal(mask_codec.decode(mask_codec.encode(mask), mask.shape), mask)


@pytest.mark.parametrize("mask", [[1], [0], [1, 0, 1, 1, 0, 0, 0, 1], [0] * 999 + [1]])
def test_small_and_edge_masks(mask):
    mask = np.array(mask, bool)
    assert np.array_equal(mask_codec.decode(mask_codec.encode(mask), mask.shape), mask)


@pytest.mark.parametrize("kept_fraction", [0.05, 0.1, 0.2, 0.3])
def test_size_is_near_entropy(kept_fraction):
    size = 200_000
    entropy = -(kept_fraction * math.log2(kept_fraction) + (1 - kept_fraction) * math.log2(1 - kept_fraction))
    bits_per_entry = 8 * mask_codec.encode(_random_mask(size, kept_fraction)).num_bytes / size
    assert bits_per_entry <= 1.04 * entropy + 0.001
    assert bits_per_entry < 1.0  # always smaller than plain bit-packing


def test_rejects_non_binary_masks_and_wrong_shapes():
    with pytest.raises(ValueError, match="binary"):
        mask_codec.encode(np.array([0, 2]))
    encoded = mask_codec.encode(np.ones(10, bool))
    with pytest.raises(ValueError, match="needs 12"):
        mask_codec.decode(encoded, (3, 4))
