"""Reproduce the paper's study at the scale the flags give, and write a report of its claims.

    python bin/reproduce.py --flagfile=flags/reproduce/cpu.cfg
    python bin/reproduce.py --flagfile=flags/reproduce/cpu.cfg --dry_run   # list the runs, in order

Runs, for each of --seeds under --output_dir/seed_<seed>: the dense_at and natural sources, the RST sweep over
--remaining_ratios, its fine-tuned sweeps (inherited and re-init weights), natural and adversarial RTT sweeps, and
the transfer study (dense_at on classes 0-4; an RTT over it and an RST on classes 5-9). Then PGD-20 at each
--eval_epsilons of every best checkpoint (PGD of --pgd_protocol) on one test set, and each seed's transfer matrix
between its RSTs and R2S over them under both PGD protocols; each claim's verdict comes from its seed-paired
difference and 95% interval. Writes --report (markdown), its figures in <report>_figures/ and every figure as JSON
in <report>.json. The same command again skips finished work and continues killed runs. --executor=ray trains the
runs as Ray tasks (on this machine, or a cluster with --ray_address; the evaluations run in this process, the
scaling study's beside the runs that train meanwhile). The
bin/search flags set the scale; --mode, --remaining_ratio, --init_from, --finetune_weights, --reinit_classifier and
--class_subset are set per run.
"""
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from bin import common, executor_flags, search_flags  # noqa: E402
from bin.search_flags import FLAGS, config_from_flags  # noqa: E402


def _numbers_in(values, low, high):
    try:
        return all(low < float(value) <= high for value in values)
    except ValueError:
        return False


flags.adopt_module_key_flags(search_flags)  # --helpshort lists them
flags.adopt_module_key_flags(executor_flags)
flags.DEFINE_list("remaining_ratios", ["0.05", "0.1", "0.2", "0.5"], "Remaining ratios of every sweep.")
flags.register_validator("remaining_ratios", lambda values: bool(values) and _numbers_in(values, 0, 1),
                         "--remaining_ratios must list numbers in (0, 1], e.g. 0.05,0.1,0.2,0.5")
flags.DEFINE_list("comparison_ratios", [], "Remaining ratios of the fine-tuned and RTT sweeps, some of "
                  "--remaining_ratios (default: all of them).")
flags.register_validator("comparison_ratios", lambda values: _numbers_in(values, 0, 1),
                         "--comparison_ratios must list numbers in (0, 1], e.g. 0.05,0.2")
flags.DEFINE_list("eval_epsilons", ["8", "12", "16"], "L-inf budgets (x/255) of the evaluation; the first is the "
                  "one of the claims (the search's own ε).")
flags.register_validator("eval_epsilons", lambda values: bool(values) and _numbers_in(values, 0, 255),
                         "--eval_epsilons must list numbers in (0, 255], e.g. 8,12,16")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds of the study: every setting runs once per seed (random network, "
                  "data order, attacks); the test set is the first seed's.")
flags.register_validator("seeds", lambda values: bool(values) and all(v.lstrip("-").isdigit() for v in values)
                         and len(set(values)) == len(values), "--seeds must list distinct integers, e.g. 0,1,2")
flags.DEFINE_float("transfer_ratio", 0, "Remaining ratio of the task-B RTT and RST; 0: the ratio nearest 0.1.")
flags.DEFINE_integer("eval_batch_size", 200, "Batch size of the evaluations.")
flags.DEFINE_string("output_dir", "runs/reproduce", "Where every run, evaluation.json, transfer.json, r2s.json go.")
flags.DEFINE_string("report", "docs/reproduction.md", "The markdown report (figures in <report>_figures/, "
                    "figures as JSON in <report>.json).")
flags.DEFINE_bool("dry_run", False, "Print the runs in order (name, folder, mode, init_from) and stop.")
flags.DEFINE_bool("progress", False, "Show a progress bar in every run.")
flags.DEFINE_enum("study", "paper", ["paper", "scaling"], "paper: the paper's settings at one width (above); "
                  "scaling: dense AT and an RST sweep over --remaining_ratios at each of --widths and --seeds "
                  "(docs/scaling.md).")
flags.DEFINE_list("widths", ["0.0625", "0.125", "0.25"], "Width multipliers of the scaling study, increasing.")
flags.DEFINE_string("cost_model", "docs/scaling_pilot.json", "The pilot's measured costs, from which --dry_run "
                    "estimates the scaling study's CPU minutes; the study's report links the pilot's report beside "
                    "it (the same name ending in .md), if there is one.")
flags.DEFINE_integer("study_test_examples", 10000, "Scaling study: test images of its evaluation (the runs' "
                     "own test reports use --test_examples).", lower_bound=1)
flags.DEFINE_integer("r2s_test_examples", 0, "Scaling study: R2S on the first this many of its test images "
                     "(0: all of them); each ticket alone is the runs' own evaluation either way.", lower_bound=0)
flags.DEFINE_integer("reference_autoattack_examples", 0, "Scaling study: the standard AutoAttack (the check of the "
                     "fast one at the widest width's first seed) on the first this many test images (0: all).",
                     lower_bound=0)
flags.DEFINE_string("records_dir", "", "Scaling study: keep each wholly measured (width, seed)'s results here "
                    "(one JSON file each), and read back those recorded with the same settings instead of training "
                    "and measuring them again: the study continues on another machine without its runs. Empty: no "
                    "records.")
flags.DEFINE_string("runs_archive_dir", "", "Scaling study: pack each trained run here (masks as bits, random "
                    "kernels drawn again from the seed) and unpack those not finished in --output_dir, so that "
                    "another machine continues a (width, seed) in progress. Durable storage outside the repository: "
                    "trained networks are not committed. Empty: runs are not packed.")
flags.DEFINE_bool("report_recorded", False, "Scaling study: write the report of the study so far from --records_dir "
                  "alone (the recorded (width, seed)s, every seed at every width it has), training and measuring "
                  "nothing; needs neither the runs nor the data.")
flags.DEFINE_enum("stop_after", "report", ["train", "evaluate", "report"], "Scaling study: stop after training "
                  "the runs, after evaluating them, or run the whole study.")
flags.DEFINE_enum("pgd_protocol", "standard", ["standard", "paper"], "PGD of the robust accuracies: standard (step "
                  "ε/4, no early stop) or paper (the official RST test code: step 2/255, an example stops once "
                  "misclassified). The transfer matrix and R2S are measured under both.")


def main(argv):
    common.reject_extra_arguments(argv)
    common.require_flags("output_dir", "report")
    if FLAGS.eval_batch_size < 1:
        common.fail(f"--eval_batch_size must be at least 1, got {FLAGS.eval_batch_size}")
    if not 0 <= FLAGS.transfer_ratio <= 1:
        common.fail(f"--transfer_ratio must be in [0, 1], got {FLAGS.transfer_ratio}")
    from rst_tf.study import reproduce

    config = config_from_flags()
    if FLAGS.report_recorded and FLAGS.study != "scaling":
        common.fail("--report_recorded is for --study=scaling")
    if FLAGS.study == "scaling":
        _scaling(config)
        return
    ratios = [float(value) for value in FLAGS.remaining_ratios]
    epsilons = [float(value) for value in FLAGS.eval_epsilons]
    with common.clear_errors():
        seeds = [int(value) for value in FLAGS.seeds]
        compared = [float(value) for value in FLAGS.comparison_ratios] or None
        steps_by_seed = reproduce.plan_seeds(config, ratios, FLAGS.output_dir, seeds, FLAGS.transfer_ratio or None,
                                             compared)
        if FLAGS.dry_run:
            for seed, steps in steps_by_seed.items():
                for step in steps:
                    ratios_text = ",".join(f"{r:g}" for r in step.remaining_ratios) or "-"
                    print(f"seed {seed}\t{step.name}\t{step.output_dir}\tmode={step.config.mode}\t"
                          f"ratios={ratios_text}\tinit_from={step.config.init_from or '-'}\tclass_subset="
                          f"{','.join(map(str, step.config.class_subset)) or 'all'}")
            return
        if not os.path.isdir(config.data_dir or "."):
            common.fail(f"--data_dir {config.data_dir} is not a folder")
        command = " ".join(shlex.quote(arg) for arg in ["bin/reproduce", *sys.argv[1:]])
        results = reproduce.run(config, ratios, FLAGS.output_dir, FLAGS.report, seeds=seeds, epsilons=epsilons,
                                transfer_ratio=FLAGS.transfer_ratio or None, command=command,
                                comparison_ratios=compared,
                                batch_size=FLAGS.eval_batch_size, progress=FLAGS.progress,
                                pgd_protocol=FLAGS.pgd_protocol, executor=executor_flags.executor_from_flags())
        common.write_flags(FLAGS.output_dir)
    for row in results["claims"]:
        low, high = row["interval"]
        protocol = f" ({row['protocol']} PGD)" if row["protocol"] else ""
        print(f"{row['verdict']}: {row['section']} {row['claim']}{protocol}: {100 * row['estimate']:+.1f} points "
              f"[{100 * low:+.1f}, {100 * high:+.1f}]")
    print(f"wrote {FLAGS.report}")


def _scaling(config):
    from rst_tf.study import scaling

    with common.clear_errors():
        seeds = [int(value) for value in FLAGS.seeds]
        ratios = [float(value) for value in FLAGS.remaining_ratios]
        try:
            widths = scaling.check_widths(FLAGS.widths)
        except ValueError as error:
            common.fail(f"--widths: {error}")
        try:
            scaling.check_seeds(seeds)
        except ValueError as error:
            common.fail(f"--seeds: {error}")
        planned = scaling.plan(config, widths, ratios, FLAGS.output_dir, seeds)
        for name in ("records_dir", "runs_archive_dir"):
            folder = getattr(FLAGS, name)
            if folder and os.path.exists(folder) and not os.path.isdir(folder):
                common.fail(f"--{name} {folder} is not a folder")
        if FLAGS.report_recorded:
            if FLAGS.dry_run:
                common.fail("--report_recorded and --dry_run: choose one")
            if not FLAGS.records_dir or not os.path.isdir(FLAGS.records_dir):
                common.fail(f"--report_recorded reads --records_dir, which is not a folder: {FLAGS.records_dir!r}")
            command = " ".join(shlex.quote(arg) for arg in ["bin/reproduce", *sys.argv[1:]])
            results = scaling.report_recorded(
                config, widths, ratios, FLAGS.output_dir, FLAGS.report, seeds, FLAGS.records_dir,
                test_examples=FLAGS.study_test_examples, epsilon=float(FLAGS.eval_epsilons[0]), command=command,
                r2s_test_examples=FLAGS.r2s_test_examples or None,
                reference_autoattack_examples=FLAGS.reference_autoattack_examples or None,
                pilot_path=_pilot_report())
            _print_claims(results)
            return
        if FLAGS.dry_run:
            for width, seed, step in scaling.running_order(planned):
                ratios_text = ",".join(f"{r:g}" for r in step.remaining_ratios) or "-"
                print(f"width {width:g}\tseed {seed}\t{step.name}\t{step.output_dir}\tmode={step.config.mode}\t"
                      f"ratios={ratios_text}")
            _print_cost(scaling, planned, config, ratios)
            if FLAGS.records_dir:
                _print_progress(scaling, planned)
            return
        if not os.path.isdir(config.data_dir or "."):
            common.fail(f"--data_dir {config.data_dir} is not a folder")
        command = " ".join(shlex.quote(arg) for arg in ["bin/reproduce", *sys.argv[1:]])
        results = scaling.run(config, widths, ratios, FLAGS.output_dir, FLAGS.report, seeds,
                              test_examples=FLAGS.study_test_examples, epsilon=float(FLAGS.eval_epsilons[0]),
                              command=command, batch_size=FLAGS.eval_batch_size, progress=FLAGS.progress,
                              stop_after=FLAGS.stop_after, executor=executor_flags.executor_from_flags(),
                              r2s_test_examples=FLAGS.r2s_test_examples or None,
                              reference_autoattack_examples=FLAGS.reference_autoattack_examples or None,
                              records_dir=FLAGS.records_dir, archive_dir=FLAGS.runs_archive_dir,
                              pilot_path=_pilot_report())
        common.write_flags(FLAGS.output_dir)
    if results is None:
        print(f"stopped after: {FLAGS.stop_after}")
        return
    _print_claims(results)


def _pilot_report():
    """The pilot's report beside its cost model (docs/scaling_pilot.md), or "" if there is none."""
    path = os.path.splitext(FLAGS.cost_model)[0] + ".md"
    return path if os.path.isfile(path) else ""


def _print_claims(results):
    for prefix, rows in (("", results["claims"]), ("regime check: ", results.get("regime", []))):
        for row in rows:
            low, high = row["interval"]
            interval = "no interval (one seed)" if low != low else f"[{100 * low:+.1f}, {100 * high:+.1f}]"
            print(f"{prefix}{row['verdict']}: {row['section']}: {row['claim']}: {100 * row['estimate']:+.1f} points "
                  f"{interval}")
    done = "" if results["complete"] else (f" (the study so far: {len(results['units']['reported'])} of "
                                          f"{len(results['units']['planned'])} (width, seed)s)")
    print(f"wrote {FLAGS.report}{done}")


def _print_cost(scaling, planned, config, ratios):
    import json

    if not os.path.isfile(FLAGS.cost_model):
        print(f"no cost model: --cost_model {FLAGS.cost_model} is not a file")
        return
    with open(FLAGS.cost_model) as handle:
        cost = scaling.CostModel(**json.load(handle)["cost_model"])
    found = scaling.estimate(cost, planned, config.train_examples, config.epochs, FLAGS.study_test_examples,
                             len(ratios), r2s_test_examples=FLAGS.r2s_test_examples or None,
                             reference_autoattack_examples=FLAGS.reference_autoattack_examples or None,
                             epsilon=float(FLAGS.eval_epsilons[0]))
    recorded = _recorded_units(scaling, planned) if FLAGS.records_dir else []
    widths = ", ".join(f"{w}: {m:.0f}" for w, m in found["per_width"].items())
    parts = ", ".join(f"{part} {minutes:.0f}" for part, minutes in found["parts"].items())
    print(f"cost model ({FLAGS.cost_model}): training {found['train_cpu_minutes']:.0f} + evaluation "
          f"{found['eval_cpu_minutes']:.0f} = {found['total_cpu_minutes']:.0f} CPU minutes (budget "
          f"{found['budget_cpu_minutes']:.0f}); by part: {parts}; by width: {widths}")
    if found["total_cpu_minutes"] > found["budget_cpu_minutes"]:
        print(f"over the budget by {found['total_cpu_minutes'] - found['budget_cpu_minutes']:.0f} CPU minutes")
    if recorded:
        left = {unit: steps for unit, steps in planned.items() if unit not in recorded}
        minutes = 0
        if left:
            minutes = scaling.estimate(cost, left, config.train_examples, config.epochs, FLAGS.study_test_examples,
                                       len(ratios), r2s_test_examples=FLAGS.r2s_test_examples or None,
                                       reference_autoattack_examples=FLAGS.reference_autoattack_examples or None,
                                       epsilon=float(FLAGS.eval_epsilons[0]),
                                       reference_unit=scaling.reference_unit_of(planned))["total_cpu_minutes"]
        print(f"recorded in {FLAGS.records_dir}: " + ", ".join(f"width {w:g} seed {s}" for w, s in recorded)
              + f"; left: {len(left)} of {len(planned)} (width, seed)s, {minutes:.0f} CPU minutes")


def _print_progress(scaling, planned):
    """What --records_dir keeps of the (width, seed)s in progress."""
    recorded = _recorded_units(scaling, planned)
    for unit in scaling.unit_order(planned):
        if unit in recorded:
            continue
        packed, runs, measured = scaling.kept_progress(planned, unit, FLAGS.output_dir, FLAGS.records_dir,
                                                       _unit_settings(scaling, planned, unit), FLAGS.runs_archive_dir)
        if packed or measured:
            print(f"in progress: width {unit[0]:g} seed {unit[1]}: {packed} of {runs} runs trained and packed in "
                  f"--runs_archive_dir, {measured} measurements and run times kept in {FLAGS.records_dir}")


def _recorded_units(scaling, planned):
    """The (width, seed)s of the plan that --records_dir holds with the study's settings."""
    from rst_tf.study import scaling_records

    return [unit for unit in scaling.unit_order(planned)
            if scaling_records.load(FLAGS.records_dir, unit, _unit_settings(scaling, planned, unit))]


def _unit_settings(scaling, planned, unit):
    """The settings a record of `unit` must have (`scaling.unit_settings`) under these flags."""
    return scaling.unit_settings(planned, unit, FLAGS.output_dir, FLAGS.study_test_examples,
                                 float(FLAGS.eval_epsilons[0]), FLAGS.r2s_test_examples or None,
                                 FLAGS.reference_autoattack_examples or None)


if __name__ == "__main__":
    common.run(main)
