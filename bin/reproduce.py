"""Reproduce the paper's study at the scale the flags give, and write a report of its claims.

    python bin/reproduce.py --flagfile=flags/reproduce/cpu.cfg
    python bin/reproduce.py --flagfile=flags/reproduce/cpu.cfg --dry_run   # list the runs, in order

Runs, for each of --seeds under --output_dir/seed_<seed>: the dense_at and natural sources, the RST sweep over --remaining_ratios, its fine-tuned
sweeps (inherited and re-init weights), natural and adversarial RTT sweeps, and the transfer study (dense_at on
classes 0-4; an RTT over it and an RST on classes 5-9). Then PGD-20 at each --eval_epsilons of every best
checkpoint (PGD of --pgd_protocol) on one test set, and each seed's transfer matrix between its RSTs and R2S over
them under both PGD protocols; each claim's verdict comes from its seed-paired difference and 95% interval. Writes --report (markdown), its figures in <report>_figures/ and every figure as JSON in <report>.json.
The same command again skips finished work and continues killed runs. The bin/search flags set the scale; --mode,
--remaining_ratio, --init_from, --finetune_weights, --reinit_classifier and --class_subset are set per run.
"""
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from bin import common, search_flags  # noqa: E402
from bin.search_flags import FLAGS, config_from_flags  # noqa: E402


def _numbers_in(values, low, high):
    try:
        return all(low < float(value) <= high for value in values)
    except ValueError:
        return False


flags.adopt_module_key_flags(search_flags)  # --helpshort lists them
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
        command = " ".join(shlex.quote(arg) for arg in ["python", *sys.argv])
        results = reproduce.run(config, ratios, FLAGS.output_dir, FLAGS.report, seeds=seeds, epsilons=epsilons,
                                transfer_ratio=FLAGS.transfer_ratio or None, command=command,
                                comparison_ratios=compared,
                                batch_size=FLAGS.eval_batch_size, progress=FLAGS.progress,
                                pgd_protocol=FLAGS.pgd_protocol)
        common.write_flags(FLAGS.output_dir)
    for row in results["claims"]:
        low, high = row["interval"]
        protocol = f" ({row['protocol']} PGD)" if row["protocol"] else ""
        print(f"{row['verdict']}: {row['section']} {row['claim']}{protocol}: {100 * row['estimate']:+.1f} points "
              f"[{100 * low:+.1f}, {100 * high:+.1f}]")
    print(f"wrote {FLAGS.report}")


if __name__ == "__main__":
    common.run(main)
