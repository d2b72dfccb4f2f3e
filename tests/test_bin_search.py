"""bin/search end to end: outputs, resuming a killed run, what it prints, and bad input."""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import SEARCH_APP as SEARCH
from conftest import TINY_SEARCH_FLAGS, start_search

TINY = [*TINY_SEARCH_FLAGS, "--noprogress"]


def search(*args, cifar10_path=None):
    env = dict(os.environ)
    if cifar10_path:
        env["RST_TF_DATA_DIR"] = cifar10_path
    return subprocess.run([sys.executable, SEARCH, *args], env=env, capture_output=True, text=True, timeout=900)


def checkpoint_tensors(checkpoint_dir):
    """Every saved tensor (network scores, kernels and BN statistics, optimizer state, epoch)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoint_dir))
    names = [name for name in reader.get_variable_to_shape_map() if "save_counter" not in name]
    return {name: reader.get_tensor(name) for name in names if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


@pytest.fixture(scope="module")
def whole_run(tiny_search_run):
    """The finished 2-epoch tiny search (conftest), shared by the tests that read a run folder."""
    return tiny_search_run[0]


@pytest.fixture(scope="session")  # as conftest's tiny search: pytest makes it first, while that search runs
def killed_run(started_tiny_search, tmp_path_factory, cifar10_path):
    """The same search killed (SIGKILL) as it starts its second epoch; it runs alongside the whole one."""
    folder = tmp_path_factory.mktemp("killed")
    killed_dir = folder / "run"
    with open(folder / "stderr.txt", "w") as stderr:
        process = start_search([*TINY, f"--output_dir={killed_dir}"], cifar10_path, subprocess.PIPE, stderr)
    for line in process.stdout:  # "epoch 2/2" comes right after the first epoch's checkpoint
        if line.startswith("epoch 2/"):
            break
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=600)
    assert (killed_dir / "checkpoints" / "last" / "checkpoint").exists(), (folder / "stderr.txt").read_text()[-3000:]
    return killed_dir


def test_killed_run_resumes_to_the_same_scores(cifar10_path, killed_run, whole_run):
    metrics = json.loads((whole_run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    assert {"test_natural_accuracy", "test_pgd20_accuracy"} <= set(metrics["final"]["best"])
    for name in ("config.json", "flags.txt", "tensorboard"):
        assert (whole_run / name).exists()

    killed_dir = killed_run
    resumed = search(*TINY, f"--output_dir={killed_dir}", "--resume", cifar10_path=cifar10_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch 1 of 2" in resumed.stdout
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


def test_output_shows_the_runs_own_epochs_and_no_warning(tiny_search_run):
    """With the progress bar on: "epoch i/2" lines of the run, no Keras "Epoch i/n" label counting a part of it, no
    Keras warning about arguments it ignores, no INFO lines of TensorFlow's Python logs."""
    _, stdout, stderr = tiny_search_run
    assert "epoch 1/2" in stdout.splitlines() and "epoch 2/2" in stdout.splitlines()
    assert not re.search(r"Epoch \d+/\d+", stdout + stderr)
    assert "will be ignored" not in stdout + stderr and "shuffle" not in stdout + stderr
    assert not re.search(r"^I\d{4} [\d:.]+ +\d+ \w+\.py:\d+\]", stderr, re.MULTILINE)  # Python INFO logs
    assert "1/1" in stdout  # the progress bar over the epoch's one step


def test_undecodable_image_fails_with_one_line_naming_it(tmp_path, image_folders_with_a_bad_file):
    data_dir, bad_file = image_folders_with_a_bad_file
    output_dir = tmp_path / "out"
    result = search(*TINY, "--train_examples=0", "--validation_examples=4", "--test_examples=0", "--batch_size=4",
                    f"--data_dir={data_dir}", f"--output_dir={output_dir}")
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and bad_file in lines[0] and "cannot be decoded" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not output_dir.exists()


def test_existing_run_is_not_overwritten_without_resume(tmp_path, cifar10_path):
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    result = search(*TINY, f"--output_dir={tmp_path / 'out'}", cifar10_path=cifar10_path)
    assert result.returncode != 0 and "already holds a run" in result.stderr


def test_load_run_restores_the_searched_network(tmp_path, whole_run):
    from rst_tf.training import run_dir
    network, config = run_dir.load_run(str(whole_run), "last")
    saved = checkpoint_tensors(str(whole_run / "checkpoints" / "last"))
    scores = [name for name in saved if name.startswith("network/") and name.endswith("VARIABLE_VALUE")]
    restored = {v.numpy().tobytes() for v in network.weights}
    assert scores and all(saved[name].tobytes() in restored for name in scores)
    assert config.remaining_ratio == 0.2 and config.width_multiplier == 0.0625
    with pytest.raises(ValueError, match="no search run"):
        run_dir.load_run(str(tmp_path))
