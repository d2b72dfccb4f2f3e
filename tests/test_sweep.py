"""Sweeps over remaining ratios: bin/sweep end to end, skipping finished runs, resuming killed ones, bad input."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from rst_tf.study import sweep
from rst_tf.training import run_dir
from rst_tf.training.config import SearchConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "bin", "sweep.py")
TINY = dict(network="resnet18", width_multiplier=0.0625, train_examples=32, validation_examples=16,
            test_examples=16, batch_size=32, attack_steps=1, eval_attack_steps=1, epochs=1, seed=3)
TINY_FLAGS = [f"--{name}={value}" for name, value in TINY.items()] + ["--noprogress"]


def run_sweep_app(*args, cifar10_path):
    env = dict(os.environ, RST_TF_DATA_DIR=cifar10_path)
    return subprocess.run([sys.executable, SWEEP, *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, cifar10_path):
    """A finished sweep over two ratios."""
    output_dir = tmp_path_factory.mktemp("sweeps") / "tiny"
    sweep.run_sweep(SearchConfig(data_dir=cifar10_path, **TINY), [0.2, 0.5], str(output_dir))
    return output_dir


def test_sweep_runs_each_ratio_and_writes_one_table(finished_sweep):
    summary = json.loads((finished_sweep / "sweep.json").read_text())
    assert summary["remaining_ratios"] == [0.2, 0.5] and "remaining_ratio" not in summary["config"]
    for row, name in zip(summary["runs"], ("ratio_0.2", "ratio_0.5"), strict=True):
        metrics = json.loads((finished_sweep / name / "metrics.json").read_text())
        assert row["test_pgd20_accuracy"] == metrics["final"]["best"]["test_pgd20_accuracy"]
        config = json.loads((finished_sweep / name / "config.json").read_text())
        assert config["remaining_ratio"] == row["remaining_ratio"]
    table = (finished_sweep / "sweep.md").read_text().splitlines()
    assert "| remaining ratio | best epoch | natural | PGD-1 |" in table
    assert [line.split("|")[1].strip() for line in table if line.startswith("| 0.")] == ["0.2", "0.5"]


def test_bin_sweep_over_a_finished_sweep_trains_nothing(tmp_path, cifar10_path, finished_sweep):
    output_dir = tmp_path / "sweep"
    shutil.copytree(finished_sweep, output_dir)
    os.remove(output_dir / "sweep.md")
    before = {name: checkpoint_times(output_dir / name) for name in ("ratio_0.2", "ratio_0.5")}
    result = run_sweep_app(*TINY_FLAGS, "--remaining_ratios=0.2,0.5", f"--output_dir={output_dir}",
                           cifar10_path=cifar10_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio_0.2: finished, skipped" in result.stdout and "ratio_0.5: finished, skipped" in result.stdout
    assert before == {name: checkpoint_times(output_dir / name) for name in ("ratio_0.2", "ratio_0.5")}
    assert (output_dir / "sweep.md").read_text() == (finished_sweep / "sweep.md").read_text()
    assert "--remaining_ratios=0.2,0.5" in (output_dir / "flags.txt").read_text()


def checkpoint_times(run_dir):
    folder = os.path.join(run_dir, "checkpoints", "last")
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}


def test_sweep_again_skips_finished_runs_and_resumes_killed_ones(tmp_path, finished_sweep):
    """A run killed after its last epoch: the sweep resumes it (no training left) and writes its final metrics."""
    output_dir = tmp_path / "sweep"
    shutil.copytree(finished_sweep, output_dir)
    killed = output_dir / "ratio_0.5" / "metrics.json"
    metrics = json.loads(killed.read_text())
    killed.write_text(json.dumps({key: value for key, value in metrics.items() if key != "final"}))
    before = {name: checkpoint_times(output_dir / name) for name in ("ratio_0.2", "ratio_0.5")}
    config = run_dir.read_config(str(output_dir / "ratio_0.2"))
    messages = []
    summary = sweep.run_sweep(config, [0.2, 0.5], str(output_dir), log=messages.append)
    assert "ratio_0.2: finished, skipped" in messages
    assert "ratio_0.5: resuming after epoch 1 of 1" in messages
    assert not any(message.startswith("ratio_0.2: epoch") for message in messages)
    assert before == {name: checkpoint_times(output_dir / name) for name in ("ratio_0.2", "ratio_0.5")}
    assert json.loads(killed.read_text())["final"]["best"] == metrics["final"]["best"]
    assert [row["remaining_ratio"] for row in summary["runs"]] == [0.2, 0.5]


def test_sweep_refuses_bad_settings_before_running(tmp_path, finished_sweep):
    config = run_dir.read_config(str(finished_sweep / "ratio_0.2"))
    with pytest.raises(ValueError, match="holds a run with seed 3, not 4"):
        sweep.run_sweep(dataclasses.replace(config, seed=4), [0.2], str(finished_sweep))
    with pytest.raises(ValueError, match="mode must be one of"):
        sweep.run_sweep(dataclasses.replace(config, mode="dense_at"), [0.2], str(tmp_path / "dense"))
    with pytest.raises(ValueError, match="init_from .*ratio_0.1 holds no search run"):
        sweep.run_sweep(dataclasses.replace(config, mode="finetune",
                                                    init_from=str(finished_sweep / "ratio_{ratio}")),
                        [0.2, 0.1], str(tmp_path / "finetune"))
    assert not (tmp_path / "dense").exists() and not (tmp_path / "finetune").exists()


@pytest.mark.parametrize("bad_args,message", [
    (["--remaining_ratios=0.2,x"], "--remaining_ratios must list numbers in (0, 1]"),
    (["--remaining_ratios=0.2,1.5"], "--remaining_ratios must list numbers in (0, 1]"),
    ([], "--remaining_ratios is required"),
])
def test_bad_sweep_flags_fail_with_one_line(tmp_path, cifar10_path, bad_args, message):
    result = run_sweep_app(*TINY_FLAGS, f"--output_dir={tmp_path / 'out'}", *bad_args, cifar10_path=cifar10_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_a_sweep_refuses_nested_ratios():
    with pytest.raises(ValueError, match="a sweep over remaining_ratios takes none"):
        sweep.run_configs(SearchConfig(mode="rst", nested_ratios=(0.05, 0.1)), [0.05, 0.1])
