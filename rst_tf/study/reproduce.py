"""The paper's study at any scale: plan the runs, run them (resumable), evaluate them, and report the claims.

    steps = reproduce.plan(config, [0.05, 0.2, 0.5], "runs/reproduce/seed_0")
    results = reproduce.run(config, [0.05, 0.2, 0.5], "runs/reproduce", "docs/reproduction.md", seeds=(0, 1))

Each seed's runs, in order: the dense_at and natural sources; the RST sweep; fine-tuned sweeps (inherited, re-init)
of its tickets; the natural and adversarial RTT sweeps over the sources; the transfer study (dense_at on task A, an
RTT and an RST on task B). Then PGD-20 at each evaluation ε of every run's best checkpoint on one test set, the
transfer matrix between each seed's RSTs and R2S over them (vanilla and EOT attacks) under both PGD protocols,
figures with seed intervals, claims with the interval of each seed-paired difference, and the report
(`report`). Finished runs are skipped and killed ones resume; measurements are cached in
OUTPUT_DIR/evaluation.json and each seed's transfer.json and r2s.json (the paper protocol's in *_paper.json), so
running the same call again completes a killed study.
"""
import dataclasses
import os
import time

from rst_tf import attacks
from rst_tf.study import executors, sweep
from rst_tf.training import run_dir as run_files
from rst_tf.training.config import SearchConfig

TASK_A, TASK_B = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
# The RST sweep: the step whose tickets the transfer matrix and R2S compare.
RST_STEP = "rst"


@dataclasses.dataclass(frozen=True)
class Step:
    """One run (`remaining_ratios` empty) or one sweep of the study, written to `output_dir`."""
    name: str
    config: SearchConfig
    output_dir: str
    remaining_ratios: tuple = ()

    def run_dirs(self):
        """The run folders this step writes, one per ratio for a sweep."""
        if not self.remaining_ratios:
            return [self.output_dir]
        return [os.path.join(self.output_dir, sweep.ratio_name(r)) for r in self.remaining_ratios]


def plan(config, remaining_ratios, output_dir, transfer_ratio=None, task_a=TASK_A, task_b=TASK_B,
         comparison_ratios=None):
    """The study's steps in running order, each a Step. `config` gives the scale; each step sets its own mode,
    remaining ratio, init_from, finetune_weights, reinit_classifier and class_subset.

    `transfer_ratio` (default: the ratio of `remaining_ratios` nearest 0.1): the ratio of the task-B RTT and RST.
    `comparison_ratios` (default: `remaining_ratios`; a subset of them): the ratios of the fine-tuned and RTT
    sweeps, which the RST sweep's tickets are compared with.
    """
    ratios = tuple(float(r) for r in remaining_ratios)
    sweep.run_configs(dataclasses.replace(config, mode="rst", init_from=""), ratios)  # ValueError on bad ratios
    compared = ratios if comparison_ratios is None else tuple(float(r) for r in comparison_ratios)
    missing = [r for r in compared if r not in ratios]
    if not compared or missing:
        raise ValueError(f"comparison_ratios must be some of the remaining ratios {list(ratios)}, got "
                         f"{list(compared)}")
    if transfer_ratio is None:
        transfer_ratio = min(ratios, key=lambda r: abs(r - 0.1))
    base = dataclasses.replace(config, init_from="", finetune_weights="inherited", reinit_classifier=False,
                               class_subset=())
    path = lambda name: os.path.join(output_dir, name)  # noqa: E731
    dense_at = path("dense_at")
    natural = path("natural")
    rst = path("rst")
    task_a_dense = path("task_a_dense_at")
    steps = [
        Step("dense_at", dataclasses.replace(base, mode="dense_at"), dense_at),
        Step("natural", dataclasses.replace(base, mode="natural"), natural),
        Step("rst", dataclasses.replace(base, mode="rst"), rst, ratios),
        Step("finetune_inherited", dataclasses.replace(
            base, mode="finetune", init_from=os.path.join(rst, "ratio_{ratio}")), path("finetune_inherited"),
            compared),
        Step("finetune_reinit", dataclasses.replace(
            base, mode="finetune", init_from=os.path.join(rst, "ratio_{ratio}"), finetune_weights="reinit"),
            path("finetune_reinit"), compared),
        # A naturally trained source has ~0% PGD accuracy at every epoch, so "best" (by validation PGD accuracy) would
        # pick an arbitrary epoch: natural RTTs start from its last, fully trained checkpoint.
        Step("rtt_natural", dataclasses.replace(base, mode="rst", init_from=natural, init_checkpoint="last"),
             path("rtt_natural"), compared),
        Step("rtt_adversarial", dataclasses.replace(base, mode="rst", init_from=dense_at), path("rtt_adversarial"),
             compared),
        Step("task_a_dense_at", dataclasses.replace(base, mode="dense_at", class_subset=tuple(task_a)), task_a_dense),
        Step("task_b_rtt", dataclasses.replace(base, mode="rst", class_subset=tuple(task_b), init_from=task_a_dense),
             path("task_b_rtt"), (float(transfer_ratio),)),
        Step("task_b_rst", dataclasses.replace(base, mode="rst", class_subset=tuple(task_b)), path("task_b_rst"),
             (float(transfer_ratio),)),
    ]
    for step in steps:
        if not step.remaining_ratios:
            step.config.validate()
    return steps


def seed_dir(output_dir, seed):
    """The folder of one seed's runs: OUTPUT_DIR/seed_<seed>."""
    return os.path.join(output_dir, f"seed_{seed}")


def plan_seeds(config, remaining_ratios, output_dir, seeds, transfer_ratio=None, comparison_ratios=None):
    """{seed: that seed's `plan`} under OUTPUT_DIR/seed_<seed>; every run of a seed holds its random network,
    data order and attacks from that seed."""
    seeds = [int(seed) for seed in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must list distinct integers, got {seeds}")
    return {seed: plan(dataclasses.replace(config, seed=seed), remaining_ratios, seed_dir(output_dir, seed),
                       transfer_ratio, comparison_ratios=comparison_ratios) for seed in seeds}


def step_configs(step):
    """[(name, run folder, config)] of the runs of one step: the step's own, or one per ratio of a sweep
    (named step name/ratio_<r>)."""
    if not step.remaining_ratios:
        return [(step.name, step.output_dir, step.config)]
    configs = sweep.run_configs(step.config, list(step.remaining_ratios))
    return [(f"{step.name}/{sweep.ratio_name(ratio)}", run_dir, run_config)
            for (ratio, run_config), run_dir in zip(configs, step.run_dirs())]


def step_jobs(step, prefix=""):
    """The runs of one step as executor jobs (named PREFIX + `step_configs`' name), each checked against the run
    its folder may already hold (`sweep.check_existing_run`)."""
    jobs = []
    for name, run_dir, run_config in step_configs(step):
        sweep.check_existing_run(run_config, run_dir)
        jobs.append(executors.Job(prefix + name, run_config, run_dir))
    return jobs


def run_steps(named_steps, output_dir, times_path, executor=None, progress=False, log=print, after_each=None):
    """Run every run of `named_steps` ([(name prefix, Step)]) through `executor` (default: one after another here),
    each after the run it starts from (`executors.with_dependencies`); finished runs are skipped and killed ones
    resumed. The wall and process CPU seconds of the call that finishes a run go to `times_path` ({run_dir:
    {wall_seconds, cpu_seconds, resumed}}; resumed: it continued an earlier call's run), then `after_each(run_dir)`
    (if given) is called for every run, skipped ones included. Then each sweep's sweep.json and sweep.md."""
    jobs = executors.with_dependencies([job for prefix, step in named_steps for job in step_jobs(step, prefix)])

    def record(job, times):
        if times is not None:
            found = run_files.read_json(times_path)
            found[job.run_dir] = times
            run_files.write_json(times_path, found)
        if after_each is not None:
            after_each(job.run_dir)

    (executor or executors.LocalExecutor()).run(jobs, output_dir, on_done=record, progress=progress, log=log)
    for _, step in named_steps:
        if step.remaining_ratios:
            sweep.write_summary(step.config, step.remaining_ratios, step.output_dir)


def run_step(step, times_path, progress=False, log=print, executor=None):
    """Run one step (`run_steps`): every run of a sweep (then its sweep.json / sweep.md), or a single run."""
    run_steps([("", step)], os.path.dirname(times_path) or ".", times_path, executor, progress, log)


def _cache_name(name, pgd_protocol):
    """evaluation.json, transfer.json, r2s.json for the standard protocol; <name>_paper.json for the paper's."""
    return f"{name}.json" if pgd_protocol == "standard" else f"{name}_{pgd_protocol}.json"


def run(config, remaining_ratios, output_dir, report_path, seeds=(0, 1), epsilons=(8, 12, 16),
        transfer_ratio=None, command="", batch_size=200, progress=False, log=print, pgd_protocol="standard",
        comparison_ratios=None, executor=None):
    """The whole study for every seed: each `plan` step, the evaluations, figures, the markdown report at
    `report_path` and the same figures as JSON next to it (`.json`); returns that JSON's content. Resumes where a
    killed call stopped.

    Every run is measured on the test set of the first seed (`measure.TestSets`), so results pair by
    image across runs and seeds. The runs go through `executor` (default: one after another here); the
    evaluations run here. Robust accuracies use PGD of `pgd_protocol` (`attacks.pgd_eval_config`); the
    transfer matrix and R2S of each seed are measured under both protocols.
    """
    from rst_tf.study import claims, measure, report

    if pgd_protocol not in attacks.PGD_PROTOCOLS:
        raise ValueError(f"pgd_protocol must be one of {attacks.PGD_PROTOCOLS}, got {pgd_protocol!r}")
    began = time.time()
    epsilons = [float(e) for e in epsilons]
    steps_by_seed = plan_seeds(config, remaining_ratios, output_dir, seeds, transfer_ratio, comparison_ratios)
    times_path = os.path.join(output_dir, "run_times.json")
    run_steps([(f"seed {seed}: ", step) for seed, steps in steps_by_seed.items() for step in steps], output_dir,
              times_path, executor, progress, log)
    test_sets = measure.TestSets(config.data_dir, batch_size, test_seed=next(iter(steps_by_seed)))
    run_dirs = [run_dir for steps in steps_by_seed.values() for step in steps for run_dir in step.run_dirs()]
    evaluation = measure.evaluate_runs(run_dirs, epsilons, os.path.join(output_dir, _cache_name(
        "evaluation", pgd_protocol)), test_sets, config.seed, log, pgd_protocol)
    steps_pgd = config.eval_attack_steps
    measured = {}
    for seed, steps in steps_by_seed.items():
        rst_step = next(step for step in steps if step.name == RST_STEP)
        names = [sweep.ratio_name(r) for r in rst_step.remaining_ratios]
        for protocol in attacks.PGD_PROTOCOLS:
            folder = seed_dir(output_dir, seed)
            log(f"seed {seed}: transfer matrix and R2S between the RSTs ({protocol} PGD)")
            measured[seed, protocol] = (
                measure.transfer_between(rst_step.run_dirs(), names, epsilons[0], steps_pgd, os.path.join(
                    folder, _cache_name("transfer", protocol)), test_sets, seed, protocol),
                measure.r2s_of(rst_step.run_dirs(), epsilons[0], steps_pgd, os.path.join(
                    folder, _cache_name("r2s", protocol)), test_sets, seed=seed, pgd_protocol=protocol))
    results = claims.Results(steps_by_seed, evaluation, measured, epsilons)
    figures_data = report.figures(results, steps_pgd, pgd_protocol, attacks.PGD_PROTOCOLS)
    protocols = (pgd_protocol, *[p for p in attacks.PGD_PROTOCOLS if p != pgd_protocol])
    claim_rows = claims.claims(results, protocols)
    stem = os.path.splitext(report_path)[0]
    figure_folder = stem + "_figures"
    figure_files = report.write_figures(figures_data, figure_folder, epsilons)
    relative = os.path.relpath(figure_folder, os.path.dirname(os.path.abspath(report_path)) or ".")
    timing = run_files.read_json(os.path.join(output_dir, "wall_time.json"))
    wall_seconds = timing.get("seconds", 0.0) + time.time() - began
    run_files.write_json(os.path.join(output_dir, "wall_time.json"), {"seconds": wall_seconds})
    run_times = report.run_times(steps_by_seed, run_files.read_json(times_path), evaluation)
    scale = report.scale_of(config, remaining_ratios, epsilons, list(steps_by_seed), pgd_protocol,
                            comparison_ratios)
    text = report.markdown_report(command, scale, wall_seconds, figures_data, claim_rows,
                                  {name: os.path.join(relative, f) for name, f in figure_files.items()}, epsilons,
                                  run_times)
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    run_files.write_text(report_path, text)
    results = {"command": command, "scale": scale, "wall_seconds": wall_seconds, "pgd_protocol": pgd_protocol,
               "figures": figures_data, "claims": claim_rows, "run_times": run_times,
               "runs": {seed: {step.name: step.run_dirs() for step in steps} for seed, steps in steps_by_seed.items()}}
    run_files.write_json(stem + ".json", results)
    return results
