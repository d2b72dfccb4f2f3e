"""Reproduce the paper's study at the scale the flags give, and write a report of its claims.

    python bin/reproduce.py --flagfile=flags/reproduce/cpu.cfg
    python bin/reproduce.py --flagfile=flags/reproduce/cpu.cfg --dry_run   # list the runs, in order

Runs, under --output_dir: the dense_at and natural sources, the RST sweep over --remaining_ratios, its fine-tuned
sweeps (inherited and re-init weights), natural and adversarial RTT sweeps, and the transfer study (dense_at on
classes 0-4; an RTT over it and an RST on classes 5-9). Then PGD-20 at each --eval_epsilons of every best
checkpoint (PGD of --pgd_protocol), and the transfer matrix between the RSTs and R2S over them under both PGD
protocols. Writes --report (markdown), its figures in <report>_figures/ and every figure as JSON in <report>.json.
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
flags.DEFINE_list("eval_epsilons", ["8", "12", "16"], "L-inf budgets (x/255) of the evaluation; the first is the "
                  "one of the claims (the search's own ε).")
flags.register_validator("eval_epsilons", lambda values: bool(values) and _numbers_in(values, 0, 255),
                         "--eval_epsilons must list numbers in (0, 255], e.g. 8,12,16")
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
    from rst_tf import reproduce, reproduction_report

    config = config_from_flags()
    ratios = [float(value) for value in FLAGS.remaining_ratios]
    epsilons = [float(value) for value in FLAGS.eval_epsilons]
    with common.clear_errors():
        steps = reproduce.plan(config, ratios, FLAGS.output_dir, FLAGS.transfer_ratio or None)
        if FLAGS.dry_run:
            for step in steps:
                ratios_text = ",".join(f"{r:g}" for r in step.remaining_ratios) or "-"
                print(f"{step.name}\t{step.output_dir}\tmode={step.config.mode}\tratios={ratios_text}\t"
                      f"init_from={step.config.init_from or '-'}\tclass_subset="
                      f"{','.join(map(str, step.config.class_subset)) or 'all'}")
            return
        if not os.path.isdir(config.data_dir or "."):
            common.fail(f"--data_dir {config.data_dir} is not a folder")
        command = " ".join(shlex.quote(arg) for arg in ["python", *sys.argv])
        results = reproduce.run(config, ratios, FLAGS.output_dir, FLAGS.report, epsilons=epsilons,
                                transfer_ratio=FLAGS.transfer_ratio or None, command=command,
                                batch_size=FLAGS.eval_batch_size, progress=FLAGS.progress,
                                pgd_protocol=FLAGS.pgd_protocol)
        common.write_flags(FLAGS.output_dir)
    for row in results["claims"]:
        print(f"{reproduction_report.holds_text(row['holds'])}: {row['claim']} ({row['measured']})")
    print(f"wrote {FLAGS.report}")


if __name__ == "__main__":
    common.run(main)
