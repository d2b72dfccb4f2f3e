"""Masked Keras layers: a frozen random kernel, a trainable score per weight (or group), kernel * top-k mask.

    layer = MaskedConv2D(64, 3, remaining_ratio=0.1, seed=(0, 1))
    y = layer(x)                        # uses kernel * mask(scores)
    layer.binary_mask()                 # the current {0, 1} mask, score-shaped
    layer.set_trainable_parts(scores=False, kernel=True)   # fine-tune the kernel under a fixed mask

Only `scores` are trainable by default. A mask supplied with `masking.supplied_masks` replaces the one derived from
the scores for the duration of the block (one mask computation per training step; R2S mask banks).
"""
import keras
import tensorflow as tf

from rst_tf import initializers, masking


class _MaskedKernelLayer(keras.layers.Layer):
    """Shared state and masking logic of `MaskedConv2D` and `MaskedDense`."""

    def __init__(self, remaining_ratio=0.5, sparsity="element", weight_init="signed_kaiming_constant",
                 seed=(0, 0), scale_fan=False, train_scores=True, train_kernel=False, **kwargs):
        super().__init__(**kwargs)
        masking.check_remaining_ratio(remaining_ratio)
        if sparsity not in masking.SPARSITY_PATTERNS:
            raise ValueError(f"sparsity must be one of {masking.SPARSITY_PATTERNS}, got {sparsity!r}")
        if weight_init not in initializers.WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {initializers.WEIGHT_INITS}, got {weight_init!r}")
        self.remaining_ratio = float(remaining_ratio)
        self.sparsity = sparsity
        self.weight_init = weight_init
        self.seed = (int(seed[0]), int(seed[1]))
        self.scale_fan = bool(scale_fan)
        self._train_scores = bool(train_scores)
        self._train_kernel = bool(train_kernel)

    def _add_kernel_and_scores(self, kernel_shape):
        fan_in, _ = initializers.fans(kernel_shape)
        # Both are created trainable so that a gradient tape watches them, whichever part is searched or trained;
        # `set_trainable_parts` then decides what optimizers see and what receives a gradient at all.
        self.kernel = self.add_weight(
            name="kernel", shape=kernel_shape, trainable=True,
            initializer=initializers.StatelessInitializer(
                self.weight_init, self.seed, self.scale_fan, self.remaining_ratio))
        # Scores stay float32 under mixed precision: the top-k ranks their exact values.
        self.scores = self.add_weight(
            name="scores", shape=masking.score_shape(kernel_shape, self.sparsity), trainable=True,
            autocast=False,
            initializer=initializers.StatelessInitializer(
                "scores", (self.seed[0], self.seed[1] + _SCORE_STREAM), fan_in=fan_in))
        self.set_trainable_parts(scores=self._train_scores, kernel=self._train_kernel)

    def set_trainable_parts(self, scores, kernel):
        """Choose what an optimizer updates: the scores (mask search), the kernel (fine-tuning), or both.

        A frozen part gets no gradient at all. Functions traced before the change must be traced again.
        """
        self._train_scores, self._train_kernel = bool(scores), bool(kernel)
        if hasattr(self, "scores"):
            self.scores.trainable = self._train_scores
            self.kernel.trainable = self._train_kernel

    def set_remaining_ratio(self, remaining_ratio):
        """Change the kept fraction; traced functions that use this layer must be traced again."""
        masking.check_remaining_ratio(remaining_ratio)
        self.remaining_ratio = float(remaining_ratio)

    def binary_mask(self):
        """The {0, 1} mask the scores select now, in the scores' (group) shape."""
        if self.remaining_ratio == 1.0:
            return tf.ones_like(self.scores)
        return masking.top_k_mask(tf.abs(self.scores), self.remaining_ratio)

    def masked_kernel(self):
        """`kernel * mask`, with the gradient to the scores (straight-through) when they are trainable.

        A kernel supplied with `supplied_kernels` stands in for the layer's own (e.g. a SavedModel's variable).
        """
        kernel = _supplied_kernels.value_for(self)
        if kernel is None:
            kernel = self.kernel if self.kernel.trainable else tf.stop_gradient(self.kernel)
        mask = masking.supplied_mask_for(self)
        if (mask is None and self.remaining_ratio == 1.0) or (isinstance(mask, str) and mask == masking.UNMASKED):
            return kernel
        if mask is None:
            mask = self.binary_mask()
        mask = tf.stop_gradient(tf.convert_to_tensor(mask, tf.float32))
        if self.scores.trainable:
            mask = masking.straight_through_mask(self.scores, mask)
        return kernel * tf.cast(mask, kernel.dtype)

    def save_own_variables(self, store):
        store["kernel"] = self.kernel
        store["scores"] = self.scores

    def load_own_variables(self, store):
        self.kernel.assign(store["kernel"])
        self.scores.assign(store["scores"])

    def get_config(self):
        config = super().get_config()
        config.update(remaining_ratio=self.remaining_ratio, sparsity=self.sparsity,
                      weight_init=self.weight_init, seed=list(self.seed), scale_fan=self.scale_fan,
                      train_scores=self._train_scores, train_kernel=self._train_kernel)
        return config


_supplied_kernels = masking.SuppliedPerLayer()


def supplied_kernels(kernels_by_layer):
    """Within this block, each masked layer in `kernels_by_layer` (layer -> kernel tensor) uses that kernel in place
    of its own frozen weights; the mask still applies (supplied, or from the layer's scores)."""
    return _supplied_kernels.block(kernels_by_layer)


_SCORE_STREAM = 1 << 20  # scores draw from a stream far from any layer's weight stream


@keras.saving.register_keras_serializable(package="rst_tf")
class MaskedConv2D(_MaskedKernelLayer):
    """2-D convolution without bias whose kernel is masked by top-k scores.

    `padding` is the number of zero pixels added on each side (as in PyTorch), so stride-2 convolutions line up with
    the paper's networks; `"same"`/`"valid"` are accepted as well.
    """

    def __init__(self, filters, kernel_size, strides=1, padding=0, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = padding

    def build(self, input_shape):
        self._add_kernel_and_scores((self.kernel_size, self.kernel_size, int(input_shape[-1]), self.filters))

    def call(self, inputs):
        kernel = self.masked_kernel()
        if isinstance(self.padding, str):
            return tf.nn.conv2d(inputs, kernel, self.strides, self.padding.upper())
        if self.strides == 1 and 2 * self.padding == self.kernel_size - 1:
            return tf.nn.conv2d(inputs, kernel, 1, "SAME")  # the same result, and much faster than explicit pads
        if self.padding:
            pad = [[0, 0], [self.padding, self.padding], [self.padding, self.padding], [0, 0]]
            inputs = tf.pad(inputs, pad)
        return tf.nn.conv2d(inputs, kernel, self.strides, "VALID")

    def compute_output_shape(self, input_shape):
        size = [input_shape[1], input_shape[2]]
        for i, extent in enumerate(size):
            if extent is None:
                continue
            if self.padding == "same":
                size[i] = -(-extent // self.strides)
            else:
                pad = 0 if self.padding == "valid" else 2 * self.padding
                size[i] = (extent + pad - self.kernel_size) // self.strides + 1
        return (input_shape[0], size[0], size[1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      padding=self.padding)
        return config


@keras.saving.register_keras_serializable(package="rst_tf")
class MaskedDense(_MaskedKernelLayer):
    """Fully connected layer without bias whose kernel is masked by top-k scores."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self._add_kernel_and_scores((int(input_shape[-1]), self.units))

    def call(self, inputs):
        return tf.matmul(inputs, self.masked_kernel())

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config


def masked_layers(model):
    """Every masked layer of `model`, in a stable order (depth first, as Keras lists them)."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, _MaskedKernelLayer)]


def current_masks(model):
    """Every masked layer's binary mask, computed once (layers keeping all their weights need none)."""
    return {layer: layer.binary_mask() for layer in masked_layers(model) if layer.remaining_ratio < 1.0}


_supplied_statistics = masking.SuppliedPerLayer()


def supplied_statistics(statistics_by_layer):
    """Within this block, each `TicketBatchNormalization` in `statistics_by_layer` (layer -> (mean, variance))
    normalises with those statistics at inference: every ticket of a mask bank has its own."""
    return _supplied_statistics.block(statistics_by_layer)


@keras.saving.register_keras_serializable(package="rst_tf")
class TicketBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose inference statistics can be supplied per call with `supplied_statistics`.

    Masks of different remaining ratios over the same weights give different activation statistics, so a network
    that switches masks (R2S) switches statistics with them. Training mode, and inference without a supplied
    block, behave exactly as Keras's layer. Supplied statistics need `center=False, scale=False`.
    """

    def call(self, inputs, training=None, mask=None):
        statistics = _supplied_statistics.value_for(self)
        if statistics is None or training:
            return super().call(inputs, training=training, mask=mask)
        if self.center or self.scale:
            raise ValueError("supplied statistics need a non-affine BatchNormalization (center=False, scale=False)")
        mean, variance = (tf.cast(value, inputs.dtype) for value in statistics)
        return (inputs - mean) * tf.math.rsqrt(variance + self.epsilon)


def batch_norm_layers(model):
    """Every `TicketBatchNormalization` of `model`, in a stable order."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, TicketBatchNormalization)]


@keras.saving.register_keras_serializable(package="rst_tf")
class InputNormalization(keras.layers.Layer):
    """Fixed per-channel `(x - mean) / std`, so that models (and attacks on them) take [0, 1] pixels."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def call(self, inputs):
        mean = tf.constant(self.mean, inputs.dtype)
        std = tf.constant(self.std, inputs.dtype)
        return (inputs - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=self.mean, std=self.std)
        return config
