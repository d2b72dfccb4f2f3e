"""Checking that image files decode, before a run depends on them."""
import numpy as np
import tensorflow as tf


def check_decodable(paths, expected_shape=None, skip_bad=False):
    """The files of `paths` that do not decode to an RGB image (of `expected_shape`, when given), in order.

    Unless `skip_bad`, the first such file raises ValueError naming it and TensorFlow's reason.
    """
    bad = []
    for path, reason in _undecodable(paths, expected_shape):
        if not skip_bad:
            raise ValueError(f"image file {path} cannot be decoded ({reason}); skip_bad_images leaves such files out")
        bad.append(path)
    return bad


def _undecodable(paths, expected_shape):
    """(path, reason) of each bad file, in the order of `paths` (every file is decoded once, in parallel)."""
    if not len(paths):
        return

    def shape_of(index, path):
        return index, tf.shape(tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False))

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
    ds = ds.map(shape_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    shapes = {int(index): tuple(int(d) for d in shape)
              for indices, batch in ds.batch(4096).as_numpy_iterator() for index, shape in zip(indices, batch)}
    for index, path in enumerate(paths):
        if index not in shapes:
            yield str(path), _decode_error(path)
        elif expected_shape and shapes[index] != tuple(expected_shape):
            yield str(path), f"shape {shapes[index]}, not {tuple(expected_shape)}"


def _decode_error(path):
    """TensorFlow's reason for not decoding the file at `path` (its first line)."""
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        return (error.message or type(error).__name__).splitlines()[0]
    return "it does not decode"
