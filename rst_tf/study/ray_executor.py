"""A study's runs as Ray tasks: each run in a worker process of its own, anywhere on a Ray cluster.

    executor = ray_executor.RayExecutor(address="auto", cpus_per_run=4, gpus_per_run=1)
    executor.run(jobs, "runs/study", on_done=record)

Every task calls `executors.run_job`, as the local executor does, so a run's files are the same. A job that starts
after others gets their tasks' object references as arguments: Ray starts it once they have finished. A worker
that dies makes Ray run the task again (`max_retries`), and the run resumes from its last checkpoint; a driver that
dies leaves finished runs finished, so the same command again skips them and resumes the rest.

A run's TensorFlow uses as many threads (within an op and across ops) as the CPUs its task asks for, at least one
(TensorFlow's default, every core of the node, would put several runs' threads on the same cores).

Every node must see OUTPUT_DIR (a shared file system): the driver writes a marker there that every task reads
before it writes anything, and stops the study with one line when a task cannot find it. The library code must be
importable on every node (the same checkout or install; the driver adds its own checkout to the workers' path).
"""
import logging
import os
import shutil
import socket
import time
import uuid

from rst_tf.study import executors
from rst_tf.training import run_dir as run_files

# The driver's folder inside OUTPUT_DIR while a study runs: the storage marker and one progress file per task.
WORK_FOLDER = ".ray_executor"
CONNECT_TIMEOUT_SECONDS = 10.0


class StorageError(ValueError):
    """A task cannot see the output folder the driver wrote its marker into."""


def check_marker(marker_path, token):
    """StorageError unless `marker_path` holds `token` (what the driver wrote there)."""
    found = run_files.read_json(marker_path).get("token")
    if found != token:
        raise StorageError(f"{os.path.dirname(os.path.dirname(marker_path))} is not visible from Ray node "
                           f"{socket.gethostname()} (it lacks the marker the driver wrote): every node must see the "
                           "output folder through a shared file system")


def threads_for(cpus_per_run):
    """TensorFlow threads of a run that asks for `cpus_per_run` CPUs: its whole CPUs, at least 1; 0 (TensorFlow's
    default, every core) for a run that asks for none."""
    return max(1, int(cpus_per_run)) if cpus_per_run > 0 else 0


def use_threads(threads):
    """Set this process's TensorFlow threads within an op and across ops (0: TensorFlow's default) before its
    first op (a process that already runs with that setting is left as it is); returns TensorFlow's setting."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf.config.threading.get_intra_op_parallelism_threads()


def run_job_task(job, cwd, marker_path, token, progress_path, threads, *upstream):
    """The Ray task of one job: in the driver's working folder, check the marker, note this process in
    `progress_path` ({pid, host, started}), set TensorFlow's `threads` (`use_threads`), then `executors.run_job`;
    its times gain TensorFlow's `threads`. `upstream`: the results of the jobs it waits for (Ray passes them once
    those tasks have finished)."""
    try:
        os.chdir(cwd)
    except OSError:
        raise StorageError(f"the driver's working folder {cwd} does not exist on Ray node {socket.gethostname()}: "
                           "every node must see the output folder through a shared file system") from None
    check_marker(marker_path, token)
    run_files.write_json(progress_path, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    threads = use_threads(threads)
    times = executors.run_job(job, progress=False, log=lambda message: print(message, flush=True))
    return None if times is None else {**times, "threads": threads}


def _host_and_port(address):
    """(host, port) of a `HOST:PORT` or `ray://HOST:PORT` address; ValueError for anything else."""
    bare = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ray_address must be empty, auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def probe(address, timeout=CONNECT_TIMEOUT_SECONDS):
    """ValueError (one line) unless something accepts a connection at `address` within `timeout` seconds."""
    host, port = _host_and_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise ValueError(f"ray_address {address}: no Ray cluster answers there ({error.strerror or error}); start "
                         "one with `ray start --head`, or leave ray_address empty for a Ray on this machine") from None


class RayExecutor:
    """Runs jobs as Ray tasks asking for `cpus_per_run` CPUs (TensorFlow threads: `threads_for`) and `gpus_per_run`
    GPUs each, at most `max_concurrent_runs` at once (0: as many as the cluster holds). `address`: "" starts Ray on
    this machine, "auto" or HOST:PORT joins a running cluster, ray://HOST:PORT connects through Ray Client."""

    name = "ray"
    trains_elsewhere = True  # the runs train in Ray's worker processes: a study may measure meanwhile

    def __init__(self, address="", cpus_per_run=1.0, gpus_per_run=0.0, max_concurrent_runs=0, max_retries=3,
                 poll_seconds=2.0):
        if cpus_per_run < 0 or gpus_per_run < 0:
            raise ValueError(f"cpus_per_run and gpus_per_run must be at least 0, got {cpus_per_run:g} and "
                             f"{gpus_per_run:g}")
        if max_concurrent_runs < 0:
            raise ValueError(f"max_concurrent_runs must be at least 0 (0: no limit), got {max_concurrent_runs}")
        if address and address != "auto":
            _host_and_port(address)
        self.address = address
        self.cpus_per_run = float(cpus_per_run)
        self.gpus_per_run = float(gpus_per_run)
        self.max_concurrent_runs = int(max_concurrent_runs)
        self.max_retries = int(max_retries)
        self.poll_seconds = poll_seconds

    def _connect(self, ray):
        """Start or join Ray; ValueError (one line) when the address does not answer."""
        if self.address and self.address != "auto":
            probe(self.address)
        code_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(executors.__file__))))
        # Workers' output (TensorFlow's start-up lines, each run's log) stays in Ray's session logs; the driver
        # shows each run's progress instead.
        options = dict(logging_level=logging.ERROR, log_to_driver=False,
                       job_config=ray.job_config.JobConfig(code_search_path=[code_root]),
                       runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}})
        if not self.address:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a Ray started here reports nothing home
            options["include_dashboard"] = False
        try:
            ray.init(address=self.address or "local", **options)  # "local": a new Ray, never a running one
        except (ConnectionError, RuntimeError, TimeoutError) as error:
            raise ValueError(f"ray_address {self.address or '(empty)'}: cannot start or join Ray "
                             f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None

    def check_resources(self, ray):
        """ValueError (one line) if no live node of the cluster has the CPUs and GPUs one run asks for."""
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        for resource, wanted, flag in (("CPU", self.cpus_per_run, "cpus_per_run"),
                                       ("GPU", self.gpus_per_run, "gpus_per_run")):
            most = max((node.get(resource, 0.0) for node in nodes), default=0.0)
            if wanted > most:
                raise ValueError(f"{flag} {wanted:g} is more than any node of the Ray cluster has "
                                 f"(at most {most:g} {resource}s on one node)")

    def run(self, jobs, output_dir, on_done=None, progress=False, log=print):
        """Run `jobs` as Ray tasks; `on_done(job, times)` in this process as each finishes (times: `run_job`'s
        result). Raises ValueError (one line) for an address that does not answer, resources no node has, or an
        output folder a task cannot see; the error of a failed run otherwise (the other runs are stopped)."""
        import ray

        executors.check_jobs(jobs)
        self._connect(ray)
        try:
            self.check_resources(ray)
            self._run(ray, jobs, output_dir, on_done, log)
        finally:
            ray.shutdown()

    def _run(self, ray, jobs, output_dir, on_done, log):
        work = os.path.join(output_dir, WORK_FOLDER)
        progress_dir = os.path.join(work, "progress")
        if os.path.isdir(work):  # left by a killed driver
            shutil.rmtree(work)
        os.makedirs(progress_dir)
        marker_path, token = os.path.abspath(os.path.join(work, "marker.json")), uuid.uuid4().hex
        run_files.write_json(marker_path, {"token": token})
        task = ray.remote(run_job_task)
        resources = dict(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=self.max_retries,
                         retry_exceptions=False)
        progress_paths = [os.path.abspath(os.path.join(progress_dir, f"{index}.json")) for index in range(len(jobs))]
        queue, pending, refs, done = list(enumerate(jobs)), {}, {}, 0
        shown = None
        try:
            while queue or pending:
                while queue and (not self.max_concurrent_runs or len(pending) < self.max_concurrent_runs):
                    index, job = queue.pop(0)
                    upstream = [refs[os.path.normpath(folder)] for folder in job.after]
                    ref = task.options(name=job.name, **resources).remote(
                        job, os.getcwd(), marker_path, token, progress_paths[index], threads_for(self.cpus_per_run),
                        *upstream)
                    refs[os.path.normpath(job.run_dir)] = ref
                    pending[ref] = index, job
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_seconds)
                for ref in ready:
                    index, job = pending.pop(ref)
                    times = _result(ray, ref)
                    done += 1
                    if on_done is not None:
                        on_done(job, times)
                line = _progress_line(done, pending.values(), len(queue), progress_paths)
                if line != shown:
                    log(line)
                    shown = line
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _result(ray, ref):
    """The task's result; a StorageError (or another ValueError) from a task comes back as one ValueError line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, ValueError):
            raise ValueError(str(cause).splitlines()[0]) from None
        raise


def _progress_line(done, pending, queued, progress_paths):
    """`runs: D done, R running, Q queued` and each running run's finished epochs."""
    running = []
    for index, job in pending:
        if os.path.isfile(progress_paths[index]):
            epochs = len(run_files.read_json(os.path.join(job.run_dir, "metrics.json")).get("epochs", []))
            running.append(f"{job.name} {epochs}/{job.config.epochs} epochs")
    waiting = queued + len(pending) - len(running)
    line = f"runs: {done} done, {len(running)} running, {waiting} queued"
    return line + (" | " + ", ".join(running) if running else "")
