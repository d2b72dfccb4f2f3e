"""A masked twin of any functional or Sequential Keras model: the same graph, masked layers, non-affine BatchNorm.

    twin = masked_twin(keras.applications.ResNet50(weights=None), remaining_ratio=0.1, seed=0)  # -> logits

Each `Conv2D` becomes a `MaskedConv2D` and each `Dense` a `MaskedDense` with the same name, drawing fresh frozen
random weights from `(seed, i)` for the i-th replaced layer (in Keras's cloning order); only their scores train.
Biases are dropped, as in the paper's networks (every conv there has `bias=False`; a bias before a BatchNorm is
redundant). A `Conv2D`/`Dense` activation (e.g. VGG's ReLUs, an application's softmax head) becomes an `Activation`
layer of its own, named `<layer>_<activation>`, after the masked layer. Each `BatchNormalization` becomes a
non-affine `TicketBatchNormalization` (same momentum and epsilon, statistics synchronised over replicas as in
`rst_tf.networks`). Every other layer is cloned as it is (fresh weights from its config, not the original's).

Attacks and the search need logits, so by default the twin ends before a softmax or sigmoid that produces the
model's output (keras.applications' default `classifier_activation="softmax"`); `logits=False` keeps it, as the
twin's last layer.
"""
import keras

from rst_tf.method import initializers, layers, masking

_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")  # left out of the twin's output with `logits=True`
_REFUSED = (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D, keras.layers.Conv1D, keras.layers.Conv3D,
            keras.layers.Conv2DTranspose)


def masked_twin(model, remaining_ratio, sparsity="element", weight_init="signed_kaiming_constant", seed=0,
                scale_fan=False, logits=True):
    """A clone of `model` whose Conv2D/Dense layers are masked and whose BatchNorms are non-affine.

    With `logits`, a softmax or sigmoid producing the model's (single) output is left out: the twin returns its
    input, the logits. Raises ValueError, naming the layer, for a convolution the masked layers cannot stand in for
    (depthwise, separable, transposed, 1-D/3-D, dilated, grouped, channels-first, non-square kernels or strides).
    """
    masking.check_remaining_ratio(remaining_ratio)
    if sparsity not in masking.SPARSITY_PATTERNS:
        raise ValueError(f"sparsity must be one of {masking.SPARSITY_PATTERNS}, got {sparsity!r}")
    if weight_init not in initializers.WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {initializers.WEIGHT_INITS}, got {weight_init!r}")
    streams = iter(range(1 << 20))

    activations = {}  # masked layer -> the Activation layer that follows it

    def masked_arguments(layer):
        name = _activation_name(layer)
        if name != "linear":
            activations[layer.name] = keras.layers.Activation(layer.activation, name=f"{layer.name}_{name}")
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

    def call(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        return activations[layer.name](outputs) if layer.name in activations else outputs

    if not isinstance(model, (keras.Sequential, keras.Model)) or not hasattr(model, "inputs"):
        raise ValueError("masked_twin needs a functional or Sequential Keras model")
    if isinstance(model, keras.Sequential):  # clone_model calls layers through `call` in functional models only
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    cloned = keras.models.clone_model(model, clone_function=clone, call_function=call)
    return _without_probability_head(cloned) if logits else cloned


def _activation_name(layer):
    activation = keras.activations.serialize(layer.activation)
    return activation if isinstance(activation, str) else activation.get("config", {}).get("name", activation)


def _without_probability_head(model):
    """`model` up to the input of its output layer if that is a softmax or sigmoid (as an Activation or Softmax
    layer), else `model`."""
    if len(model.outputs) != 1:
        return model
    head = model.outputs[0]._keras_history.operation
    probability_activation = (isinstance(head, keras.layers.Activation)
                              and _activation_name(head) in _PROBABILITY_ACTIVATIONS)
    if not (isinstance(head, keras.layers.Softmax) or probability_activation):
        return model
    return keras.Model(model.inputs, head.input, name=model.name)


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
