"""Run one search setting (bin/search flags) over a list of remaining ratios and tabulate the results.

    python bin/sweep.py --flagfile=flags/cifar10_quick.cfg --remaining_ratios=0.01,0.05,0.1,0.2 --output_dir=runs/sweep

Ratio r runs in OUTPUT_DIR/ratio_<r> (--remaining_ratios replaces --remaining_ratio). Running the same command
again skips finished runs and continues killed ones. Writes sweep.json and sweep.md (ratio, best epoch, natural and
PGD-20 test accuracy) to --output_dir. `{ratio}` in --init_from stands for each ratio: fine-tune an RST sweep's tickets
with --mode=finetune --init_from='runs/sweep/ratio_{ratio}'. --executor=ray runs each ratio as a Ray task, on this
machine or on a cluster (--ray_address).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from bin import common, executor_flags, search_flags  # noqa: E402
from bin.search_flags import FLAGS, config_from_flags  # noqa: E402


def _is_ratio_list(values):
    try:
        return all(0.0 < float(value) <= 1.0 for value in values)
    except ValueError:
        return False


flags.adopt_module_key_flags(search_flags)  # --helpshort lists them
flags.adopt_module_key_flags(executor_flags)
flags.DEFINE_list("remaining_ratios", [], "Remaining ratios to run, e.g. 0.01,0.02,0.05,0.1.")
flags.register_validator("remaining_ratios", _is_ratio_list,
                         "--remaining_ratios must list numbers in (0, 1], e.g. 0.01,0.05,0.1")
flags.DEFINE_string("output_dir", None, "The sweep's folder: ratio_<r>/ per run, sweep.json, sweep.md, flags.txt.")
flags.DEFINE_bool("progress", False, "Show a progress bar in every run.")


def main(argv):
    common.reject_extra_arguments(argv)
    common.require_flags("remaining_ratios", "output_dir")
    from rst_tf.study import sweep

    config = config_from_flags()
    ratios = [float(value) for value in FLAGS.remaining_ratios]
    with common.clear_errors():
        summary = sweep.run_sweep(config, ratios, FLAGS.output_dir, progress=FLAGS.progress,
                                  executor=executor_flags.executor_from_flags())
        common.write_flags(FLAGS.output_dir)
    print(sweep.markdown_table(summary, config), end="")
    print(f"files in {FLAGS.output_dir}")


if __name__ == "__main__":
    common.run(main)
