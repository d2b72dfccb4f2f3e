"""A nested search as a ticket bank: its run folder and metrics, tickets from it, the nested `.rst` coding, and
bin/r2s and bin/export on it."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from rst_tf.deployment import artifact, mask_codec, tickets
from rst_tf.method import layers, masking
from rst_tf.search import nested
from rst_tf.training import build, loop
from rst_tf.training.config import SearchConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (32, 32, 3)
RATIOS = (0.1, 0.2, 0.3)


def searched_nested_network(config, seed=0):
    """A nested network with random scores and, in every ticket's slot, the BatchNorm statistics of that ticket (one
    training-mode pass with momentum 0 on its own images): a stand-in for a finished nested search."""
    network = build.build_network(config, 10, SHAPE)
    rng = np.random.default_rng(seed)
    for layer in layers.masked_layers(network):
        layer.scores.assign(rng.standard_normal(layer.scores.shape).astype(np.float32))
    norms = layers.batch_norm_layers(network)
    for layer in norms:
        layer.momentum = 0.0
    for index in range(len(config.ticket_ratios())):
        with nested.ticket_scope(network, config.ticket_ratios(), index):
            network(tf.random.stateless_uniform([32, *SHAPE], [seed, index]), training=True)
    for layer in norms:
        layer.momentum = 0.9
    return network


@pytest.fixture(scope="module")
def stand_in_run(tmp_path_factory):
    """(run folder, config, the network in memory) of a nested search as `bin/search` leaves it."""
    run_dir = str(tmp_path_factory.mktemp("nested_run"))
    config = SearchConfig(network="resnet18", width_multiplier=1 / 16, nested_ratios=RATIOS, seed=0).resolved()
    network = searched_nested_network(config)
    with open(os.path.join(run_dir, "config.json"), "w") as handle:
        json.dump(dataclasses.asdict(config), handle)
    with open(os.path.join(run_dir, "metrics.json"), "w") as handle:
        json.dump({"data": {"num_classes": 10, "image_shape": list(SHAPE)}}, handle)
    tf.train.Checkpoint(network=network).save(os.path.join(run_dir, "checkpoints", "best", "ckpt"))
    return run_dir, config, network


def test_from_runs_gives_a_ticket_per_ratio_with_the_network_logits(stand_in_run):
    run_dir, config, network = stand_in_run
    banks, specs = tickets.from_runs([run_dir])
    bank = banks["cifar10"]
    assert [ticket.name for ticket in bank.tickets] == ["ratio_0.1", "ratio_0.2", "ratio_0.3"]
    assert [ticket.remaining_ratio for ticket in bank.tickets] == list(RATIOS)
    assert specs["cifar10"]["remaining_ratio"] == 0.3
    images = tf.random.stateless_uniform([8, *SHAPE], [4, 4])
    logits = []
    for index, ticket in enumerate(bank.tickets):
        with nested.ticket_scope(network, RATIOS, index):
            expected = network(images, training=False).numpy()
        logits.append(bank.logits(images, index).numpy())
        np.testing.assert_allclose(logits[-1], expected, atol=1e-4, rtol=1e-4, err_msg=ticket.name)
        norm = layers.batch_norm_layers(network)[0]
        mean = norm.moving_mean.numpy() if index == 2 else norm.slot_moving_mean.numpy()[index]
        np.testing.assert_array_equal(ticket.statistics[norm.name][0], mean)
    assert np.abs(logits[0] - logits[1]).max() > 1e-3 and np.abs(logits[1] - logits[2]).max() > 1e-3
    for smaller, larger in zip(bank.tickets, bank.tickets[1:]):
        for name, mask in smaller.masks.items():
            assert np.all(mask <= larger.masks[name]) and mask.sum() < larger.masks[name].sum(), name


def test_a_nested_run_joins_single_ratio_runs_of_its_network(stand_in_run, tmp_path):
    run_dir, _, _ = stand_in_run
    import ticket_fixtures
    single = str(tmp_path / "single")
    ticket_fixtures.write_run(single, ticket_fixtures.tiny_config(0.05))
    banks, _ = tickets.from_runs([run_dir, single])
    assert [t.name for t in banks["cifar10"].tickets] == ["ratio_0.05", "ratio_0.1", "ratio_0.2", "ratio_0.3"]
    overlapping = str(tmp_path / "overlapping")
    ticket_fixtures.write_run(overlapping, ticket_fixtures.tiny_config(0.2))
    with pytest.raises(ValueError, match="already has a ticket at remaining ratio 0.2"):
        tickets.from_runs([run_dir, overlapping])


def _mask_bytes(path):
    header = json.loads(np.load(path)["header"].tobytes().decode())
    codes = [code for entry in header["tickets"] for code in entry["masks"]]
    return header, sum(code["quotients"][1] + code["remainders"][1] for code in codes)


def test_rst_round_trip_of_a_nested_bank_is_exact_and_smaller(stand_in_run, tmp_path):
    run_dir, _, _ = stand_in_run
    banks, specs = tickets.from_runs([run_dir])
    tickets.write_artifact(str(tmp_path / "nested.rst"), banks, specs)
    bank = banks["cifar10"]
    artifact.write(str(tmp_path / "independent.rst"), specs, bank.tickets, nested_coding=False)
    nested_header, nested_bytes = _mask_bytes(tmp_path / "nested.rst")
    independent_header, independent_bytes = _mask_bytes(tmp_path / "independent.rst")
    assert nested_header["version"] == artifact.NESTED_VERSION and independent_header["version"] == artifact.VERSION
    added = [code for entry in nested_header["tickets"] for code in entry["masks"] if "added_to" in code]
    assert {code["added_to"] for code in added} == {0, 1} and not any(
        "added_to" in code for code in nested_header["tickets"][0]["masks"])
    assert nested_bytes < 0.9 * independent_bytes, (nested_bytes, independent_bytes)
    for path in ("nested.rst", "independent.rst"):
        _, read_back = artifact.read(str(tmp_path / path))
        for ours, theirs in zip(bank.tickets, read_back, strict=True):
            assert ours.name == theirs.name and set(ours.masks) == set(theirs.masks)
            for name, mask in ours.masks.items():
                np.testing.assert_array_equal(theirs.masks[name], mask, err_msg=f"{path} {ours.name} {name}")
            for name, (mean, variance) in ours.statistics.items():
                np.testing.assert_array_equal(theirs.statistics[name][0], mean)
                np.testing.assert_array_equal(theirs.statistics[name][1], variance)


def test_a_corrupt_nested_reference_is_refused(stand_in_run, tmp_path):
    run_dir, _, _ = stand_in_run
    banks, specs = tickets.from_runs([run_dir])
    path = str(tmp_path / "bank.rst")
    tickets.write_artifact(path, banks, specs)
    arrays = dict(np.load(path))
    header = json.loads(arrays["header"].tobytes().decode())
    code = next(code for code in header["tickets"][1]["masks"] if "added_to" in code)
    code["added_to"] = 1  # itself: not a ticket decoded before it
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(ValueError, match=f"corrupt .rst ticket bank \\(ticket 1, layer {code['layer']}"):
        artifact.read(path, verify=False)


@pytest.mark.parametrize("shape, base_fraction, mask_fraction", [
    ((3, 3, 4, 8), 0.1, 0.3), ((50,), 0.0, 0.5), ((50,), 0.4, 0.4), ((50,), 0.5, 1.0), ((64, 10), 0.9, 0.95),
    ((0,), 0.0, 0.0),
])
def test_added_positions_decode_to_the_same_mask(shape, base_fraction, mask_fraction):
    size = int(np.prod(shape))
    order = np.random.default_rng(size).permutation(size)
    ranks = np.empty(size, np.int64)
    ranks[order] = np.arange(size)
    base = (ranks < int(base_fraction * size)).reshape(shape)
    mask = (ranks < int(mask_fraction * size)).reshape(shape)
    encoded = mask_codec.encode_added(mask, base)
    assert encoded.size == size - base.sum()
    np.testing.assert_array_equal(mask_codec.decode_added(encoded, base), mask)


def test_added_positions_need_the_base_inside_the_mask():
    base = np.array([1, 0, 1, 0], bool)
    with pytest.raises(ValueError, match="the base mask is not inside the mask"):
        mask_codec.encode_added(np.array([1, 1, 0, 0], bool), base)
    with pytest.raises(ValueError, match="added positions need one shape"):
        mask_codec.encode_added(np.ones(5, bool), base)


def test_nested_coding_is_smaller_for_the_nested_masks_of_one_layer():
    scores = np.abs(np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32))
    masks = [masking.top_k_mask(scores, ratio).numpy().astype(bool) for ratio in (0.05, 0.1, 0.2, 0.3)]
    independent = sum(mask_codec.encode(mask).num_bytes for mask in masks)
    added = mask_codec.encode(masks[0]).num_bytes + sum(
        mask_codec.encode_added(mask, base).num_bytes for base, mask in zip(masks, masks[1:]))
    assert added < 0.75 * independent, (added, independent)


# --- a real tiny nested search, and the apps on it -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_nested_run(tmp_path_factory, cifar10_path):
    run_dir = str(tmp_path_factory.mktemp("tiny_nested") / "run")
    config = SearchConfig(data_dir=cifar10_path, network="resnet18", width_multiplier=1 / 16,
                          nested_ratios=(0.3, 0.1), train_examples=32, validation_examples=16, test_examples=16,
                          batch_size=32, attack_steps=1, eval_attack_steps=1, epochs=2, seed=3)
    result = loop.run(config, run_dir, progress=False, log=lambda line: None)
    return run_dir, result


def test_a_nested_search_reports_every_ticket_and_selects_by_the_mean(tiny_nested_run):
    run_dir, result = tiny_nested_run
    with open(os.path.join(run_dir, "config.json")) as handle:
        recorded = json.load(handle)
    assert recorded["nested_ratios"] == [0.1, 0.3] and recorded["remaining_ratio"] == 0.3
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    rows = metrics["epochs"]
    for row in rows:
        assert {"loss", "loss_ratio_0.1", "loss_ratio_0.3", "accuracy_ratio_0.1", "accuracy_ratio_0.3"} <= set(row)
        for kind in ("natural", "pgd20"):
            per_ratio = [row[f"val_{kind}_accuracy_ratio_{ratio}"] for ratio in ("0.1", "0.3")]
            assert row[f"val_{kind}_accuracy"] == pytest.approx(np.mean(per_ratio))
    best_epoch = 1 + int(np.argmax([row["val_pgd20_accuracy"] for row in rows]))
    final = metrics["final"]
    assert final["best"]["epoch"] == best_epoch and final["last"]["epoch"] == 2
    for report in (final["best"], final["last"]):
        for kind in ("natural", "pgd20"):
            per_ratio = [report[f"test_{kind}_accuracy_ratio_{ratio}"] for ratio in ("0.1", "0.3")]
            assert report[f"test_{kind}_accuracy"] == pytest.approx(np.mean(per_ratio))
            assert all(0.0 <= value <= 1.0 for value in per_ratio)
    assert result["final"] == final


def _app(name, *args, data_dir):
    env = dict(os.environ, RST_TF_DATA_DIR=data_dir)
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", f"{name}.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_bin_r2s_and_bin_export_take_a_nested_run(tiny_nested_run, tmp_path, cifar10_path):
    run_dir, _ = tiny_nested_run
    r2s_app = _app("r2s", f"--run_dir={run_dir}", f"--output_dir={tmp_path / 'r2s'}", "--num_examples=16",
                   "--batch_size=16", "--steps=1", "--adaptive=vanilla", data_dir=cifar10_path)
    export_app = _app("export", f"--run_dir={run_dir}", f"--output_dir={tmp_path / 'export'}", data_dir=cifar10_path)
    for app in (r2s_app, export_app):
        _, stderr = app.communicate(timeout=900)
        assert app.returncode == 0, stderr[-3000:]
    report = json.loads((tmp_path / "r2s" / "r2s.json").read_text())
    assert [row["name"] for row in report["tasks"]["cifar10"]["tickets"]] == ["ratio_0.1", "ratio_0.3"]
    summary = json.loads((tmp_path / "export" / "export.json").read_text())
    assert summary["models"] == ["cifar10_ratio_0_1", "cifar10_ratio_0_3", "cifar10_r2s"]
    banks, _ = tickets.from_runs([run_dir])
    bank = banks["cifar10"]
    _, stored = artifact.read(str(tmp_path / "export" / "bank.rst"))
    header = json.loads(np.load(tmp_path / "export" / "bank.rst")["header"].tobytes().decode())
    assert header["version"] == artifact.NESTED_VERSION
    images = tf.random.stateless_uniform([4, *SHAPE], [1, 2])
    for index, (ticket, read_back) in enumerate(zip(bank.tickets, stored, strict=True)):
        for name, mask in ticket.masks.items():
            np.testing.assert_array_equal(read_back.masks[name], mask)
        saved = tf.saved_model.load(str(tmp_path / "export" / f"cifar10_ratio_{ticket.name[6:].replace('.', '_')}" /
                                        "1"))
        served = saved.signatures["serving_default"](images=images)["logits"].numpy()
        np.testing.assert_allclose(served, bank.logits(images, index).numpy(), atol=1e-4, rtol=1e-4)
