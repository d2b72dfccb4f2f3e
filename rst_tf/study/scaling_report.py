"""The scaling study's claims, figures and report.

Every claim is a contrast over the seeds on the one shared test set (`evaluation.contrasts`): per width, RST at 20%
minus dense AT (robust and natural), the RST above chance, R2S minus its best single ticket, and R2S under the
adaptive attacks (EOT, Ensemble) minus dense AT; across widths, the least-squares slope of (RST - dense AT)
against log2(width), formed per seed as a weighted sum of per-example results, so the seeds are its replicates.
"""
import math
import os

import numpy as np

from rst_tf.measuring import contrasts
from rst_tf.study import report

CLOSE_POINTS = 3.0
CHANCE = 0.1
PROTOCOLS = ("standard", "paper")
PROTOCOL_TEXT = {"standard": "step ε/4, random start, no early stop",
                 "paper": "step 2/255, random start, an example stops being attacked once misclassified (the "
                          "official RST test code)"}
PAPER_PROTOCOL_NOTE = ("the paper's PGD does not move an example at a step where that step's draw of the randomised "
                       "model misclassifies it, which flatters R2S")


class Measured:
    """Per-example results of the study by (width, seed): `correct(width, seed, run, protocol)`, where `run` is
    "dense_at" or a remaining ratio, `protocol` a PGD protocol, "natural", or "worst" (robust under every attack
    measured on that run: PGD under both protocols and any AutoAttack)."""

    def __init__(self, planned, measured, epsilon):
        self.planned, self.measured, self.key = planned, measured, f"{epsilon:g}"
        self.widths = sorted({width for width, _ in planned})
        self.seeds = sorted({seed for _, seed in planned}, key=[seed for _, seed in planned].index)
        rst = next(step for step in planned[self.widths[0], self.seeds[0]] if step.name == "rst")
        self.ratios = tuple(rst.remaining_ratios)
        self.ratio = min(self.ratios, key=lambda r: abs(r - 0.2))

    def run_dir(self, width, seed, run):
        dense, rst = self.planned[width, seed]
        return dense.output_dir if run == "dense_at" else rst.run_dirs()[list(rst.remaining_ratios).index(run)]

    def correct(self, width, seed, run, protocol):
        run_dir = self.run_dir(width, seed, run)
        evaluation = self.measured["evaluation"]
        if protocol == "natural":
            return evaluation["standard"][run_dir]["natural_correct"]
        if protocol in PROTOCOLS:
            return evaluation[protocol][run_dir]["robust_correct"][self.key]
        rows = [contrasts.unpack(evaluation[p][run_dir]["robust_correct"][self.key]) for p in PROTOCOLS]
        if self.has_autoattack():
            rows += [contrasts.unpack(entry["correct"]) for entry in self.full_autoattacks(run_dir).values()]
        return np.minimum.reduce(rows)

    def full_autoattacks(self, run_dir):
        """The AutoAttacks measured on every test image of the study (not on a first part of it) of `run_dir`."""
        size = len(self.measured["evaluation"]["standard"][run_dir]["natural_correct"])
        return {name: entry for name, entry in self.measured["autoattack"].get(run_dir, {}).items()
                if len(entry["correct"]) == size}

    def autoattack_names(self, run_dir):
        return sorted(self.full_autoattacks(run_dir))

    def has_autoattack(self):
        """Whether an AutoAttack was measured on every run that the claims compare."""
        return all(self.autoattack_names(self.run_dir(w, s, run)) for w in self.widths for s in self.seeds
                   for run in ("dense_at", self.ratio))

    def r2s(self, width, seed, protocol):
        return self.measured["r2s"][width, seed, protocol]

    def r2s_examples(self, width, seed, protocol):
        """How many of the test images (the first ones) R2S was measured on."""
        return len(self.r2s(width, seed, protocol)["r2s_correct"]["vanilla"])


def _row(section, claim, rule_text, direction, margin, terms_by_seed, offset=0.0, note="", **extra):
    found = contrasts.contrast(terms_by_seed, offset=offset)
    return {"section": section, "claim": claim, "rule": f"{rule_text} {direction} {100 * margin:+g} points",
            "estimate": found["estimate"], "interval": found["interval"], "per_seed": found["per_seed"],
            "seed_sd": found["seed_sd"], "test_se": found["test_se"], "num_seeds": found["num_seeds"],
            "verdict": contrasts.verdict(found["interval"], direction, margin), "note": note, **extra}


def _robust_label(results, protocol):
    if protocol == "worst":
        return "worst case of PGD-20 (both protocols)" + (" and AutoAttack" if results.has_autoattack() else "")
    return f"PGD-20, {protocol} protocol"


def width_label(width):
    """A width multiplier as people write it: "1/16" for 0.0625, "2" for 2.0."""
    if 0 < width < 1 and abs(1 / width - round(1 / width)) < 1e-9:
        return f"1/{round(1 / width)}"
    return f"{width:g}"


def ratio_label(ratio):
    """A remaining ratio as a percentage of the weights: "20%" for 0.2."""
    return f"{100 * ratio:.4g}%"


def width_claims(results, width):
    """The claims at one width."""
    seeds, ratio = results.seeds, results.ratio
    rows = []
    robust_protocols = ["standard", "paper", "worst"]
    for protocol in robust_protocols:
        rows.append(_row(
            f"width {width_label(width)}", f"RST at {ratio_label(ratio)} is within {CLOSE_POINTS:g} points of dense "
            f"AT, robust ({_robust_label(results, protocol)})", "RST minus dense AT", ">", -CLOSE_POINTS / 100,
            [[(1.0, results.correct(width, s, ratio, protocol)),
              (-1.0, results.correct(width, s, "dense_at", protocol))] for s in seeds],
            width=width, kind="rst_minus_dense_robust", protocol=protocol))
    rows.append(_row(
        f"width {width_label(width)}",
        f"RST at {ratio_label(ratio)} is within {CLOSE_POINTS:g} points of dense AT, natural",
        "RST minus dense AT", ">", -CLOSE_POINTS / 100,
        [[(1.0, results.correct(width, s, ratio, "natural")), (-1.0, results.correct(width, s, "dense_at", "natural"))]
         for s in seeds], width=width, kind="rst_minus_dense_natural", protocol="natural"))
    strongest = robust_protocols[-1]
    rows.append(_row(
        f"width {width_label(width)}",
        f"RST at {ratio_label(ratio)} is robust above chance ({_robust_label(results, strongest)})",
        "robust accuracy minus 10%", ">", 0.0, [[(1.0, results.correct(width, s, ratio, strongest))] for s in seeds],
        offset=CHANCE, width=width, kind="rst_above_chance", protocol=strongest))
    for protocol in PROTOCOLS:
        note = PAPER_PROTOCOL_NOTE if protocol == "paper" else ""
        terms = []
        for s in seeds:
            r2s_of_seed = results.r2s(width, s, protocol)
            best = max(r2s_of_seed["tickets"], key=lambda row: row["attacked"])
            terms.append([(1.0, r2s_of_seed["r2s_correct"]["vanilla"]),
                          (-1.0, best["attacked_correct"][:results.r2s_examples(width, s, protocol)])])
        rows.append(_row(f"width {width_label(width)}", f"R2S beats its best single ticket under the vanilla attack "
                         f"({_robust_label(results, protocol)})", "R2S minus best single ticket", ">", 0.0, terms,
                         note=note, width=width, kind="r2s_minus_best_single", protocol=protocol))
        for kind, label in (("eot", "EOT over all tickets"), ("ensemble", "the Ensemble attack")):
            rows.append(_row(
                f"width {width_label(width)}",
                f"R2S under {label} beats dense AT (Table 5; {_robust_label(results, protocol)})",
                f"R2S ({kind}) minus dense AT", ">", 0.0,
                [[(1.0, results.r2s(width, s, protocol)["r2s_correct"][kind]),
                  (-1.0, results.correct(width, s, "dense_at", protocol)[:results.r2s_examples(width, s, protocol)])]
                 for s in seeds],
                note=note, width=width, kind=f"r2s_{kind}_minus_dense", protocol=protocol))
    return rows


def slope_weights(widths):
    """Least-squares weights c_w with slope = sum_w c_w y_w of y against log2(width)."""
    x = np.log2(np.asarray(widths, float))
    centred = x - x.mean()
    return centred / float((centred ** 2).sum())


def slope_terms(results, protocol, signed_runs):
    """Per seed, the contrast terms of the least-squares slope against log2(width) of the sum of sign * accuracy
    over `signed_runs` ([(sign, run)])."""
    weights = slope_weights(results.widths)
    return [[(sign * float(weight), results.correct(width, s, run, protocol))
             for weight, width in zip(weights, results.widths) for sign, run in signed_runs] for s in results.seeds]


def trend_claims(results):
    """The slope of (RST - dense AT) against log2(width), robust and natural, per seed, as one contrast."""
    if len(results.widths) < 2:
        return []
    protocols = ["standard", "worst", "natural"]
    rows = []
    for protocol in protocols:
        terms = slope_terms(results, protocol, [(1.0, results.ratio), (-1.0, "dense_at")])
        label = "natural accuracy" if protocol == "natural" else _robust_label(results, protocol)
        rows.append(_row("trend",
                         f"The gap RST at {ratio_label(results.ratio)} minus dense AT grows with width ({label})",
                         "slope of (RST - dense AT) per doubling of width", ">", 0.0, terms, kind="trend",
                         protocol=protocol))
    return rows


def claims(results):
    rows = [row for width in results.widths for row in width_claims(results, width)]
    return rows + trend_claims(results)


def regime_checks(results):
    """Whether the regime can show over-parameterisation at all, on the study's own dense AT runs: it leaves chance
    (natural accuracy above 10%) at the narrowest and at the widest width, and gains from width (the least-squares
    slope of its accuracy against log2(width), natural and under standard PGD-20, per seed). Not claims of the
    paper: where these fail, a trend of the gap says little about width."""
    widths, seeds = results.widths, results.seeds
    rows = [_row(f"width {width_label(width)}", "Dense AT leaves chance (natural accuracy)",
                 "natural accuracy minus 10%", ">", 0.0,
                 [[(1.0, results.correct(width, s, "dense_at", "natural"))] for s in seeds], offset=CHANCE, width=width,
                 kind="dense_above_chance", protocol="natural")
            for width in dict.fromkeys((widths[0], widths[-1]))]
    if len(widths) < 2:
        return rows
    for protocol in ("natural", "standard"):
        label = "natural accuracy" if protocol == "natural" else _robust_label(results, protocol)
        rows.append(_row("trend", f"Dense AT gains from width ({label})",
                         "slope of dense AT's accuracy per doubling of width", ">", 0.0,
                         slope_terms(results, protocol, [(1.0, "dense_at")]),
                         kind="dense_gains_from_width", protocol=protocol))
    return rows


def accuracy_table(results):
    """{width: {run label: {natural, robust by protocol: {estimate, interval, per_seed}}}} (means over seeds)."""
    table = {}
    runs = [("dense AT", "dense_at")] + [(f"RST {ratio_label(r)}", r) for r in results.ratios]
    protocols = ["natural", *PROTOCOLS, "worst"]
    for width in results.widths:
        table[f"{width:g}"] = {}
        for label, run in runs:
            entry = {}
            for protocol in protocols:
                found = contrasts.mean_accuracy([results.correct(width, s, run, protocol) for s in results.seeds])
                entry[protocol] = {key: found[key] for key in ("estimate", "interval", "per_seed")}
            table[f"{width:g}"][label] = entry
        for kind in ("vanilla", "eot", "ensemble"):
            for protocol in PROTOCOLS:
                found = contrasts.mean_accuracy([results.r2s(width, s, protocol)["r2s_correct"][kind]
                                                 for s in results.seeds])
                table[f"{width:g}"].setdefault(f"R2S {kind}", {})[protocol] = {
                    key: found[key] for key in ("estimate", "interval", "per_seed")}
    return table


def runs_at_chance(results):
    """The runs whose search did not leave chance: the 95% Wilson interval of their natural accuracy reaches
    `CHANCE`. [{run_dir, width, seed, run, natural, interval, standard}] (standard: PGD-20 under the standard
    protocol), in plan order."""
    from rst_tf.measuring import intervals

    found = []
    for width in results.widths:
        for seed in results.seeds:
            for run in ("dense_at", *results.ratios):
                natural = contrasts.unpack(results.correct(width, seed, run, "natural"))
                low, high = intervals.wilson_interval(int(natural.sum()), natural.size)
                if low <= CHANCE:
                    robust = contrasts.unpack(results.correct(width, seed, run, "standard"))
                    found.append({"run_dir": results.run_dir(width, seed, run), "width": width, "seed": seed,
                                  "run": run, "natural": float(natural.mean()), "interval": [low, high],
                                  "standard": float(robust.mean())})
    return found


def autoattack_check(measured, reference="autoattack", fast="autoattack_fast"):
    """Per run where both were measured, the standard AutoAttack against the fast one on the images of the
    standard one (the first of the study's test set): [{run_dir, examples, standard, fast, broken_by_standard_not_fast,
    broken_by_fast_not_standard}]."""
    rows = []
    for run_dir, entries in measured["autoattack"].items():
        if reference not in entries or fast not in entries:
            continue
        standard = contrasts.unpack(entries[reference]["correct"])
        faster = contrasts.unpack(entries[fast]["correct"])[:standard.size]
        rows.append({"run_dir": run_dir, "examples": int(standard.size), "standard": float(standard.mean()),
                     "fast": float(faster.mean()),
                     "broken_by_standard_not_fast": int(((standard == 0) & (faster == 1)).sum()),
                     "broken_by_fast_not_standard": int(((faster == 0) & (standard == 1)).sum())})
    return rows


def gap_figure(results, rows, path):
    """Accuracy by width (dense AT and the RST of the claims, natural and robust) and the RST - dense AT gap with
    its 95% interval, against width on a log2 axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = results.widths
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    claimed = (results.ratio, f"RST {ratio_label(results.ratio)}", "C0")
    series = [(run, label, color, protocol, style) for run, label, color in (("dense_at", "dense AT", "black"), claimed)
              for protocol, style in (("natural", ":"), ("standard", "-"))]
    for index, (run, label, color, protocol, style) in enumerate(series):
        found = [contrasts.mean_accuracy([results.correct(w, s, run, protocol) for s in results.seeds])
                 for w in widths]
        _bars(left, _dodged(widths, index, len(series)), found, 100.0,
              f"{label} {'natural' if protocol == 'natural' else 'PGD-20'}", color, style)
    left.set_ylabel("accuracy (%)")
    left.set_title("accuracy by width (mean of seeds, 95% interval)")
    gaps = (("standard", "C0"), ("natural", "C2"), ("worst", "C3"))
    for index, (protocol, color) in enumerate(gaps):
        found = [row for row in rows if row["kind"] in ("rst_minus_dense_robust", "rst_minus_dense_natural")
                 and row["protocol"] == protocol]
        if found:
            label = {"standard": "robust (PGD-20)", "natural": "natural", "worst": "robust (worst case)"}[protocol]
            _bars(right, _dodged(widths, index, len(gaps)), found, 100.0, label, color, "-")
    right.axhline(-CLOSE_POINTS, color="gray", linestyle="--", label=f"-{CLOSE_POINTS:g} points")
    right.axhline(0, color="black", linewidth=0.5)
    right.set_ylabel("RST minus dense AT (points)")
    right.set_title("the gap against width")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [width_label(w) for w in widths])
        ax.set_xlabel("width multiplier of ResNet18")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _dodged(widths, index, count, spread=0.04):
    """`widths` moved a little apart on the log2 axis for series `index` of `count`, so error bars do not overlap."""
    return [w * 2 ** (spread * (index - (count - 1) / 2)) for w in widths]


def _bars(ax, widths, found, scale, label, color, style):
    estimates = np.array([row["estimate"] for row in found]) * scale
    low = np.array([row["interval"][0] for row in found]) * scale
    high = np.array([row["interval"][1] for row in found]) * scale
    ax.errorbar(widths, estimates, yerr=[estimates - low, high - estimates], label=label, color=color,
                linestyle=style, marker="o", capsize=3)


def _points(value, interval=None):
    text = f"{100 * value:+.1f}"
    if interval is None or any(math.isnan(v) for v in interval):
        return text
    return f"{text} [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"


def _pct(entry):
    low, high = entry["interval"]
    if math.isnan(low):
        return f"{100 * entry['estimate']:.1f}%"
    return f"{100 * entry['estimate']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def _units_text(units):
    return ", ".join(f"width {width_label(width)} seed {seed}" for width, seed in units)


def interim_lines(units):
    """The note at the top of a report of a study in progress (`units`: planned, recorded and reported
    (width, seed)s); none once every planned one is reported."""
    planned, recorded, reported = (list(map(tuple, units[key])) for key in ("planned", "recorded", "reported"))
    if reported == planned:
        return []
    widths = sorted({width for width, _ in reported})
    seeds = list(dict.fromkeys(seed for _, seed in reported))
    lines = [f"**A study in progress:** {len(recorded)} of its {len(planned)} (width, seed)s "
             f"{'is' if len(recorded) == 1 else 'are'} recorded "
             f"({_units_text(recorded)}). This report covers {len(reported)} of them, every seed at every width it "
             f"has: width{'s' if len(widths) > 1 else ''} {', '.join(map(width_label, widths))}, seed"
             f"{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}."]
    if len(seeds) < 2:
        lines[0] += " With one seed a claim has no interval and is undecided."
    if len(widths) < 2:
        lines[0] += " The trend across widths needs two widths: it is not claimed yet."
    left = [unit for unit in recorded if unit not in reported]
    if left:
        lines[0] += f" Recorded but not in this report's grid: {_units_text(left)}."
    lines[0] += (" The study continues with its command without `--report_recorded`, and its final report replaces "
                 "this one.")
    return lines + [""]


def _verdict_rows(rows, heading="claim"):
    lines = [f"| where | {heading} | rule | difference, points [95% interval] | per seed | verdict |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        per_seed = ", ".join(f"{100 * v:+.1f}" for v in row["per_seed"])
        claim = row["claim"] + (f" ({row['note']})" if row["note"] else "")
        lines.append(f"| {row['section']} | {claim} | {row['rule']} | {_points(row['estimate'], row['interval'])} "
                     f"| {per_seed} | {row['verdict']} |")
    return lines


def markdown(command, scale, rows, table, figure_file, costs, notes, checks=(), status=(), at_chance=(),
             regime=(), pilot_file=""):
    lines = ["# Robust scratch tickets against dense adversarial training as the network grows", "", *status,
             "Command:", "", "```sh", command, "```", "",
             "Scale: " + ", ".join(f"{name} {value}" for name, value in scale.items()) + ".", ""]
    lines += notes + ["", "## Claims", "", report.verdict_counts(rows), "", *_verdict_rows(rows)]
    if regime:
        lines += ["", "## The regime", "",
                  "Whether this regime can show over-parameterisation at all, on the study's own runs: dense AT must "
                  "leave chance at the narrowest and at the widest width and gain from width. These are checks of "
                  "the study, not claims of the paper; where they fail, a trend of the gap says little about width."
                  + (f" The pilot that chose the regime, with its evidence: [{os.path.basename(pilot_file)}]"
                     f"({pilot_file})." if pilot_file else ""), "", *_verdict_rows(regime, "check")]
    lines += ["", "## Accuracy by width (mean of the seeds [95% interval])", ""]
    columns = ["natural", "standard", "paper", "worst"]
    titles = {"natural": "natural", "standard": "PGD-20 standard", "paper": "PGD-20 paper",
              "worst": "worst case (PGD both protocols, + AutoAttack where measured)"}
    lines += ["| width | model | " + " | ".join(titles[c] for c in columns) + " |", "|---|---|" + "---|" * len(columns)]
    for width, models in table.items():
        for label, entry in models.items():
            cells = [_pct(entry[c]) if c in entry else "-" for c in columns]
            lines.append(f"| {width_label(float(width))} | {label} | " + " | ".join(cells) + " |")
    lines += ["", f"![RST minus dense AT against width]({figure_file})", ""]
    if at_chance:
        lines += ["## Runs that did not leave chance", "",
                  f"The natural accuracy of these runs is within sampling error of chance ({100 * CHANCE:g}%): their "
                  "search did not learn. They stay in the study as the method produced them, in their seed's means "
                  "and, for an RST, in its seed's R2S pool.", "",
                  "| run | natural [95% interval] | PGD-20 standard |", "|---|---|---|"]
        lines += [f"| {row['run_dir']} | {100 * row['natural']:.1f}% [{100 * row['interval'][0]:.1f}, "
                  f"{100 * row['interval'][1]:.1f}] | {100 * row['standard']:.1f}% |" for row in at_chance]
        lines.append("")
    if checks:
        lines += ["## The fast AutoAttack against the standard one", "",
                  "| run | images | standard | fast | broken by standard, not fast | broken by fast, not standard |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {row['run_dir']} | {row['examples']} | {100 * row['standard']:.1f}% | {100 * row['fast']:.1f}% "
                  f"| {row['broken_by_standard_not_fast']} | {row['broken_by_fast_not_standard']} |" for row in checks]
        lines.append("")
    if costs["runs"]:
        minutes = lambda value: "-" if value is None else f"{value:.1f}"  # noqa: E731
        machines = machine_keys(costs["runs"])
        lines += ["## Run times", "",
                  "Training: wall and process CPU minutes of the call that finished each run (resumed: it continued "
                  "a run an earlier call had started, whose time is not counted), its TensorFlow threads and the "
                  "machine it ran on. Evaluation: wall minutes of PGD-20 under both protocols on every test image, "
                  "CPU minutes of each AutoAttack and R2S, on the machine that measured its (width, seed). "
                  "Machines differ in speed by several times: compare times on one machine. " + costs_text(costs),
                  ""]
        if machines:
            lines += ["Machines (fp32 peak: a 4096x4096 TensorFlow matmul at the end of a run, on its threads, or "
                      "when a (width, seed) was recorded, on all of them): " + machine_legend(costs["runs"], machines)
                      + ".", ""]
        lines += ["| run | wall min | CPU min | resumed | threads | trained on | PGD wall min | AutoAttack CPU min "
                  "| measured on |", "|---|---|---|---|---|---|---|---|---|"]
        for row in costs["runs"]:
            resumed = {None: "-", True: "yes", False: "no"}[row["resumed"]]
            autoattack = ", ".join(f"{name} {value:.1f}" for name, value in row["autoattack_cpu_minutes"].items())
            lines.append(f"| {row['run_dir']} | {minutes(row['wall_minutes'])} | {minutes(row['cpu_minutes'])} | "
                         f"{resumed} | {report.threads_text(row['threads'])} | "
                         f"{machines.get(row['trained_on'], '-')} | {minutes(row['pgd_wall_minutes'])} | "
                         f"{autoattack or '-'} | {machines.get(row['measured_on'], '-')} |")
        lines.append("")
    return "\n".join(lines)


def cost_rows(results, times, measured_on=None):
    """The study's cost, run by run in plan order: {runs: [{run_dir, wall_minutes, cpu_minutes, resumed, threads,
    trained_on, measured_on, pgd_wall_minutes, autoattack_cpu_minutes: {attack: minutes}}], training_cpu_minutes,
    resumed_runs, untimed_runs, pgd_wall_minutes, autoattack_cpu_minutes, r2s_cpu_minutes (over the R2S
    measurements that were timed: r2s_timed of r2s_measurements)}. Training figures are those of `times`
    (run_times.json), None where a run has none; `trained_on` the machine its time records (`machine.identity`)
    and `trained_peak` its fp32 peak then, `measured_on` and `measured_peak` those of its (width, seed) in
    `measured_on` ({(width, seed): `machine.describe` result, or a text}), else None."""
    from rst_tf.measuring import machine

    rows = []
    for width in results.widths:
        for seed in results.seeds:
            for run in ("dense_at", *results.ratios):
                run_dir = results.run_dir(width, seed, run)
                found = times.get(run_dir, {})
                measuring = (measured_on or {}).get((width, seed))
                pgd = [results.measured["evaluation"][p].get(run_dir, {}).get("seconds") for p in PROTOCOLS]
                rows.append({
                    "run_dir": run_dir,
                    "wall_minutes": found["wall_seconds"] / 60 if "wall_seconds" in found else None,
                    "cpu_minutes": found["cpu_seconds"] / 60 if "cpu_seconds" in found else None,
                    "resumed": found.get("resumed"), "threads": found.get("threads"),
                    "trained_on": machine.identity(found["machine"]) if found.get("machine") else None,
                    "trained_peak": machine.peak_of(found["machine"]) if found.get("machine") else None,
                    "measured_on": machine.identity(measuring) if measuring else None,
                    "measured_peak": machine.peak_of(measuring) if measuring else None,
                    "pgd_wall_minutes": sum(pgd) / 60 if None not in pgd else None,
                    "autoattack_cpu_minutes": {name: entry["cpu_seconds"] / 60 for name, entry in sorted(
                        results.measured["autoattack"].get(run_dir, {}).items()) if "cpu_seconds" in entry}})
    total = lambda key: sum(row[key] or 0.0 for row in rows)  # noqa: E731
    r2s = [results.r2s(width, seed, protocol).get("cpu_seconds") for width in results.widths
           for seed in results.seeds for protocol in PROTOCOLS]
    return {"runs": rows, "training_cpu_minutes": total("cpu_minutes"),
            "r2s_cpu_minutes": sum(value or 0.0 for value in r2s) / 60,
            "r2s_timed": sum(value is not None for value in r2s), "r2s_measurements": len(r2s),
            "resumed_runs": sum(bool(row["resumed"]) for row in rows),
            "untimed_runs": sum(row["cpu_minutes"] is None for row in rows),
            "pgd_wall_minutes": total("pgd_wall_minutes"),
            "autoattack_cpu_minutes": sum(sum(row["autoattack_cpu_minutes"].values()) for row in rows)}


def machine_keys(rows):
    """{machine: "A", "B", ...} in the order the cost rows first name them (trained on, then measured on)."""
    texts = [text for row in rows for text in (row["trained_on"], row["measured_on"]) if text]
    return {text: chr(ord("A") + index) for index, text in enumerate(dict.fromkeys(texts))}


def machine_legend(rows, machines):
    """"A: AMD EPYC (AVX-512), 2 CPUs (fp32 matmul 95 to 101 GFLOP/s at the end of its runs, 190 when it recorded)"
    for each machine of `machine_keys`."""
    def span(values):
        values = sorted(value for value in values if value)
        if not values:
            return ""
        low, high = round(values[0]), round(values[-1])
        return f"{low}" if low == high else f"{low} to {high}"

    parts = []
    for text, key in machines.items():
        peaks = [f"{span(row['trained_peak'] for row in rows if row['trained_on'] == text)} GFLOP/s at the end "
                 "of its runs", f"{span(row['measured_peak'] for row in rows if row['measured_on'] == text)} "
                 "GFLOP/s when it recorded a (width, seed)"]
        peaks = [peak for peak in peaks if not peak.startswith(" ")]
        parts.append(f"{key}: {text}" + (f" (fp32 matmul {'; '.join(peaks)})" if peaks else ""))
    return "; ".join(parts)


def costs_text(costs):
    text = (f"In all: training {costs['training_cpu_minutes']:.0f} CPU minutes over {len(costs['runs'])} runs")
    gaps = [f"{costs['resumed_runs']} resumed" if costs["resumed_runs"] else "",
            f"{costs['untimed_runs']} not timed" if costs["untimed_runs"] else ""]
    gaps = [gap for gap in gaps if gap]
    if gaps:
        text += f" ({', '.join(gaps)}: their time is counted in part or not at all)"
    text += (f", PGD evaluation {costs['pgd_wall_minutes']:.0f} wall minutes, AutoAttack "
             f"{costs['autoattack_cpu_minutes']:.0f} CPU minutes")
    if not costs["r2s_timed"]:
        return text + "; R2S is not timed."
    untimed = costs["r2s_measurements"] - costs["r2s_timed"]
    return text + (f", R2S {costs['r2s_cpu_minutes']:.0f} CPU minutes" + (
        f" ({untimed} of its {costs['r2s_measurements']} measurements, one per (width, seed) and protocol, not "
        "timed)" if untimed else "") + ".")


def write(planned, measured, times, config, report_path, command, epsilon, test_examples, units=None,
          measured_on=None, pilot_path=""):
    """The report at `report_path`, its figure in <report>_figures/gap.png, and <report>.json (widths, seeds,
    test_examples, claims: [{claim, estimate, interval, verdict, ...}], regime (`regime_checks`, same fields),
    accuracy, scale). `units` ({planned, recorded, reported: [(width, seed)]}, default: `planned`'s, all of them)
    says how much of the study the report covers; the JSON's `complete` is whether it covers every planned (width,
    seed). `measured_on` ({(width, seed): machine text}, from the records) names the machine that measured each
    (width, seed). `pilot_path`, if given, is the pilot's report, linked from the regime's section."""
    from rst_tf.training import run_dir as run_files

    results = Measured(planned, measured, epsilon)
    rows = claims(results)
    table = accuracy_table(results)
    stem = os.path.splitext(report_path)[0]
    figure_path = gap_figure(results, rows, os.path.join(stem + "_figures", "gap.png"))
    relative = os.path.relpath(figure_path, os.path.dirname(os.path.abspath(report_path)) or ".")
    scale = {"network": f"{config.network} at widths " + ", ".join(map(width_label, results.widths)),
             "train images": config.train_examples, "validation images": config.validation_examples,
             "epochs": config.epochs, "batch size": config.batch_size,
             "search attack": f"{config.attack}-{config.attack_steps} at {round(config.epsilon * 255, 2):g}/255",
             "remaining ratios": ", ".join(map(ratio_label, results.ratios)),
             "seeds": ", ".join(map(str, results.seeds)), "test images": test_examples}
    notes = [
        f"Robust accuracy: PGD-20 at {epsilon:g}/255 of each run's best checkpoint (validation PGD accuracy on "
        "held-out training images), on one test set shared by every run and seed; an example counts as robust only "
        "if its clean image is classified correctly too. Protocols: " + "; ".join(
            f"{name}: {text}" for name, text in PROTOCOL_TEXT.items()) + ". The worst case counts an example as "
        "robust only if it survives every attack measured on it.",
        "",
        "R2S: one ticket per sample drawn uniformly from the RSTs of one random network, attacked by the vanilla "
        "attack (a fresh draw per attack step), by EOT (the loss averaged over every ticket) and by the Ensemble "
        f"attack (the averaged logits). Under the paper protocol {PAPER_PROTOCOL_NOTE}: its R2S verdicts are given "
        "under the standard protocol as well.",
        "",
        "Verdicts: each claim is a difference formed per seed from per-example results on the shared test images. "
        "Its 95% interval adds the seeds' disagreement (Student t at S - 1 degrees of freedom) and test-set sampling "
        "in quadrature (`contrasts.contrast`); a trend is the least-squares slope against log2(width) formed per "
        "seed, so the seeds are its replicates. \"holds\": the interval lies on the claim's side of its margin; "
        "\"does not hold\": wholly on the other side; else \"undecided at this scale\"."]
    checks = autoattack_check(measured)
    r2s_examples = sorted({len(r2s_of_seed["r2s_correct"]["vanilla"]) for r2s_of_seed in measured["r2s"].values()})
    if r2s_examples and r2s_examples != [test_examples]:
        scale["R2S test images"] = ", ".join(map(str, r2s_examples)) + " (the first of the test images)"
        notes += ["", "R2S is measured on the first test images only (above); every claim that involves it pairs it "
                  "with the other runs' results on those same images."]
    units = units or dict.fromkeys(("planned", "recorded", "reported"), list(planned))
    units = {key: [[width, seed] for width, seed in value] for key, value in units.items()}
    costs = cost_rows(results, times, measured_on)
    at_chance = runs_at_chance(results)
    regime = regime_checks(results)
    pilot_file = os.path.relpath(pilot_path, os.path.dirname(os.path.abspath(report_path))) if pilot_path else ""
    text = markdown(command, scale, rows, table, relative, costs, notes, checks, interim_lines(units), at_chance,
                    regime, pilot_file)
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    run_files.write_text(report_path, text)
    found = {"command": command, "widths": results.widths, "seeds": results.seeds, "test_examples": test_examples,
             "epsilon": epsilon, "remaining_ratios": list(results.ratios), "claim_ratio": results.ratio,
             "complete": units["reported"] == units["planned"], "units": units, "scale": scale, "claims": rows,
             "regime": regime,
             "accuracy": table, "autoattack_check": checks, "runs_at_chance": at_chance, "run_times": times,
             "costs": costs}
    run_files.write_json(stem + ".json", found)
    return found
