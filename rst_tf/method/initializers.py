"""Weight and score initializers, reproducible bit for bit from a seed on any machine.

All draws use TensorFlow's stateless Philox generator with an explicit `(seed, stream)` pair, so the same seed
gives the same weights regardless of device, thread count or the order in which layers are built.
"""
import math

import keras
import tensorflow as tf

WEIGHT_INITS = ("signed_kaiming_constant", "kaiming_normal", "xavier_normal", "kaiming_uniform")
SCALE_FAN_INITS = ("signed_kaiming_constant", "kaiming_normal")  # the inits whose fan-in `scale_fan` scales

_RELU_GAIN = math.sqrt(2.0)


def fans(shape):
    """(fan_in, fan_out) of a Keras kernel: `(in, out)` or HWIO `(kh, kw, in, out)`."""
    shape = tuple(int(d) for d in shape)
    receptive_field = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def score_initializer(score_shape, sparsity, seed):
    """The initializer of the scores of one sparsity pattern, as the paper's code draws them.

    The paper's code runs PyTorch's `kaiming_uniform_(a=sqrt(5))` on the score tensor itself, i.e. uniform in
    ±1/sqrt(fan-in of the scores): `in*kh*kw` for `element`, `in*kh` for `row` (one score per out, in, kh),
    `in` for `kernel`; `channel` scores are standard normal. `score_shape` is Keras's (HWIO, or `(in, out)` for
    a dense kernel, which counts as a 1x1 convolution), so the fan-in is `in` times the height and width the
    scores keep.
    """
    shape = tuple(int(d) for d in score_shape)
    if sparsity == "channel":
        return StatelessInitializer("scores_normal", seed)
    fan_in = shape[-2] * (math.prod(shape[:-2]) if len(shape) > 2 else 1)
    return StatelessInitializer("scores", seed, fan_in=fan_in)


@keras.saving.register_keras_serializable(package="rst_tf")
class StatelessInitializer(keras.initializers.Initializer):
    """One of the paper's weight inits (or the score init), drawn with stateless Philox from `seed`.

    Args:
      method: one of `WEIGHT_INITS`, "scores" (uniform in ±1/sqrt(fan_in)) or "scores_normal" (standard normal);
        see `score_initializer`.
      seed: pair of ints `(seed, stream)`; a network gives each layer its own stream.
      scale_fan: multiply the fan-in by `remaining_ratio` (the fan-in the kept subnetwork sees) for the inits in
        `SCALE_FAN_INITS`; the other inits ignore it, as in the paper's code. The fan-out is never scaled.
      remaining_ratio: used only with `scale_fan`.
      fan_in: for "scores", the fan-in of the score tensor (default: from `shape`).
    """

    def __init__(self, method, seed, scale_fan=False, remaining_ratio=1.0, fan_in=None):
        if method not in WEIGHT_INITS + ("scores", "scores_normal"):
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {method!r}")
        self.method = method
        self.seed = (int(seed[0]), int(seed[1]))
        self.scale_fan = bool(scale_fan)
        self.remaining_ratio = float(remaining_ratio)
        self.fan_in = None if fan_in is None else int(fan_in)

    def __call__(self, shape, dtype=None):
        fan_in, fan_out = fans(shape)
        if self.scale_fan and self.method in SCALE_FAN_INITS:
            fan_in *= self.remaining_ratio
        seed = tf.constant(self.seed, tf.int64)
        shape = tuple(int(d) for d in shape)
        draw = dict(shape=shape, seed=seed, alg="philox", dtype=tf.float32)
        if self.method == "signed_kaiming_constant":
            std = _RELU_GAIN / math.sqrt(fan_in)
            values = tf.sign(tf.random.stateless_normal(**draw)) * std
        elif self.method == "kaiming_normal":
            values = tf.random.stateless_normal(**draw) * (_RELU_GAIN / math.sqrt(fan_in))
        elif self.method == "xavier_normal":
            values = tf.random.stateless_normal(**draw) * math.sqrt(2.0 / (fan_in + fan_out))
        elif self.method == "kaiming_uniform":
            bound = _RELU_GAIN * math.sqrt(3.0 / fan_in)
            values = tf.random.stateless_uniform(minval=-bound, maxval=bound, **draw)
        elif self.method == "scores":
            bound = 1.0 / math.sqrt(self.fan_in or fans(shape)[0])
            values = tf.random.stateless_uniform(minval=-bound, maxval=bound, **draw)
        else:  # scores_normal
            values = tf.random.stateless_normal(**draw)
        return tf.cast(values, dtype or tf.float32)

    def get_config(self):
        return {"method": self.method, "seed": list(self.seed), "scale_fan": self.scale_fan,
                "remaining_ratio": self.remaining_ratio, "fan_in": self.fan_in}
