"""The reproduction study's report: its figures as plain data, the paper's claims with verdicts, the PNG figures
and the Markdown report.

Every robust accuracy in the report carries its 95% Wilson interval for the number of test images. The claims that
rest on transfer between tickets (§6.1 transfer, §6.2 R2S) are stated under both PGD protocols (standard: step
ε/4; paper: the official RST test code, step 2/255 with early stop) when both were measured.
"""
import math
import os

from rst_tf.evaluation import intervals, plots

# The ticket kinds of the figures, by step name, with their labels.
KINDS = {"rst": "RST", "finetune_inherited": "fine-tuned RST (inherited)",
         "finetune_reinit": "fine-tuned RST (re-init)", "rtt_natural": "natural RTT",
         "rtt_adversarial": "adversarial RTT"}
LOW_RATIOS = (0.05, 0.2)  # the paper's "5-20%" range of its claims
CLOSE_POINTS = 3.0  # "close" / "within a few points": robust accuracy within this many points
PROTOCOL_TEXT = {"standard": "step ε/4, random start, no early stop",
                 "paper": "step 2/255, random start, early stop per example (the official RST test code)"}


def figures(steps, evaluation, epsilon, attack_steps, transfer, r2s_report, pgd_protocol="standard",
            other_protocol=None):
    """The study's figures as plain data: the dense baselines, each kind's points, the task-B pair, transfer, R2S.

    `evaluation`: `reproduce.evaluate_runs`' result; `epsilon`: the budget (in /255) of "robust", under
    PGD-`attack_steps` of `pgd_protocol`; `transfer`, `r2s_report`: measured under that protocol.
    `other_protocol` (optional {"pgd_protocol", "transfer", "r2s"}): transfer and R2S under the other protocol.
    """
    key = f"{epsilon:g}"
    by_name = {step.name: step for step in steps}

    def point(run_dir, ratio=None):
        result = evaluation[run_dir]
        count = result.get("num_examples") or 0
        found = {"natural": result["natural"], "robust": result["robust"][key], "robust_by_epsilon": result["robust"],
                 "num_examples": count, "robust_interval": list(intervals.accuracy_interval(result["robust"][key],
                                                                                            count))}
        return found if ratio is None else {"remaining_ratio": ratio, **found}

    kinds = {}
    for name in KINDS:
        step = by_name[name]
        kinds[name] = [point(run_dir, ratio) for ratio, run_dir in zip(step.remaining_ratios, step.run_dirs())]
    task_b = {name: point(by_name[f"task_b_{name}"].run_dirs()[0]) for name in ("rtt", "rst")}
    task_b["remaining_ratio"] = by_name["task_b_rst"].remaining_ratios[0]
    dense_dir = by_name["dense_at"].output_dir
    result = {"epsilon": epsilon, "attack_steps": attack_steps, "pgd_protocol": pgd_protocol,
              "num_examples": evaluation[dense_dir].get("num_examples"), "dense_at": point(dense_dir),
              "natural_training": point(by_name["natural"].output_dir), "kinds": kinds, "task_b": task_b,
              **_transfer_and_r2s(transfer, r2s_report)}
    if other_protocol is not None:
        result["other_protocol"] = {"pgd_protocol": other_protocol["pgd_protocol"],
                                    **_transfer_and_r2s(other_protocol["transfer"], other_protocol["r2s"])}
    return result


def _transfer_and_r2s(transfer, r2s_report):
    return {"transfer": {key: transfer[key] for key in ("names", "accuracy", "interval", "num_examples")
                         if key in transfer},
            "r2s": dict(r2s_report["r2s"], best_single=r2s_report["best_single"],
                        intervals=r2s_report.get("r2s_intervals", {}))}


def _points(pct, count=None):
    """'29.0%', or with a count of test images '29.0% [26.2, 31.9]' (the 95% Wilson interval)."""
    return intervals.format_accuracy(pct, count or 0)


def _in_low_range(points):
    return [p for p in points if LOW_RATIOS[0] <= p["remaining_ratio"] <= LOW_RATIOS[1]]


def _mean(values):
    return sum(values) / len(values)


def claims(figures_data, close_points=CLOSE_POINTS):
    """The paper's claims, each {claim, rule, measured, holds (True / False / None: not measured)}, from `figures`."""
    kinds, dense = figures_data["kinds"], figures_data["dense_at"]
    count = figures_data.get("num_examples")
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
            f"RST {_points(robust['rst'][best], count)} (ratio {best:g}) vs dense AT "
            f"{_points(dense['robust'], count)}",
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
        f"RTT {_points(task_b['rtt']['robust'], task_b['rtt'].get('num_examples'))} vs RST "
        f"{_points(task_b['rst']['robust'], task_b['rst'].get('num_examples'))}",
        task_b["rtt"]["robust"] < task_b["rst"]["robust"])
    transfer_holds, transfer_text = _transfer_claim(figures_data["transfer"])
    r2s_holds, r2s_text = _r2s_claim(figures_data["r2s"], count)
    other = figures_data.get("other_protocol")
    protocol = figures_data.get("pgd_protocol", "standard")
    if other is not None:
        other_holds, other_text = _transfer_claim(other["transfer"])
        transfer_text = (f"{protocol} PGD: {transfer_text}; {other['pgd_protocol']} PGD: {other_text} "
                         f"({holds_text(other_holds)})")
        other_holds, other_text = _r2s_claim(other["r2s"], count)
        r2s_text = f"{protocol} PGD: {r2s_text}; {other['pgd_protocol']} PGD: {other_text} ({holds_text(other_holds)})"
    add("Adversarial examples transfer poorly between RSTs of different ratios (§6.1)",
        "mean off-diagonal accuracy of the transfer matrix > mean diagonal (white-box)", transfer_text,
        transfer_holds)
    add("R2S is more robust than the best single RST under PGD-20 (§6.2)",
        "R2S under the vanilla attack > best single ticket (white-box)", r2s_text, r2s_holds)
    return rows


def _transfer_claim(transfer):
    """(holds, measured text) of §6.1 on one transfer matrix."""
    matrix = transfer["accuracy"]
    size = len(matrix)
    diagonal = _mean([matrix[i][i] for i in range(size)])
    off = [matrix[i][j] for i in range(size) for j in range(size) if i != j]
    if not off:
        return None, "one RST only"
    return _mean(off) > diagonal, f"off-diagonal {_points(_mean(off))} vs diagonal {_points(diagonal)}"


def _r2s_claim(r2s_figures, count):
    """(holds, measured text) of §6.2 on one R2S evaluation."""
    best_single = r2s_figures["best_single"]["attacked"]
    eot = f", EOT {_points(r2s_figures['eot'], count)}" if "eot" in r2s_figures else ""
    return r2s_figures["vanilla"] > best_single, (
        f"R2S vanilla {_points(r2s_figures['vanilla'], count)}{eot} vs best single {_points(best_single, count)} "
        f"({r2s_figures['best_single']['name']})")


def holds_text(holds):
    return {True: "holds", False: "does not hold at this scale", None: "not measured"}[holds]


def write_figures(figures_data, folder, epsilons):
    """PNG figures 1, 2, 3, 5, 6 and the transfer heatmap in `folder`; returns {figure name: file name}."""
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
    count = figures_data.get("num_examples")
    protocol = figures_data.get("pgd_protocol", "standard")
    other = figures_data.get("other_protocol")
    both = (f" The transfer (§6.1) and R2S (§6.2) claims are measured under both PGD protocols: {protocol} and "
            f"{other['pgd_protocol']} ({PROTOCOL_TEXT[other['pgd_protocol']]}); the verdict is the {protocol} one."
            if other else "")
    lines = ["# Reproducing the paper's claims", "", "Command:", "", "```sh", command, "```", "",
             "Scale: " + ", ".join(f"{name} {value}" for name, value in scale.items()) + ".", "",
             f"Wall time: {wall_seconds / 60:.1f} minutes (summed over the invocations that built it).", "",
             f"Robust accuracy: {attack} ({protocol} protocol: {PROTOCOL_TEXT[protocol]}) at {epsilon:g}/255 of "
             "each run's best checkpoint on the test subset; an example counts as robust only if its clean image is "
             "classified correctly too, and [low, high] is the 95% Wilson interval for the number of test images "
             f"(means over several accuracies carry none).{both} The ε "
             + ", ".join(f"{e:g}" for e in epsilons if e != epsilon)
             + f" figures evaluate the same runs (searched and trained at {epsilon:g}/255) under larger budgets; the "
             "paper's Fig. 6 searches and trains at each ε.", "",
             *_noise_lines(figures_data),
             "## Claims", "", "| claim | rule | measured | verdict |", "|---|---|---|---|"]
    for row in claim_rows:
        lines.append(f"| {row['claim']} | {row['rule']} | {row['measured']} | {holds_text(row['holds'])} |")
    dense, natural = figures_data["dense_at"], figures_data["natural_training"]
    lines += ["", "## Accuracy by ticket kind", "",
              f"Dense AT: natural {_points(dense['natural'])}, robust {_points(dense['robust'], count)}. Natural "
              f"training: natural {_points(natural['natural'])}, robust {_points(natural['robust'], count)}.", "",
              "| kind | remaining ratio | natural | " + " | ".join(f"{attack} ε {e:g}" for e in epsilons) + " |",
              "|---|---|---|" + "---|" * len(epsilons)]
    for name, points in figures_data["kinds"].items():
        for p in points:
            lines.append(f"| {KINDS[name]} | {p['remaining_ratio']:g} | {_points(p['natural'])} | " + " | ".join(
                _points(p["robust_by_epsilon"][f"{e:g}"], p.get("num_examples") or count) for e in epsilons) + " |")
    lines += [""]
    for name, file_name in figure_files.items():
        lines += [f"![{name}]({file_name})", ""]
    return "\n".join(lines)


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


def scale_of(config, remaining_ratios, epsilons, pgd_protocol="standard"):
    """What sets the cost and the meaning of the figures, as readable text per item."""
    return {"network": f"{config.network} width {config.width_multiplier:g}", "dataset": config.dataset,
            "train images": config.train_examples or "all", "validation images": config.validation_examples,
            "test images": config.test_examples or "all", "epochs": config.epochs,
            "search attack": f"{config.attack}-{config.attack_steps} at {round(config.epsilon * 255, 2):g}/255",
            "remaining ratios": ", ".join(f"{r:g}" for r in remaining_ratios),
            "evaluation": f"PGD-{config.eval_attack_steps} ({pgd_protocol} protocol) at "
                          + ", ".join(f"{e:g}" for e in epsilons) + "/255",
            "seed": config.seed}


