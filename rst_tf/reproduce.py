"""The paper's study at any scale: plan the runs, run them (resumable), evaluate them, and report the claims.

    steps = reproduce.plan(config, [0.05, 0.1, 0.2, 0.5], "runs/reproduce")
    results = reproduce.run(config, [0.05, 0.1, 0.2, 0.5], "runs/reproduce", "docs/reproduction.md")

Order: the dense_at and natural sources; the RST sweep; fine-tuned sweeps (inherited, re-init) of its tickets; the
natural and adversarial RTT sweeps over the sources; the transfer study (dense_at on task A, an RTT and an RST on
task B); then PGD-20 at each evaluation ε of every run's best checkpoint on the test subset, the transfer matrix
between the RSTs and R2S over them (vanilla and EOT attacks) under both PGD protocols, figures, claims and the
report (`reproduction_report`). Sweeps go through `sweep.run_sweep` and single runs skip when finished and resume
when killed; evaluations are cached in OUTPUT_DIR/evaluation.json, transfer.json and r2s.json (the paper protocol's
in *_paper.json), so running the same call again completes a killed study.
"""
import dataclasses
import os
import time

from rst_tf import attacks, sweep
from rst_tf.training import build
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


def plan(config, remaining_ratios, output_dir, transfer_ratio=None, task_a=TASK_A, task_b=TASK_B):
    """The study's steps in running order, each a Step. `config` gives the scale; each step sets its own mode,
    remaining ratio, init_from, finetune_weights, reinit_classifier and class_subset.

    `transfer_ratio` (default: the ratio of `remaining_ratios` nearest 0.1): the ratio of the task-B RTT and RST.
    """
    ratios = tuple(float(r) for r in remaining_ratios)
    sweep.run_configs(dataclasses.replace(config, mode="rst", init_from=""), ratios)  # ValueError on bad ratios
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
            base, mode="finetune", init_from=os.path.join(rst, "ratio_{ratio}")), path("finetune_inherited"), ratios),
        Step("finetune_reinit", dataclasses.replace(
            base, mode="finetune", init_from=os.path.join(rst, "ratio_{ratio}"), finetune_weights="reinit"),
            path("finetune_reinit"), ratios),
        Step("rtt_natural", dataclasses.replace(base, mode="rst", init_from=natural), path("rtt_natural"), ratios),
        Step("rtt_adversarial", dataclasses.replace(base, mode="rst", init_from=dense_at), path("rtt_adversarial"),
             ratios),
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


def run_step(step, progress=False, log=print):
    """Run one step: a sweep through `sweep.run_sweep`, a single run skipped when finished and resumed if killed."""
    if step.remaining_ratios:
        sweep.run_sweep(step.config, list(step.remaining_ratios), step.output_dir, progress=progress,
                        log=lambda message: log(f"{step.name}/{message}"))
        return
    sweep.check_existing_run(step.config, step.output_dir)
    sweep.run_or_skip(step.config, step.output_dir, step.name, progress, log)


def _cache_name(name, pgd_protocol):
    """evaluation.json, transfer.json, r2s.json for the standard protocol; <name>_paper.json for the paper's."""
    return f"{name}.json" if pgd_protocol == "standard" else f"{name}_{pgd_protocol}.json"


def evaluate_runs(run_dirs, epsilons, cache_path, data_dir="", batch_size=200, seed=0, log=print,
                  pgd_protocol="standard"):
    """Natural and PGD accuracy (the runs' eval_attack_steps, `attacks.pgd_eval_config` of `pgd_protocol`) at each
    ε (in /255) of each run's best checkpoint on its test subset: {run_dir: {"natural", "robust": {"<ε>": accuracy},
    "robust_intervals": {"<ε>": [low, high]}, "num_examples", "pgd_protocol"}}, cached in `cache_path`. An example
    counts as robust only if its clean image is classified correctly too."""
    from rst_tf.evaluation import suite

    cache = run_files.read_json(cache_path)
    batches_by_task = {}
    wanted = [f"{e:g}" for e in epsilons]
    for run_dir in run_dirs:
        cached = cache.get(run_dir, {})
        if cached.get("pgd_protocol") == pgd_protocol and all(key in cached["robust"] for key in wanted):
            continue
        network, config = run_files.load_run(run_dir, "best")
        batches = _test_batches(config, data_dir, batch_size, batches_by_task)
        attack_configs = [_pgd(config.eval_attack_steps, e / 255, pgd_protocol) for e in epsilons]
        result = suite.evaluate_attacks(network, batches, attack_configs, seed=seed)
        cache[run_dir] = {"natural": result["natural"]["accuracy"],
                          "robust": {key: attack["accuracy"] for key, attack in zip(wanted, result["attacks"])},
                          "robust_intervals": {key: attack["interval"]
                                               for key, attack in zip(wanted, result["attacks"])},
                          "num_examples": result["natural"]["num_examples"], "pgd_protocol": pgd_protocol}
        log(f"evaluated {run_dir}: natural {cache[run_dir]['natural']:.4f}, " + ", ".join(
            f"ε {key} {value:.4f}" for key, value in cache[run_dir]["robust"].items()))
        run_files.write_json(cache_path, cache)
    return {run_dir: cache[run_dir] for run_dir in run_dirs}


def transfer_between(run_dirs, names, epsilon, steps, cache_path, data_dir="", batch_size=200, seed=0,
                     pgd_protocol="standard"):
    """`transfer.transfer_matrix` between the runs' best checkpoints (PGD-`steps` at ε/255), cached."""
    from rst_tf.evaluation import transfer

    cached = run_files.read_json(cache_path)
    attack = _pgd(steps, epsilon / 255, pgd_protocol)
    if (cached.get("names") == list(names) and cached.get("attack") == dataclasses.asdict(attack)
            and "interval" in cached):
        return cached
    networks, config = {}, None
    for name, run_dir in zip(names, run_dirs):
        networks[name], config = run_files.load_run(run_dir, "best")
    batches = _test_batches(config, data_dir, batch_size, {})
    result = transfer.transfer_matrix(networks, batches, attack, seed=seed)
    run_files.write_json(cache_path, result)
    return result


def r2s_of(run_dirs, epsilon, steps, cache_path, adaptive=("vanilla", "eot"), data_dir="", batch_size=200, seed=0,
           pgd_protocol="standard"):
    """R2S over the runs' tickets (`tickets.from_runs`, `r2s.BankEvaluation`): its single task's report, cached."""
    from rst_tf import r2s, tickets

    cached = run_files.read_json(cache_path)
    attack = _pgd(steps, epsilon / 255, pgd_protocol)
    if (cached.get("run_dirs") == list(run_dirs) and cached.get("attack") == dataclasses.asdict(attack)
            and all(kind in cached.get("r2s_intervals", {}) for kind in adaptive)):
        return cached
    banks, _ = tickets.from_runs(list(run_dirs))
    (task, bank), = banks.items()
    config = run_files.read_config(run_dirs[0])
    batches = _test_batches(config, data_dir, batch_size, {})
    report = r2s.BankEvaluation(bank, attack, seed).run(batches, list(adaptive))
    report.update(run_dirs=list(run_dirs), task=task, attack=dataclasses.asdict(attack))
    run_files.write_json(cache_path, report)
    return report


def transfer_and_r2s(rst_step, epsilon, steps, output_dir, pgd_protocol, data_dir="", batch_size=200, seed=0,
                     log=print):
    """The transfer matrix and R2S between the tickets of the RST sweep `rst_step`, under `pgd_protocol`."""
    rst_dirs = rst_step.run_dirs()
    names = [sweep.ratio_name(r) for r in rst_step.remaining_ratios]
    log(f"transfer matrix between the RSTs ({pgd_protocol} PGD)")
    transfer = transfer_between(rst_dirs, names, epsilon, steps,
                                os.path.join(output_dir, _cache_name("transfer", pgd_protocol)), data_dir,
                                batch_size, seed, pgd_protocol)
    log(f"R2S over the RSTs ({pgd_protocol} PGD)")
    r2s_report = r2s_of(rst_dirs, epsilon, steps, os.path.join(output_dir, _cache_name("r2s", pgd_protocol)),
                        data_dir=data_dir, batch_size=batch_size, seed=seed, pgd_protocol=pgd_protocol)
    return transfer, r2s_report


def run(config, remaining_ratios, output_dir, report_path, epsilons=(8, 12, 16), transfer_ratio=None,
        command="", batch_size=200, progress=False, log=print, pgd_protocol="standard"):
    """The whole study: every step of `plan`, the evaluations, figures, the markdown report at `report_path`, and
    the same figures as JSON next to it (`.json`); returns that JSON's content. Resumes where a killed call stopped.

    Robust accuracies use PGD of `pgd_protocol` (`attacks.pgd_eval_config`); the transfer matrix and R2S are
    measured under both protocols, and the report states both for the claims that rest on them.
    """
    from rst_tf import reproduction_report as report

    if pgd_protocol not in attacks.PGD_PROTOCOLS:
        raise ValueError(f"pgd_protocol must be one of {attacks.PGD_PROTOCOLS}, got {pgd_protocol!r}")
    began = time.time()
    epsilons = [float(e) for e in epsilons]
    steps = plan(config, remaining_ratios, output_dir, transfer_ratio)
    for step in steps:
        run_step(step, progress=progress, log=log)
    run_dirs = [run_dir for step in steps for run_dir in step.run_dirs()]
    seed, steps_pgd = config.seed, config.eval_attack_steps
    evaluation = evaluate_runs(run_dirs, epsilons, os.path.join(output_dir, _cache_name("evaluation", pgd_protocol)),
                               config.data_dir, batch_size, seed, log, pgd_protocol)
    rst_step = next(step for step in steps if step.name == RST_STEP)
    measured = {protocol: transfer_and_r2s(rst_step, epsilons[0], steps_pgd, output_dir, protocol, config.data_dir,
                                           batch_size, seed, log) for protocol in attacks.PGD_PROTOCOLS}
    other = next(protocol for protocol in attacks.PGD_PROTOCOLS if protocol != pgd_protocol)
    figures_data = report.figures(steps, evaluation, epsilons[0], steps_pgd, *measured[pgd_protocol], pgd_protocol,
                                  {"pgd_protocol": other, "transfer": measured[other][0], "r2s": measured[other][1]})
    claim_rows = report.claims(figures_data)
    stem = os.path.splitext(report_path)[0]
    figure_folder = stem + "_figures"
    figure_files = report.write_figures(figures_data, figure_folder, epsilons)
    relative = os.path.relpath(figure_folder, os.path.dirname(os.path.abspath(report_path)) or ".")
    timing = run_files.read_json(os.path.join(output_dir, "wall_time.json"))
    wall_seconds = timing.get("seconds", 0.0) + time.time() - began
    run_files.write_json(os.path.join(output_dir, "wall_time.json"), {"seconds": wall_seconds})
    scale = report.scale_of(config, remaining_ratios, epsilons, pgd_protocol)
    text = report.markdown_report(command, scale, wall_seconds, figures_data, claim_rows,
                                  {name: os.path.join(relative, f) for name, f in figure_files.items()}, epsilons)
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    run_files.write_text(report_path, text)
    results = {"command": command, "scale": scale, "wall_seconds": wall_seconds, "pgd_protocol": pgd_protocol,
               "figures": figures_data, "claims": claim_rows, "runs": {step.name: step.run_dirs() for step in steps}}
    run_files.write_json(stem + ".json", results)
    return results


def _pgd(steps, epsilon, pgd_protocol):
    return attacks.pgd_eval_config(epsilon, pgd_protocol, steps)


def _test_batches(config, data_dir, batch_size, cache):
    from rst_tf import data
    from rst_tf.evaluation import suite

    key = tuple(config.class_subset)
    if key not in cache:
        splits = build.load_data(dataclasses.replace(config, data_dir=data_dir or config.data_dir))
        cache[key] = suite.materialize(data.eval_batches(splits.test, batch_size))
    return cache[key]
