"""Random RST switching (R2S): build a mask bank from several searches of one random network, and evaluate it.

    python bin/r2s.py --run_dir=runs/r2s/ratio_0.05,runs/r2s/ratio_0.1,runs/r2s/ratio_0.2 \
        --output_dir=runs/r2s/eval --save_bank=runs/r2s/bank.rst
    python bin/r2s.py --bank=runs/r2s/bank.rst --output_dir=runs/r2s/eval
    python bin/r2s.py --run_dir=runs/quick_nested --output_dir=runs/quick_nested/r2s   # a nested search's tickets

Reports every ticket alone (natural and white-box PGD) and R2S (a ticket drawn per sample) natural and under the
adaptive attacks: `vanilla` (the paper's protocol: the attacker draws a ticket too), `eot` (loss averaged over
every ticket) and `ensemble` (the mean logits attacked), each with its 95% Wilson interval. Writes r2s.json, r2s.md
and r2s.png to --output_dir; nothing is written on bad input.
"""
import math
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from bin import common  # noqa: E402
from rst_tf.deployment import r2s  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("run_dir", [], "Mask searches of one random network (same network, seed, init), comma-separated; "
                  "a nested search (--nested_ratios) gives a ticket per ratio.")
flags.DEFINE_string("bank", "", "A .rst ticket bank to evaluate instead of --run_dir.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint of each run gives its ticket.")
flags.DEFINE_string("save_bank", "", "Also write the bank to this .rst file.")
flags.DEFINE_list("adaptive", list(r2s.ADAPTIVE_ATTACKS[:3]),
                  "Attacks on R2S: vanilla, eot, ensemble, autoattack_rand (AutoAttack's rand version: APGD-CE and "
                  "APGD-DLR with EOT over --eot_draws calls of the randomised model).")
flags.DEFINE_integer("rand_steps", 100, "APGD iterations of autoattack_rand (standard: 100).")
flags.DEFINE_integer("eot_draws", 20, "EOT draws per gradient of autoattack_rand (standard: 20).")
flags.DEFINE_float("epsilon", 8, "L-inf budget in units of 1/255.")
flags.DEFINE_integer("steps", 20, "PGD iterations.")
flags.DEFINE_enum("pgd_protocol", "standard", ["standard", "paper"], "PGD of the ticket and R2S rows: standard "
                  "(step ε/4, no early stop) or paper (the official RST test code: step 2/255, an example stops once "
                  "misclassified).")
flags.DEFINE_integer("num_examples", 0, "Evaluate on this many test images (a seeded subset; 0: all).")
flags.DEFINE_integer("batch_size", 200, "Evaluation batch size.")
flags.DEFINE_integer("seed", 0, "Seeds the test subset, the random starts and every ticket draw of the evaluation.")
flags.DEFINE_string("data_dir", os.environ.get("RST_TF_DATA_DIR", ""),
                    "Where the test images are (as bin/search's --data_dir); empty: the runs' own data_dir. "
                    "Default: $RST_TF_DATA_DIR.")
flags.DEFINE_string("output_dir", None, "Where r2s.json, r2s.md and r2s.png go.")


def check_flags():
    """Reject bad input with one `error:` line and exit status 2, before anything is read or written."""
    if bool(FLAGS.run_dir) == bool(FLAGS.bank):
        common.fail("give either --run_dir (two or more searches, or a nested search) or --bank (a .rst file)")
    for run_dir in FLAGS.run_dir:
        if not os.path.isdir(run_dir):
            common.fail(f"--run_dir {run_dir} is not a folder")
    if FLAGS.bank and not os.path.isfile(FLAGS.bank):
        common.fail(f"--bank {FLAGS.bank} is not a file")
    unknown = [name for name in FLAGS.adaptive if name not in r2s.ADAPTIVE_ATTACKS]
    if unknown:
        common.fail(f"--adaptive takes {', '.join(r2s.ADAPTIVE_ATTACKS)}; got {unknown[0]!r}")
    if not (math.isfinite(FLAGS.epsilon) and 0 < FLAGS.epsilon <= 255):
        common.fail(f"--epsilon must be in (0, 255], got {FLAGS.epsilon}")
    for name in ("steps", "batch_size", "rand_steps", "eot_draws"):
        if FLAGS[name].value < 1:
            common.fail(f"--{name} must be at least 1, got {FLAGS[name].value}")
    if FLAGS.num_examples < 0:
        common.fail(f"--num_examples must be >= 0, got {FLAGS.num_examples}")
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        common.fail(f"--data_dir {FLAGS.data_dir} is not a folder")
    if FLAGS.save_bank and not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.save_bank))):
        common.fail(f"--save_bank {FLAGS.save_bank}: its folder does not exist")


def main(argv):
    common.reject_extra_arguments(argv)
    common.require_flags("output_dir")
    check_flags()
    from rst_tf.reports import r2s_report

    request = r2s_report.Request(
        output_dir=FLAGS.output_dir, run_dirs=tuple(FLAGS.run_dir), bank=FLAGS.bank, checkpoint=FLAGS.checkpoint,
        save_bank=FLAGS.save_bank, adaptive=tuple(FLAGS.adaptive), epsilon=FLAGS.epsilon, steps=FLAGS.steps,
        pgd_protocol=FLAGS.pgd_protocol, rand_steps=FLAGS.rand_steps, eot_draws=FLAGS.eot_draws,
        num_examples=FLAGS.num_examples, batch_size=FLAGS.batch_size, seed=FLAGS.seed, data_dir=FLAGS.data_dir,
        command=" ".join(shlex.quote(arg) for arg in sys.argv))
    with common.clear_errors():
        r2s_report.evaluate_and_write(request, log=lambda line: print(line, flush=True))
    print(f"wrote {FLAGS.output_dir}/r2s.md")


if __name__ == "__main__":
    common.run(main)
