"""Where a study's runs execute: one after another in this process (`LocalExecutor`), or as Ray tasks on a cluster
(`ray_executor.RayExecutor`, which imports Ray). Both call `run_job` on every job, so a run's files are the same
under either.

    jobs = [executors.Job("rst/ratio_0.05", config, "runs/study/rst/ratio_0.05"), ...]
    executors.LocalExecutor().run(jobs, "runs/study", on_done=lambda job, times: ...)

A job starts after the jobs named in its `after` (run folders of earlier jobs): a fine-tune or an RTT waits for
the run it starts from. `with_dependencies` fills `after` from each config's `init_from`.
"""
import dataclasses
import os
import time

from rst_tf.measuring import machine
from rst_tf.training import loop
from rst_tf.training import run_dir as run_files
from rst_tf.training.config import SearchConfig

@dataclasses.dataclass(frozen=True)
class Job:
    """One run: its name in logs, its config, its folder and the folders of the runs it starts after."""
    name: str
    config: SearchConfig
    run_dir: str
    after: tuple = ()


def with_dependencies(jobs):
    """`jobs` with `after` set to the run folder its `init_from` names, when an earlier job writes that folder.
    ValueError if a job's `init_from` names a later job's folder (the order would run it first)."""
    written = {}
    for index, job in enumerate(jobs):
        written.setdefault(os.path.normpath(job.run_dir), index)
    found = []
    for index, job in enumerate(jobs):
        source = os.path.normpath(job.config.init_from) if job.config.init_from else None
        if source in written and written[source] > index:
            raise ValueError(f"{job.name} starts from {job.config.init_from}, which runs after it")
        after = (jobs[written[source]].run_dir,) if source in written else ()
        found.append(dataclasses.replace(job, after=tuple(dict.fromkeys(job.after + after))))
    return found


def check_jobs(jobs):
    """ValueError unless run folders are distinct and every `after` names an earlier job's folder."""
    seen = set()
    for job in jobs:
        missing = [d for d in job.after if os.path.normpath(d) not in seen]
        if missing:
            raise ValueError(f"{job.name} starts after {missing[0]}, which no earlier run writes")
        folder = os.path.normpath(job.run_dir)
        if folder in seen:
            raise ValueError(f"two runs write {job.run_dir}")
        seen.add(folder)


def is_finished(run_dir):
    """True if the run in `run_dir` has finished (its metrics.json has "final")."""
    return "final" in run_files.read_json(os.path.join(run_dir, "metrics.json"))


def run_job(job, progress=False, log=print):
    """Skip a finished run, continue a killed one from its last checkpoint, or start it. Returns None when skipped,
    else {wall_seconds, cpu_seconds, resumed, machine} of this call (resumed: it continued an earlier call's run;
    machine: `machine.describe` in this process after the run, with no peak for a run under a minute)."""
    if is_finished(job.run_dir):
        log(f"{job.name}: finished, skipped")
        return None
    resumed = os.path.isdir(os.path.join(job.run_dir, "checkpoints"))
    log(f"{job.name}: {'resuming' if resumed else 'starting'} in {job.run_dir}")
    wall, cpu = time.time(), time.process_time()
    loop.run(job.config, job.run_dir, resume=True, progress=progress,
             log=lambda message: log(f"{job.name}: {message}"))
    times = {"wall_seconds": time.time() - wall, "cpu_seconds": time.process_time() - cpu, "resumed": resumed}
    # Where it ran, and that machine's fp32 peak now (for a run of a minute or more: it takes a few seconds).
    return dict(times, machine=machine.describe(peak_repeats=3 if times["wall_seconds"] >= 60 else 0))


class LocalExecutor:
    """Every job in order, in this process."""

    name = "local"
    trains_elsewhere = False  # a study measures a finished run's results between runs, not beside them

    def run(self, jobs, output_dir, on_done=None, progress=False, log=print):
        """Run `jobs` in order; `on_done(job, times)` after each (times: `run_job`'s result). `output_dir` is the
        study's folder (unused here: the Ray executor checks that every node sees it)."""
        check_jobs(jobs)
        for job in jobs:
            times = run_job(job, progress, log)
            if on_done is not None:
                on_done(job, times)

