"""Search a Robust Scratch Ticket (or adversarially train the dense baseline, fine-tune an RST, search an RTT).

    python bin/search.py --flagfile=flags/cifar10_quick.cfg --output_dir=runs/quick
    python bin/search.py --flagfile=flags/cifar10_quick_finetune.cfg --output_dir=runs/quick_finetune

Writes checkpoints (last and best by validation PGD-20 accuracy), TensorBoard logs, metrics.json, config.json and
flags.txt to --output_dir. A killed run continues with --resume. --nested_ratios=0.05,0.1,0.2,0.3 searches nested
tickets at those ratios from one set of scores (best: the mean validation PGD-20 accuracy over them).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from bin import common, search_flags  # noqa: E402
from bin.search_flags import FLAGS, config_from_flags  # noqa: E402

flags.adopt_module_key_flags(search_flags)  # --helpshort lists them
flags.DEFINE_string("output_dir", None, "Where the run writes its files.")
flags.DEFINE_bool("resume", False, "Continue the run in --output_dir from its last checkpoint.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
    common.reject_extra_arguments(argv)
    common.require_flags("output_dir")
    from rst_tf.training import loop

    config = config_from_flags()
    with common.clear_errors():
        result = loop.run(config, FLAGS.output_dir, resume=FLAGS.resume, progress=FLAGS.progress)
        common.write_flags(FLAGS.output_dir)
    final = result["final"]
    best = final["best"]
    for ratio in config.ticket_ratios() if config.nested_ratios else ():  # a nested search: each ticket, then means
        print(f"ticket ratio_{ratio:g}: natural {best[f'test_natural_accuracy_ratio_{ratio:g}']:.4f}, "
              f"PGD-{config.eval_attack_steps} {best[f'test_pgd20_accuracy_ratio_{ratio:g}']:.4f}")
    print(f"best (epoch {best['epoch']}): natural {best['test_natural_accuracy']:.4f}, "
          f"PGD-{config.eval_attack_steps} {best['test_pgd20_accuracy']:.4f}"
          f"{' (means over the tickets)' if config.nested_ratios else ''} on "
          f"{final['num_test']} test images; files in {FLAGS.output_dir}")


if __name__ == "__main__":
    common.run(main)
