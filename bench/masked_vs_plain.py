"""Forward+backward through a masked ResNet18 vs the same network built from plain Keras Conv2D/Dense layers.

    python bench/masked_vs_plain.py [--batch 128] [--width 1.0] [--repeats 7]

Both run inside tf.function on the same batch, interleaved. The masked network runs as in a search step: the masks
are computed once per step (timed on their own) and the gradient goes to the scores. Results: docs/masked_vs_plain.json.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import common  # noqa: E402
from rst_tf import networks  # noqa: E402
from rst_tf.method import layers, masking  # noqa: E402
from rst_tf.networks import resnet_cifar  # noqa: E402


class PlainLayerFactory(networks.MaskedLayerFactory):
    """Builds the same architecture from plain Keras layers with PyTorch-style padding."""

    def conv(self, filters, kernel_size, strides=1, padding=None, name=None, dense=False):
        padding = kernel_size // 2 if padding is None else padding
        if strides == 1 and 2 * padding == kernel_size - 1:
            return keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=name)
        conv = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="valid", use_bias=False)
        pad = keras.layers.ZeroPadding2D(padding)
        return lambda x: conv(pad(x)) if padding else conv(x)

    def dense(self, units, name=None, dense=False):
        return keras.layers.Dense(units, use_bias=False, name=name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--remaining_ratio", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    shape = dict(num_classes=10, input_shape=(32, 32, 3), dataset="cifar10")
    masked = networks.build("resnet18", remaining_ratio=args.remaining_ratio, width_multiplier=args.width, **shape)
    plain = resnet_cifar.resnet18(PlainLayerFactory(width_multiplier=args.width), **shape)
    images = tf.random.stateless_uniform([args.batch, 32, 32, 3], seed=[0, 0])
    labels = tf.random.stateless_uniform([args.batch], seed=[0, 1], maxval=10, dtype=tf.int32)
    masked_layers = [layer for layer in layers.masked_layers(masked) if layer.remaining_ratio < 1.0]

    def loss_of(model):
        logits = model(images, training=True)
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))

    @tf.function
    def compute_masks():
        return [layer.binary_mask() for layer in masked_layers]

    @tf.function
    def masked_step(masks):
        with masking.supplied_masks(dict(zip(masked_layers, masks))):
            with tf.GradientTape() as tape:
                loss = loss_of(masked)
        return tape.gradient(loss, masked.trainable_variables)

    @tf.function
    def plain_step():
        with tf.GradientTape() as tape:
            loss = loss_of(plain)
        return tape.gradient(loss, plain.trainable_variables)

    masks = compute_masks()
    run = lambda function: lambda: [g.numpy() for g in function()][:0]
    medians, samples = common.interleaved_medians({
        "plain_fwd_bwd": run(plain_step),
        "masked_fwd_bwd": run(lambda: masked_step(masks)),
        "mask_computation": run(compute_masks),
    }, args.repeats)
    weights = sum(layer.kernel.shape.num_elements() for layer in layers.masked_layers(masked))
    results = {
        "what": "ResNet18 forward+backward on CIFAR-size inputs, masked (gradient to scores) vs plain Keras",
        "batch": args.batch, "width_multiplier": args.width, "remaining_ratio": args.remaining_ratio,
        "weights": weights, "repeats": args.repeats, "median_seconds": medians, "samples": samples,
        "masked_over_plain": medians["masked_fwd_bwd"] / medians["plain_fwd_bwd"],
        "masked_plus_one_mask_computation_over_plain":
            (medians["masked_fwd_bwd"] + medians["mask_computation"]) / medians["plain_fwd_bwd"],
        "machine": common.machine(),
    }
    print(common.write_results("masked_vs_plain", results))
    for key in ("median_seconds", "masked_over_plain", "masked_plus_one_mask_computation_over_plain"):
        print(key, results[key])


if __name__ == "__main__":
    main()
