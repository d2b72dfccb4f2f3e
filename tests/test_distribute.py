"""The search step under tf.distribute strategies (tests/distributed_search.py in subprocesses, all started at once):
one device, MirroredStrategy over two logical CPUs, MultiWorkerMirroredStrategy over two local workers."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Every step's process, started together: {name: (process, output prefix)}. One device and two CPUs run the
    step with BatchNorm in inference (bn0) and training mode (bn1) while attacking; the two workers with bn0."""
    folder = tmp_path_factory.mktemp("strategies")
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    jobs = {"default": (["default"], ["--attack_bn_training", "0,1"], {}),
            "mirrored": (["mirrored"], ["--logical_cpus", "2", "--attack_bn_training", "0,1"], {})}
    for index in range(2):
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        jobs[f"worker{index}"] = (["multi_worker"], ["--attack_bn_training", "0"], {"TF_CONFIG": json.dumps(task)})
    processes = {}
    for name, (strategy, options, env) in jobs.items():
        command = [sys.executable, os.path.join(ROOT, "tests", "distributed_search.py"), *strategy,
                   str(folder / name), *options]
        processes[name] = (subprocess.Popen(command, env=dict(os.environ, **env), stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True), folder / name)
    yield processes
    for process, _ in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(started, name):
    """Wait for process `name` and check that it succeeded; returns its output prefix."""
    process, prefix = started[name]
    if process.returncode is None:
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-3000:]
    assert process.returncode == 0
    return prefix


def finished(started, name, bn_training):
    """The saved step of process `name` with BatchNorm mode `bn_training`."""
    return np.load(f"{wait_for(started, name)}_bn{bn_training}.npz")


def relative_update_differences(first, second):
    keys = [key for key in first.files if key.startswith("update_")]
    assert keys
    return [np.linalg.norm(first[key] - second[key]) / np.linalg.norm(first[key]) for key in keys]


def test_mirrored_strategy_on_two_cpus_matches_one_device(started):
    """One PGD search step on one device and split over two: same loss, same score update (up to float sums)."""
    single, mirrored = finished(started, "default", 0), finished(started, "mirrored", 0)
    assert int(mirrored["replicas"]) == 2
    assert float(mirrored["loss"]) == pytest.approx(float(single["loss"]), rel=1e-4)
    assert max(relative_update_differences(single, mirrored)) < 0.05


def test_mirrored_strategy_with_batch_norm_training_attack_runs(started):
    """The paper's default (BatchNorm in training mode while attacking) under two replicas: same loss to 1%."""
    single, mirrored = finished(started, "default", 1), finished(started, "mirrored", 1)
    assert float(mirrored["loss"]) == pytest.approx(float(single["loss"]), rel=1e-2)


def test_multi_worker_strategy_with_two_local_workers(started):
    """Two worker processes on 127.0.0.1 run the step with strategy.run and agree with one device."""
    wait_for(started, "worker1")
    chief = finished(started, "worker0", 0)
    assert int(chief["replicas"]) == 2
    single = finished(started, "default", 0)
    assert float(chief["loss"]) == pytest.approx(float(single["loss"]), rel=1e-4)
    assert max(relative_update_differences(single, chief)) < 0.05
