"""Runs that start from another run (fine-tuned RSTs, RTTs) and runs on a class subset."""
import dataclasses
import json

import numpy as np
import pytest

from rst_tf import data, layers, trainer

TINY = dict(network="resnet18", width_multiplier=1 / 16, remaining_ratio=0.2, train_examples=32,
            validation_examples=16, test_examples=16, batch_size=32, attack_steps=1, eval_attack_steps=1, epochs=1,
            seed=3)
SHAPE = (32, 32, 3)


def tiny_config(cifar10_path, **overrides):
    return trainer.SearchConfig(data_dir=cifar10_path, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def rst_run(tmp_path_factory, cifar10_path):
    """A finished one-epoch RST search (the ticket that fine-tunes start from)."""
    run_dir = str(tmp_path_factory.mktemp("rst"))
    trainer.run(tiny_config(cifar10_path), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def natural_run(tmp_path_factory, cifar10_path):
    """A finished one-epoch natural training of the dense network (the trained network of an RTT)."""
    run_dir = str(tmp_path_factory.mktemp("natural"))
    trainer.run(tiny_config(cifar10_path, mode="natural"), run_dir, progress=False)
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
    source, _ = trainer.load_run(rst_run)
    inherited = trainer.initial_network(tiny_config(cifar10_path, mode="finetune", init_from=rst_run), 10, SHAPE)
    for ours, theirs in zip(inherited.weights, source.weights, strict=True):  # kernels, scores, BatchNorm
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)

    config = tiny_config(cifar10_path, mode="finetune", init_from=rst_run, finetune_weights="reinit")
    reinit_seed = config.resolved().reinit_seed
    assert reinit_seed not in (-1, 3)
    start = trainer.initial_network(config, 10, SHAPE)
    fresh = trainer.build_network(dataclasses.replace(config, mode="rst", seed=reinit_seed), 10, SHAPE)
    assert_same(named(start, "kernel"), named(fresh, "kernel"))
    assert all(not np.array_equal(named(start, "kernel")[n], k) for n, k in named(source, "kernel").items())
    assert_same(named(start, "scores"), named(source, "scores"))

    run_dir = str(tmp_path / "finetune")
    trainer.run(config, run_dir, progress=False)
    assert json.load(open(f"{run_dir}/config.json"))["reinit_seed"] == reinit_seed
    tuned, _ = trainer.load_run(run_dir, "last")
    assert_same(named(tuned, "scores"), named(source, "scores"))
    assert_same(named(tuned, "mask"), named(source, "mask"))
    masks, before, after = named(source, "mask"), named(start, "kernel"), named(tuned, "kernel")
    assert all(np.any((after[n] != before[n])[masks[n] == 1]) for n in masks), "every kept weight set trains"


def test_rtt_search_changes_only_scores_over_the_trained_convs(tmp_path, cifar10_path, natural_run):
    """A transferred RTT (5 classes from a 10-class network): trained convs, fresh classifier, fresh scores."""
    source, _ = trainer.load_run(natural_run)
    config = tiny_config(cifar10_path, init_from=natural_run, class_subset=(0, 1, 2, 3, 4))
    start = trainer.initial_network(config, 5, SHAPE)
    fresh = trainer.build_network(config, 5, SHAPE)
    convs = [name for name in named(source, "kernel") if name != "classifier"]
    assert len(convs) == 20
    assert_same(named(start, "kernel"), named(source, "kernel"), convs)
    assert_same(named(start, "kernel"), named(fresh, "kernel"), ["classifier"])
    assert_same(named(start, "scores"), named(fresh, "scores"))

    run_dir = str(tmp_path / "rtt")
    trainer.run(config, run_dir, progress=False)
    searched, _ = trainer.load_run(run_dir, "last")
    assert searched.output_shape[-1] == 5
    assert json.load(open(f"{run_dir}/metrics.json"))["data"]["num_classes"] == 5
    assert_same(named(searched, "kernel"), named(start, "kernel"))
    assert all(not np.array_equal(named(searched, "scores")[n], s) for n, s in named(start, "scores").items())


def test_rtt_keeps_the_trained_classifier_unless_told(cifar10_path, natural_run):
    source, _ = trainer.load_run(natural_run)
    same_task = trainer.initial_network(tiny_config(cifar10_path, init_from=natural_run), 10, SHAPE)
    assert_same(named(same_task, "kernel"), named(source, "kernel"))
    config = tiny_config(cifar10_path, init_from=natural_run, reinit_classifier=True)
    reinitialised = trainer.initial_network(config, 10, SHAPE)
    assert_same(named(reinitialised, "kernel"), named(trainer.build_network(config, 10, SHAPE), "kernel"),
                ["classifier"])
    assert not np.array_equal(named(reinitialised, "kernel")["classifier"], named(source, "kernel")["classifier"])


def test_class_subset_loads_only_those_classes_relabelled(cifar10_path):
    every_class = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=1, test_examples=1)
    splits = trainer.load_data(tiny_config(cifar10_path, class_subset=(7, 3), test_examples=40))
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
        trainer.run(tiny_config(cifar10_path, **overrides), str(tmp_path / "out"), progress=False)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()
