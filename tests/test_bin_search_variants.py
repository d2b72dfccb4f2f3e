"""bin/search with --objective=trades, --topk_scope=global and --network=keras:ResNet50, end to end on CIFAR-10."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import SEARCH_APP as SEARCH
from conftest import TINY_SEARCH_FLAGS

TINY = [*[flag for flag in TINY_SEARCH_FLAGS if not flag.startswith("--epochs")], "--epochs=1", "--noprogress"]
VARIANTS = {
    "trades_global": ["--objective=trades", "--topk_scope=global", "--attack_steps=2"],
    "keras_resnet50": ["--network=keras:ResNet50", "--width_multiplier=1", "--remaining_ratio=0.1"],
}


def _search(args, cifar10_path):
    env = dict(os.environ, RST_TF_DATA_DIR=cifar10_path)
    return subprocess.Popen([sys.executable, SEARCH, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar10_path):
    """Both searches, run side by side: {name: (run folder, stderr)}."""
    folder = tmp_path_factory.mktemp("variants")
    started = {name: _search([*TINY, *flags, f"--output_dir={folder / name}"], cifar10_path)
               for name, flags in VARIANTS.items()}
    finished = {}
    for name, process in started.items():
        _, stderr = process.communicate(timeout=1500)
        assert process.returncode == 0, stderr[-3000:]
        finished[name] = folder / name
    return finished


def test_trades_global_search_records_exact_global_masks(runs):
    from rst_tf.method import layers, masking
    from rst_tf.training import run_dir

    config = json.loads((runs["trades_global"] / "config.json").read_text())
    assert (config["objective"], config["topk_scope"]) == ("trades", "global")
    assert "--objective=trades" in (runs["trades_global"] / "flags.txt").read_text()
    row = json.loads((runs["trades_global"] / "metrics.json").read_text())["epochs"][0]
    assert np.isfinite(row["loss"])
    network, loaded = run_dir.load_run(str(runs["trades_global"]), "last")
    assert loaded.topk_scope == "global"
    masks = layers.current_masks(network)
    sizes = {layer.name: layer.scores.shape.num_elements() for layer in masks}
    total = sum(sizes.values())
    assert sum(float(mask.numpy().sum()) for mask in masks.values()) == masking.kept_count(total, 0.2)
    # metrics.json holds every masked layer's kept fraction at the epoch's end, i.e. of the last checkpoint.
    assert set(row["kept_fractions"]) == set(sizes)
    for layer, mask in masks.items():
        assert row["kept_fractions"][layer.name] == pytest.approx(float(mask.numpy().mean()), abs=1e-6)
        np.testing.assert_array_equal(layer.binary_mask().numpy(), mask.numpy())  # tickets see the global mask
    assert len({round(value, 3) for value in row["kept_fractions"].values()}) > 3
    # A ticket bank made from the run (what bin/r2s and bin/export read) holds the global masks.
    from rst_tf.deployment import tickets

    banks, _ = tickets.from_runs([str(runs["trades_global"])], checkpoint="last")
    (ticket,) = banks["cifar10"].tickets
    for layer, mask in masks.items():
        np.testing.assert_array_equal(ticket.masks[layer.name], mask.numpy().astype(bool))


def test_keras_resnet50_search_runs_and_loads_back(runs):
    from rst_tf.method import layers, masking
    from rst_tf.training import run_dir

    metrics = json.loads((runs["keras_resnet50"] / "metrics.json").read_text())
    assert np.isfinite(metrics["epochs"][0]["loss"]) and "test_pgd20_accuracy" in metrics["final"]["best"]
    network, config = run_dir.load_run(str(runs["keras_resnet50"]))
    assert config.network == "keras:ResNet50" and network.layers[1].name == "input_normalization"
    masked = layers.masked_layers(network)
    assert len(masked) == 54 and metrics["final"]["weights"] == sum(l.kernel.shape.num_elements() for l in masked)
    fractions = metrics["epochs"][0]["kept_fractions"]
    for layer in masked:  # per-layer top-k: each keeps exactly its own share
        size = layer.scores.shape.num_elements()
        assert fractions[layer.name] == pytest.approx(masking.kept_count(size, 0.1) / size, abs=1e-6)


@pytest.mark.parametrize("bad_args,message", [
    (["--objective=mart"], "objective must be one of ('pgd_at', 'trades')"),
    (["--objective=trades", "--attack=fgsm_rs"], "objective 'trades' takes the L-inf PGD settings"),
    (["--topk_scope=all"], "topk_scope must be one of ('layer', 'global')"),
    (["--topk_scope=global", "--sparsity=channel"], "topk_scope must be layer unless sparsity is element"),
    (["--topk_scope=global", "--mode=dense_at"], "topk_scope must be layer unless"),
    (["--network=keras:NoSuchNet"], "network must be one of"),
    (["--network=keras:ResNet50", "--width_multiplier=0.5"], "width_multiplier must be 1.0 for a keras: network"),
])
def test_bad_flags_fail_with_one_line_and_write_nothing(tmp_path, cifar10_path, bad_args, message):
    output_dir = tmp_path / "out"
    process = _search([*TINY, f"--output_dir={output_dir}", *bad_args], cifar10_path)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode != 0
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], stderr[-2000:]
    assert not output_dir.exists()
