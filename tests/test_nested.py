"""Nested tickets from one search: the masks, the step's objective and gradients, BatchNorm per ratio, bad input."""
import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks, data
from rst_tf.method import layers, masking
from rst_tf.search import nested, search_model
from rst_tf.training import build
from rst_tf.training.config import SearchConfig

from masked_cnn import masked_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (32, 32, 3)
RATIOS = (0.1, 0.2, 0.3)


def nested_config(ratios=RATIOS, **overrides):
    return SearchConfig(**{"network": "resnet18", "width_multiplier": 1 / 16, "nested_ratios": ratios, "seed": 0,
                           **overrides}).resolved()


def single_config(ratio):
    return SearchConfig(network="resnet18", width_multiplier=1 / 16, remaining_ratio=ratio, seed=0)


def compiled(model):
    model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)  # plain SGD: update = -lr * gradient
    return model


ATTACK = attacks.AttackConfig(name="pgd", steps=2, step_size=4 / 255)


@pytest.fixture(scope="module")
def real_batch(cifar10_path):
    splits = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=16, test_examples=8,
                              seed=0)
    return next(iter(data.train_batches(splits.train, dataset="cifar10", batch_size=16, epoch=0, seed=0)))


def test_masks_are_nested_and_keep_exactly_their_fraction_of_every_layer():
    ratios = (0.05, 0.1, 0.2, 0.3)
    network = build.build_network(nested_config(ratios), 10, SHAPE)
    rng = np.random.default_rng(0)
    searched = [layer for layer in layers.masked_layers(network) if layer.remaining_ratio < 1.0]
    for index, layer in enumerate(searched):
        scores = rng.standard_normal(layer.scores.shape).astype(np.float32)
        if index % 3 == 0:  # many ties: every |score| one of four values, signs mixed
            scores = np.round(scores * 2) / 2
        layer.scores.assign(scores)
    masks = nested.nested_masks(network, ratios)
    assert len(searched) == 21 and all(set(ratio_masks) == set(searched) for ratio_masks in masks)
    for layer in searched:
        stack = [ratio_masks[layer].numpy() for ratio_masks in masks]
        for ratio, mask in zip(ratios, stack):
            assert mask.sum() == masking.kept_count(mask.size, ratio), (layer.name, ratio)
            np.testing.assert_array_equal(mask, masking.top_k_mask(tf.abs(layer.scores), ratio).numpy())
        for smaller, larger in zip(stack, stack[1:]):
            assert np.all(smaller <= larger), layer.name
    with nested.ticket_scope(network, ratios, 1):  # layers' own masks follow the scope
        np.testing.assert_array_equal(searched[0].binary_mask().numpy(), masks[1][searched[0]].numpy())
    assert searched[0].mask_ratio() == 0.3


def test_nested_step_is_the_mean_of_independent_ticket_steps(real_batch):
    """One step at three ratios against three single-ratio searches from the same weights, scores and seeds: the
    loss is the mean of theirs, each ticket's loss is theirs, the score update is the mean of theirs (plain SGD), and
    each ticket's BatchNorm statistics are those its single-ratio search collects. The network is tests/masked_cnn.py's:
    the step's arithmetic does not depend on the architecture."""
    images, labels = real_batch
    network = masked_cnn(remaining_ratio=RATIOS[-1], statistics_slots=len(RATIOS) - 1)
    model = compiled(nested.NestedSearchModel(network, RATIOS, ATTACK, weight_decay=0.0, seed=5))
    singles = [compiled(search_model.SearchModel(masked_cnn(remaining_ratio=ratio), ATTACK, weight_decay=0.0, seed=5))
               for ratio in RATIOS]
    before = [v.numpy().copy() for v in model.network.weights]
    for single in singles:  # the same random network and scores, whatever the ratio
        theirs = {v.path: v for v in single.network.weights}
        assert {v.path for v in model.network.weights if "slot" not in v.path} == set(theirs)
        for ours in model.network.weights:
            if "slot" not in ours.path:
                np.testing.assert_array_equal(ours.numpy(), theirs[ours.path].numpy())
    logs = model.fit(images, labels, batch_size=16, epochs=1, verbose=0, shuffle=False).history
    single_losses = [single.fit(images, labels, batch_size=16, epochs=1, verbose=0, shuffle=False).history["loss"][0]
                     for single in singles]
    assert logs["loss"][0] == pytest.approx(np.mean(single_losses), rel=1e-5)
    for ratio, loss in zip(RATIOS, single_losses):
        assert logs[f"loss_ratio_{ratio:g}"][0] == pytest.approx(loss, rel=1e-5)
    assert len(set(np.round(single_losses, 4))) == 3  # the tickets differ, so the mean is not any one of them

    scores = [v for v in model.network.weights if v.name == "scores"]
    assert [v.path for v in model.trainable_variables] == [v.path for v in scores]
    start = {v.path: value for v, value in zip(model.network.weights, before)}
    for variable in scores:
        change = variable.numpy() - start[variable.path]
        single_changes = [{v.path: v for v in single.network.weights}[variable.path].numpy() - start[variable.path]
                          for single in singles]
        assert np.abs(change).max() > 0
        np.testing.assert_allclose(change, np.mean(single_changes, axis=0), atol=1e-6, rtol=1e-4,
                                   err_msg=variable.path)
    for variable, value in zip(model.network.weights, before):
        if variable.name == "kernel":
            np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)

    norms = layers.batch_norm_layers(model.network)
    for index, single in enumerate(singles):
        for layer, theirs in zip(norms, layers.batch_norm_layers(single.network)):
            ours = ((layer.moving_mean, layer.moving_variance) if index == len(RATIOS) - 1 else
                    (layer.slot_moving_mean[index], layer.slot_moving_variance[index]))
            np.testing.assert_allclose(ours[0], theirs.moving_mean.numpy(), atol=1e-5, err_msg=layer.name)
            np.testing.assert_allclose(ours[1], theirs.moving_variance.numpy(), rtol=1e-4, err_msg=layer.name)
    first = norms[0].slot_moving_mean.numpy()
    assert np.abs(first[0] - first[1]).max() > 1e-4 and np.abs(first[1] - norms[0].moving_mean.numpy()).max() > 1e-4


def test_each_ratio_is_evaluated_with_its_own_statistics(real_batch):
    """At inference, ticket i of the nested network gives the logits of a plain network at ratio i that holds the
    same masks and, as its own moving statistics, slot i's."""
    images, _ = real_batch
    network = build.build_network(nested_config(), 10, SHAPE)
    rng = np.random.default_rng(3)
    for layer in layers.masked_layers(network):
        layer.scores.assign(rng.standard_normal(layer.scores.shape).astype(np.float32))
    for index in range(len(RATIOS)):  # each ticket's statistics, as a search leaves them
        with nested.ticket_scope(network, RATIOS, index):
            network(images * (index + 1) / 3, training=True)
    index = 0
    plain = build.build_network(single_config(RATIOS[index]), 10, SHAPE)
    for ours, theirs in zip(layers.masked_layers(network), layers.masked_layers(plain)):
        theirs.scores.assign(ours.scores)
    for ours, theirs in zip(layers.batch_norm_layers(network), layers.batch_norm_layers(plain)):
        theirs.moving_mean.assign(ours.slot_moving_mean[index])
        theirs.moving_variance.assign(ours.slot_moving_variance[index])
    with nested.ticket_scope(network, RATIOS, index):
        ticket = network(images, training=False).numpy()
    np.testing.assert_allclose(ticket, plain(images, training=False).numpy(), atol=1e-4, rtol=1e-4)
    with masking.supplied_masks(nested.nested_masks(network, RATIOS)[index]):  # these masks, the largest's statistics
        assert np.abs(network(images, training=False).numpy() - ticket).max() > 1e-3
    np.testing.assert_allclose(network(images, training=False).numpy(),  # outside a scope: the largest ratio's ticket
                               _run_as(network, len(RATIOS) - 1, images), atol=1e-6)
    slots = layers.batch_norm_layers(network)[0].slot_moving_mean.numpy()
    for layer in layers.batch_norm_layers(network):  # frozen BatchNorm: inference with the slot, as Keras's layer
        layer.trainable = False
    with nested.ticket_scope(network, RATIOS, index):
        np.testing.assert_allclose(network(images, training=True).numpy(), ticket, atol=1e-6)
    np.testing.assert_array_equal(layers.batch_norm_layers(network)[0].slot_moving_mean.numpy(), slots)


def _run_as(network, index, images):
    with nested.ticket_scope(network, RATIOS, index):
        return network(images, training=False).numpy()


def test_ordinary_networks_and_checkpoints_are_unchanged(tmp_path):
    """A single-ratio network has no statistics slots, its layer configs and checkpoint keys are the ordinary ones,
    and its checkpoint restores into a fresh build with every value consumed."""
    network = build.build_network(single_config(0.2), 10, SHAPE)
    norm = layers.batch_norm_layers(network)[0]
    assert norm.statistics_slots == 0 and "statistics_slots" not in norm.get_config()
    assert sorted({v.name for v in network.weights}) == ["kernel", "moving_mean", "moving_variance", "scores"]
    for layer in layers.batch_norm_layers(network):
        layer.moving_mean.assign(tf.fill(layer.moving_mean.shape, 0.25))
    path = tf.train.Checkpoint(network=network).save(str(tmp_path / "ckpt"))
    assert not [name for name, _ in tf.train.list_variables(path) if "slot" in name]
    fresh = build.build_network(single_config(0.2), 10, SHAPE)
    tf.train.Checkpoint(network=fresh).restore(path).assert_consumed()
    assert float(layers.batch_norm_layers(fresh)[0].moving_mean[0]) == 0.25
    nested_network = build.build_network(nested_config(), 10, SHAPE)
    assert {layer.statistics_slots for layer in layers.batch_norm_layers(nested_network)} == {2}
    with pytest.raises(AssertionError):  # a nested network holds more than an ordinary checkpoint
        tf.train.Checkpoint(network=nested_network).restore(path).assert_existing_objects_matched()


def test_nested_networks_save_and_load_as_keras_files(tmp_path):
    network = build.build_network(nested_config(), 10, SHAPE)
    norm = layers.batch_norm_layers(network)[0]
    norm.slot_moving_mean.assign(tf.fill(norm.slot_moving_mean.shape, 0.5))
    network.save(tmp_path / "nested.keras")
    loaded = keras.models.load_model(tmp_path / "nested.keras")
    loaded_norm = layers.batch_norm_layers(loaded)[0]
    assert loaded_norm.statistics_slots == 2
    np.testing.assert_array_equal(loaded_norm.slot_moving_mean.numpy(), norm.slot_moving_mean.numpy())


def test_search_lowers_the_nested_loss_on_real_images(cifar10_path):
    splits = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=256, test_examples=8,
                              seed=1)
    ratios = (0.1, 0.3)
    network = masked_cnn(remaining_ratio=ratios[-1], seed=1, statistics_slots=1)  # the search, not ResNet18's fit
    model = nested.NestedSearchModel(network, ratios, attacks.AttackConfig(name="pgd", steps=1, step_size=8 / 255),
                                     seed=1)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    kernels = [v.numpy().copy() for v in network.weights if v.name == "kernel"]
    history = []
    for epoch in range(5):
        batches = data.train_batches(splits.train, dataset="cifar10", batch_size=64, epoch=epoch, seed=1)
        history.append(model.fit(batches, epochs=1, verbose=0, shuffle=False).history)
    losses = [logs["loss"][-1] for logs in history]
    assert losses[-1] < losses[0] - 0.1, losses
    for ratio in ratios:
        assert history[-1][f"loss_ratio_{ratio:g}"][-1] < history[0][f"loss_ratio_{ratio:g}"][-1], ratio
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(kernels, [v for v in network.weights
                                                                      if v.name == "kernel"]))


@pytest.mark.parametrize("overrides, expected", [
    (dict(mode="dense_at"), "nested_ratios must be empty in mode dense_at"),
    (dict(mode="natural"), "nested_ratios must be empty in mode natural"),
    (dict(topk_scope="global"), "nested_ratios must be empty with topk_scope global"),
    (dict(nested_ratios=(0.0, 0.1)), "nested_ratios must be remaining ratios in (0, 1)"),
    (dict(nested_ratios=(0.1, 1.5)), "nested_ratios must be remaining ratios in (0, 1)"),
    (dict(nested_ratios=(0.1, 1.0)), "nested_ratios must be remaining ratios in (0, 1)"),
    (dict(nested_ratios=(-0.1, 0.2)), "nested_ratios must be remaining ratios in (0, 1)"),
    (dict(nested_ratios=(0.1, 0.2, 0.1)), "nested_ratios must be two or more distinct remaining ratios"),
    (dict(nested_ratios=(0.1,)), "nested_ratios must be two or more distinct remaining ratios"),
    (dict(init_from="runs/somewhere"), "nested_ratios must be empty with init_from"),
])
def test_bad_nested_configs_are_one_clear_error(overrides, expected):
    config = SearchConfig(**{"nested_ratios": (0.1, 0.2), **overrides})
    with pytest.raises(ValueError) as error:
        config.validate()
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_nested_config_records_the_largest_ratio():
    config = SearchConfig(nested_ratios=(0.3, 0.05, 0.1), remaining_ratio=0.05)
    config.validate()
    resolved = config.resolved()
    assert resolved.nested_ratios == (0.05, 0.1, 0.3) and resolved.remaining_ratio == 0.3
    assert config.ticket_ratios() == (0.05, 0.1, 0.3) and SearchConfig().ticket_ratios() == (0.05,)
    assert dataclasses.replace(resolved, nested_ratios=()).resolved().remaining_ratio == 0.3


def test_bin_search_refuses_bad_nested_ratios_with_one_line(tmp_path):
    for flag, expected in (("--nested_ratios=0.1,0.1", "error: nested_ratios must be two or more distinct"),
                           ("--nested_ratios=0.1,x", "error: flag --nested_ratios=['0.1', 'x']: --nested_ratios "
                                                     "must list numbers"),
                           ("--nested_ratios=0.1,0.2 --mode=dense_at", "error: nested_ratios must be empty in mode "
                                                                      "dense_at")):
        result = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "search.py"), *flag.split(),
                                 f"--output_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and errors[0].startswith(expected), result.stderr[-2000:]
        assert not (tmp_path / "run").exists()


_MIRRORED_STEP = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from rst_tf import attacks, data
from rst_tf.method import layers
from rst_tf.search import nested
from masked_cnn import masked_cnn
keras.utils.set_random_seed(0)
tf.config.experimental.enable_op_determinism()
splits = data.load_splits("cifar10", sys.argv[1], validation_examples=0, train_examples=32, test_examples=8, seed=0)
batches = data.train_batches(splits.train, dataset="cifar10", batch_size=32, epoch=0, seed=0)
result = {}
for name, strategy in (("one", tf.distribute.get_strategy()),
                       ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    with strategy.scope():
        network = masked_cnn(remaining_ratio=0.3, seed=0, statistics_slots=1)
        model = nested.NestedSearchModel(network, (0.1, 0.3),
                                         attacks.AttackConfig(name="pgd", steps=2, step_size=4 / 255), seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    logs = model.fit(batches, epochs=1, verbose=0, shuffle=False).history
    norm = layers.batch_norm_layers(network)[1]
    result[name] = {"replicas": strategy.num_replicas_in_sync, "loss": logs["loss"][-1],
                    "ratio_losses": [logs["loss_ratio_0.1"][-1], logs["loss_ratio_0.3"][-1]],
                    "slot_mean": norm.slot_moving_mean.numpy()[0].tolist(), "mean": norm.moving_mean.numpy().tolist()}
print(json.dumps(result))
"""


def test_nested_step_under_a_mirrored_strategy_matches_one_device(cifar10_path):
    """The step split over two logical CPUs (synchronised BatchNorm, one slot update per ratio): the same losses and
    statistics as on one device, to float sums. The network is tests/masked_cnn.py's (the mechanics, not ResNet18)."""
    result = subprocess.run([sys.executable, "-c", _MIRRORED_STEP, cifar10_path], capture_output=True, text=True,
                            timeout=900, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])))
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    one, mirrored = found["one"], found["mirrored"]
    assert mirrored["replicas"] == 2 and one["replicas"] == 1
    assert mirrored["loss"] == pytest.approx(one["loss"], rel=1e-2)
    assert mirrored["ratio_losses"] == pytest.approx(one["ratio_losses"], rel=1e-2)
    np.testing.assert_allclose(mirrored["slot_mean"], one["slot_mean"], atol=1e-3)
    np.testing.assert_allclose(mirrored["mean"], one["mean"], atol=1e-3)
    assert np.abs(np.array(one["slot_mean"]) - np.array(one["mean"])).max() > 1e-3
