"""MALT target ranking (Melamed, Yehudai & Shamir 2024, "MALT Powers Up Adversarial Attacks").

For an example of class ``y`` and a candidate target ``t``, the score is the logit gap over the dual (L1) norm of
its input gradient, ``(z_y - z_t) / ||grad_x (z_y - z_t)||_1``: the L-inf distance to the boundary between ``y`` and
``t`` of the model linearised at the clean image. The best-ranked targets are the nearest boundaries, whatever the
model's confidence in them. One forward and one backward pass of every (example, candidate) row.
"""
import numpy as np
import tensorflow as tf

from rst_tf.attacks import core

# Guards the division when a gradient vanishes (such a target ranks last).
_TINY = 1e-12


def scores(model_fn, images, labels, candidates):
    """[batch, count] linearised L-inf distances to the boundary towards each column of `candidates`
    ([batch, count] class ids)."""
    images = tf.convert_to_tensor(images)
    labels = core.as_class_ids(labels)
    candidates = tf.cast(candidates, labels.dtype)
    batch, count = tf.shape(images)[0], candidates.shape[-1]
    rows = tf.tile(images, tf.concat([[count], tf.ones([images.shape.rank - 1], tf.int32)], 0))
    targets = tf.reshape(tf.transpose(candidates), [-1])  # rank-major, as `rows`
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(rows)
        logits = tf.cast(model_fn(rows), tf.float32)
        gap = (tf.gather(logits, tf.tile(labels, [count]), batch_dims=1)
               - tf.gather(logits, targets, batch_dims=1))
    gradient = tape.gradient(gap, rows)
    norm = tf.reduce_sum(tf.abs(tf.cast(gradient, tf.float32)), axis=list(range(1, images.shape.rank)))
    distance = gap / (norm + _TINY)
    return tf.transpose(tf.reshape(distance, [count, batch]))


def ranked_targets(model_fn, images, labels, clean_logits, count):
    """[batch, count]: the `count` classes other than the label with the smallest MALT score, best first
    (ties: lower class first)."""
    classes = clean_logits.shape[-1]
    labels = core.as_class_ids(labels)
    is_true = tf.one_hot(labels, classes, on_value=True, off_value=False)
    others = tf.argsort(tf.cast(is_true, tf.int32), axis=-1, stable=True)[:, :classes - 1]  # every class but y
    distance = scores(model_fn, images, labels, others)
    order = tf.argsort(distance, axis=-1, stable=True)[:, :count]
    return tf.gather(others, order, batch_dims=1)


def check_count(count, classes):
    """ValueError unless 1 <= count < classes (a target is a class other than the label)."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count < classes:
        raise ValueError(f"the number of MALT targets must be in [1, {classes - 1}] for {classes} classes, "
                         f"got {count!r}")
