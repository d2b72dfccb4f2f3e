"""Masked Keras layers: a frozen random kernel, a trainable score per weight (or group), kernel * top-k mask.

    layer = MaskedConv2D(64, 3, remaining_ratio=0.1, seed=(0, 1))
    y = layer(x)                        # uses kernel * mask(scores)
    layer.binary_mask()                 # the current {0, 1} mask, score-shaped
    layer.set_trainable_parts(scores=False, kernel=True)   # fine-tune the kernel under a fixed mask

Only `scores` are trainable by default. A mask supplied with `masking.supplied_masks` replaces the one derived from
the scores for the duration of the block (one mask computation per training step; R2S mask banks).
`set_topk_scope(model, "global")` makes the masked layers share one top-k over all their scores.
`supplied_remaining_ratios` (masks at another ratio) and `supplied_statistics_slots` (BatchNorm statistics of that
ratio, `rst_tf.method.ticket_batch_norm`) run one network as the tickets of several nested ratios.
"""
import keras
import tensorflow as tf

from rst_tf.method import initializers, masking
from rst_tf.method.ticket_batch_norm import (  # noqa: F401  (part of this module's interface)
    TicketBatchNormalization, statistics_slots, supplied_statistics, supplied_statistics_slots)


class _MaskedKernelLayer(keras.layers.Layer):
    """Shared state and masking logic of `MaskedConv2D` and `MaskedDense`."""

    def __init__(self, remaining_ratio=0.5, sparsity="element", weight_init="signed_kaiming_constant",
                 seed=(0, 0), scale_fan=False, train_scores=True, train_kernel=False, topk_scope="layer", **kwargs):
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
        _check_topk_scope(topk_scope)
        self.topk_scope = topk_scope
        self._global_top_k = None  # the GlobalTopK this layer belongs to (set by `set_topk_scope`)

    def _add_kernel_and_scores(self, kernel_shape):
        score_shape = masking.score_shape(kernel_shape, self.sparsity)
        # Both are created trainable so that a gradient tape watches them, whichever part is searched or trained;
        # `set_trainable_parts` then decides what optimizers see and what receives a gradient at all.
        self.kernel = self.add_weight(
            name="kernel", shape=kernel_shape, trainable=True,
            initializer=initializers.StatelessInitializer(
                self.weight_init, self.seed, self.scale_fan, self.remaining_ratio))
        # Scores stay float32 under mixed precision: the top-k ranks their exact values.
        self.scores = self.add_weight(
            name="scores", shape=score_shape, trainable=True, autocast=False,
            initializer=initializers.score_initializer(
                score_shape, self.sparsity, (self.seed[0], self.seed[1] + _SCORE_STREAM)))
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

    def mask_ratio(self):
        """The fraction the mask keeps now: the one `supplied_remaining_ratios` gives this layer, else its own."""
        supplied = _supplied_ratios.value_for(self)
        return self.remaining_ratio if supplied is None else supplied

    def binary_mask(self):
        """The {0, 1} mask the scores select now (at `mask_ratio()`), in the scores' (group) shape.

        Under a global top-k this computes every layer's mask of the group (use `current_masks` for all at once).
        """
        if self.mask_ratio() == 1.0:
            return tf.ones_like(self.scores)
        if self.topk_scope == "global":
            return self.global_top_k().masks()[self]
        return masking.top_k_mask(tf.abs(self.scores), self.mask_ratio())

    def global_top_k(self):
        """The `GlobalTopK` this layer's mask comes from (topk_scope 'global')."""
        if self._global_top_k is None:
            raise ValueError(f"layer {self.name!r} keeps a global top-k: call rst_tf.method.layers."
                             "set_topk_scope(model, 'global') on its model (e.g. after loading it)")
        return self._global_top_k

    def masked_kernel(self):
        """`kernel * mask`, with the gradient to the scores (straight-through) when they are trainable.

        A kernel supplied with `supplied_kernels` stands in for the layer's own (e.g. a SavedModel's variable).
        """
        kernel = _supplied_kernels.value_for(self)
        if kernel is None:
            kernel = self.kernel if self.kernel.trainable else tf.stop_gradient(self.kernel)
        else:  # not a variable of this layer, so not cast to its compute dtype by Keras (mixed precision)
            kernel = tf.cast(kernel, self.compute_dtype)
        mask = masking.supplied_mask_for(self)
        if (mask is None and self.mask_ratio() == 1.0) or (isinstance(mask, str) and mask == masking.UNMASKED):
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
                      train_scores=self._train_scores, train_kernel=self._train_kernel,
                      topk_scope=self.topk_scope)
        return config


_supplied_kernels = masking.SuppliedPerLayer()
_supplied_ratios = masking.SuppliedPerLayer()


def supplied_remaining_ratios(ratios_by_layer):
    """Within this block, each masked layer in `ratios_by_layer` (layer -> ratio in (0, 1]) derives its mask at that
    ratio (`binary_mask`, `current_masks`), so one set of scores gives the nested masks of several ratios."""
    for ratio in ratios_by_layer.values():
        masking.check_remaining_ratio(ratio)
    return _supplied_ratios.block({layer: float(ratio) for layer, ratio in ratios_by_layer.items()})


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


def _nested_layers(model):
    """Every layer of `model` and of the models nested in it, once each, depth first in Keras's `layers` order.

    Uses the public `Model.layers`, so a masked layer held inside a custom (non-Model) layer is not seen.
    """
    found, seen, pending = [], set(), list(reversed(model.layers))
    while pending:  # an explicit stack rather than a generator: AutoGraph cannot convert generators
        layer = pending.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        found.append(layer)
        if isinstance(layer, keras.Model):
            pending.extend(reversed(layer.layers))
    return found


def masked_layers(model):
    """Every masked layer of `model` (nested models included), in a stable order."""
    return [layer for layer in _nested_layers(model) if isinstance(layer, _MaskedKernelLayer)]


def current_masks(model, select=None):
    """Every masked layer's binary mask, computed once (layers keeping all their weights need none); a global top-k
    runs once for all its layers. `select`: a top-k with the contract of `masking.global_top_k_masks` (e.g.
    `masking.sorted_top_k_masks` for masks computed once); by default the layers' own radix select."""
    masks = {}
    for layer in masked_layers(model):
        if layer.mask_ratio() == 1.0 or layer in masks:
            continue
        if layer.topk_scope == "global":
            masks.update(layer.global_top_k().masks(select))
        elif select is None:
            masks[layer] = layer.binary_mask()
        else:
            masks[layer] = select([tf.abs(layer.scores)], layer.mask_ratio())[0]
    return masks


def kept_fractions(model):
    """{layer name: fraction of its mask kept} of every masked layer with remaining ratio below 1 (eager)."""
    return {layer.name: float(tf.reduce_mean(mask)) for layer, mask in current_masks(model).items()}


TOPK_SCOPES = ("layer", "global")


def _check_topk_scope(scope):
    if scope not in TOPK_SCOPES:
        raise ValueError(f"topk_scope must be one of {TOPK_SCOPES}, got {scope!r}")


class GlobalTopK:
    """One top-k over the |scores| of several masked layers of one remaining ratio (element sparsity): together they
    keep exactly `masking.kept_count(total weights, ratio)`, each layer its own fraction (ties: `masking.
    global_top_k_masks`, in the layers' order)."""

    def __init__(self, members):
        if not members:
            raise ValueError("a global top-k needs at least one masked layer with remaining ratio below 1")
        for layer in members:
            if layer.sparsity != "element":
                raise ValueError(f"topk_scope 'global' needs sparsity 'element' (one score per weight); layer "
                                 f"{layer.name!r} has {layer.sparsity!r}")
        self.members = tuple(members)

    def remaining_ratio(self):
        ratios = sorted({layer.mask_ratio() for layer in self.members})
        if len(ratios) != 1:
            raise ValueError(f"a global top-k needs one remaining ratio over its layers, got {ratios}")
        return ratios[0]

    def masks(self, select=None):
        """{layer: binary float mask} of every member, from one top-k over all their scores (`select`, by default
        `masking.global_top_k_masks`)."""
        select = masking.global_top_k_masks if select is None else select
        found = select([tf.abs(layer.scores) for layer in self.members], self.remaining_ratio())
        return dict(zip(self.members, found))


def set_topk_scope(model, scope):
    """`layer`: each masked layer keeps its own top-k (the paper's method); `global`: the masked layers with remaining
    ratio below 1 share one top-k over all their |scores| (`GlobalTopK`). Traced functions must be traced again."""
    _check_topk_scope(scope)
    members = [layer for layer in masked_layers(model) if layer.remaining_ratio < 1.0]
    group = GlobalTopK(members) if scope == "global" else None
    for layer in members:
        layer.topk_scope = scope
        layer._global_top_k = group


def batch_norm_layers(model):
    """Every `TicketBatchNormalization` of `model`, in a stable order."""
    return [layer for layer in _nested_layers(model) if isinstance(layer, TicketBatchNormalization)]


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
