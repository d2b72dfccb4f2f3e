"""bin/search end to end: outputs, resuming a killed run, and bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH = os.path.join(ROOT, "bin", "search.py")
TINY = ["--network=resnet18", "--width_multiplier=0.0625", "--remaining_ratio=0.2", "--train_examples=64",
        "--validation_examples=16", "--test_examples=16", "--batch_size=32", "--attack_steps=1",
        "--eval_attack_steps=2", "--epochs=2", "--deterministic", "--noprogress", "--seed=3"]


def search(*args, cifar10_path=None, wait=True):
    env = dict(os.environ)
    if cifar10_path:
        env["RST_TF_DATA_DIR"] = cifar10_path
    command = [sys.executable, SEARCH, *args]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def checkpoint_tensors(checkpoint_dir):
    """Every saved tensor (network scores, kernels and BN statistics, optimizer state, epoch)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoint_dir))
    names = [name for name in reader.get_variable_to_shape_map() if "save_counter" not in name]
    return {name: reader.get_tensor(name) for name in names if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, cifar10_path):
    """A finished 2-epoch tiny search, shared by the tests that read a run folder."""
    output_dir = tmp_path_factory.mktemp("runs") / "whole"
    result = search(*TINY, f"--output_dir={output_dir}", cifar10_path=cifar10_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def test_killed_run_resumes_to_the_same_scores(tmp_path, cifar10_path, whole_run):
    metrics = json.loads((whole_run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    assert {"test_natural_accuracy", "test_pgd20_accuracy"} <= set(metrics["final"]["best"])
    for name in ("config.json", "flags.txt", "tensorboard"):
        assert (whole_run / name).exists()

    killed_dir = tmp_path / "killed"
    process = search(*TINY, f"--output_dir={killed_dir}", cifar10_path=cifar10_path, wait=False)
    first_epoch = killed_dir / "checkpoints" / "last" / "checkpoint"
    deadline = time.time() + 600
    while not first_epoch.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first_epoch.exists()
    resumed = search(*TINY, f"--output_dir={killed_dir}", "--resume", cifar10_path=cifar10_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = checkpoint_tensors(str(whole_run / "checkpoints" / "last"))
    actual = checkpoint_tensors(str(killed_dir / "checkpoints" / "last"))
    assert sum(name.startswith("network/") for name in expected) > 20 and expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    resumed_metrics = json.loads((killed_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in resumed_metrics["epochs"]] == [1, 2]


@pytest.mark.parametrize("bad_args,message", [
    (["--network=vgg11"], "network must be one of"),
    (["--remaining_ratio=1.5"], "remaining_ratio must be in (0, 1]"),
    (["--remaining_ratio=0"], "remaining_ratio must be in (0, 1]"),
    (["--data_dir=/no/such/folder"], "/no/such/folder"),
    (["--flagfile=/no/such/flags.cfg"], "/no/such/flags.cfg"),
    (["--mode=finetune", "--init_from=/no/such/run"], "init_from /no/such/run holds no search run"),
    (["--class_subset=0,x"], "--class_subset must list class indices"),
])
def test_bad_flags_fail_with_one_line_and_write_nothing(tmp_path, cifar10_path, bad_args, message):
    output_dir = tmp_path / "out"
    result = search(*TINY, f"--output_dir={output_dir}", *bad_args, cifar10_path=cifar10_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not output_dir.exists()


def test_existing_run_is_not_overwritten_without_resume(tmp_path, cifar10_path):
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    result = search(*TINY, f"--output_dir={tmp_path / 'out'}", cifar10_path=cifar10_path)
    assert result.returncode != 0 and "already holds a run" in result.stderr


def test_load_run_restores_the_searched_network(tmp_path, whole_run):
    from rst_tf import trainer
    network, config = trainer.load_run(str(whole_run), "last")
    saved = checkpoint_tensors(str(whole_run / "checkpoints" / "last"))
    scores = [name for name in saved if name.startswith("network/") and name.endswith("VARIABLE_VALUE")]
    restored = {v.numpy().tobytes() for v in network.weights}
    assert scores and all(saved[name].tobytes() in restored for name in scores)
    assert config.remaining_ratio == 0.2 and config.width_multiplier == 0.0625
    with pytest.raises(ValueError, match="no search run"):
        trainer.load_run(str(tmp_path))
