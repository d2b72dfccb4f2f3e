"""A study's runs under the local and the Ray executor: the same files (deterministic runs), dependencies, a Ray
worker killed mid-run on a real two-node local cluster, and bad input (executor, address, resources, storage)."""
import dataclasses
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np
import pytest
import tensorflow as tf

from rst_tf.study import executors, ray_executor, reproduce
from rst_tf.training.config import SearchConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The smallest runs that still checkpoint more than once: natural training (no attack to trace in the training step),
# one step per epoch, three epochs (a worker is killed after the first checkpoint, well before the run finishes).
TINY = dict(network="resnet18", width_multiplier=0.0625, train_examples=16, validation_examples=16,
            test_examples=16, batch_size=16, attack_steps=1, eval_attack_steps=1, seed=3, deterministic=True)
EPOCHS = 3
# Every Ray of this module (the two-node cluster, an embedded one) and its drivers share one token (Ray's token
# authentication; nothing is written to ~/.ray).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex * 2}


@pytest.fixture(scope="module", autouse=True)
def ray_environment():
    with pytest.MonkeyPatch.context() as patch:
        for name, value in RAY_ENV.items():
            patch.setenv(name, value)
        yield


def _free_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def _ray(*args, timeout=180):
    env = dict(os.environ, **RAY_ENV)  # also when the module's fixture has not set them yet
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(ray_environment):
    """A head and a second node (one CPU each) started with `ray start` on this machine: the head's address."""
    temp_dir = tempfile.mkdtemp(prefix="rt_ray_", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    try:
        head = _ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                    f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats")
        assert head.returncode == 0, head.stderr[-2000:]
        second = _ray("start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                      f"--temp-dir={temp_dir}", "--disable-usage-stats")
        assert second.returncode == 0, second.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        _stop_cluster(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _processes():
    """{pid: (parent pid, command line)} of every process readable in /proc."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        found[int(name)] = (parent, command)
    return found


def _stop_cluster(temp_dir, port, timeout=30.0):
    """Stop this module's cluster only: the processes whose command line names its temp folder or port, and their
    descendants (`ray stop` would stop every Ray on the machine, a user's study's too)."""
    processes = _processes()
    ours = {pid for pid, (_, command) in processes.items()
            if pid != os.getpid() and (temp_dir in command or f":{port} " in command + " ")}
    grown = True
    while grown:
        children = {pid for pid, (parent, _) in processes.items() if parent in ours} - ours
        ours |= children
        grown = bool(children)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in ours):
            time.sleep(0.2)


def _alive(pid):
    """False for a process that is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _comparable_metrics(run_dir):
    metrics = json.loads(open(os.path.join(run_dir, "metrics.json")).read())
    for row in metrics["epochs"]:
        row.pop("seconds")
    return metrics


def _checkpoint_tensors(run_dir, which):
    """Every variable's value in the latest `which` checkpoint (not the object graph: metadata, not values)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints", which)))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def assert_same_runs(run_dir, reference_dir):
    assert _comparable_metrics(run_dir) == _comparable_metrics(reference_dir)
    assert open(os.path.join(run_dir, "config.json")).read() == open(os.path.join(reference_dir, "config.json")).read()
    for which in ("best", "last"):
        found, wanted = _checkpoint_tensors(run_dir, which), _checkpoint_tensors(reference_dir, which)
        assert sorted(found) == sorted(wanted)
        assert [name for name in wanted if not np.array_equal(found[name], wanted[name])] == []


def _run_step(cifar10_path, name, output_dir, **changes):
    """A Step of one tiny deterministic run (natural training unless `changes` say otherwise)."""
    config = SearchConfig(data_dir=cifar10_path, mode="natural", remaining_ratio=1.0, epochs=EPOCHS, **TINY)
    return reproduce.Step(name, dataclasses.replace(config, **changes), output_dir)


# The local executor in a fresh process whose TensorFlow has one thread, as a Ray task asking for one CPU has
# (deterministic ops give the same results for the same threads: other threads split reductions otherwise).
LOCAL_RUN = """
import pickle, sys
from rst_tf.study import ray_executor, reproduce
ray_executor.use_threads(1)
step, output_dir = pickle.load(open(sys.argv[1], "rb"))
reproduce.run_steps([("", step)], output_dir, output_dir + "/run_times.json")
"""


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, cifar10_path):
    """The tiny deterministic run, run by the local executor with one TensorFlow thread: its run folder."""
    output_dir = str(tmp_path_factory.mktemp("local"))
    step = _run_step(cifar10_path, "run", os.path.join(output_dir, "run"))
    arguments = os.path.join(output_dir, "step.pickle")
    with open(arguments, "wb") as handle:
        pickle.dump((step, output_dir), handle)
    finished = subprocess.run([sys.executable, "-c", LOCAL_RUN, arguments], cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=ROOT), timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return step.output_dir


def _kill_the_first_worker_after_a_checkpoint(output_dir, run_dir, killed, deadline):
    """SIGKILL the process running `run_dir` (its pid from the executor's progress file) once the run has saved a
    checkpoint and before it finishes; the pid goes to `killed`."""
    progress = os.path.join(output_dir, ray_executor.WORK_FOLDER, "progress", "0.json")
    index = os.path.join(run_dir, "checkpoints", "last", "checkpoint")
    while time.time() < deadline and not killed:
        if os.path.isfile(progress) and os.path.isfile(index) and not executors.is_finished(run_dir):
            pid = json.loads(open(progress).read())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.02)


@pytest.fixture(scope="module")
def cluster_study(cluster, tmp_path_factory, cifar10_path):
    """A study on the two-node cluster: a run whose worker is killed after its first checkpoint, its undisturbed
    twin (same config, another folder) beside it on the other node, and an RTT that starts from the twin:
    (steps, driver's progress lines, run_times.json, pids killed)."""
    output_dir = str(tmp_path_factory.mktemp("cluster"))
    killed_step = _run_step(cifar10_path, "killed", os.path.join(output_dir, "killed"))
    twin = _run_step(cifar10_path, "twin", os.path.join(output_dir, "twin"))
    # one epoch of channel masks under FGSM: the cheapest RTT to trace
    rtt = reproduce.Step("rtt", dataclasses.replace(twin.config, mode="rst", init_from=twin.output_dir,
                                                    init_checkpoint="last", epochs=1, sparsity="channel",
                                                    attack="fgsm"),
                         os.path.join(output_dir, "rtt"), (0.5,))
    killed = []
    killer = threading.Thread(target=_kill_the_first_worker_after_a_checkpoint,
                              args=(output_dir, killed_step.output_dir, killed, time.time() + 600), daemon=True)
    killer.start()
    messages = []
    executor = ray_executor.RayExecutor(cluster, cpus_per_run=1, poll_seconds=0.2)
    try:
        reproduce.run_steps([("", killed_step), ("", twin), ("", rtt)], output_dir,
                            os.path.join(output_dir, "run_times.json"), executor, log=messages.append)
    finally:
        killed.append(None)  # stops the killer if the study failed before it could kill
        killer.join(timeout=5)
    times = json.loads(open(os.path.join(output_dir, "run_times.json")).read())
    return (killed_step, twin, rtt), messages, times, [pid for pid in killed if pid is not None]


def test_embedded_ray_runs_the_same_run(tmp_path, cifar10_path, local_run):
    """An empty address starts Ray on this machine (two CPUs: the run asks for one)."""
    step = _run_step(cifar10_path, "run", str(tmp_path / "run"))
    messages = []
    reproduce.run_steps([("", step)], str(tmp_path), str(tmp_path / "run_times.json"),
                        ray_executor.RayExecutor("", cpus_per_run=1, poll_seconds=0.2), log=messages.append)
    assert messages[-1] == "runs: 1 done, 0 running, 0 queued"
    times = json.loads(open(tmp_path / "run_times.json").read())
    assert sorted(times) == [step.output_dir]
    assert times[step.output_dir]["threads"] == 1  # the CPUs it asked for, not the machine's two cores
    assert_same_runs(step.output_dir, local_run)


@pytest.mark.parametrize("cpus_per_run, threads", [(0, 0), (0.25, 1), (1, 1), (2.5, 2), (8, 8)])
def test_a_run_uses_as_many_threads_as_the_whole_cpus_it_asks_for(cpus_per_run, threads):
    assert ray_executor.threads_for(cpus_per_run) == threads


def test_two_node_cluster_runs_in_parallel_and_a_killed_worker_resumes_to_the_same_run(cluster_study):
    (killed_step, twin, rtt), messages, times, killed = cluster_study
    assert killed, "the run finished before its worker could be killed"
    assert times[killed_step.output_dir]["resumed"] is True  # Ray ran the task again; it resumed from the checkpoint
    assert times[twin.output_dir]["resumed"] is False
    assert {run_dir: row["threads"] for run_dir, row in times.items()} == {run_dir: 1 for run_dir in times}
    # one run per node; the RTT waits for its source
    assert any(message.startswith("runs: 0 done, 2 running, 1 queued") for message in messages), messages
    assert messages[-1] == "runs: 3 done, 0 running, 0 queued"
    assert_same_runs(killed_step.output_dir, twin.output_dir)
    assert not os.path.exists(os.path.join(os.path.dirname(twin.output_dir), ray_executor.WORK_FOLDER))


def test_a_run_on_the_cluster_starts_after_the_run_it_starts_from(cluster_study):
    """The RTT's task gets its source's object reference: it starts once the twin has finished."""
    (killed_step, twin, rtt), _, times, _ = cluster_study
    jobs = executors.with_dependencies(reproduce.step_jobs(killed_step) + reproduce.step_jobs(twin)
                                       + reproduce.step_jobs(rtt))
    assert [job.after for job in jobs] == [(), (), (twin.output_dir,)]
    finished = os.stat(os.path.join(twin.output_dir, "metrics.json")).st_mtime_ns
    started = os.stat(os.path.join(rtt.run_dirs()[0], "config.json")).st_mtime_ns
    assert started >= finished and executors.is_finished(rtt.run_dirs()[0])
    assert sorted(times) == sorted([killed_step.output_dir, twin.output_dir, rtt.run_dirs()[0]])
    assert json.loads(open(os.path.join(rtt.output_dir, "sweep.json")).read())["runs"][0]["remaining_ratio"] == 0.5


def test_a_run_on_the_cluster_equals_the_local_executors(cluster_study, local_run):
    """Equal seeds, --deterministic: the same metrics, config and checkpoint tensors under either executor."""
    assert_same_runs(cluster_study[0][1].output_dir, local_run)


def test_too_many_cpus_per_run_is_one_line_and_writes_nothing(cluster, tmp_path, cifar10_path):
    step = _run_step(cifar10_path, "run", str(tmp_path / "study" / "run"), epochs=1)
    executor = ray_executor.RayExecutor(cluster, cpus_per_run=2)
    with pytest.raises(ValueError, match=r"^cpus_per_run 2 is more than any node of the Ray cluster has "
                                         r"\(at most 1 CPUs on one node\)$"):
        executor.run(reproduce.step_jobs(step), str(tmp_path / "study"))
    assert not (tmp_path / "study").exists()


def test_dependencies_follow_init_from_and_must_point_backwards(tmp_path):
    config = SearchConfig(**TINY)
    source = executors.Job("dense_at", dataclasses.replace(config, mode="dense_at"), str(tmp_path / "dense_at"))
    rtt = executors.Job("rtt", dataclasses.replace(config, init_from=str(tmp_path / "dense_at") + "/"),
                        str(tmp_path / "rtt"))
    elsewhere = executors.Job("other", dataclasses.replace(config, init_from=str(tmp_path / "elsewhere")),
                              str(tmp_path / "other"))
    assert [job.after for job in executors.with_dependencies([source, rtt, elsewhere])] == \
        [(), (source.run_dir,), ()]
    with pytest.raises(ValueError, match="rtt starts from .*dense_at/, which runs after it"):
        executors.with_dependencies([rtt, source])
    with pytest.raises(ValueError, match="two runs write"):
        executors.check_jobs([source, source])


def test_a_task_that_cannot_see_the_output_folder_stops_before_writing(tmp_path):
    marker = tmp_path / ray_executor.WORK_FOLDER / "marker.json"
    marker.parent.mkdir()
    job = executors.Job("run", SearchConfig(**TINY), str(tmp_path / "run"))
    with pytest.raises(ray_executor.StorageError, match="is not visible from Ray node .*shared file system"):
        ray_executor.run_job_task(job, str(tmp_path), str(marker), "token", str(tmp_path / "progress.json"), 0)
    marker.write_text(json.dumps({"token": "another driver's"}))
    with pytest.raises(ray_executor.StorageError, match="lacks the marker the driver wrote"):
        ray_executor.run_job_task(job, str(tmp_path), str(marker), "token", str(tmp_path / "progress.json"), 0)
    with pytest.raises(ray_executor.StorageError, match="working folder .* does not exist on Ray node"):
        ray_executor.run_job_task(job, str(tmp_path / "missing"), str(marker), "token", "unused", 0)
    assert sorted(os.listdir(tmp_path)) == [ray_executor.WORK_FOLDER]


def test_an_address_that_does_not_answer_is_one_line_within_30_seconds(tmp_path, cifar10_path):
    address = f"127.0.0.1:{_free_port()}"
    began = time.time()
    with pytest.raises(ValueError, match=rf"^ray_address {address}: no Ray cluster answers there"):
        ray_executor.RayExecutor(address).run(
            reproduce.step_jobs(_run_step(cifar10_path, "run", str(tmp_path / "a" / "run"))), str(tmp_path / "a"))
    assert time.time() - began < 30 and not (tmp_path / "a").exists()
    env = dict(os.environ, RST_TF_DATA_DIR=cifar10_path)
    tiny = [f"--{name}={value}" for name, value in TINY.items() if name != "deterministic"]
    cases = ((["--executor=ray", f"--ray_address={address}"],
              f"error: ray_address {address}: no Ray cluster answers there"),
             (["--executor=spark"], "error: flag --executor=spark: value should be one of <local|ray>"),
             (["--executor=ray", "--ray_address=nowhere"],
              "error: --ray_address must be empty, auto, HOST:PORT or ray://HOST:PORT"))
    apps = [subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "sweep.py"), *tiny, "--epochs=1",
                              "--remaining_ratios=0.5", f"--output_dir={tmp_path / 'b'}", *extra], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for extra, _ in cases]
    for app, (_, message) in zip(apps, cases):  # the three side by side
        _, stderr = app.communicate(timeout=300)
        assert app.returncode == 2 and stderr.strip().splitlines() == [stderr.strip()]
        assert stderr.startswith(message), stderr
    assert not (tmp_path / "b").exists()
