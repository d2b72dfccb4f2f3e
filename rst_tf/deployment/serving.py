"""A model server for an export folder: KServe's ModelServer speaking TensorFlow Serving's REST predict protocol.

    models = serving.load_models("export")            # {name: SavedModelServable}, the highest version of each
    serving.serve(models, port=8501, host="127.0.0.1")  # blocks

Every model `bin/export` wrote (`<name>/<version>/saved_model.pb`) is served under its folder name:
  POST /v1/models/<name>:predict   {"instances": [image, ...]}              -> {"predictions": [{"logits", ...}]}
                                   {"inputs": [image, ...]}                 -> {"outputs": {"logits": [...], ...}}
                                   optional "signature_name" (default serving_default; serving_uint8 takes 0..255)
  GET  /v1/models/<name>           readiness of one model ({"name", "ready"})
  GET  /, /v2/health/live, /v2/health/ready   liveness and readiness of the server
A malformed request gets HTTP 400 with {"error": "<one line>"}; the server keeps serving.
"""
import asyncio
import concurrent.futures
import os
import re

import kserve
import numpy as np
import tensorflow as tf
from kserve.errors import InvalidInput
from kserve.protocol.rest.server import RESTServer

DEFAULT_SIGNATURE = "serving_default"


def model_folders(export_dir):
    """{model name: folder of its highest numbered version} for every `<name>/<version>/saved_model.pb` under
    `export_dir`."""
    if not os.path.isdir(export_dir):
        raise ValueError(f"{export_dir} is not a folder")
    folders = {}
    for name in sorted(os.listdir(export_dir)):
        base = os.path.join(export_dir, name)
        versions = [int(entry) for entry in (os.listdir(base) if os.path.isdir(base) else [])
                    if entry.isdigit() and os.path.isfile(os.path.join(base, entry, "saved_model.pb"))]
        if versions:
            folders[name] = os.path.join(base, str(max(versions)))
    if not folders:
        raise ValueError(f"{export_dir} holds no model (NAME/VERSION/saved_model.pb folders, as bin/export writes)")
    return folders


def _first_line(error):
    """The line of a TensorFlow error that says what is wrong (not its graph-execution preamble or node names)."""
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[", "[Op:")
    for line in (getattr(error, "message", None) or str(error)).splitlines():
        line = re.sub(r"\s*(\[\[|\[Op:).*$", "", line).strip()
        if line and not line.startswith(noise):
            return line
    return type(error).__name__


class SavedModelServable(kserve.Model):
    """One SavedModel behind KServe; requests run on a thread pool so that several are served at once."""

    def __init__(self, name, path, threads=4):
        super().__init__(name)
        self.path = path
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads)
        self._loaded, self._signatures = None, {}

    def load(self):
        self._loaded = tf.saved_model.load(self.path)
        for name, function in self._loaded.signatures.items():
            spec = function.structured_input_signature[1]["images"]
            self._signatures[name] = (function, spec)
        self.ready = True
        return self.ready

    async def predict(self, payload, headers=None):
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.predict_now, payload)

    def predict_now(self, payload):
        """TF Serving's REST predict on a decoded JSON body; InvalidInput (HTTP 400) for a malformed one."""
        if not isinstance(payload, dict):
            raise InvalidInput("the request body must be a JSON object with \"instances\" or \"inputs\"")
        signature = payload.get("signature_name", DEFAULT_SIGNATURE)
        if signature not in self._signatures:
            raise InvalidInput(f"signature_name {signature!r} is not one of {sorted(self._signatures)}")
        if ("instances" in payload) == ("inputs" in payload):
            raise InvalidInput("the request needs exactly one of \"instances\" (rows) and \"inputs\" (columns)")
        function, spec = self._signatures[signature]
        rows = "instances" in payload
        data = payload["instances" if rows else "inputs"]
        if rows and isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
            data = [row.get("images") for row in data]
        elif not rows and isinstance(data, dict):
            data = data.get("images")
        images = self._images(data, spec, signature)
        try:
            outputs = function(images=images)
        except tf.errors.InvalidArgumentError as error:
            raise InvalidInput(f"{signature}: {_first_line(error)}") from None
        if rows:
            count = int(outputs["logits"].shape[0])
            values = {key: value.numpy().tolist() for key, value in outputs.items()}
            return {"predictions": [{key: values[key][i] for key in values} for i in range(count)]}
        return {"outputs": {key: value.numpy().tolist() for key, value in outputs.items()}}

    @staticmethod
    def _images(data, spec, signature):
        shape = [int(d) for d in spec.shape[1:]]
        if not isinstance(data, list):
            raise InvalidInput(f"{signature}: images must be a list of [{', '.join(map(str, shape))}] arrays")
        if not data:
            return tf.zeros([0, *shape], spec.dtype)
        try:
            values = np.asarray(data, np.float64)
        except (ValueError, TypeError):
            raise InvalidInput(f"{signature}: images must be numbers in equal-sized nested lists") from None
        if values.ndim != 1 + len(shape):
            raise InvalidInput(f"{signature}: each image must have shape {shape}, got {list(values.shape[1:])}")
        if spec.dtype == tf.uint8:
            if not (np.all(values == np.round(values)) and values.min() >= 0 and values.max() <= 255):
                raise InvalidInput(f"{signature}: uint8 images must be integers in 0..255")
            return tf.constant(values.astype(np.uint8))
        return tf.constant(values.astype(np.float32))


def load_models(export_dir, threads=4):
    """Every model of `export_dir`, loaded (tf.saved_model.load) and ready to serve."""
    models = {}
    for name, path in model_folders(export_dir).items():
        models[name] = SavedModelServable(name, path, threads)
        models[name].load()
    return models


def serve(models, port, host="127.0.0.1"):
    """Serve `models` (name -> SavedModelServable) over HTTP on host:port until SIGINT / SIGTERM."""
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False)
    for model in models.values():
        server.register_model(model)
    rest = RESTServer("kserve.model_server:app", server.dataplane, server.model_repository_extension, port)
    rest.config.host = host
    rest.run()
