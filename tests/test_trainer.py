"""Runs that start from another run (fine-tuned RSTs, RTTs), runs on a class subset, and undecodable images."""
import dataclasses
import json
import math

import numpy as np
import pytest

from rst_tf import data
from rst_tf.method import layers
from rst_tf.training import build, loop, warm_start
from rst_tf.training import run_dir as run_files
from rst_tf.training.config import SearchConfig

TINY = dict(network="resnet18", width_multiplier=1 / 16, remaining_ratio=0.2, train_examples=32,
            validation_examples=16, test_examples=16, batch_size=32, attack_steps=1, eval_attack_steps=1, epochs=1,
            seed=3)
SHAPE = (32, 32, 3)


def tiny_config(cifar10_path, **overrides):
    return SearchConfig(data_dir=cifar10_path, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def rst_run(tiny_search_run):
    """A finished RST search of TINY's network and masking (the ticket that fine-tunes start from): conftest's."""
    return str(tiny_search_run[0])


@pytest.fixture(scope="module")
def natural_run(tmp_path_factory, cifar10_path):
    """A finished one-epoch natural training of the dense network (the trained network of an RTT)."""
    run_dir = str(tmp_path_factory.mktemp("natural"))
    loop.run(tiny_config(cifar10_path, mode="natural"), run_dir, progress=False)
    return run_dir


def named(network, part):
    """{layer name: value} of every masked layer's `part` (kernel, scores or mask)."""
    values = {}
    for layer in layers.masked_layers(network):
        values[layer.name] = (layer.binary_mask() if part == "mask" else getattr(layer, part)).numpy().copy()
    return values


def assert_same(first, second, names=None):
    for name in names or first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_finetune_trains_kernels_under_the_fixed_rst_mask(tmp_path, cifar10_path, rst_run):
    source, _ = run_files.load_run(rst_run)
    inherited = warm_start.initial_network(tiny_config(cifar10_path, mode="finetune", init_from=rst_run), 10, SHAPE)
    for ours, theirs in zip(inherited.weights, source.weights, strict=True):  # kernels, scores, BatchNorm
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)

    config = tiny_config(cifar10_path, mode="finetune", init_from=rst_run, finetune_weights="reinit")
    reinit_seed = config.resolved().reinit_seed
    assert reinit_seed not in (-1, 3)
    start = warm_start.initial_network(config, 10, SHAPE)
    fresh = build.build_network(dataclasses.replace(config, mode="rst", seed=reinit_seed,
                                                    weight_init=config.finetune_init), 10, SHAPE)
    assert_same(named(start, "kernel"), named(fresh, "kernel"))
    assert all(not np.array_equal(named(start, "kernel")[n], k) for n, k in named(source, "kernel").items())
    assert_same(named(start, "scores"), named(source, "scores"))

    run_dir = str(tmp_path / "finetune")
    loop.run(config, run_dir, progress=False)
    assert json.load(open(f"{run_dir}/config.json"))["reinit_seed"] == reinit_seed
    assert json.load(open(f"{run_dir}/config.json"))["finetune_init"] == "kaiming_normal"
    tuned, _ = run_files.load_run(run_dir, "last")
    assert_same(named(tuned, "scores"), named(source, "scores"))
    assert_same(named(tuned, "mask"), named(source, "mask"))
    masks, before, after = named(source, "mask"), named(start, "kernel"), named(tuned, "kernel")
    assert all(np.any((after[n] != before[n])[masks[n] == 1]) for n in masks), "every kept weight set trains"


def kaiming_normalised(network):
    """Every masked layer's kernel divided by Kaiming normal's std sqrt(2 / fan_in), all layers in one array."""
    values = []
    for layer in layers.masked_layers(network):
        kernel = layer.kernel.numpy()
        fan_in = int(np.prod(kernel.shape[:-1]))  # HWIO convs: kh * kw * in; the dense classifier: in
        values.append(kernel.ravel() / math.sqrt(2.0 / fan_in))
    return np.concatenate(values)


def test_reinit_finetune_draws_a_kaiming_normal_kernel_by_default(cifar10_path, rst_run):
    """As the paper's code (ft_init kaiming_normal): N(0, 2 / fan_in), whatever init the RST searched over."""
    config = tiny_config(cifar10_path, mode="finetune", init_from=rst_run, finetune_weights="reinit")
    assert config.finetune_init == "kaiming_normal" and config.weight_init == "signed_kaiming_constant"
    fresh = kaiming_normalised(warm_start.initial_network(config, 10, SHAPE))
    assert fresh.size > 40_000
    assert abs(fresh.mean()) < 0.02 and abs(fresh.std() - 1.0) < 0.02
    within_half = math.erf(0.5 / math.sqrt(2.0))  # P(|z| < 0.5) of a standard normal (0 for ±1 constants)
    assert abs(np.mean(np.abs(fresh) < 0.5) - within_half) < 0.02
    signed = kaiming_normalised(warm_start.initial_network(
        dataclasses.replace(config, finetune_init="signed_kaiming_constant"), 10, SHAPE))
    np.testing.assert_allclose(np.abs(signed), 1.0, rtol=1e-5)


def test_skip_bad_images_runs_without_them_and_records_them(tmp_path, image_folders_with_a_bad_file):
    data_dir, bad_file = image_folders_with_a_bad_file
    config = SearchConfig(**{**TINY, "train_examples": 0, "validation_examples": 4, "test_examples": 0,
                             "batch_size": 4}, data_dir=data_dir, skip_bad_images=True)
    messages = []
    result = loop.run(config, str(tmp_path / "run"), progress=False, log=messages.append)
    assert "skipped 1 image file that cannot be decoded (listed in metrics.json)" in messages
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    assert metrics["data"]["skipped_files"] == [bad_file]
    assert result["final"]["num_train"] + result["final"]["num_validation"] == 16  # 17 files, one skipped


def test_rtt_search_changes_only_scores_over_the_trained_convs(tmp_path, cifar10_path, natural_run):
    """A transferred RTT (5 classes from a 10-class network): trained convs, fresh classifier, fresh scores."""
    source, _ = run_files.load_run(natural_run)
    config = tiny_config(cifar10_path, init_from=natural_run, class_subset=(0, 1, 2, 3, 4))
    start = warm_start.initial_network(config, 5, SHAPE)
    fresh = build.build_network(config, 5, SHAPE)
    convs = [name for name in named(source, "kernel") if name != "classifier"]
    assert len(convs) == 20
    assert_same(named(start, "kernel"), named(source, "kernel"), convs)
    assert_same(named(start, "kernel"), named(fresh, "kernel"), ["classifier"])
    assert_same(named(start, "scores"), named(fresh, "scores"))

    run_dir = str(tmp_path / "rtt")
    loop.run(config, run_dir, progress=False)
    searched, _ = run_files.load_run(run_dir, "last")
    assert searched.output_shape[-1] == 5
    assert json.load(open(f"{run_dir}/metrics.json"))["data"]["num_classes"] == 5
    assert_same(named(searched, "kernel"), named(start, "kernel"))
    assert all(not np.array_equal(named(searched, "scores")[n], s) for n, s in named(start, "scores").items())


def test_rtt_keeps_the_trained_classifier_unless_told(cifar10_path, natural_run):
    source, _ = run_files.load_run(natural_run)
    same_task = warm_start.initial_network(tiny_config(cifar10_path, init_from=natural_run), 10, SHAPE)
    assert_same(named(same_task, "kernel"), named(source, "kernel"))
    config = tiny_config(cifar10_path, init_from=natural_run, reinit_classifier=True)
    reinitialised = warm_start.initial_network(config, 10, SHAPE)
    assert_same(named(reinitialised, "kernel"), named(build.build_network(config, 10, SHAPE), "kernel"),
                ["classifier"])
    assert not np.array_equal(named(reinitialised, "kernel")["classifier"], named(source, "kernel")["classifier"])


def test_class_subset_loads_only_those_classes_relabelled(cifar10_path):
    every_class = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=1, test_examples=1)
    splits = build.load_data(tiny_config(cifar10_path, class_subset=(7, 3), test_examples=40))
    assert splits.num_classes == 2
    assert splits.class_names == (every_class.class_names[7], every_class.class_names[3])
    for split in (splits.train, splits.validation, splits.test):
        assert {int(label) for _, label in split.as_numpy_iterator()} == {0, 1}


@pytest.mark.parametrize("overrides,message", [
    (dict(mode="finetune", init_from="/no/such/run"), "init_from /no/such/run holds no search run"),
    (dict(mode="finetune"), "init_from must be a run folder"),
    (dict(mode="finetune", init_from="{natural}"), "is a mode natural run"),
    (dict(mode="finetune", init_from="{rst}", remaining_ratio=0.1), "has remaining_ratio 0.2, this run 0.1"),
    (dict(init_from="{natural}", width_multiplier=1 / 8), "has width_multiplier 0.0625, this run 0.125"),
    (dict(init_from="{rst}"), "is a mode rst run"),
    (dict(mode="finetune", init_from="{rst}", finetune_weights="reinit", reinit_seed=3), "is the seed of init_from"),
])
def test_bad_init_from_fails_before_writing(tmp_path, cifar10_path, rst_run, natural_run, overrides, message):
    if "init_from" in overrides:
        overrides["init_from"] = overrides["init_from"].format(rst=rst_run, natural=natural_run)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as error:
        loop.run(tiny_config(cifar10_path, **overrides), str(tmp_path / "out"), progress=False)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_the_learning_rate_drops_tenfold_at_each_fraction_and_is_constant_without_drops():
    import keras
    import tensorflow as tf

    schedule = loop.learning_rate_schedule(SearchConfig(epochs=4, learning_rate=0.1, lr_drops=(0.5, 0.75)), 10)
    rates = [float(schedule(step)) for step in (0, 20, 21, 30, 31, 39)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    # No drops (`--lr_drops=`): one rate for the whole run, and an optimizer step takes it.
    optimizer = keras.optimizers.SGD(loop.learning_rate_schedule(SearchConfig(learning_rate=0.1, lr_drops=()), 10))
    variable = tf.Variable([1.0])
    optimizer.apply([tf.constant([2.0])], [variable])
    np.testing.assert_allclose(variable.numpy(), [0.8], rtol=1e-6)
