"""SavedModels for serving: one per ticket, and one R2S model that holds the weights once plus every ticket's masks
and draws a ticket inside the graph. Also the TensorFlow Serving `models.config`.

Every SavedModel is self-contained (plain TensorFlow ops; no project code is needed to load or serve it) and has:
  serving_default   float32 images [batch, H, W, C] in [0, 1]  -> {"logits", "probabilities"}
  serving_uint8     uint8 images [batch, H, W, C] in 0..255     -> the same
A task's other signatures (multi-task banks) are named `<task>` and `<task>_uint8`.
"""
import os
import shutil

import numpy as np
import tensorflow as tf

from rst_tf import layers, masking

SIGNATURE_FLOAT = "serving_default"
SIGNATURE_UINT8 = "serving_uint8"


class _ServingModule(tf.Module):
    """Variables to save and the functions that use them; the Keras networks are only traced, never saved.

    Baked (one ticket per task): each layer holds its masked kernel, run as a plain dense network. Otherwise each
    layer holds its kernel once (shared by tasks where the shapes agree) and a boolean stack of every ticket's mask,
    BatchNorm layers a stack of statistics; a request gathers one ticket's slices, so the network graph is traced
    once whatever the number of tickets.
    """

    def __init__(self, bank_by_task, per_sample, bake):
        super().__init__()
        self._banks = bank_by_task
        self._per_sample = per_sample
        self._bake = bake
        first = next(iter(bank_by_task.values())).network
        shared = {layer.name: layer for layer in layers.masked_layers(first)}
        self.kernels, self.masks, self.statistics = {}, {}, {}
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
            for layer in layers.batch_norm_layers(bank.network):
                means, variances = zip(*(ticket.statistics[layer.name] for ticket in bank.tickets))
                self.statistics[f"{task}/{layer.name}"] = (tf.Variable(np.stack(means), trainable=False),
                                                          tf.Variable(np.stack(variances), trainable=False))

    def ticket_logits(self, task, index, images):
        """Logits of `images` under ticket `index` (an int32 scalar tensor) of `task`."""
        network = self._banks[task].network
        masked = layers.masked_layers(network)
        kernels = {layer: self.kernels[self._kernel_keys[id(layer)]] for layer in masked}
        if self._bake:
            masks = {layer: masking.UNMASKED for layer in masked}
        else:
            masks = {layer: tf.cast(tf.gather(self.masks[f"{task}/{layer.name}"], index), tf.float32)
                     for layer in masked if f"{task}/{layer.name}" in self.masks}
        statistics = {layer: tuple(tf.gather(stack, index) for stack in self.statistics[f"{task}/{layer.name}"])
                      for layer in layers.batch_norm_layers(network)}
        with layers.supplied_kernels(kernels), masking.supplied_masks(masks), layers.supplied_statistics(statistics):
            return network(images, training=False)

    def logits(self, task, images):
        count = len(self._banks[task])
        if count == 1:
            return self.ticket_logits(task, tf.constant(0), images)
        if not self._per_sample:
            index = tf.random.uniform([], 0, count, tf.int32)  # unseeded: a fresh draw per request
            return self.ticket_logits(task, index, images)
        batch = tf.shape(images)[0]
        choice = tf.random.uniform([batch], 0, count, tf.int32)
        parts = tf.dynamic_partition(images, choice, count)
        rows = tf.dynamic_partition(tf.range(batch), choice, count)
        num_classes = self._banks[task].network.output_shape[-1]
        outputs = [tf.cond(tf.shape(part)[0] > 0, lambda part=part, i=i: self.ticket_logits(task, tf.constant(i), part),
                           lambda: tf.zeros([0, num_classes], tf.float32)) for i, part in enumerate(parts)]
        return tf.dynamic_stitch(rows, outputs)


def _checked(images):
    images = tf.debugging.assert_all_finite(images, "images must be finite")
    with tf.control_dependencies([
            tf.debugging.assert_greater_equal(images, 0.0, message="float images must lie in [0, 1]"),
            tf.debugging.assert_less_equal(images, 1.0, message="float images must lie in [0, 1]")]):
        return tf.identity(images)


def _signatures(module, task, image_shape, prefix):
    spec = [None] + [int(d) for d in image_shape]

    @tf.function(input_signature=[tf.TensorSpec(spec, tf.float32, name="images")])
    def serve_float(images):
        logits = tf.cast(module.logits(task, _checked(tf.ensure_shape(images, spec))), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    @tf.function(input_signature=[tf.TensorSpec(spec, tf.uint8, name="images")])
    def serve_uint8(images):
        logits = tf.cast(module.logits(task, tf.cast(tf.ensure_shape(images, spec), tf.float32) / 255.0), tf.float32)
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
