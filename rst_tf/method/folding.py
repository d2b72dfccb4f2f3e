"""Inference graph of a masked network: masks multiplied into the kernels once, each conv→BatchNorm pair folded.

    folded = FoldedNetwork(network)                  # analyses the graph once
    masks = exact_masks(network)                     # the masks the scores select now (no XLA compile)
    parameters = folded.parameters(masks)            # {layer: mask} as `masking.supplied_masks` takes; eager
    logits = folded.logits(images, parameters)       # == network(images, training=False) under those masks

A masked layer (`MaskedConv2D`, `MaskedDense`) runs with the kernel `kernel * mask`; when its output goes only to a
BatchNorm (last axis), that BatchNorm is folded into it: kernel × gamma/sqrt(var + eps) per output channel, bias
beta − mean × gamma/sqrt(var + eps). Any other BatchNorm (last axis) is one multiply-add. The statistics are the
ones the layer would use now: supplied statistics (an R2S ticket), a statistics slot (a nested ticket), or its
moving averages. `parameters` reads them, with the masks and kernels, when it is called, so traced functions take
them as arguments and stay valid after training or under another ticket. Every other layer runs as it is
(training=False).

Networks it cannot fold run unfolded (`logits` calls the network under the supplied masks; `unfolded_reason` says
why): models nested in the graph, layers called more than once, a compute dtype other than float32.
"""
import keras
import tensorflow as tf

from rst_tf.method import layers, masking, ticket_batch_norm


class FoldedNetwork:
    """Folded inference logits of a functional masked `network` (see the module docstring)."""

    def __init__(self, network):
        self.network = network
        self.unfolded_reason = _unfoldable(network)
        self._kernel_layers, self._norms, self._folded_into = [], [], {}
        self._masked_layers = layers.masked_layers(network)
        if self.unfolded_reason is None:
            self._plan()

    def _plan(self):
        nodes = [node for depth in sorted(self.network._nodes_by_depth, reverse=True)
                 for node in self.network._nodes_by_depth[depth] if node.operation and not node.is_input]
        consumers = {}
        for node in nodes:
            for tensor in node.input_tensors:
                consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
        outputs = {id(tensor) for tensor in self.network.outputs}
        for node in nodes:
            operation = node.operation
            if isinstance(operation, layers._MaskedKernelLayer):
                self._kernel_layers.append(operation)
            elif _is_last_axis_batch_norm(operation):
                source = node.input_tensors[0]
                producer = source._keras_history.operation
                if (isinstance(producer, layers._MaskedKernelLayer) and consumers[id(source)] == 1
                        and id(source) not in outputs):
                    self._folded_into[producer] = operation
                else:
                    self._norms.append(operation)

    def parameters(self, masks=None):
        """The folded network's tensors under `masks` ({layer: mask}; layers not in it use their own), the current
        kernels and the BatchNorm statistics selected now. Without folding: the masks. Call it eagerly."""
        masks = {} if masks is None else masks
        if self.unfolded_reason is not None:  # a list, so that traced functions can take it
            return {"masks": [masks.get(layer) for layer in self._masked_layers]}
        kernels, biases, norms = [], [], []
        with masking.supplied_masks(masks):
            for layer in self._kernel_layers:
                kernel = tf.stop_gradient(tf.convert_to_tensor(layer.masked_kernel(), tf.float32))
                norm = self._folded_into.get(layer)
                if norm is None:
                    kernels.append(kernel)
                    biases.append(None)
                    continue
                scale, shift = inference_scale_and_shift(norm)
                kernels.append(kernel * scale)
                biases.append(shift)
        for norm in self._norms:
            norms.append(inference_scale_and_shift(norm))
        return {"kernels": kernels, "biases": biases, "norms": norms}

    def logits(self, images, parameters):
        """The network's inference logits on `images` with `parameters` (from `parameters`)."""
        if self.unfolded_reason is not None:
            pairs = zip(self._masked_layers, parameters["masks"])
            with masking.supplied_masks({layer: mask for layer, mask in pairs if mask is not None}):
                return self.network(images, training=False)
        replaced = {}
        for layer, kernel, bias in zip(self._kernel_layers, parameters["kernels"], parameters["biases"]):
            replaced[id(layer)] = _with_kernel(layer, kernel, bias)
            if layer in self._folded_into:
                replaced[id(self._folded_into[layer])] = lambda inputs, **_: inputs
        for norm, (scale, shift) in zip(self._norms, parameters["norms"]):
            replaced[id(norm)] = lambda inputs, scale=scale, shift=shift, **_: inputs * scale + shift

        def operation_fn(operation):
            if id(operation) in replaced:
                return replaced[id(operation)]
            return _in_inference(operation)

        images = tf.convert_to_tensor(images, tf.float32)
        return tf.nest.flatten(self.network._run_through_graph([images], operation_fn=operation_fn))[0]


def exact_masks(network):
    """Every masked layer's binary mask, as `layers.current_masks` gives it, from `masking.sorted_top_k_masks`: no
    XLA compile, so cheaper once per evaluation than the radix select made to run every training step
    (bench/folding_speed.py)."""
    return layers.current_masks(network, select=masking.sorted_top_k_masks)


def inference_scale_and_shift(norm):
    """(scale, shift), float32 per channel, such that `norm(x, training=False) == x * scale + shift` now: with the
    statistics a `TicketBatchNormalization` selects (supplied statistics, else a supplied slot's, else its moving
    averages) or a Keras BatchNormalization's moving averages, gamma and beta."""
    statistics = gamma = beta = None
    if isinstance(norm, layers.TicketBatchNormalization):
        statistics = ticket_batch_norm._supplied_statistics.value_for(norm)
        slot = ticket_batch_norm._supplied_slots.value_for(norm)
        if slot is not None and not 0 <= slot < norm.statistics_slots:
            raise ValueError(f"{norm.name} holds {norm.statistics_slots} statistics slots; slot {slot} was supplied")
        if slot is not None and statistics is None:
            statistics = (norm.slot_moving_mean[slot], norm.slot_moving_variance[slot])
        if statistics is not None and (norm.center or norm.scale):
            raise ValueError("supplied statistics need a non-affine BatchNormalization (center=False, scale=False)")
    if statistics is None:
        statistics = (norm.moving_mean, norm.moving_variance)
        gamma = norm.gamma if norm.scale else None
        beta = norm.beta if norm.center else None
    mean, variance = (tf.cast(value, tf.float32) for value in statistics)
    scale = tf.math.rsqrt(variance + norm.epsilon)
    if gamma is not None:
        scale = scale * tf.cast(gamma, tf.float32)
    shift = -mean * scale
    if beta is not None:
        shift = shift + tf.cast(beta, tf.float32)
    return scale, shift


def _with_kernel(layer, kernel, bias):
    """`layer` called with `kernel` for its own masked kernel, then `bias` added (per output channel)."""
    def call(inputs, **_):
        with layers.supplied_kernels({layer: kernel}), masking.supplied_masks({layer: masking.UNMASKED}):
            outputs = layer(inputs)
        return outputs if bias is None else tf.nn.bias_add(outputs, bias)
    return call


def _in_inference(operation):
    def call(*args, **kwargs):
        if "training" in getattr(operation, "_call_context_args", {}):
            kwargs["training"] = False
        return operation(*args, **kwargs)
    return call


def _is_last_axis_batch_norm(operation):
    if not isinstance(operation, keras.layers.BatchNormalization):
        return False
    rank = len(operation.input.shape)
    return operation.axis in (-1, rank - 1) and not operation.renorm


def _unfoldable(network):
    """Why `network` cannot be folded, or None."""
    if not isinstance(network, keras.Model) or not hasattr(network, "_nodes_by_depth"):
        return "not a functional Keras model"
    calls = {}
    for nodes in network._nodes_by_depth.values():
        for node in nodes:
            if node.operation is None or node.is_input:
                continue
            if isinstance(node.operation, keras.Model):
                return f"nested model {node.operation.name!r}"
            if node.operation.compute_dtype != "float32":
                return f"layer {node.operation.name!r} computes in {node.operation.compute_dtype}"
            calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
            if calls[id(node.operation)] > 1:
                return f"layer {node.operation.name!r} is called more than once"
    if len(network.inputs) != 1 or len(network.outputs) != 1:
        return "more than one input or output"
    return None
