"""A robustness evaluation of search runs, as bin/evaluate writes it: eval.json, eval.md and PNG plots.

    request = report.Request(run_dirs=["runs/quick_rst"], output_dir="runs/quick_rst/eval", attacks=("pgd",))
    result = report.evaluate_and_write(request)

Every accuracy is honest (an example counts only if its clean image is classified correctly too) and is written
with its 95% Wilson interval for the number of test images.
"""
import dataclasses
import os
import time

from rst_tf.measuring import intervals
from rst_tf.reports import features, masks, plots, runs, sanity, suite, threats, transfer
from rst_tf.training import run_dir as run_folder


@dataclasses.dataclass(frozen=True)
class Request:
    """What to evaluate and how. Epsilons: L-inf in /255 units, L2 in [0, 1] pixels."""
    run_dirs: tuple
    output_dir: str
    checkpoint: str = "best"
    attacks: tuple = ("pgd",)
    epsilons: tuple = (8.0,)
    l2_epsilons: tuple = (0.5,)
    settings: suite.AttackSettings = suite.AttackSettings()
    sanity_probes: bool = True
    reference_epsilon: float = 8.0
    num_examples: int = 0
    batch_size: int = 200
    seed: int = 0
    data_dir: str = ""
    transfer: bool = False
    feature_distance: bool = False
    mask_analysis: bool = False
    progress: bool = False
    command: str = ""
    flags: dict = dataclasses.field(default_factory=dict)


def _strip_correct(result):
    """A copy of an evaluate_attacks result without per-example lists (for probes, kept short in eval.json)."""
    return {key: value for key, value in result.items() if key != "correct"}


def _robust_point(result, reference):
    """The worst case of the L-inf threat nearest `reference` (or over every attack): an accuracy record."""
    threats = [t for t in result["worst_case_by_threat"] if t["norm"] == "Linf"]
    chosen = min(threats, key=lambda t: abs(t["epsilon"] - reference)) if threats else result["worst_case"]
    return dict(_strip_correct(chosen), epsilon=reference)


def evaluate_runs(loaded_runs, batches, configs, probes, transfer_config, request, log=print):
    """Evaluate every run (attacks, probes, sanity checks), then transfer and feature distance if requested.

    Returns (report, figures): the report's runs, transfer, feature_distance and warnings; figures maps each PNG
    file name to a function drawing it at a path.
    """
    names = runs.run_names([run_dir for run_dir, _, _ in loaded_runs])
    reference = transfer_config.epsilon
    report = {"runs": [], "transfer": None, "feature_distance": None, "mask_analysis": None, "warnings": []}
    figures = {}
    for name, (run_dir, network, config) in zip(names, loaded_runs):
        run_log = lambda line, name=name: log(f"[{name}] {line}")  # noqa: E731
        start = time.time()
        result = suite.evaluate_attacks(network, batches, configs, request.seed, log=run_log,
                                        progress=request.progress)
        probe_results = []
        if probes:
            run_log("sanity probes")
            probe_results = suite.evaluate_attacks(network, batches, probes, request.seed, log=run_log,
                                                   natural=result["natural"]["correct"])["attacks"]
        checks = sanity.sanity_checks(result["attacks"] + probe_results, result["natural"]["accuracy"])
        entry = {"name": name, "run_dir": run_dir, "checkpoint": request.checkpoint, "network": config.network,
                 "mode": config.mode, "remaining_ratio": config.remaining_ratio, "train_epsilon": config.epsilon,
                 "natural": result["natural"], "attacks": result["attacks"], "worst_case": result["worst_case"],
                 "worst_case_by_threat": result["worst_case_by_threat"],
                 "sanity_probes": [_strip_correct(p) for p in probe_results], "sanity_checks": checks,
                 "robust_accuracy": _robust_point(result, reference), "seconds": time.time() - start}
        report["runs"].append(entry)
        report["warnings"] += [f"[{name}] {line}" for line in sanity.masking_warnings(checks)]
        run_log(f"natural {result['natural']['accuracy']:.4f}, worst case {result['worst_case']['accuracy']:.4f}, "
                f"{sum(not c['passed'] for c in checks)} of {len(checks)} sanity checks failed")
        figures[f"accuracy_vs_epsilon_{name}.png"] = lambda path, entry=entry: plots.accuracy_vs_epsilon(
            entry["attacks"], path, natural_accuracy=entry["natural"]["accuracy"], title=entry["name"])

    networks_by_name = {name: network for name, (_, network, _) in zip(names, loaded_runs)}
    if request.transfer:
        label = threats.attack_label(transfer_config)
        log(f"transfer: {label} between {len(names)} runs")
        matrix = transfer.transfer_matrix(networks_by_name, batches, transfer_config, request.seed)
        checks = sanity.sanity_checks([], transfer=matrix)
        report["transfer"] = dict(matrix, label=label, sanity_checks=checks)
        report["warnings"] += sanity.masking_warnings(checks)
        figures["transfer_matrix.png"] = lambda path: plots.transfer_heatmap(matrix, path, title=f"transfer {label}")
    if request.feature_distance:
        log(f"feature distance: uniform noise of {reference * 255:g}/255")
        distances = features.feature_distance(networks_by_name, batches, reference, request.seed)
        report["feature_distance"] = {"epsilon": reference, "distance": distances}
        figures["feature_distance.png"] = lambda path: plots.feature_distance_bars(distances, path, reference)
    if request.mask_analysis:
        log(f"mask analysis of {len(names)} tickets")
        analysis = masks.mask_analysis(networks_by_name, report["transfer"])
        report["mask_analysis"] = analysis
        figures["mask_overlap.png"] = lambda path: plots.mask_overlap_heatmap(analysis, path)
    if len(loaded_runs) >= 2:
        figures["accuracy_vs_remaining_ratio.png"] = _ratio_figure(report["runs"], reference)
    return report, figures


def _ratio_figure(entries, reference):
    series, dense = {}, None
    for entry in entries:
        point = {"remaining_ratio": entry["remaining_ratio"], "natural": entry["natural"]["accuracy"],
                 "robust": entry["robust_accuracy"]["accuracy"]}
        if entry["mode"] in ("dense_at", "natural"):
            dense = dense or {"natural": point["natural"], "robust": point["robust"]}
        else:
            series.setdefault(f"{entry['network']} {entry['mode']}", []).append(point)
    title = f"accuracy vs remaining ratio (robust: worst case at {reference * 255:g}/255)"
    return lambda path: plots.accuracy_vs_remaining_ratio(series, path, dense=dense, title=title)


def _accuracy(record, bold=False):
    text = intervals.format_accuracy(record["accuracy"], record["num_examples"], digits=2)
    return f"**{text}**" if bold else text


def _epsilon(result):
    return threats.epsilon_label(result["norm"], result["epsilon"])


def markdown(report):
    """eval.md: the command, warnings, per-run tables with intervals and sanity checks, transfer, features, plots."""
    lines = ["# Robustness evaluation", "", "Command:", "", "```", report["command"], "```", "",
             f"{report['num_examples']} test images of {report['dataset']}, checkpoint `{report['checkpoint']}`, "
             f"seed {report['seed']}, PGD protocol `{report['pgd_protocol']}`. An example counts as robust only if "
             "its clean image is classified correctly too; [low, high] is the 95% Wilson interval.", ""]
    if report["warnings"]:
        lines += ["## GRADIENT MASKING WARNINGS", ""] + [f"- **{line}**" for line in report["warnings"]] + [""]
    else:
        lines += ["All sanity checks passed.", ""]
    for entry in report["runs"]:
        lines += [f"## {entry['name']}", "",
                  f"`{entry['run_dir']}`: {entry['network']}, mode {entry['mode']}, remaining ratio "
                  f"{entry['remaining_ratio']:g}.", "",
                  "| attack | norm | epsilon | accuracy |", "|---|---|---|---|",
                  f"| natural | | | {_accuracy(entry['natural'])} |"]
        for result in entry["attacks"]:
            lines.append(f"| {result['label']} | {result['norm']} | {_epsilon(result)} | {_accuracy(result)} |")
        for threat in entry["worst_case_by_threat"]:
            lines.append(f"| **worst case** ({len(threat['attacks'])} attacks) | {threat['norm']} | "
                         f"{_epsilon(threat)} | {_accuracy(threat, bold=True)} |")
        lines.append(f"| **worst case, all attacks** | | | {_accuracy(entry['worst_case'], bold=True)} |")
        lines += ["", "Sanity checks:", "", "| check | passed | detail |", "|---|---|---|"]
        lines += [f"| {c['check']} | {'yes' if c['passed'] else '**NO**'} | {c['detail']} |"
                  for c in entry["sanity_checks"]]
        lines.append("")
    if report["transfer"]:
        matrix = report["transfer"]
        lines += ["## Transfer attacks", "", f"Attack: {matrix['label']}; rows: source (attacked) model, columns: "
                  "evaluated model; the diagonal is white-box.", "",
                  "| source \\ target | " + " | ".join(matrix["names"]) + " |", "|---|" + "---|" * len(matrix["names"])]
        for name, row in zip(matrix["names"], matrix["accuracy"]):
            lines.append(f"| {name} | " + " | ".join(
                intervals.format_accuracy(value, matrix["num_examples"], digits=2) for value in row) + " |")
        lines.append("")
    if report["feature_distance"]:
        feature = report["feature_distance"]
        lines += ["## Feature distance", "",
                  f"||f(x) - f(x+u)|| / ||f(x)|| of the last conv features, u uniform in "
                  f"+-{feature['epsilon'] * 255:g}/255.", "", "| run | distance |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in feature["distance"].items()] + [""]
    if report.get("mask_analysis"):
        lines += _mask_lines(report["mask_analysis"])
    lines += ["## Plots", ""] + [f"- ![{name}]({name})" for name in report["plots"]] + [""]
    return "\n".join(lines)


def _mask_lines(analysis):
    names = analysis["names"]
    lines = ["## Mask analysis", "", "Overall Jaccard overlap / Hamming distance of the kept weights (every masked "
             "layer pooled):", "", "| ticket | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, jaccard, hamming in zip(names, analysis["jaccard"]["overall"], analysis["hamming"]["overall"]):
        lines.append(f"| {name} | " + " | ".join(f"{j:.3f} / {h:.3f}" for j, h in zip(jaccard, hamming)) + " |")
    lines += ["", "| ticket | kept weights among the largest-\\|weight\\| positions | chance |", "|---|---|---|"]
    lines += [f"| {name} | {value['overall']:.3f} | {value['chance']:.3f} |"
              for name, value in analysis["magnitude_overlap"].items()]
    correlation = analysis["transfer_correlation"]
    if correlation is not None:
        lines += ["", f"Correlation of off-diagonal Jaccard overlap with transfer accuracy: {correlation:+.3f}."]
    return lines + [""]


def evaluate_and_write(request, log=print):
    """Load the runs and test images, evaluate, and write eval.json, eval.md and the plots to the output folder
    (created only once everything is measured). Returns the report. Bad input raises ValueError or
    FileNotFoundError before anything is written."""
    configs, probes, transfer_config = suite.attack_suite(
        request.attacks, [e / 255 for e in request.epsilons], list(request.l2_epsilons), request.settings,
        request.reference_epsilon / 255, request.sanity_probes)
    loaded = runs.load_runs(request.run_dirs, request.checkpoint)
    config = loaded[0][2]
    batches = runs.test_batches(config.dataset, request.data_dir or config.data_dir, request.num_examples,
                                request.batch_size, request.seed, config.class_subset)
    measured, figures = evaluate_runs(loaded, batches, configs, probes, transfer_config, request, log)
    report = {"command": request.command, "dataset": config.dataset,
              "num_examples": sum(int(labels.shape[0]) for _, labels in batches), "seed": request.seed,
              "checkpoint": request.checkpoint, "pgd_protocol": request.settings.pgd_protocol, "flags": request.flags,
              **measured, "plots": sorted(figures)}
    os.makedirs(request.output_dir, exist_ok=True)
    for name, draw in figures.items():
        draw(os.path.join(request.output_dir, name))
    run_folder.write_text(os.path.join(request.output_dir, "eval.md"), markdown(report))
    run_folder.write_json(os.path.join(request.output_dir, "eval.json"), report, indent=1)
    for line in report["warnings"]:
        log(line)
    return report
