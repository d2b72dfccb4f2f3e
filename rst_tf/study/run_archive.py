"""A finished run folder packed into one small file, and unpacked again on any machine, so that a study's trained
runs outlive the machine that trained them.

    run_archive.pack("runs/scaling/width_0.25/seed_1/rst/ratio_0.2", "records/width_0.25_seed_1/rst/ratio_0.2.npz")
    run_archive.unpack("records/.../ratio_0.2.npz", run_dir, config)   # config: the run as the study plans it

The file (NumPy `.npz`) holds the run's configuration and metrics, and the network of the checkpoint its study
measures (`measure.checkpoint_of`): each masked layer's mask as bits rather than its scores, its kernel only where
training changed it (a random kernel is drawn again from the seed when unpacked, and its SHA-256 checked), every
other weight as it is. An RST at width 1/4 takes about 0.1 MB instead of 8 MB of checkpoint. Unpacked, the run's
folder holds that checkpoint with each mask as its scores (1 kept, 0 pruned: the same top-k mask, not the learned
scores) and its metrics, so it counts as finished and measures as the original did. It is not a checkpoint to
resume training from: a nested search (several masks in one set of scores) is refused.
"""
import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from rst_tf.method import layers
from rst_tf.study import measure
from rst_tf.study import sweep
from rst_tf.training import build
from rst_tf.training import run_dir as run_files

FORMAT = "rst-tf run archive"
VERSION = 1


def _read(path):
    """(manifest, {name: array}) of the archive at `path`; ValueError naming the file if it is none."""
    try:
        with np.load(path) as archive:
            manifest = json.loads(bytes(archive["manifest"]).decode())
            arrays = {name: archive[name] for name in archive.files if name != "manifest"}
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a run archive: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path} is not a run archive of version {VERSION}")
    return manifest, arrays


def _digest(value):
    return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()


def _network_of(config, metrics):
    data = metrics["data"]
    return build.build_network(config, data["num_classes"], tuple(data["image_shape"]))


def pack(run_dir, path):
    """Write the finished run in `run_dir` to `path` (atomically). ValueError naming the folder if the run has not
    finished or is a nested search."""
    config = run_files.read_config(run_dir)
    metrics = run_files.read_json(os.path.join(run_dir, "metrics.json"))
    if "final" not in metrics:
        raise ValueError(f"{run_dir} holds no finished run (its metrics.json has no 'final')")
    if config.nested_ratios:
        raise ValueError(f"{run_dir} is a nested search: its scores hold several masks, which an archive cannot keep")
    checkpoint = measure.checkpoint_of(config)
    network, _ = run_files.load_run(run_dir, checkpoint)
    seeded = _network_of(config, metrics)
    masks = {layer.path: mask.numpy() for layer, mask in layers.current_masks(network).items()}
    scores = {layer.scores.path: layer for layer in layers.masked_layers(network)}
    kernels = {layer.kernel.path for layer in scores.values()}
    arrays, kinds = {}, []
    for index, (variable, fresh) in enumerate(zip(network.weights, seeded.weights)):
        if variable.path != fresh.path:
            raise ValueError(f"{run_dir}: its network does not rebuild in the same order ({variable.path})")
        value = variable.numpy()
        if variable.path in scores:
            layer = scores[variable.path]
            mask = masks.get(layer.path, np.ones(value.shape, np.float32))
            arrays[f"w{index}"] = np.packbits(mask.astype(bool).reshape(-1))
            kinds.append({"path": variable.path, "kind": "mask", "shape": list(value.shape)})
        elif variable.path in kernels and np.array_equal(value, fresh.numpy()):
            kinds.append({"path": variable.path, "kind": "seeded", "sha256": _digest(value)})
        else:
            arrays[f"w{index}"] = value
            kinds.append({"path": variable.path, "kind": "value"})
    manifest = {"format": FORMAT, "version": VERSION, "config": sweep.result_settings(config), "metrics": metrics,
                "checkpoint": checkpoint, "weights": kinds}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = path + ".tmp.npz"
    np.savez_compressed(temporary, manifest=np.frombuffer(json.dumps(manifest).encode(), np.uint8), **arrays)
    os.replace(temporary, path)
    return path


def matches(path, config):
    """True if the archive at `path` holds a run of `config` (as its study plans it: every field but where it reads
    its data and runs); ValueError naming the file if it is no run archive."""
    return _read(path)[0]["config"] == sweep.result_settings(config.resolved())


def unpack(path, run_dir, config):
    """Write the archived run at `path` into `run_dir` as a finished run of `config` (whose data folder and strategy
    it takes), replacing an unfinished run there. ValueError naming the file if it is no archive, holds another
    run, or its random kernels or masks do not come out the same here; then nothing is written."""
    manifest, arrays = _read(path)
    config = config.resolved()
    if manifest["config"] != sweep.result_settings(config):
        raise ValueError(f"{path} holds another run than {run_dir} (its configuration differs)")
    network = _network_of(config, manifest["metrics"])
    if len(network.weights) != len(manifest["weights"]):
        raise ValueError(f"{path}: {len(manifest['weights'])} weights, the network here has {len(network.weights)}")
    masks = {}
    for index, (variable, entry) in enumerate(zip(network.weights, manifest["weights"])):
        if variable.path != entry["path"]:
            raise ValueError(f"{path}: weight {index} is {entry['path']}, here {variable.path}")
        if entry["kind"] == "seeded":
            if _digest(variable.numpy()) != entry["sha256"]:
                raise ValueError(f"{path}: the random kernel {entry['path']} drawn here from the seed differs from "
                                 "the run's")
        elif entry["kind"] == "mask":
            size = int(np.prod(entry["shape"]))
            bits = np.unpackbits(arrays[f"w{index}"], count=size).astype(np.float32)
            masks[entry["path"]] = bits.reshape(entry["shape"])
            variable.assign(masks[entry["path"]])
        else:
            variable.assign(arrays[f"w{index}"])
    for layer, mask in layers.current_masks(network).items():
        if not np.array_equal(mask.numpy(), masks[layer.scores.path]):
            raise ValueError(f"{path}: the mask of {layer.path} does not come out the same here")
    staging = run_dir.rstrip(os.sep) + ".unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(network=network),
                                         os.path.join(staging, "checkpoints", manifest["checkpoint"]), 1)
    manager.save()
    run_files.write_json(os.path.join(staging, "config.json"), dataclasses.asdict(config))
    run_files.write_json(os.path.join(staging, "metrics.json"), manifest["metrics"])
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(os.path.dirname(run_dir.rstrip(os.sep)) or ".", exist_ok=True)
    os.replace(staging, run_dir)
    return run_dir
