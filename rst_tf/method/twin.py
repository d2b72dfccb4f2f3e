"""A masked twin of any functional or Sequential Keras model: the same graph, masked layers, non-affine BatchNorm.

    twin = masked_twin(keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10,
                                                   classifier_activation=None), remaining_ratio=0.1, seed=0)

Each `Conv2D` becomes a `MaskedConv2D` and each `Dense` a `MaskedDense` with the same name, drawing fresh frozen
random weights from `(seed, i)` for the i-th replaced layer (in Keras's cloning order); only their scores train.
Biases are dropped, as in the paper's networks (every conv there has `bias=False`; a bias before a BatchNorm is
redundant). Each `BatchNormalization` becomes a non-affine `TicketBatchNormalization` (same momentum and epsilon,
statistics synchronised over replicas as in `rst_tf.networks`). Every other layer is cloned as it is (fresh weights
from its config, not the original's).
"""
import keras

from rst_tf.method import initializers, layers, masking

_REFUSED = (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D, keras.layers.Conv1D, keras.layers.Conv3D,
            keras.layers.Conv2DTranspose)


def masked_twin(model, remaining_ratio, sparsity="element", weight_init="signed_kaiming_constant", seed=0,
                scale_fan=False):
    """A clone of `model` whose Conv2D/Dense layers are masked and whose BatchNorms are non-affine.

    Raises ValueError, naming the layer, for a convolution the masked layers cannot stand in for (depthwise,
    separable, transposed, 1-D/3-D, dilated, grouped, channels-first, non-square kernels or strides) or a
    Conv2D/Dense with a non-linear activation (the masked layers have none: put it in its own layer).
    """
    masking.check_remaining_ratio(remaining_ratio)
    if sparsity not in masking.SPARSITY_PATTERNS:
        raise ValueError(f"sparsity must be one of {masking.SPARSITY_PATTERNS}, got {sparsity!r}")
    if weight_init not in initializers.WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {initializers.WEIGHT_INITS}, got {weight_init!r}")
    streams = iter(range(1 << 20))

    def masked_arguments(layer):
        _check_linear(layer)
        return dict(name=layer.name, remaining_ratio=remaining_ratio, sparsity=sparsity, weight_init=weight_init,
                    seed=(int(seed), next(streams)), scale_fan=scale_fan)

    def clone(layer):
        if isinstance(layer, _REFUSED):
            raise ValueError(f"layer {layer.name!r}: {type(layer).__name__} has no masked counterpart "
                             "(only Conv2D and Dense are masked)")
        if isinstance(layer, keras.layers.Conv2D):
            kernel_size, strides = _square_conv(layer)
            return layers.MaskedConv2D(layer.filters, kernel_size, strides=strides, padding=layer.padding,
                                       **masked_arguments(layer))
        if isinstance(layer, keras.layers.Dense):
            return layers.MaskedDense(layer.units, **masked_arguments(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            return layers.TicketBatchNormalization(axis=layer.axis, momentum=layer.momentum, epsilon=layer.epsilon,
                                                   center=False, scale=False, synchronized=True, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    if not isinstance(model, (keras.Sequential, keras.Model)) or not hasattr(model, "inputs"):
        raise ValueError("masked_twin needs a functional or Sequential Keras model")
    return keras.models.clone_model(model, clone_function=clone)


def _check_linear(layer):
    activation = keras.activations.serialize(layer.activation)
    name = activation if isinstance(activation, str) else activation.get("config", {}).get("name", activation)
    if name != "linear":
        raise ValueError(f"layer {layer.name!r}: activation {name!r} is not supported (masked layers are linear; "
                         "use a separate Activation layer)")


def _square_conv(layer):
    kernel_size, strides = tuple(layer.kernel_size), tuple(layer.strides)
    problems = [
        (kernel_size[0] != kernel_size[1], f"kernel size {kernel_size}"),
        (strides[0] != strides[1], f"strides {strides}"),
        (tuple(layer.dilation_rate) != (1, 1), f"dilation {tuple(layer.dilation_rate)}"),
        (layer.groups != 1, f"groups {layer.groups}"),
        (layer.data_format != "channels_last", f"data format {layer.data_format}"),
    ]
    for bad, what in problems:
        if bad:
            raise ValueError(f"layer {layer.name!r}: {what} is not supported by MaskedConv2D")
    return kernel_size[0], strides[0]
