"""Evaluate the robustness of searched networks: many attacks and budgets, the per-example worst case, sanity checks
against gradient masking, and optionally transfer attacks between runs and feature distances under random noise.

    python bin/evaluate.py --flagfile=flags/evaluate/quick.cfg --output_dir=runs/quick_rst/eval
    python bin/evaluate.py --run_dir=runs/rst,runs/dense --attacks=pgd,cw_inf,bandits --transfer \
        --feature_distance --output_dir=runs/compare

Writes eval.json (every attack with its full config, accuracies, the per-example worst case, sanity checks),
eval.md (tables, warnings and the command line) and PNG plots to --output_dir. Nothing is written on bad input.
"""
import dataclasses
import json
import math
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from bin import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("run_dir", [], "Search run folders (bin/search --output_dir), comma-separated.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint of each run to evaluate.")
flags.DEFINE_list("attacks", ["pgd"], "Attacks: pgd, cw_inf, fgsm, fgsm_rs, bandits, autoattack, fab_t, apgd_ce, "
                  "apgd_dlr, autoattack_rand (L-inf budgets from --epsilons); pgd_l2, cw_l2 (L2 budgets from "
                  "--l2_epsilons).")
flags.DEFINE_list("epsilons", ["2", "4", "8", "12", "16"], "L-inf budgets in units of 1/255.")
flags.DEFINE_list("l2_epsilons", ["0.5", "1.71", "2.0"], "L2 budgets (pixels in [0, 1]).")
flags.DEFINE_integer("steps", 20, "Iterations of pgd, cw_inf and pgd_l2.")
flags.DEFINE_float("step_size_ratio", 0.25, "Step size of pgd, cw_inf and pgd_l2 as a fraction of epsilon.")
flags.DEFINE_integer("restarts", 1, "Random restarts of pgd, cw_inf and pgd_l2.")
flags.DEFINE_integer("bandits_queries", 10_000, "Query budget per example of bandits.")
flags.DEFINE_integer("autoattack_steps", 100, "APGD and FAB iterations of autoattack, fab_t, autoattack_rand, apgd_ce "
                     "and apgd_dlr (standard: 100).")
flags.DEFINE_integer("autoattack_queries", 5000, "Square Attack queries of autoattack (standard: 5000).")
flags.DEFINE_integer("eot_draws", 20, "Model calls averaged per gradient (EOT) by autoattack_rand, apgd_ce and "
                     "apgd_dlr (AutoAttack rand: 20; 1 suffices for a deterministic network).")
flags.DEFINE_integer("cw_l2_steps", 1000, "Adam iterations per binary-search step of cw_l2.")
flags.DEFINE_integer("cw_l2_binary_search_steps", 5, "Binary-search steps of cw_l2.")
flags.DEFINE_bool("sanity_probes", True, "Also run PGD at 64/255 and PGD with twice the steps at the reference "
                  "epsilon, for the sanity checks (not part of the worst case).")
flags.DEFINE_float("reference_epsilon", 8, "L-inf budget (1/255 units) of the probes, the transfer attack, the "
                   "feature-distance noise and the robust accuracy of the remaining-ratio plot.")
flags.DEFINE_integer("num_examples", 0, "Evaluate on this many test images (a seeded subset; 0: all).")
flags.DEFINE_integer("batch_size", 200, "Evaluation batch size.")
flags.DEFINE_integer("seed", 0, "Seeds the test subset, the attacks' random starts and the noise.")
flags.DEFINE_string("data_dir", os.environ.get("RST_TF_DATA_DIR", ""),
                    "Where the test images are (as bin/search's --data_dir); empty: the runs' own data_dir. "
                    "Default: $RST_TF_DATA_DIR.")
flags.DEFINE_string("output_dir", None, "Where eval.json, eval.md and the plots go.")
flags.DEFINE_bool("transfer", False, "With two or more runs: transfer PGD between every pair (rows: source).")
flags.DEFINE_bool("feature_distance", False, "Relative distance of the last conv features under uniform noise.")

L2_ATTACKS = ("pgd_l2", "cw_l2")
LINF_ATTACKS = ("pgd", "cw_inf", "fgsm", "fgsm_rs", "bandits", "autoattack", "fab_t", "apgd_ce", "apgd_dlr",
                "autoattack_rand")
LARGE_EPSILON = 64  # /255


def _numbers(flag, values, upper):
    parsed = []
    for value in values:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not (math.isfinite(number) and 0 < number <= upper):
            common.fail(f"--{flag} must be numbers in (0, {upper:g}], got {value!r}")
        parsed.append(number)
    return parsed


def _positive(*names):
    for name in names:
        if FLAGS[name].value < 1:
            common.fail(f"--{name} must be at least 1, got {FLAGS[name].value}")


def check_flags():
    """Reject bad input with one `error:` line and exit status 2, before anything heavy is imported."""
    for run_dir in FLAGS.run_dir:
        if not os.path.isdir(run_dir):
            common.fail(f"--run_dir {run_dir} is not a folder")
    unknown = [name for name in FLAGS.attacks if name not in LINF_ATTACKS + L2_ATTACKS]
    if unknown or not FLAGS.attacks:
        common.fail(f"unknown attack {unknown[0] if unknown else ''!r}; --attacks takes "
                    f"{', '.join(LINF_ATTACKS + L2_ATTACKS)}")
    _numbers("epsilons", FLAGS.epsilons, 255)
    _numbers("l2_epsilons", FLAGS.l2_epsilons, 1e6)
    _numbers("reference_epsilon", [FLAGS.reference_epsilon], 255)
    _positive("steps", "restarts", "bandits_queries", "autoattack_steps", "autoattack_queries", "eot_draws",
              "cw_l2_steps", "cw_l2_binary_search_steps", "batch_size")
    if not 0 < FLAGS.step_size_ratio <= 1:
        common.fail(f"--step_size_ratio must be in (0, 1], got {FLAGS.step_size_ratio}")
    if FLAGS.num_examples < 0:
        common.fail(f"--num_examples must be >= 0, got {FLAGS.num_examples}")
    if FLAGS.transfer and len(FLAGS.run_dir) < 2:
        common.fail("--transfer needs at least two --run_dir")
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        common.fail(f"--data_dir {FLAGS.data_dir} is not a folder")


def attack_configs():
    """The requested attacks (`check_flags` has checked the flags), the sanity probes and the transfer attack."""
    from rst_tf import attacks

    linf = [e / 255 for e in _numbers("epsilons", FLAGS.epsilons, 255)]
    l2 = _numbers("l2_epsilons", FLAGS.l2_epsilons, 1e6)

    def pgd_like(name, epsilon, steps=None):
        return attacks.AttackConfig(name=name, epsilon=epsilon, steps=steps or FLAGS.steps,
                                    step_size=FLAGS.step_size_ratio * epsilon, restarts=FLAGS.restarts)

    def make(name, epsilon):
        if name in ("pgd", "cw_inf", "pgd_l2"):
            return pgd_like(name, epsilon)
        if name == "fgsm":
            return attacks.AttackConfig(name="fgsm", epsilon=epsilon)
        if name == "fgsm_rs":
            return attacks.fgsm_rs_config(epsilon)
        if name == "bandits":
            return attacks.bandits_config(epsilon, max_queries=FLAGS.bandits_queries)
        if name == "autoattack":
            config = attacks.autoattack_config(epsilon)
            return dataclasses.replace(config, steps=FLAGS.autoattack_steps, max_queries=FLAGS.autoattack_queries)
        if name == "fab_t":
            return dataclasses.replace(attacks.fab_t_config(epsilon), steps=FLAGS.autoattack_steps)
        if name in ("apgd_ce", "apgd_dlr", "autoattack_rand"):
            config = attacks.autoattack_rand_config(epsilon, eot_draws=FLAGS.eot_draws)
            return dataclasses.replace(config, name=name, steps=FLAGS.autoattack_steps)
        return attacks.cw_l2_config(epsilon, steps=FLAGS.cw_l2_steps,
                                    binary_search_steps=FLAGS.cw_l2_binary_search_steps)

    configs = [make(name, epsilon) for name in FLAGS.attacks for epsilon in (l2 if name in L2_ATTACKS else linf)]
    reference = FLAGS.reference_epsilon / 255
    probes = []
    if FLAGS.sanity_probes:
        probes = [pgd_like("pgd", LARGE_EPSILON / 255), pgd_like("pgd", reference, steps=2 * FLAGS.steps)]
        probes = [probe for probe in probes if probe not in configs]
    for config in configs + probes:
        config.validate()
    return configs, probes, pgd_like("pgd", reference)


def _run_names(run_dirs):
    names = []
    for run_dir in run_dirs:
        base = os.path.basename(os.path.normpath(run_dir)) or run_dir
        name, index = base, 2
        while name in names:
            name, index = f"{base}_{index}", index + 1
        names.append(name)
    return names


def load_runs_and_data():
    """Every run's network and config, and the test batches (the same examples for every run)."""
    from rst_tf import data, trainer

    runs = []
    for run_dir in FLAGS.run_dir:
        network, config = trainer.load_run(run_dir, FLAGS.checkpoint)
        runs.append((run_dir, network, config))
    datasets = {(config.dataset, tuple(config.class_subset)) for _, _, config in runs}
    if len(datasets) > 1:
        common.fail(f"the runs use different datasets or class subsets: {sorted(datasets)}")
    config = runs[0][2]
    data_dir = FLAGS.data_dir or config.data_dir
    if data_dir and not os.path.isdir(data_dir):
        common.fail(f"--data_dir {data_dir} is not a folder")
    splits = data.load_splits(config.dataset, data_dir or None, test_examples=FLAGS.num_examples or None,
                              class_subset=tuple(config.class_subset) or None, seed=FLAGS.seed)
    batches = list(data.eval_batches(splits.test, FLAGS.batch_size))
    return runs, batches


def _strip_correct(result):
    """A copy of an evaluate_attacks result without per-example lists (for probes, kept short in eval.json)."""
    return {key: value for key, value in result.items() if key != "correct"}


def _robust_point(result, reference):
    threats = [t for t in result["worst_case_by_threat"] if t["norm"] == "Linf"]
    if threats:
        closest = min(threats, key=lambda t: abs(t["epsilon"] - reference))
        return closest["accuracy"], closest["attacks"]
    return result["worst_case"]["accuracy"], result["worst_case"]["attacks"]


def evaluate_all(runs, batches, configs, probes, transfer_config):
    from rst_tf import plots, robustness

    names = _run_names([run_dir for run_dir, _, _ in runs])
    reference = transfer_config.epsilon
    report = {"runs": [], "transfer": None, "feature_distance": None, "warnings": []}
    figures = {}
    for name, (run_dir, network, config) in zip(names, runs):
        log = lambda line, name=name: print(f"[{name}] {line}", flush=True)
        start = time.time()
        result = robustness.evaluate_attacks(network, batches, configs, FLAGS.seed, log=log)
        probe_results = []
        if probes:
            log("sanity probes")
            probe_results = robustness.evaluate_attacks(
                network, batches, probes, FLAGS.seed, log=log, natural=result["natural"]["correct"])["attacks"]
        checks = robustness.sanity_checks(result["attacks"] + probe_results, result["natural"]["accuracy"])
        robust, robust_attacks = _robust_point(result, reference)
        entry = {"name": name, "run_dir": run_dir, "checkpoint": FLAGS.checkpoint, "network": config.network,
                 "mode": config.mode, "remaining_ratio": config.remaining_ratio, "train_epsilon": config.epsilon,
                 "natural": result["natural"], "attacks": result["attacks"], "worst_case": result["worst_case"],
                 "worst_case_by_threat": result["worst_case_by_threat"],
                 "sanity_probes": [_strip_correct(p) for p in probe_results], "sanity_checks": checks,
                 "robust_accuracy": {"epsilon": reference, "accuracy": robust, "attacks": robust_attacks},
                 "seconds": time.time() - start}
        report["runs"].append(entry)
        report["warnings"] += [f"[{name}] {line}" for line in robustness.masking_warnings(checks)]
        log(f"natural {result['natural']['accuracy']:.4f}, worst case {result['worst_case']['accuracy']:.4f}, "
            f"{sum(not c['passed'] for c in checks)} of {len(checks)} sanity checks failed")
        figures[f"accuracy_vs_epsilon_{name}.png"] = lambda path, entry=entry: plots.accuracy_vs_epsilon(
            entry["attacks"], path, natural_accuracy=entry["natural"]["accuracy"], title=entry["name"])

    networks_by_name = {name: network for name, (_, network, _) in zip(names, runs)}
    if FLAGS.transfer:
        print(f"transfer: {robustness.attack_label(transfer_config)} between {len(names)} runs", flush=True)
        matrix = robustness.transfer_matrix(networks_by_name, batches, transfer_config, FLAGS.seed)
        checks = robustness.sanity_checks([], transfer=matrix)
        report["transfer"] = dict(matrix, sanity_checks=checks)
        report["warnings"] += robustness.masking_warnings(checks)
        figures["transfer_matrix.png"] = lambda path: plots.transfer_heatmap(
            matrix, path, title=f"transfer {robustness.attack_label(transfer_config)}")
    if FLAGS.feature_distance:
        print(f"feature distance: uniform noise of {reference * 255:g}/255", flush=True)
        distances = robustness.feature_distance(networks_by_name, batches, reference, FLAGS.seed)
        report["feature_distance"] = {"epsilon": reference, "distance": distances}
        figures["feature_distance.png"] = lambda path: plots.feature_distance_bars(distances, path, reference)
    if len(runs) >= 2:
        series, dense = {}, None
        for entry in report["runs"]:
            point = {"remaining_ratio": entry["remaining_ratio"], "natural": entry["natural"]["accuracy"],
                     "robust": entry["robust_accuracy"]["accuracy"]}
            if entry["mode"] in ("dense_at", "natural"):
                dense = dense or {"natural": point["natural"], "robust": point["robust"]}
            else:
                series.setdefault(f"{entry['network']} {entry['mode']}", []).append(point)
        title = f"accuracy vs remaining ratio (robust: worst case at {reference * 255:g}/255)"
        figures["accuracy_vs_remaining_ratio.png"] = lambda path: plots.accuracy_vs_remaining_ratio(
            series, path, dense=dense, title=title)
    return report, figures


def _percent(value):
    return f"{100 * value:.2f}%"


def markdown(report):
    lines = ["# Robustness evaluation", "", "Command:", "", "```", report["command"], "```", "",
             f"{report['num_examples']} test images of {report['dataset']}, checkpoint `{FLAGS.checkpoint}`, "
             f"seed {FLAGS.seed}.", ""]
    if report["warnings"]:
        lines += ["## GRADIENT MASKING WARNINGS", ""] + [f"- **{line}**" for line in report["warnings"]] + [""]
    else:
        lines += ["All sanity checks passed.", ""]
    for entry in report["runs"]:
        lines += [f"## {entry['name']}", "",
                  f"`{entry['run_dir']}`: {entry['network']}, mode {entry['mode']}, remaining ratio "
                  f"{entry['remaining_ratio']:g}.", "",
                  "| attack | norm | epsilon | accuracy |", "|---|---|---|---|",
                  f"| natural | | | {_percent(entry['natural']['accuracy'])} |"]
        for result in entry["attacks"]:
            lines.append(f"| {result['label']} | {result['norm']} | {_epsilon(result)} | "
                         f"{_percent(result['accuracy'])} |")
        for threat in entry["worst_case_by_threat"]:
            lines.append(f"| **worst case** ({len(threat['attacks'])} attacks) | {threat['norm']} | "
                         f"{_epsilon(threat)} | **{_percent(threat['accuracy'])}** |")
        lines.append(f"| **worst case, all attacks** | | | **{_percent(entry['worst_case']['accuracy'])}** |")
        lines += ["", "Sanity checks:", "", "| check | passed | detail |", "|---|---|---|"]
        lines += [f"| {c['check']} | {'yes' if c['passed'] else '**NO**'} | {c['detail']} |"
                  for c in entry["sanity_checks"]]
        lines.append("")
    if report["transfer"]:
        transfer = report["transfer"]
        lines += ["## Transfer attacks", "", f"Attack: {transfer['label']}; rows: source (attacked) model, columns: "
                  "evaluated model; the diagonal is white-box.", "",
                  "| source \\ target | " + " | ".join(transfer["names"]) + " |",
                  "|---|" + "---|" * len(transfer["names"])]
        for name, row in zip(transfer["names"], transfer["accuracy"]):
            lines.append(f"| {name} | " + " | ".join(_percent(v) for v in row) + " |")
        lines.append("")
    if report["feature_distance"]:
        feature = report["feature_distance"]
        lines += ["## Feature distance", "",
                  f"||f(x) - f(x+u)|| / ||f(x)|| of the last conv features, u uniform in "
                  f"+-{feature['epsilon'] * 255:g}/255.", "", "| run | distance |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in feature["distance"].items()] + [""]
    lines += ["## Plots", ""] + [f"- ![{name}]({name})" for name in report["plots"]] + [""]
    return "\n".join(lines)


def _epsilon(result):
    from rst_tf import robustness
    return robustness.epsilon_label(result["norm"], result["epsilon"])


_RECORDED_FLAGS = ("run_dir", "checkpoint", "attacks", "epsilons", "l2_epsilons", "steps", "step_size_ratio",
                   "restarts", "bandits_queries", "autoattack_steps", "autoattack_queries", "eot_draws", "cw_l2_steps",
                   "cw_l2_binary_search_steps", "sanity_probes", "reference_epsilon", "num_examples", "batch_size",
                   "seed", "data_dir", "transfer", "feature_distance")


def _json_default(value):
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def main(argv):
    common.reject_extra_arguments(argv)
    common.require_flags("run_dir", "output_dir")
    check_flags()
    with common.clear_errors():
        configs, probes, transfer_config = attack_configs()
        runs, batches = load_runs_and_data()
        report, figures = evaluate_all(runs, batches, configs, probes, transfer_config)

    from rst_tf import robustness

    if report["transfer"]:
        report["transfer"]["label"] = robustness.attack_label(transfer_config)
    report = {"command": " ".join(shlex.quote(arg) for arg in sys.argv), "dataset": runs[0][2].dataset,
              "num_examples": sum(int(labels.shape[0]) for _, labels in batches), "seed": FLAGS.seed,
              "flags": {name: FLAGS[name].value for name in _RECORDED_FLAGS},
              **report, "plots": sorted(figures)}
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    for name, draw in figures.items():
        draw(os.path.join(FLAGS.output_dir, name))
    common.write_text(os.path.join(FLAGS.output_dir, "eval.md"), markdown(report))
    common.write_text(os.path.join(FLAGS.output_dir, "eval.json"), json.dumps(report, indent=1, default=_json_default))
    for line in report["warnings"]:
        print(line, flush=True)
    print(f"files in {FLAGS.output_dir}", flush=True)


if __name__ == "__main__":
    common.run(main)
