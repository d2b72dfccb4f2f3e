"""Tiny tickets of one random network for the R2S and export tests: distinct random masks and BatchNorm statistics
(as different searches would leave), and run folders that `run_dir.load_run` reads."""
import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from rst_tf.deployment import r2s
from rst_tf.method import layers
from rst_tf.method.ticket import ticket_of
from rst_tf.training import build
from rst_tf.training.config import SearchConfig

IMAGE_SHAPE = (32, 32, 3)
RATIOS = (0.1, 0.2, 0.3)


def tiny_config(remaining_ratio, seed=0, **overrides):
    return SearchConfig(network="resnet18", width_multiplier=1 / 16, remaining_ratio=remaining_ratio,
                        seed=seed, **overrides)


def searched_network(config, num_classes=10, variation=0):
    """The config's random network with scores redrawn from `variation` and BatchNorm statistics of the resulting
    masks: a stand-in for a finished search (the weights stay those of the seed)."""
    network = build.build_network(config, num_classes, IMAGE_SHAPE)
    rng = np.random.default_rng(1000 + variation)
    for layer in layers.masked_layers(network):
        layer.scores.assign(rng.standard_normal(layer.scores.shape).astype(np.float32))
    # BatchNorm statistics of this mask, as a search leaves them: one training-mode pass with momentum 0.
    norms = layers.batch_norm_layers(network)
    for layer in norms:
        layer.momentum = 0.0
    network(tf.random.stateless_uniform([64, *IMAGE_SHAPE], [variation, 7]), training=True)
    for layer in norms:
        layer.momentum = 0.9
    return network


def bank(ratios=RATIOS, seed=0):
    """(MaskBank, the source networks) with one ticket per ratio."""
    sources = [searched_network(tiny_config(ratio, seed), variation=index) for index, ratio in enumerate(ratios)]
    tickets = [ticket_of(network, f"ratio_{ratio:g}") for network, ratio in zip(sources, ratios)]
    return r2s.MaskBank(sources[0], tickets), sources


def write_run(run_dir, config, num_classes=10, variation=0):
    """A run folder as `bin/search` leaves it (config, data shape, best checkpoint) holding a stand-in search."""
    network = searched_network(config, num_classes, variation)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as handle:
        json.dump(dataclasses.asdict(config), handle)
    with open(os.path.join(run_dir, "metrics.json"), "w") as handle:
        json.dump({"data": {"num_classes": num_classes, "image_shape": list(IMAGE_SHAPE)}}, handle)
    tf.train.Checkpoint(network=network).save(os.path.join(run_dir, "checkpoints", "best", "ckpt"))
    return network
