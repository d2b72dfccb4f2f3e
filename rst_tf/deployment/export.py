"""SavedModels for serving: one per ticket, and one R2S model that holds the weights once plus every ticket's masks
and draws a ticket inside the graph. Also the TensorFlow Serving `models.config`.

Every SavedModel is self-contained (plain TensorFlow ops; no project code is needed to load or serve it) and has:
  serving_default   float32 images [batch, H, W, C] in [0, 1]  -> {"logits", "probabilities"}
  serving_uint8     uint8 images [batch, H, W, C] in 0..255     -> the same
A task's other signatures (multi-task banks) are named `<task>` and `<task>_uint8`.
"""
import os
import shutil
import uuid

import numpy as np
import tensorflow as tf

from rst_tf.method import layers, masking

SIGNATURE_FLOAT = "serving_default"
SIGNATURE_UINT8 = "serving_uint8"


class _MaskedKernel(tf.saved_model.experimental.TrackableResource):
    """One ticket's masked kernel, `kernel * masks[ticket]`, held in memory and computed from the saved variables
    when the SavedModel loads (after they are restored), never per request; the file keeps only the kernel and
    the boolean masks."""

    def __init__(self, kernel, masks, ticket):
        super().__init__()
        self._kernel, self._masks, self._ticket = kernel, masks, int(ticket)
        self._shared_name = f"masked_kernel_{uuid.uuid4().hex}"
        self._initialize()

    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=self._kernel.dtype, shape=self._kernel.shape,
                                      shared_name=self._shared_name)

    def _initialize(self):
        mask = tf.cast(tf.gather(self._masks, self._ticket), self._kernel.dtype)
        return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=self._kernel * mask)


def _ticket_kernel(per_ticket, index):
    """Ticket `index`'s masked kernel out of `per_ticket` (a list of `_MaskedKernel`): the drawn ticket's handle is
    picked, then read, so no kernel is copied or masked per request."""
    handle = tf.gather(tf.stack([masked.resource_handle for masked in per_ticket]), index)
    kernel = per_ticket[0]._kernel
    return tf.ensure_shape(tf.raw_ops.ReadVariableOp(resource=handle, dtype=kernel.dtype), kernel.shape)


class _ServingModule(tf.Module):
    """Variables to save and the functions that use them; the Keras networks are only traced, never saved.

    Baked (one ticket per task): each layer holds its masked kernel, run as a plain dense network. Otherwise each
    layer holds its kernel once (shared by tasks where the shapes agree) and a boolean stack of every ticket's mask,
    BatchNorm layers a stack of statistics; every ticket's masked kernels are computed once when the model loads
    (`_MaskedKernel`), and a request runs the network on the drawn ticket's kernels and slice of the statistics, so
    the network graph is traced once whatever the number of tickets.
    """

    def __init__(self, bank_by_task, per_sample, bake):
        super().__init__()
        self._banks = bank_by_task
        self._per_sample = per_sample
        self._bake = bake
        first = next(iter(bank_by_task.values())).network
        shared = {layer.name: layer for layer in layers.masked_layers(first)}
        self.kernels, self.masks, self.statistics, self.masked_kernels = {}, {}, {}, {}
        self._kernel_keys = {}
        for task, bank in bank_by_task.items():
            for layer in layers.masked_layers(bank.network):
                if bake:
                    key, kernel = f"{task}/{layer.name}", layer.kernel.numpy()
                    if layer.name in bank.tickets[0].masks:
                        kernel = kernel * bank.tickets[0].masks[layer.name].astype(kernel.dtype)
                else:
                    owner = shared.get(layer.name)
                    if owner is None or tuple(owner.kernel.shape) != tuple(layer.kernel.shape):
                        owner = layer  # a task's own classifier head
                    key = layer.name if owner is not layer or bank.network is first else f"{task}/{layer.name}"
                    kernel = owner.kernel.numpy()
                    if layer.name in bank.tickets[0].masks:
                        stack = np.stack([ticket.masks[layer.name] for ticket in bank.tickets])
                        self.masks[f"{task}/{layer.name}"] = tf.Variable(stack, trainable=False)
                if key not in self.kernels:
                    self.kernels[key] = tf.Variable(kernel, trainable=False)
                self._kernel_keys[id(layer)] = key
                if not bake and f"{task}/{layer.name}" in self.masks:
                    self.masked_kernels[f"{task}/{layer.name}"] = [
                        _MaskedKernel(self.kernels[key], self.masks[f"{task}/{layer.name}"], index)
                        for index in range(len(bank))]
            for layer in layers.batch_norm_layers(bank.network):
                means, variances = zip(*(ticket.statistics[layer.name] for ticket in bank.tickets))
                self.statistics[f"{task}/{layer.name}"] = (tf.Variable(np.stack(means), trainable=False),
                                                          tf.Variable(np.stack(variances), trainable=False))

    def ticket_logits(self, task, index, images):
        """Logits of `images` under ticket `index` (a Python int, or an int32 scalar tensor) of `task`."""
        network = self._banks[task].network
        kernels, masks = {}, {}
        for layer in layers.masked_layers(network):
            name = f"{task}/{layer.name}"
            if self._bake or name not in self.masks:
                kernels[layer] = self.kernels[self._kernel_keys[id(layer)]]  # baked, or a layer without a mask
            else:
                kernels[layer] = _ticket_kernel(self.masked_kernels[name], index)
            masks[layer] = masking.UNMASKED
        statistics = {layer: tuple(tf.gather(stack, index) for stack in self.statistics[f"{task}/{layer.name}"])
                      for layer in layers.batch_norm_layers(network)}
        with layers.supplied_kernels(kernels), masking.supplied_masks(masks), layers.supplied_statistics(statistics):
            return network(images, training=False)

    def num_classes(self, task):
        return int(self._banks[task].network.output_shape[-1])

    def logits(self, task, images):
        count = len(self._banks[task])
        if count == 1:
            return self.ticket_logits(task, 0, images)
        if not self._per_sample:
            index = tf.random.uniform([], 0, count, tf.int32)  # unseeded: a fresh draw per request
            return self.ticket_logits(task, index, images)
        batch = tf.shape(images)[0]
        choice = tf.random.uniform([batch], 0, count, tf.int32)
        parts = tf.dynamic_partition(images, choice, count)
        rows = tf.dynamic_partition(tf.range(batch), choice, count)
        num_classes = self.num_classes(task)
        outputs = [tf.cond(tf.shape(part)[0] > 0, lambda part=part, i=i: self.ticket_logits(task, i, part),
                           lambda: tf.zeros([0, num_classes], tf.float32)) for i, part in enumerate(parts)]
        return tf.dynamic_stitch(rows, outputs)


def _checked(images):
    images = tf.debugging.assert_all_finite(images, "images must be finite")
    with tf.control_dependencies([
            tf.debugging.assert_greater_equal(images, 0.0, message="float images must lie in [0, 1]"),
            tf.debugging.assert_less_equal(images, 1.0, message="float images must lie in [0, 1]")]):
        return tf.identity(images)


def _logits(module, task, images):
    """The task's float32 logits; an empty batch gives [0, classes] without running the network (whose layers do
    not all accept one)."""
    classes = module.num_classes(task)
    return tf.cond(tf.shape(images)[0] > 0, lambda: tf.cast(module.logits(task, images), tf.float32),
                   lambda: tf.zeros([0, classes], tf.float32))


def _signatures(module, task, image_shape, prefix):
    spec = [None] + [int(d) for d in image_shape]

    @tf.function(input_signature=[tf.TensorSpec(spec, tf.float32, name="images")])
    def serve_float(images):
        logits = _logits(module, task, _checked(tf.ensure_shape(images, spec)))
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    @tf.function(input_signature=[tf.TensorSpec(spec, tf.uint8, name="images")])
    def serve_uint8(images):
        logits = _logits(module, task, tf.cast(tf.ensure_shape(images, spec), tf.float32) / 255.0)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    float_name, uint8_name = (SIGNATURE_FLOAT, SIGNATURE_UINT8) if prefix is None else (prefix, f"{prefix}_uint8")
    return {float_name: serve_float, uint8_name: serve_uint8}


def save(path, bank_by_task, per_sample=False, bake=None):
    """Write a SavedModel serving the banks (task -> `r2s.MaskBank`) to `path` (a fresh folder).

    With one ticket per task it is that ticket's model; with several, each request (or each sample, with
    `per_sample`) runs under a ticket drawn uniformly inside the graph from an unseeded RNG. `bake` stores each
    ticket's masked kernels as plain weights (the default for a single ticket: fastest); otherwise the kernels are
    stored once plus a boolean stack of masks per layer. The first task gets `serving_default` / `serving_uint8`.
    """
    single = all(len(bank) == 1 for bank in bank_by_task.values())
    bake = single if bake is None else bool(bake)
    if bake and not single:
        raise ValueError("bake needs one ticket per task (each ticket's masked weights would be stored)")
    module = _ServingModule(bank_by_task, per_sample, bake)
    signatures = {}
    for position, (task, bank) in enumerate(bank_by_task.items()):
        image_shape = bank.network.input_shape[1:]
        signatures.update(_signatures(module, task, image_shape, None if position == 0 else task))
        if position == 0 and len(bank_by_task) > 1:
            signatures.update(_signatures(module, task, image_shape, task))
    temporary = f"{path}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    tf.saved_model.save(module, temporary, signatures=signatures)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(temporary, path)
    return path


def models_config(models):
    """TensorFlow Serving's `models.config` text for `models` (a list of (name, base_path)); each base path holds
    numbered version folders (`<base_path>/1/saved_model.pb`)."""
    from tensorflow_serving.config import model_server_config_pb2
    from google.protobuf import text_format

    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path in models:
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = base_path
        entry.model_platform = "tensorflow"
    return text_format.MessageToString(config)
