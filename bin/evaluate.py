"""Evaluate the robustness of searched networks: many attacks and budgets, the per-example worst case, sanity checks
against gradient masking, and optionally transfer attacks between runs and feature distances under random noise.

    python bin/evaluate.py --flagfile=flags/evaluate/quick.cfg --output_dir=runs/quick_rst/eval
    python bin/evaluate.py --run_dir=runs/rst,runs/dense --attacks=pgd,cw_inf,bandits --transfer \
        --feature_distance --output_dir=runs/compare

Writes eval.json (every attack with its full config, accuracies with 95% Wilson intervals, the per-example worst
case, sanity checks), eval.md (tables, warnings and the command line) and PNG plots to --output_dir. Nothing is
written on bad input.
"""
import json
import math
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from bin import common  # noqa: E402
from rst_tf.reports import threats  # noqa: E402  (names only: no TensorFlow)

FLAGS = flags.FLAGS
flags.DEFINE_list("run_dir", [], "Search run folders (bin/search --output_dir), comma-separated.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint of each run to evaluate.")
flags.DEFINE_list("attacks", ["pgd"], "Attacks: pgd, cw_inf, fgsm, fgsm_rs, bandits, square, autoattack, "
                  "autoattack_fast, fab_t, "
                  "apgd_ce, apgd_dlr, apgd_t, autoattack_rand (L-inf budgets from --epsilons); pgd_l2, cw_l2 (L2 "
                  "budgets from --l2_epsilons).")
flags.DEFINE_list("epsilons", ["2", "4", "8", "12", "16"], "L-inf budgets in units of 1/255.")
flags.DEFINE_list("l2_epsilons", ["0.5", "1.71", "2.0"], "L2 budgets (pixels in [0, 1]).")
flags.DEFINE_integer("steps", 20, "Iterations of pgd, cw_inf and pgd_l2.")
flags.DEFINE_enum("pgd_protocol", "standard", ["standard", "paper"], "PGD of pgd, the probes and the transfer "
                  "attack: standard (step ε/4, no early stop) or paper (the official RST test code: step 2/255, an "
                  "example stops once misclassified). cw_inf and pgd_l2 step ε/4.")
flags.DEFINE_integer("restarts", 1, "Random restarts of pgd, cw_inf and pgd_l2.")
flags.DEFINE_integer("bandits_queries", 10_000, "Query budget per example of bandits.")
flags.DEFINE_integer("autoattack_steps", 100, "APGD and FAB iterations of autoattack, fab_t, autoattack_rand, apgd_ce "
                     "and apgd_dlr (standard: 100).")
flags.DEFINE_integer("autoattack_queries", 5000, "Square Attack queries of autoattack (standard: 5000).")
flags.DEFINE_integer("malt_targets", 3, "Classes (best MALT-ranked first) that autoattack_fast attacks with targeted "
                     "APGD; from 1 to the number of classes - 1. See docs/autoattack.md.")
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
flags.DEFINE_bool("progress", True, "Show the progress of the AutoAttack schedules (component, examples left, "
                  "elapsed time); --noprogress silences it.")
flags.DEFINE_bool("mask_analysis", False, "With two or more runs of one random network: kept fraction per layer, "
                  "Jaccard overlap and Hamming distance between tickets, overlap with the largest random weights.")

_SETTINGS = ("steps", "restarts", "pgd_protocol", "bandits_queries", "autoattack_steps", "autoattack_queries",
             "malt_targets", "eot_draws", "cw_l2_steps", "cw_l2_binary_search_steps")
_RECORDED_FLAGS = ("run_dir", "checkpoint", "attacks", "epsilons", "l2_epsilons", *_SETTINGS, "sanity_probes",
                   "reference_epsilon", "num_examples", "batch_size", "seed", "data_dir", "transfer",
                   "feature_distance", "mask_analysis")


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


# Classes of the data sets bin/search trains on (a run with a class subset has that many).
_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


def _classes_of(run_dir):
    """The number of classes of a search run, from its config.json (None if unknown)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    return len(config.get("class_subset") or ()) or _CLASSES.get(config.get("dataset"))


def check_flags():
    """Reject bad input with one `error:` line and exit status 2, before anything heavy is imported."""
    for run_dir in FLAGS.run_dir:
        if not os.path.isdir(run_dir):
            common.fail(f"--run_dir {run_dir} is not a folder")
    known = threats.LINF_ATTACKS + threats.L2_ATTACKS
    unknown = [name for name in FLAGS.attacks if name not in known]
    if unknown or not FLAGS.attacks:
        common.fail(f"unknown attack {unknown[0] if unknown else ''!r}; --attacks takes {', '.join(known)}")
    _numbers("epsilons", FLAGS.epsilons, 255)
    _numbers("l2_epsilons", FLAGS.l2_epsilons, 1e6)
    _numbers("reference_epsilon", [FLAGS.reference_epsilon], 255)
    for name in [name for name in _SETTINGS if name != "pgd_protocol"] + ["batch_size"]:
        if FLAGS[name].value < 1:
            common.fail(f"--{name} must be at least 1, got {FLAGS[name].value}")
    if "autoattack_fast" in FLAGS.attacks:
        for run_dir in FLAGS.run_dir:
            classes = _classes_of(run_dir)
            if classes is not None and FLAGS.malt_targets >= classes:
                common.fail(f"--malt_targets must be from 1 to {classes - 1} (the classes of {run_dir} but one), "
                            f"got {FLAGS.malt_targets}")
    if FLAGS.num_examples < 0:
        common.fail(f"--num_examples must be >= 0, got {FLAGS.num_examples}")
    for name in ("transfer", "mask_analysis"):
        if FLAGS[name].value and len(FLAGS.run_dir) < 2:
            common.fail(f"--{name} needs at least two --run_dir")
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        common.fail(f"--data_dir {FLAGS.data_dir} is not a folder")


def main(argv):
    common.reject_extra_arguments(argv)
    common.require_flags("run_dir", "output_dir")
    check_flags()
    from rst_tf.reports import report, suite

    request = report.Request(
        run_dirs=tuple(FLAGS.run_dir), output_dir=FLAGS.output_dir, checkpoint=FLAGS.checkpoint,
        attacks=tuple(FLAGS.attacks), epsilons=tuple(_numbers("epsilons", FLAGS.epsilons, 255)),
        l2_epsilons=tuple(_numbers("l2_epsilons", FLAGS.l2_epsilons, 1e6)),
        settings=suite.AttackSettings(**{name: FLAGS[name].value for name in _SETTINGS}),
        sanity_probes=FLAGS.sanity_probes, reference_epsilon=FLAGS.reference_epsilon,
        num_examples=FLAGS.num_examples, batch_size=FLAGS.batch_size, seed=FLAGS.seed, data_dir=FLAGS.data_dir,
        transfer=FLAGS.transfer, feature_distance=FLAGS.feature_distance, mask_analysis=FLAGS.mask_analysis,
        progress=FLAGS.progress, command=" ".join(shlex.quote(arg) for arg in sys.argv),
        flags={name: FLAGS[name].value for name in _RECORDED_FLAGS})
    with common.clear_errors():
        report.evaluate_and_write(request, log=lambda line: print(line, flush=True))
    print(f"files in {FLAGS.output_dir}", flush=True)


if __name__ == "__main__":
    common.run(main)
