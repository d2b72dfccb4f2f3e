"""Top-k masks over score magnitudes, the straight-through estimator and sparsity patterns.

A masked layer keeps the `remaining_ratio` fraction of its weights with the largest |score|. The forward value of
the mask is binary; its gradient with respect to |score| is the identity (straight-through), so the gradient that
reaches a signed score is `sign(score) * dL/dmask`.
"""
import contextlib
import math
import threading

import numpy as np
import tensorflow as tf

SPARSITY_PATTERNS = ("element", "row", "kernel", "channel")

_FLOAT_BITS_BUCKET = 32768  # 2**15: the low 15 bits of a float32 pattern; the high 16 bits pick a bucket
# Shorter inputs of the top-k are padded to this length: the select's 2**16-bucket counts cost more than that many
# entries (a mask of 128 entries takes 0.80 ms, of 16,384 entries 0.98 ms), and all of them share one XLA program.
_SHORTEST_PADDED = 1 << 14
_LENGTHS_PER_OCTAVE = 8  # longer inputs are padded to a multiple of 1/8 of the power of two below them (< 12.5% more)


def kept_count(total, remaining_ratio):
    """Entries kept out of `total` at `remaining_ratio`: `total - floor((1 - remaining_ratio) * total)`."""
    check_remaining_ratio(remaining_ratio)
    return int(total - math.floor((1.0 - remaining_ratio) * total))


def check_remaining_ratio(remaining_ratio):
    if not (0.0 < float(remaining_ratio) <= 1.0):
        raise ValueError(f"remaining_ratio must be in (0, 1], got {remaining_ratio}")


def score_shape(kernel_shape, sparsity):
    """Shape of the scores that mask a kernel: one score per group of weights, broadcast over the group.

    Kernels are Keras HWIO `(kh, kw, in, out)`; a dense kernel `(in, out)` is treated as a 1x1 convolution, so
    `row` and `kernel` are element-wise there and `channel` is one score per output unit.
    """
    if sparsity not in SPARSITY_PATTERNS:
        raise ValueError(f"sparsity must be one of {SPARSITY_PATTERNS}, got {sparsity!r}")
    kernel_shape = tuple(int(d) for d in kernel_shape)
    if len(kernel_shape) == 2:
        return (1, kernel_shape[1]) if sparsity == "channel" else kernel_shape
    if len(kernel_shape) != 4:
        raise ValueError(f"expected a 2-D or 4-D kernel shape, got {kernel_shape}")
    kh, kw, cin, cout = kernel_shape
    return {
        "element": (kh, kw, cin, cout),
        "row": (kh, 1, cin, cout),
        "kernel": (1, 1, cin, cout),
        "channel": (1, 1, 1, cout),
    }[sparsity]


def top_k_mask(magnitudes, remaining_ratio):
    """Binary float mask of `magnitudes`' shape keeping exactly `kept_count(size, remaining_ratio)` largest entries.

    `magnitudes` must be non-negative. Ties go to the lower flat index, as `tf.math.top_k` breaks them. Runs in a
    few linear passes (a two-level radix select on the float bit patterns) rather than a sort (timings against
    `tf.math.top_k`: bench/topk.py, docs/performance.md).
    """
    magnitudes = tf.convert_to_tensor(magnitudes, tf.float32)
    total = int(np.prod(magnitudes.shape))
    keep = kept_count(total, remaining_ratio)
    if keep == total:
        return tf.ones_like(magnitudes)
    bits = tf.bitcast(tf.reshape(magnitudes, [-1]), tf.int32)  # monotone in the value for non-negative floats
    kept = _padded_top_k_flat(bits, total, keep)
    return tf.reshape(tf.cast(kept, tf.float32), tf.shape(magnitudes))


def global_top_k_masks(magnitudes_list, remaining_ratio, compiled=True):
    """Binary float masks, one per tensor of `magnitudes_list`, keeping together exactly
    `kept_count(total size, remaining_ratio)` of the largest entries of all of them: one threshold over every entry
    (global pruning, as HYDRA), so each tensor keeps its own fraction.

    Entries must be non-negative. Ties go to the lower index in the concatenation of the tensors in list order,
    each flattened in C order. One top-k over the concatenation: the radix select of `top_k_mask`, or with
    `compiled=False` `tf.math.top_k` (the same masks, nothing compiled: `sorted_top_k_masks`).
    """
    tensors = [tf.convert_to_tensor(magnitudes, tf.float32) for magnitudes in magnitudes_list]
    if not tensors:
        raise ValueError("global_top_k_masks needs at least one tensor")
    sizes = [int(np.prod(tensor.shape)) for tensor in tensors]
    total = sum(sizes)
    keep = kept_count(total, remaining_ratio)
    if keep == total:
        return [tf.ones_like(tensor) for tensor in tensors]
    flat = tf.concat([tf.reshape(tensor, [-1]) for tensor in tensors], 0)
    if compiled:
        kept = tf.cast(_padded_top_k_flat(tf.bitcast(flat, tf.int32), total, keep), tf.float32)
    else:
        indices = tf.math.top_k(flat, keep, sorted=True).indices
        kept = tf.scatter_nd(indices[:, None], tf.ones([keep], tf.float32), [total])
    return [tf.reshape(piece, tf.shape(tensor)) for piece, tensor in zip(tf.split(kept, sizes), tensors)]


def sorted_top_k_masks(magnitudes_list, remaining_ratio):
    """`global_top_k_masks` from `tf.math.top_k` rather than the XLA radix select: the same masks with nothing
    compiled, so the cheaper choice for masks computed once (evaluation), not at every training step."""
    return global_top_k_masks(magnitudes_list, remaining_ratio, compiled=False)


def _padded_length(total):
    """The length `total` entries are padded to for the top-k: `_SHORTEST_PADDED` at least, else the next multiple of
    1/`_LENGTHS_PER_OCTAVE` of the largest power of two <= `total`."""
    if total <= _SHORTEST_PADDED:
        return _SHORTEST_PADDED
    step = (1 << (total.bit_length() - 1)) // _LENGTHS_PER_OCTAVE
    return -(-total // step) * step


def _padded_top_k_flat(bits, total, keep):
    """`_top_k_flat` of the `total` entries of `bits`, run on them padded with zeros to `_padded_length(total)`, so that
    XLA compiles one program per such length (about a CPU second each) rather than one per layer size: one for every
    layer of a narrow network, at most 8 per doubling of the length above 2**14. The result is the same: the zeros come
    after every real entry, ties go to the first index, and `keep` <= `total` real entries suffice."""
    padded = _padded_length(total)
    if padded != total:
        bits = tf.concat([bits, tf.zeros([padded - total], tf.int32)], 0)
    return _top_k_flat(bits, tf.constant(keep, tf.int32))[:total]


@tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)])
def _top_k_flat(bits, keep):
    """Boolean mask of the `keep` largest of non-negative float bit patterns, first index first among ties.

    Always compiled with XLA, which fuses the counting passes into few loops over the data. Traced once for any
    length (XLA still compiles, and caches, one program per concrete length), so networks with many layer shapes
    do not retrace it.
    """
    threshold = _kth_largest_bits(bits, keep)
    greater = bits > threshold
    equal = bits == threshold
    still_needed = keep - tf.reduce_sum(tf.cast(greater, tf.int32))

    def keep_first_ties():
        return greater | (equal & (tf.cumsum(tf.cast(equal, tf.int32)) <= still_needed))

    return tf.cond(tf.equal(tf.reduce_sum(tf.cast(equal, tf.int32)), still_needed),
                   lambda: greater | equal, keep_first_ties)


def _kth_largest_bits(bits, rank):
    """Bit pattern of the `rank`-th largest entry (1-based) of non-negative int32 `bits`."""
    high = bits // _FLOAT_BITS_BUCKET
    ones = tf.ones_like(bits)
    bucket, rank_in_bucket = _select_bucket(ones, high, rank, 2 * _FLOAT_BITS_BUCKET)
    in_bucket = tf.cast(tf.equal(high, bucket), tf.int32)
    low_value, _ = _select_bucket(in_bucket, bits % _FLOAT_BITS_BUCKET, rank_in_bucket, _FLOAT_BITS_BUCKET)
    return bucket * _FLOAT_BITS_BUCKET + low_value


def _select_bucket(weights, values, rank, num_buckets):
    """The bucket holding the `rank`-th largest of the weighted `values`, and that entry's rank in the bucket.

    Counts with a segment sum of static size (XLA compiles it; `tf.math.bincount` has a data-dependent size).
    """
    counts = tf.math.unsorted_segment_sum(weights, values, num_buckets)
    above = tf.cumsum(counts, reverse=True, exclusive=True)
    holds = (above < rank) & (above + counts >= rank)
    bucket = tf.reduce_max(tf.where(holds, tf.range(num_buckets), -1))
    return bucket, rank - tf.gather(above, bucket)


@tf.custom_gradient
def _straight_through(magnitudes, mask):
    """Forward: `mask`. Backward: the incoming gradient goes unchanged to `magnitudes` (and none to `mask`)."""
    def grad(upstream):
        return upstream, tf.zeros_like(mask)
    return tf.identity(mask), grad


def straight_through_mask(scores, mask):
    """`mask` in the forward pass; in the backward pass `dL/dscores = sign(scores) * dL/dmask`.

    `mask` must be `top_k_mask(abs(scores), ...)`; passing it in lets one mask computation serve many passes.
    """
    return _straight_through(tf.abs(scores), tf.stop_gradient(mask))


def score_mask(scores, remaining_ratio):
    """Top-k mask over |scores| with the straight-through gradient."""
    return straight_through_mask(scores, top_k_mask(tf.abs(scores), remaining_ratio))


# --- values supplied from outside a layer (masks computed once per training step, or a ticket picked from a bank)

class SuppliedPerLayer:
    """A stack of {layer: value} blocks; a layer looks up the value of the innermost block that names it.

    Each thread has its own stack: MirroredStrategy runs (and traces) every replica's step in a thread of its own,
    switching threads inside a step, so replicas must not see, or close, one another's blocks.
    """

    def __init__(self):
        self._local = threading.local()

    @property
    def _blocks(self):
        if not hasattr(self._local, "blocks"):
            self._local.blocks = []
        return self._local.blocks

    @contextlib.contextmanager
    def block(self, values_by_layer):
        blocks = self._blocks
        blocks.append({id(layer): value for layer, value in values_by_layer.items()})
        try:
            yield
        finally:
            blocks.pop()

    def value_for(self, layer):
        for values in reversed(self._blocks):
            if id(layer) in values:
                return values[id(layer)]
        return None


_supplied_masks = SuppliedPerLayer()

UNMASKED = "unmasked"  # supply it as a layer's mask to run the layer's (supplied) kernel as it is


def supplied_masks(masks_by_layer):
    """Within this block, each masked layer in `masks_by_layer` (a dict layer -> mask tensor) uses that mask.

    Layers read it when they are called (traced), so a train step can compute every mask once and reuse it for all
    the forward passes of an attack, and R2S can run one network with a mask picked from a bank.
    """
    return _supplied_masks.block(masks_by_layer)


def supplied_mask_for(layer):
    """The mask supplied for `layer` by the innermost `supplied_masks` block, or None."""
    return _supplied_masks.value_for(layer)
