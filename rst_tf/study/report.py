"""The reproduction study's report: its figures as plain data (means over seeds with 95% intervals), the PNG
figures with seed error bars, the run times and the Markdown report with the claims of `claims`."""
import collections
import os

import numpy as np

from rst_tf.measuring import contrasts
from rst_tf.reports import plots

# The ticket kinds of the figures, by step name, with their labels.
KINDS = {"rst": "RST", "finetune_inherited": "fine-tuned RST (inherited)",
         "finetune_reinit": "fine-tuned RST (re-init)", "rtt_natural": "natural RTT",
         "rtt_adversarial": "adversarial RTT"}
PROTOCOL_TEXT = {"standard": "step ε/4, random start, no early stop",
                 "paper": "step 2/255, random start, early stop per example (the official RST test code)"}


def _point(results, name, ratio=None):
    """Mean natural and robust accuracy (each ε) of one setting over the seeds, with 95% intervals."""
    natural = contrasts.mean_accuracy([results.correct(seed, name, ratio) for seed in results.seeds])
    epsilons = list(results.evaluation[results.run_dir(results.seeds[0], name, ratio)]["robust_correct"])
    robust = {e: contrasts.mean_accuracy([results.correct(seed, name, ratio, e) for seed in results.seeds])
              for e in epsilons}
    found = {"natural": natural["estimate"], "natural_interval": natural["interval"],
             "robust": robust[results.epsilon]["estimate"], "robust_interval": robust[results.epsilon]["interval"],
             "robust_by_epsilon": {e: value["estimate"] for e, value in robust.items()},
             "robust_interval_by_epsilon": {e: value["interval"] for e, value in robust.items()},
             "per_seed": {"natural": natural["per_seed"], "robust": robust[results.epsilon]["per_seed"]},
             "num_examples": natural["num_examples"]}
    return found if ratio is None else {"remaining_ratio": ratio, **found}


def figures(results, attack_steps, pgd_protocol, protocols):
    """The study's figures as plain data from a `claims.Results`: dense baselines, each kind's points,
    the task-B pair, and per protocol the seed-mean transfer matrix and R2S accuracies."""
    first = results.seeds[0]
    transfer, r2s = {}, {}
    for protocol in protocols:
        matrices = [np.asarray(results.measured[seed, protocol][0]["accuracy"], float) for seed in results.seeds]
        transfer[protocol] = {"names": results.measured[first, protocol][0]["names"],
                              "accuracy": np.mean(matrices, axis=0).tolist(),
                              "per_seed": [m.tolist() for m in matrices]}
        reports = [results.measured[seed, protocol][1] for seed in results.seeds]
        r2s[protocol] = {"r2s": {kind: float(np.mean([rep["r2s"][kind] for rep in reports]))
                                 for kind in reports[0]["r2s"]},
                         "best_single": float(np.mean([rep["best_single"]["attacked"] for rep in reports])),
                         "best_single_names": [rep["best_single"]["name"] for rep in reports]}
    ratio = results.transfer_ratio
    return {"epsilon": float(results.epsilon), "attack_steps": attack_steps, "pgd_protocol": pgd_protocol,
            "seeds": results.seeds, "num_examples": _point(results, "dense_at")["num_examples"],
            "dense_at": _point(results, "dense_at"), "natural_training": _point(results, "natural"),
            "kinds": {name: [_point(results, name, r) for r in results.ratios_of(name)] for name in KINDS},
            "task_b": {"remaining_ratio": ratio, "rtt": _point(results, "task_b_rtt", ratio),
                       "rst": _point(results, "task_b_rst", ratio)},
            "transfer": transfer, "r2s": r2s}


def run_times(steps_by_seed, times, evaluation):
    """One row per run: {seed, step, remaining_ratio, run_dir, wall_minutes, cpu_minutes, resumed, threads,
    evaluation_minutes}; threads: the run's TensorFlow threads (0: TensorFlow's default). A figure the run did not
    record (times from before they were kept, threads from before they were) is None."""
    rows = []
    for seed, steps in steps_by_seed.items():
        for step in steps:
            for ratio, run_dir in zip(step.remaining_ratios or (None,), step.run_dirs()):
                found = times.get(run_dir, {})
                minutes = lambda key: found[key] / 60 if key in found else None  # noqa: E731
                seconds = evaluation.get(run_dir, {}).get("seconds")
                rows.append({"seed": seed, "step": step.name, "remaining_ratio": ratio, "run_dir": run_dir,
                             "wall_minutes": minutes("wall_seconds"), "cpu_minutes": minutes("cpu_seconds"),
                             "resumed": found.get("resumed"), "threads": found.get("threads"),
                             "evaluation_minutes": None if seconds is None else seconds / 60})
    return rows


def _pct(value):
    return f"{100 * value:.1f}%"


def _with_interval(value, interval):
    low, high = interval
    if np.isnan(low):
        return _pct(value)
    return f"{100 * value:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def _points_text(row):
    low, high = row["interval"]
    seeds = ", ".join(f"{100 * v:+.1f}" for v in row["per_seed"])
    interval = "" if np.isnan(low) else f" [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"{100 * row['estimate']:+.1f}{interval}", seeds


def write_figures(figures_data, folder, epsilons):
    """PNG figures 1, 2, 3, 5, 6 (seed means, error bars: 95% intervals) and a transfer heatmap per protocol in
    `folder`; returns {figure name: file name}."""
    os.makedirs(folder, exist_ok=True)
    kinds, dense = figures_data["kinds"], figures_data["dense_at"]
    written = {}
    panels = {"fig1": ("rst",), "fig2": ("rst", "finetune_inherited", "finetune_reinit"),
              "fig3": ("rst", "rtt_natural", "rtt_adversarial"),
              "fig5": ("rst", "finetune_inherited", "rtt_adversarial")}
    epsilon, seeds = figures_data["epsilon"], len(figures_data["seeds"])
    for figure, names in panels.items():
        file_name = f"{figure}.png"
        plots.ticket_kinds_vs_remaining_ratio({KINDS[name]: kinds[name] for name in names},
                                              os.path.join(folder, file_name), dense=dense,
                                              title=f"{figure}: PGD-{figures_data['attack_steps']} at "
                                                    f"{epsilon:g}/255, mean of {seeds} seeds, 95% intervals")
        written[figure] = file_name
    by_epsilon = {e: {KINDS[name]: [{"remaining_ratio": p["remaining_ratio"],
                                     "robust": p["robust_by_epsilon"][f"{e:g}"],
                                     "robust_interval": p["robust_interval_by_epsilon"][f"{e:g}"]}
                                    for p in kinds[name]] for name in KINDS} for e in epsilons}
    plots.robust_accuracy_by_epsilon(by_epsilon, os.path.join(folder, "fig6.png"),
                                     dense_by_epsilon={e: dense["robust_by_epsilon"][f"{e:g}"] for e in epsilons})
    written["fig6"] = "fig6.png"
    for protocol, transfer in figures_data["transfer"].items():
        name = "transfer" if protocol == figures_data["pgd_protocol"] else f"transfer_{protocol}"
        plots.transfer_heatmap(transfer, os.path.join(folder, f"{name}.png"),
                               title=f"transfer between RSTs, {protocol} PGD-{figures_data['attack_steps']} at "
                                     f"{epsilon:g}/255, mean of {seeds} seeds")
        written[name] = f"{name}.png"
    return written


def markdown_report(command, scale, wall_seconds, figures_data, claim_rows, figure_files, epsilons, times=()):
    """The report: command, scale, protocols, the claims table with intervals, per-kind tables, transfer and R2S,
    run times and the figures."""
    epsilon, attack = figures_data["epsilon"], f"PGD-{figures_data['attack_steps']}"
    protocol, seeds = figures_data["pgd_protocol"], figures_data["seeds"]
    lines = ["# Reproducing the paper's claims", "", "Command:", "", "```sh", command, "```", "",
             "Scale: " + ", ".join(f"{name} {value}" for name, value in scale.items()) + ".", "",
             f"Wall time: {wall_seconds / 60:.1f} minutes (summed over the invocations that built it; per run "
             "below).", "",
             f"Robust accuracy: {attack} ({protocol} protocol: {PROTOCOL_TEXT[protocol]}) at {epsilon:g}/255 of each "
             f"run's best checkpoint, on one test set of {figures_data['num_examples']} images shared by every run "
             "and seed; an example counts as robust only if its clean image is classified correctly too. The "
             "transfer (§6.1) and R2S (§6.2) claims are decided under both PGD protocols ("
             + "; ".join(f"{name}: {text}" for name, text in PROTOCOL_TEXT.items())
             + "); the paper's figures come from the official test code, i.e. the paper protocol.", "",
             "Checkpoints: each run's best epoch by validation PGD accuracy on images held out of the training "
             "set. The official code selects its checkpoint on the test set, which flatters every figure a little.",
             "",
             "Verdicts: each claim is a difference between settings, formed per seed "
             f"(seeds {', '.join(map(str, seeds))}) from per-example results on the shared test images. Its 95% "
             "interval combines the seeds' disagreement (sample variance of the per-seed differences, Student's t "
             "at S - 1 degrees of freedom) and test-set sampling (variance over images of the seed-mean "
             "difference), added in quadrature "
             "(`rst_tf/measuring/contrasts.py`). \"holds\": the interval lies on the paper's side of the rule's "
             "margin; \"does not hold\": on the other side; else \"undecided at this scale\".", "",
             "## Claims", "", verdict_counts(claim_rows), "",
             "| § | claim | rule | difference, points [95% interval] | per seed | verdict |",
             "|---|---|---|---|---|---|"]
    for row in claim_rows:
        text, per_seed = _points_text(row)
        claim = row["claim"] + (f" ({row['protocol']} PGD)" if row["protocol"] else "")
        lines.append(f"| {row['section']} | {claim} | {row['rule']} | {text} | {per_seed} | {row['verdict']} |")
    dense, natural = figures_data["dense_at"], figures_data["natural_training"]
    lines += ["", f"## Accuracy by ticket kind (mean of {len(seeds)} seeds [95% interval])", "",
              f"Dense AT: natural {_with_interval(dense['natural'], dense['natural_interval'])}, robust "
              f"{_with_interval(dense['robust'], dense['robust_interval'])}. Natural training: natural "
              f"{_with_interval(natural['natural'], natural['natural_interval'])}, robust "
              f"{_with_interval(natural['robust'], natural['robust_interval'])}.", "",
              "| kind | remaining ratio | natural | " + " | ".join(f"{attack} ε {e:g}" for e in epsilons) + " |",
              "|---|---|---|" + "---|" * len(epsilons)]
    rows = [(KINDS[name], p) for name, points in figures_data["kinds"].items() for p in points]
    task_b = figures_data["task_b"]
    rows += [(f"task B (classes 5-9) {label}", dict(task_b[key], remaining_ratio=task_b["remaining_ratio"]))
             for key, label in (("rst", "RST"), ("rtt", "RTT from task A"))]
    for label, p in rows:
        lines.append(f"| {label} | {p['remaining_ratio']:g} | {_with_interval(p['natural'], p['natural_interval'])}"
                     " | " + " | ".join(_with_interval(p["robust_by_epsilon"][f"{e:g}"],
                                                       p["robust_interval_by_epsilon"][f"{e:g}"])
                                        for e in epsilons) + " |")
    for name, transfer in figures_data["transfer"].items():
        lines += ["", f"## Transfer between RSTs ({name} PGD, mean of {len(seeds)} seeds)", "",
                  "| source \\ target | " + " | ".join(transfer["names"]) + " |",
                  "|---|" + "---|" * len(transfer["names"])]
        for source, row in zip(transfer["names"], transfer["accuracy"]):
            lines.append(f"| {source} | " + " | ".join(_pct(v) for v in row) + " |")
        r2s = figures_data["r2s"][name]
        lines += ["", f"R2S ({name} PGD): " + ", ".join(f"{kind} {_pct(v)}" for kind, v in r2s["r2s"].items())
                  + f"; best single ticket {_pct(r2s['best_single'])} ({', '.join(r2s['best_single_names'])})."]
    lines += _time_lines(times)
    lines += [""]
    for name, file_name in figure_files.items():
        lines += [f"![{name}]({file_name})", ""]
    return "\n".join(lines)


def verdict_counts(claim_rows):
    """"Of 15 claims: 4 hold, 1 does not hold, 10 undecided at this scale."."""
    counts = collections.Counter(row["verdict"] for row in claim_rows)
    plural = {"holds": "hold", "does not hold": "do not hold"}
    return f"Of {len(claim_rows)} claims: " + ", ".join(
        f"{counts[verdict]} {verdict if counts[verdict] == 1 else plural.get(verdict, verdict)}"
        for verdict in contrasts.VERDICTS) + "."


def threads_text(threads):
    """A run's recorded TensorFlow threads as a table cell: "-" when not recorded, "default" for TensorFlow's."""
    return "-" if threads is None else "default" if threads == 0 else str(threads)


def _time_lines(times):
    if not times:
        return []
    minutes = lambda value: "-" if value is None else f"{value:.1f}"  # noqa: E731
    lines = ["", "## Run times", "",
             "Wall and process CPU minutes of the call that finished each run (resumed: it continued a run an "
             "earlier call had started, whose time is not counted; threads: its TensorFlow threads), and of its "
             "evaluation.", "",
             "| seed | run | ratio | wall min | CPU min | resumed | threads | evaluation min |",
             "|---|---|---|---|---|---|---|---|"]
    for row in times:
        ratio = "-" if row["remaining_ratio"] is None else f"{row['remaining_ratio']:g}"
        resumed = {None: "-", True: "yes", False: "no"}[row["resumed"]]
        lines.append(f"| {row['seed']} | {row['step']} | {ratio} | {minutes(row['wall_minutes'])} | "
                     f"{minutes(row['cpu_minutes'])} | {resumed} | {threads_text(row.get('threads'))} | "
                     f"{minutes(row['evaluation_minutes'])} |")
    return lines


def scale_of(config, remaining_ratios, epsilons, seeds, pgd_protocol="standard", comparison_ratios=None):
    """What sets the cost and the meaning of the figures, as readable text per item."""
    compared = {} if comparison_ratios is None else {
        "fine-tuned and RTT ratios": ", ".join(f"{r:g}" for r in comparison_ratios)}
    return {"network": f"{config.network} width {config.width_multiplier:g}", "dataset": config.dataset,
            "train images": config.train_examples or "all", "validation images": config.validation_examples,
            "test images": config.test_examples or "all", "epochs": config.epochs,
            "batch size": config.batch_size,
            "search attack": f"{config.attack}-{config.attack_steps} at {round(config.epsilon * 255, 2):g}/255",
            "remaining ratios": ", ".join(f"{r:g}" for r in remaining_ratios), **compared,
            "evaluation": f"PGD-{config.eval_attack_steps} ({pgd_protocol} protocol) at "
                          + ", ".join(f"{e:g}" for e in epsilons) + "/255",
            "seeds": ", ".join(str(seed) for seed in seeds)}
