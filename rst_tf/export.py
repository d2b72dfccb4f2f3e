"""SavedModels for serving: one per ticket, and one R2S model that holds the weights once plus every ticket's masks
and draws a ticket inside the graph. Also the TensorFlow Serving `models.config`.

Every SavedModel is self-contained (plain TensorFlow ops; no project code is needed to load or serve it) and has:
  serving_default   float32 images [batch, H, W, C] in [0, 1]  -> {"logits", "probabilities"}
  serving_uint8     uint8 images [batch, H, W, C] in 0..255     -> the same
A task's other signatures (multi-task banks) are named `<task>` and `<task>_uint8`.
"""
import os
import shutil

import tensorflow as tf

from rst_tf import layers, masking

SIGNATURE_FLOAT = "serving_default"
SIGNATURE_UINT8 = "serving_uint8"


class _ServingModule(tf.Module):
    """Variables to save and the functions that use them; `networks` are only traced, never saved."""

    def __init__(self, bank_by_task, per_sample, bake):
        super().__init__()
        self._banks = bank_by_task
        self._per_sample = per_sample
        self._bake = bake
        first = next(iter(bank_by_task.values())).network
        shared = {layer.name: layer for layer in layers.masked_layers(first)}
        self.kernels, self.masks, self.statistics = {}, {}, {}
        self._kernels_by_layer = {}
        for task, bank in bank_by_task.items():
            for layer in layers.masked_layers(bank.network):
                owner = shared.get(layer.name)
                if owner is None or tuple(owner.kernel.shape) != tuple(layer.kernel.shape):
                    owner = layer  # a task's own head
                key = f"{task}/{layer.name}" if owner is layer and bank.network is not first else layer.name
                if not bake and key not in self.kernels:
                    self.kernels[key] = tf.Variable(owner.kernel.numpy(), trainable=False, name=key)
                self._kernels_by_layer[id(layer)] = key
            for index, ticket in enumerate(bank.tickets):
                prefix = f"{task}/{index}"
                by_layer = {layer.name: layer for layer in layers.masked_layers(bank.network)}
                for name, mask in ticket.masks.items():
                    if bake:  # the ticket's effective kernel, as a dense network would hold it
                        kernel = by_layer[name].kernel.numpy() * tf.cast(mask, tf.float32).numpy()
                        self.kernels[f"{prefix}/{name}"] = tf.Variable(kernel, trainable=False)
                    else:
                        self.masks[f"{prefix}/{name}"] = tf.Variable(mask, trainable=False)
                for name, (mean, variance) in ticket.statistics.items():
                    self.statistics[f"{prefix}/{name}"] = (tf.Variable(mean, trainable=False),
                                                           tf.Variable(variance, trainable=False))

    def ticket_logits(self, task, index, images):
        bank = self._banks[task]
        prefix = f"{task}/{index}"
        masked = layers.masked_layers(bank.network)
        if self._bake:
            kernels = {layer: self.kernels[f"{prefix}/{layer.name}"] for layer in masked
                       if f"{prefix}/{layer.name}" in self.kernels}
            kernels.update({layer: self.kernels[self._kernels_by_layer[id(layer)]] for layer in masked
                            if layer not in kernels})
            masks = {layer: tf.ones([], tf.float32) for layer in masked}
        else:
            kernels = {layer: self.kernels[self._kernels_by_layer[id(layer)]] for layer in masked}
            masks = {layer: tf.cast(self.masks[f"{prefix}/{layer.name}"], tf.float32) for layer in masked
                     if f"{prefix}/{layer.name}" in self.masks}
        statistics = {layer: self.statistics[f"{prefix}/{layer.name}"]
                      for layer in layers.batch_norm_layers(bank.network)}
        with layers.supplied_kernels(kernels), masking.supplied_masks(masks), layers.supplied_statistics(statistics):
            return bank.network(images, training=False)

    def logits(self, task, images):
        count = len(self._banks[task])
        branches = [lambda part, i=i: self.ticket_logits(task, i, part) for i in range(count)]
        if count == 1:
            return branches[0](images)
        if not self._per_sample:
            index = tf.random.uniform([], 0, count, tf.int32)  # unseeded: a fresh draw per request
            return tf.switch_case(index, [lambda branch=branch: branch(images) for branch in branches])
        batch = tf.shape(images)[0]
        choice = tf.random.uniform([batch], 0, count, tf.int32)
        parts = tf.dynamic_partition(images, choice, count)
        rows = tf.dynamic_partition(tf.range(batch), choice, count)
        num_classes = self._banks[task].network.output_shape[-1]
        outputs = [tf.cond(tf.shape(part)[0] > 0, lambda part=part, branch=branch: branch(part),
                           lambda: tf.zeros([0, num_classes], tf.float32)) for part, branch in zip(parts, branches)]
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
    stored once plus boolean masks. The first task gets `serving_default` / `serving_uint8`.
    """
    bake = all(len(bank) == 1 for bank in bank_by_task.values()) if bake is None else bool(bake)
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
