"""The paper's study at any scale: plan the runs, run them (resumable), evaluate them, and report the claims.

    steps = reproduce.plan(config, [0.05, 0.1, 0.2, 0.5], "runs/reproduce")
    results = reproduce.run(config, [0.05, 0.1, 0.2, 0.5], "runs/reproduce", "docs/reproduction.md")

Order: the dense_at and natural sources; the RST sweep; fine-tuned sweeps (inherited, re-init) of its tickets; the
natural and adversarial RTT sweeps over the sources; the transfer study (dense_at on task A, an RTT and an RST on
task B); then PGD-20 at each evaluation ε of every run's best checkpoint on the test subset, the transfer matrix
between the RSTs, R2S over them (vanilla and EOT attacks), figures, claims and the report. Sweeps go through
`sweep.run_sweep` and single runs skip when finished and resume when killed; evaluations are cached in
OUTPUT_DIR/evaluation.json, transfer.json and r2s.json, so running the same call again completes a killed study.
"""
import dataclasses
import math
import os
import time

from rst_tf import sweep, trainer

# The ticket kinds of the figures, by step name, with their labels.
KINDS = {"rst": "RST", "finetune_inherited": "fine-tuned RST (inherited)",
         "finetune_reinit": "fine-tuned RST (re-init)", "rtt_natural": "natural RTT",
         "rtt_adversarial": "adversarial RTT"}
TASK_A, TASK_B = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
LOW_RATIOS = (0.05, 0.2)  # the paper's "5-20%" range of its claims
CLOSE_POINTS = 3.0  # "close" / "within a few points": robust accuracy within this many points


@dataclasses.dataclass(frozen=True)
class Step:
    """One run (`remaining_ratios` empty) or one sweep of the study, written to `output_dir`."""
    name: str
    config: trainer.SearchConfig
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


def evaluate_runs(run_dirs, epsilons, cache_path, data_dir="", batch_size=200, seed=0, log=print):
    """Natural and PGD accuracy (the runs' eval_attack_steps, step ε/4) at each ε (in /255) of each run's best
    checkpoint on its test subset: {run_dir: {"natural", "robust": {"<ε>": accuracy}}}, cached in `cache_path`."""
    from rst_tf import robustness

    cache = trainer.read_json(cache_path)
    batches_by_task = {}
    for run_dir in run_dirs:
        wanted = [f"{e:g}" for e in epsilons]
        if run_dir in cache and all(key in cache[run_dir]["robust"] for key in wanted):
            continue
        network, config = trainer.load_run(run_dir, "best")
        batches = _test_batches(config, data_dir, batch_size, batches_by_task)
        attack_configs = [_pgd(config.eval_attack_steps, e / 255) for e in epsilons]
        result = robustness.evaluate_attacks(network, batches, attack_configs, seed=seed)
        cache[run_dir] = {"natural": result["natural"]["accuracy"],
                          "robust": {key: attack["accuracy"] for key, attack in zip(wanted, result["attacks"])},
                          "num_examples": result["natural"]["num_examples"]}
        log(f"evaluated {run_dir}: natural {cache[run_dir]['natural']:.4f}, " + ", ".join(
            f"ε {key} {value:.4f}" for key, value in cache[run_dir]["robust"].items()))
        trainer.write_json(cache_path, cache)
    return {run_dir: cache[run_dir] for run_dir in run_dirs}


def transfer_between(run_dirs, names, epsilon, steps, cache_path, data_dir="", batch_size=200, seed=0):
    """`robustness.transfer_matrix` between the runs' best checkpoints (PGD-`steps` at ε/255), cached."""
    from rst_tf import robustness

    cached = trainer.read_json(cache_path)
    attack = _pgd(steps, epsilon / 255)
    if cached.get("names") == list(names) and cached.get("attack") == dataclasses.asdict(attack):
        return cached
    networks, config = {}, None
    for name, run_dir in zip(names, run_dirs):
        networks[name], config = trainer.load_run(run_dir, "best")
    batches = _test_batches(config, data_dir, batch_size, {})
    result = robustness.transfer_matrix(networks, batches, attack, seed=seed)
    trainer.write_json(cache_path, result)
    return result


def r2s_of(run_dirs, epsilon, steps, cache_path, adaptive=("vanilla", "eot"), data_dir="", batch_size=200, seed=0):
    """R2S over the runs' tickets (`tickets.from_runs`, `r2s.BankEvaluation`): its single task's report, cached."""
    from rst_tf import r2s, tickets

    cached = trainer.read_json(cache_path)
    attack = _pgd(steps, epsilon / 255)
    if (cached.get("run_dirs") == list(run_dirs) and cached.get("attack") == dataclasses.asdict(attack)
            and all(kind in cached["r2s"] for kind in adaptive)):
        return cached
    banks, _ = tickets.from_runs(list(run_dirs))
    (task, bank), = banks.items()
    config = trainer.read_config(run_dirs[0])
    batches = _test_batches(config, data_dir, batch_size, {})
    report = r2s.BankEvaluation(bank, attack, seed).run(batches, list(adaptive))
    report.update(run_dirs=list(run_dirs), task=task, attack=dataclasses.asdict(attack))
    trainer.write_json(cache_path, report)
    return report


def figures(steps, evaluation, epsilon, attack_steps, transfer, r2s_report):
    """The study's figures as plain data: the dense baselines, each kind's points, the task-B pair, transfer, R2S.

    `evaluation`: `evaluate_runs`' result; `epsilon`: the budget (in /255) of "robust", under PGD-`attack_steps`.
    """
    key = f"{epsilon:g}"
    by_name = {step.name: step for step in steps}

    def point(run_dir, ratio=None):
        result = evaluation[run_dir]
        found = {"natural": result["natural"], "robust": result["robust"][key], "robust_by_epsilon": result["robust"]}
        return found if ratio is None else {"remaining_ratio": ratio, **found}

    kinds = {}
    for name in KINDS:
        step = by_name[name]
        kinds[name] = [point(run_dir, ratio) for ratio, run_dir in zip(step.remaining_ratios, step.run_dirs())]
    task_b = {name: point(by_name[f"task_b_{name}"].run_dirs()[0]) for name in ("rtt", "rst")}
    task_b["remaining_ratio"] = by_name["task_b_rst"].remaining_ratios[0]
    dense_dir = by_name["dense_at"].output_dir
    return {"epsilon": epsilon, "attack_steps": attack_steps, "num_examples": evaluation[dense_dir].get("num_examples"),
            "dense_at": point(dense_dir),
            "natural_training": point(by_name["natural"].output_dir), "kinds": kinds, "task_b": task_b,
            "transfer": {"names": transfer["names"], "accuracy": transfer["accuracy"]},
            "r2s": dict(r2s_report["r2s"], best_single=r2s_report["best_single"])}


def _points(pct):
    return f"{100 * pct:.1f}%"


def _in_low_range(points):
    return [p for p in points if LOW_RATIOS[0] <= p["remaining_ratio"] <= LOW_RATIOS[1]]


def _mean(values):
    return sum(values) / len(values)


def claims(figures_data, close_points=CLOSE_POINTS):
    """The paper's claims, each {claim, rule, measured, holds (True / False / None: not measured)}, from `figures`."""
    kinds, dense = figures_data["kinds"], figures_data["dense_at"]
    robust = {name: {p["remaining_ratio"]: p["robust"] for p in points} for name, points in kinds.items()}
    low = [p["remaining_ratio"] for p in _in_low_range(kinds["rst"])]
    close = close_points / 100
    rows = []

    def add(claim, rule, measured, holds):
        rows.append({"claim": claim, "rule": rule, "measured": measured, "holds": holds})

    if low:
        best = max(low, key=lambda r: robust["rst"][r])
        add("RSTs at 5-20% remaining ratio are close to dense AT (§4)",
            f"best RST robust accuracy at 5-20% within {close_points:g} points of dense AT",
            f"RST {_points(robust['rst'][best])} (ratio {best:g}) vs dense AT {_points(dense['robust'])}",
            dense["robust"] - robust["rst"][best] <= close)
        reinit_gap = _mean([robust["finetune_reinit"][r] - robust["rst"][r] for r in low])
        add("Fine-tuning re-initialised RSTs is not better than the RST at 5-20% (§5.1)",
            "mean robust accuracy over 5-20%: fine-tuned re-init <= RST",
            f"re-init {_points(_mean([robust['finetune_reinit'][r] for r in low]))} vs RST "
            f"{_points(_mean([robust['rst'][r] for r in low]))}", reinit_gap <= 0)
    else:
        add("RSTs at 5-20% remaining ratio are close to dense AT (§4)", "needs a ratio in 5-20%", "no ratio", None)
    ratios = sorted(robust["rst"])
    gaps = {r: robust["finetune_inherited"][r] - robust["rst"][r] for r in ratios}
    widest = max(ratios, key=lambda r: abs(gaps[r]))
    add("Vanilla RSTs are within a few points of fine-tuned RSTs with inherited weights (§5.1)",
        f"robust accuracy of fine-tuned inherited and RST differ by <= {close_points:g} points at every ratio",
        f"largest gap {100 * gaps[widest]:+.1f} points (ratio {widest:g})", abs(gaps[widest]) <= close)
    means = {name: _mean(list(robust[name].values())) for name in ("rtt_adversarial", "rst", "rtt_natural")}
    add("Adversarial RTT >= RST >= natural RTT (§5.2)", "mean robust accuracy over the ratios",
        f"adversarial RTT {_points(means['rtt_adversarial'])}, RST {_points(means['rst'])}, "
        f"natural RTT {_points(means['rtt_natural'])}",
        means["rtt_adversarial"] >= means["rst"] >= means["rtt_natural"])
    task_b = figures_data["task_b"]
    add("A transferred adversarial RTT (trained on task A) is below an RST on task B (§6.3)",
        f"robust accuracy on classes 5-9 at ratio {task_b['remaining_ratio']:g}: RTT < RST",
        f"RTT {_points(task_b['rtt']['robust'])} vs RST {_points(task_b['rst']['robust'])}",
        task_b["rtt"]["robust"] < task_b["rst"]["robust"])
    matrix = figures_data["transfer"]["accuracy"]
    size = len(matrix)
    diagonal = _mean([matrix[i][i] for i in range(size)])
    off = [matrix[i][j] for i in range(size) for j in range(size) if i != j]
    add("Adversarial examples transfer poorly between RSTs of different ratios (§6.1)",
        "mean off-diagonal accuracy of the transfer matrix > mean diagonal (white-box)",
        f"off-diagonal {_points(_mean(off))} vs diagonal {_points(diagonal)}" if off else "one RST only",
        _mean(off) > diagonal if off else None)
    r2s_figures = figures_data["r2s"]
    best_single = r2s_figures["best_single"]["attacked"]
    eot = f", EOT {_points(r2s_figures['eot'])}" if "eot" in r2s_figures else ""
    add("R2S is more robust than the best single RST under PGD-20 (§6.2)",
        "R2S under the vanilla attack > best single ticket (white-box)",
        f"R2S vanilla {_points(r2s_figures['vanilla'])}{eot} vs best single {_points(best_single)} "
        f"({r2s_figures['best_single']['name']})", r2s_figures["vanilla"] > best_single)
    return rows


def holds_text(holds):
    return {True: "holds", False: "does not hold at this scale", None: "not measured"}[holds]


def write_figures(figures_data, folder, epsilons):
    """PNG figures 1, 2, 3, 5, 6 and the transfer heatmap in `folder`; returns {figure name: file name}."""
    from rst_tf import plots

    os.makedirs(folder, exist_ok=True)
    kinds, dense = figures_data["kinds"], figures_data["dense_at"]
    written = {}
    panels = {"fig1": ("rst",), "fig2": ("rst", "finetune_inherited", "finetune_reinit"),
              "fig3": ("rst", "rtt_natural", "rtt_adversarial"),
              "fig5": ("rst", "finetune_inherited", "rtt_adversarial")}
    epsilon = figures_data["epsilon"]
    for figure, names in panels.items():
        file_name = f"{figure}.png"
        plots.ticket_kinds_vs_remaining_ratio({KINDS[name]: kinds[name] for name in names},
                                              os.path.join(folder, file_name), dense=dense,
                                              title=f"{figure}: PGD-{figures_data['attack_steps']} at "
                                                    f"{epsilon:g}/255")
        written[figure] = file_name
    by_epsilon = {e: {KINDS[name]: [{"remaining_ratio": p["remaining_ratio"],
                                     "robust": p["robust_by_epsilon"][f"{e:g}"]} for p in kinds[name]]
                      for name in KINDS} for e in epsilons}
    plots.robust_accuracy_by_epsilon(by_epsilon, os.path.join(folder, "fig6.png"),
                                     dense_by_epsilon={e: dense["robust_by_epsilon"][f"{e:g}"] for e in epsilons})
    written["fig6"] = "fig6.png"
    plots.transfer_heatmap(figures_data["transfer"], os.path.join(folder, "transfer.png"),
                           title=f"transfer between RSTs, PGD-{figures_data['attack_steps']} at {epsilon:g}/255")
    written["transfer"] = "transfer.png"
    return written


def markdown_report(command, scale, wall_seconds, figures_data, claim_rows, figure_files, epsilons):
    """The report: command, scale, wall time, the claims table, per-kind tables and the figures."""
    epsilon, attack = figures_data["epsilon"], f"PGD-{figures_data['attack_steps']}"
    lines = ["# Reproducing the paper's claims", "", "Command:", "", "```sh", command, "```", "",
             "Scale: " + ", ".join(f"{name} {value}" for name, value in scale.items()) + ".", "",
             f"Wall time: {wall_seconds / 60:.1f} minutes (summed over the invocations that built it).", "",
             f"Robust accuracy: {attack} (step ε/4, random start) at {epsilon:g}/255 of each run's best checkpoint on "
             "the test subset. The ε " + ", ".join(f"{e:g}" for e in epsilons if e != epsilon) +
             " figures evaluate the same runs (searched and trained at "
             f"{epsilon:g}/255) under larger budgets; the paper's Fig. 6 searches and trains at each ε.", "",
             *_noise_lines(figures_data),
             "## Claims", "", "| claim | rule | measured | verdict |", "|---|---|---|---|"]
    for row in claim_rows:
        lines.append(f"| {row['claim']} | {row['rule']} | {row['measured']} | {holds_text(row['holds'])} |")
    dense, natural = figures_data["dense_at"], figures_data["natural_training"]
    lines += ["", "## Accuracy by ticket kind", "",
              f"Dense AT: natural {_points(dense['natural'])}, robust {_points(dense['robust'])}. Natural training: "
              f"natural {_points(natural['natural'])}, robust {_points(natural['robust'])}.", "",
              "| kind | remaining ratio | natural | " + " | ".join(f"{attack} ε {e:g}" for e in epsilons) + " |",
              "|---|---|---|" + "---|" * len(epsilons)]
    for name, points in figures_data["kinds"].items():
        for p in points:
            lines.append(f"| {KINDS[name]} | {p['remaining_ratio']:g} | {_points(p['natural'])} | " + " | ".join(
                _points(p["robust_by_epsilon"][f"{e:g}"]) for e in epsilons) + " |")
    lines += [""]
    for name, file_name in figure_files.items():
        lines += [f"![{name}]({file_name})", ""]
    return "\n".join(lines)


def run(config, remaining_ratios, output_dir, report_path, epsilons=(8, 12, 16), transfer_ratio=None,
        command="", batch_size=200, progress=False, log=print):
    """The whole study: every step of `plan`, the evaluations, figures, the markdown report at `report_path`, and
    the same figures as JSON next to it (`.json`); returns that JSON's content. Resumes where a killed call stopped.
    """
    began = time.time()
    epsilons = [float(e) for e in epsilons]
    steps = plan(config, remaining_ratios, output_dir, transfer_ratio)
    for step in steps:
        run_step(step, progress=progress, log=log)
    run_dirs = [run_dir for step in steps for run_dir in step.run_dirs()]
    seed, steps_pgd = config.seed, config.eval_attack_steps
    evaluation = evaluate_runs(run_dirs, epsilons, os.path.join(output_dir, "evaluation.json"), config.data_dir,
                               batch_size, seed, log)
    rst_step = steps[2]
    rst_dirs = rst_step.run_dirs()
    names = [sweep.ratio_name(r) for r in rst_step.remaining_ratios]
    log("transfer matrix between the RSTs")
    transfer = transfer_between(rst_dirs, names, epsilons[0], steps_pgd, os.path.join(output_dir, "transfer.json"),
                                config.data_dir, batch_size, seed)
    log("R2S over the RSTs")
    r2s_report = r2s_of(rst_dirs, epsilons[0], steps_pgd, os.path.join(output_dir, "r2s.json"),
                        data_dir=config.data_dir, batch_size=batch_size, seed=seed)
    figures_data = figures(steps, evaluation, epsilons[0], steps_pgd, transfer, r2s_report)
    claim_rows = claims(figures_data)
    stem = os.path.splitext(report_path)[0]
    figure_folder = stem + "_figures"
    figure_files = write_figures(figures_data, figure_folder, epsilons)
    relative = os.path.relpath(figure_folder, os.path.dirname(os.path.abspath(report_path)) or ".")
    timing = trainer.read_json(os.path.join(output_dir, "wall_time.json"))
    wall_seconds = timing.get("seconds", 0.0) + time.time() - began
    trainer.write_json(os.path.join(output_dir, "wall_time.json"), {"seconds": wall_seconds})
    scale = scale_of(config, remaining_ratios, epsilons)
    text = markdown_report(command, scale, wall_seconds, figures_data, claim_rows,
                           {name: os.path.join(relative, f) for name, f in figure_files.items()}, epsilons)
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    _write_text(report_path, text)
    results = {"command": command, "scale": scale, "wall_seconds": wall_seconds, "figures": figures_data,
               "claims": claim_rows, "runs": {step.name: step.run_dirs() for step in steps}}
    trainer.write_json(stem + ".json", results)
    return results


def sampling_noise(accuracy, num_examples):
    """One binomial standard error, in [0, 1], of an accuracy measured on `num_examples` examples."""
    return math.sqrt(accuracy * (1.0 - accuracy) / num_examples)


def _noise_lines(figures_data):
    """How large a difference between two runs the test subset alone can produce (a paragraph, or nothing)."""
    count = figures_data.get("num_examples")
    robust = [p["robust"] for points in figures_data["kinds"].values() for p in points]
    if not count or not robust:
        return []
    typical = _mean(robust)
    error = sampling_noise(typical, count)
    return [f"Noise: each accuracy is measured on {count} test images; at a typical robust accuracy of "
            f"{_points(typical)} one standard error is {100 * error:.1f} points, so two runs differing by less than "
            f"about {100 * 2 * math.sqrt(2) * error:.1f} points (two standard errors of the difference) are not told "
            "apart by this test subset, before any seed-to-seed variation (one seed per setting here).", ""]


def scale_of(config, remaining_ratios, epsilons):
    """What sets the cost and the meaning of the figures, as readable text per item."""
    return {"network": f"{config.network} width {config.width_multiplier:g}", "dataset": config.dataset,
            "train images": config.train_examples or "all", "validation images": config.validation_examples,
            "test images": config.test_examples or "all", "epochs": config.epochs,
            "search attack": f"{config.attack}-{config.attack_steps} at {round(config.epsilon * 255, 2):g}/255",
            "remaining ratios": ", ".join(f"{r:g}" for r in remaining_ratios),
            "evaluation": f"PGD-{config.eval_attack_steps} at " + ", ".join(f"{e:g}" for e in epsilons) + "/255",
            "seed": config.seed}


def _pgd(steps, epsilon):
    from rst_tf import attacks

    return attacks.AttackConfig(name="pgd", epsilon=epsilon, steps=steps, step_size=epsilon / 4)


def _test_batches(config, data_dir, batch_size, cache):
    from rst_tf import data, robustness

    key = tuple(config.class_subset)
    if key not in cache:
        splits = trainer.load_data(dataclasses.replace(config, data_dir=data_dir or config.data_dir))
        cache[key] = robustness.materialize(data.eval_batches(splits.test, batch_size))
    return cache[key]


def _write_text(path, text):
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)

