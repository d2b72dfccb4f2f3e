"""A run folder: reading its config and network back, and writing its files atomically."""
import json
import os

import numpy as np
import tensorflow as tf

from rst_tf.training import build
from rst_tf.training.config import SearchConfig

_TUPLE_FIELDS = ("lr_drops", "class_subset", "nested_ratios")


def load_run(run_dir, checkpoint="best"):
    """The network of a finished (or running) search in `run_dir`, with its `best` or `last` checkpoint restored.

    Returns (network, config). Raises ValueError naming the folder if it holds no run or no such checkpoint.
    """
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    config = read_config(run_dir)
    path = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints", checkpoint))
    if checkpoint == "best" and path is None:
        path = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints", "last"))
    if path is None:
        raise ValueError(f"{run_dir} has no {checkpoint} checkpoint")
    num_classes, image_shape = _data_shape(config, run_dir)
    network = build.build_network(config, num_classes, image_shape)
    tf.train.Checkpoint(network=network).restore(path).expect_partial()
    return network, config


def read_config(run_dir, prefix=""):
    """The SearchConfig in `run_dir`/config.json; ValueError (starting with `prefix`) if there is none."""
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{prefix}{run_dir} holds no search run (no config.json)")
    values = read_json(config_path)
    for field in _TUPLE_FIELDS:
        if field in values:
            values[field] = tuple(values[field])
    reinit = values.get("mode") == "finetune" and values.get("finetune_weights") == "reinit"
    if reinit and "finetune_init" not in values:  # recorded before finetune_init existed: drawn with weight_init
        values["finetune_init"] = values["weight_init"]
    return SearchConfig(**values)


def _data_shape(config, run_dir):
    metrics = read_json(os.path.join(run_dir, "metrics.json"))
    shape = metrics.get("data", {})
    if shape:
        return shape["num_classes"], tuple(shape["image_shape"])
    splits = build.load_data(config)
    return splits.num_classes, tuple(splits.image_shape)


def write_text(path, text):
    """Write atomically: a reader never sees half a file."""
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def write_json(path, value, indent=2):
    """Write `value` as JSON atomically (NumPy scalars as numbers)."""
    write_text(path, json.dumps(value, indent=indent, default=json_default))


def json_default(value):
    """`default` of json.dump: NumPy scalars (and 0-d arrays) as Python numbers."""
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_json(path):
    """The JSON value in `path`, or {} if there is no such file."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {}
