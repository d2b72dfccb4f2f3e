"""The search step under tf.distribute strategies (tests/distributed_search.py in subprocesses): one device,
MirroredStrategy over two logical CPUs, MultiWorkerMirroredStrategy over two local workers."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(*args, env=None):
    command = [sys.executable, os.path.join(ROOT, "tests", "distributed_search.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def relative_update_differences(first, second):
    keys = [key for key in first.files if key.startswith("update_")]
    assert keys
    return [np.linalg.norm(first[key] - second[key]) / np.linalg.norm(first[key]) for key in keys]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The reference step on the default strategy, with BatchNorm in inference (0) or training (1) mode."""
    folder = tmp_path_factory.mktemp("one_device")
    runs = {}
    for bn_training in ("0", "1"):
        path = str(folder / f"bn{bn_training}.npz")
        run_script("default", path, "--attack_bn_training", bn_training)
        runs[bn_training] = np.load(path)
    return runs


def test_mirrored_strategy_on_two_cpus_matches_one_device(tmp_path, one_device):
    """One PGD search step on one device and split over two: same loss, same score update (up to float sums)."""
    run_script("mirrored", str(tmp_path / "mirrored.npz"), "--logical_cpus", "2", "--attack_bn_training", "0")
    single, mirrored = one_device["0"], np.load(tmp_path / "mirrored.npz")
    assert int(mirrored["replicas"]) == 2
    assert float(mirrored["loss"]) == pytest.approx(float(single["loss"]), rel=1e-4)
    assert max(relative_update_differences(single, mirrored)) < 0.05


def test_mirrored_strategy_with_batch_norm_training_attack_runs(tmp_path, one_device):
    """The paper's default (BatchNorm in training mode while attacking) under two replicas: same loss to 1%."""
    run_script("mirrored", str(tmp_path / "mirrored.npz"), "--logical_cpus", "2")
    single, mirrored = one_device["1"], np.load(tmp_path / "mirrored.npz")
    assert float(mirrored["loss"]) == pytest.approx(float(single["loss"]), rel=1e-2)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_multi_worker_strategy_with_two_local_workers(tmp_path, one_device):
    """Two worker processes on 127.0.0.1 run the step with strategy.run and agree with one device."""
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        command = [sys.executable, os.path.join(ROOT, "tests", "distributed_search.py"), "multi_worker",
                   str(tmp_path / f"worker{index}.npz"), "--attack_bn_training", "0"]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    chief = np.load(tmp_path / "worker0.npz")
    assert int(chief["replicas"]) == 2
    single = one_device["0"]
    assert float(chief["loss"]) == pytest.approx(float(single["loss"]), rel=1e-4)
    assert max(relative_update_differences(single, chief)) < 0.05
