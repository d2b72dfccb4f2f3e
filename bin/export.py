"""Export found tickets for serving: a SavedModel per ticket, one R2S SavedModel, TF Serving's models.config, and
the compact .rst bank.

    python bin/export.py --run_dir=runs/r2s/ratio_0.05,runs/r2s/ratio_0.1 --output_dir=export/
    python bin/export.py --bank=bank.rst --output_dir=export/

Writes, under --output_dir (a new or empty folder; nothing is left there on failure):
  <task>_<ticket>/1/     one SavedModel per ticket (its masked weights baked in)
  <task>_r2s/1/          the R2S SavedModel: weights once, every ticket's masks, a ticket drawn per request
                         (--per_sample: per image) inside the graph
  models.config          TensorFlow Serving's model config listing them all
  bank.rst               the compact bank (seed + coded masks + BatchNorm statistics)
Signatures: serving_default (float32 NHWC in [0, 1]) and serving_uint8 (uint8 0..255) -> logits, probabilities.
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from bin import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("run_dir", [], "Mask searches of one random network, comma-separated (a nested search gives a "
                  "ticket per ratio).")
flags.DEFINE_string("bank", "", "A .rst ticket bank to export instead of --run_dir.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint of each run gives its ticket.")
flags.DEFINE_string("output_dir", None, "A new or empty folder for the SavedModels, models.config and bank.rst.")
flags.DEFINE_bool("per_ticket", True, "Write a SavedModel per ticket.")
flags.DEFINE_bool("r2s", True, "Write the R2S SavedModel (needs two or more tickets per task).")
flags.DEFINE_bool("per_sample", False, "The R2S model draws a ticket per image instead of per request.")
flags.DEFINE_string("serving_base_path", "", "Base folder models.config names (where TF Serving will see "
                    "--output_dir, e.g. /models in a container); empty: --output_dir's absolute path.")


def check_flags():
    if bool(FLAGS.run_dir) == bool(FLAGS.bank):
        common.fail("give either --run_dir (searches) or --bank (a .rst file)")
    for run_dir in FLAGS.run_dir:
        if not os.path.isdir(run_dir):
            common.fail(f"--run_dir {run_dir} is not a folder")
    if FLAGS.bank and not os.path.isfile(FLAGS.bank):
        common.fail(f"--bank {FLAGS.bank} is not a file")
    if os.path.exists(FLAGS.output_dir) and (not os.path.isdir(FLAGS.output_dir) or os.listdir(FLAGS.output_dir)):
        common.fail(f"--output_dir {FLAGS.output_dir} exists and is not an empty folder")
    if not (FLAGS.per_ticket or FLAGS.r2s):
        common.fail("nothing to export: --noper_ticket and --nor2s")


def export_all(staging):
    """Write everything into `staging`; returns the list of (model name, folder) written."""
    from rst_tf.deployment import export, r2s, tickets

    banks, specs = tickets.from_artifact(FLAGS.bank) if FLAGS.bank else tickets.from_runs(FLAGS.run_dir,
                                                                                          FLAGS.checkpoint)
    models = []
    if FLAGS.per_ticket:
        for task, bank in banks.items():
            for ticket in bank.tickets:
                name = f"{task}_{ticket.name}".replace(".", "_")
                print(f"SavedModel {name}", flush=True)
                export.save(os.path.join(staging, name, "1"), {task: r2s.MaskBank(bank.network, [ticket])})
                models.append(name)
    if FLAGS.r2s:
        for task, bank in banks.items():
            if len(bank) < 2:
                raise ValueError(f"task {task!r} has {len(bank)} ticket; R2S needs two or more (or pass --nor2s)")
            name = f"{task}_r2s"
            print(f"SavedModel {name} ({len(bank)} tickets, a draw per {'image' if FLAGS.per_sample else 'request'})",
                  flush=True)
            export.save(os.path.join(staging, name, "1"), {task: bank}, per_sample=FLAGS.per_sample)
            models.append(name)
    tickets.write_artifact(os.path.join(staging, "bank.rst"), banks, specs)
    base = FLAGS.serving_base_path or os.path.abspath(FLAGS.output_dir)
    common.write_text(os.path.join(staging, "models.config"),
                      export.models_config([(name, os.path.join(base, name)) for name in models]))
    summary = {"models": models, "tasks": {task: [t.name for t in bank.tickets] for task, bank in banks.items()},
               "per_sample": FLAGS.per_sample}
    common.write_text(os.path.join(staging, "export.json"), json.dumps(summary, indent=1))
    return models


def main(argv):
    common.reject_extra_arguments(argv)
    common.require_flags("output_dir")
    check_flags()
    staging = os.path.normpath(FLAGS.output_dir) + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        with common.clear_errors():
            models = export_all(staging)
    finally:
        if not os.path.isfile(os.path.join(staging, "export.json")):
            shutil.rmtree(staging, ignore_errors=True)
    if os.path.isdir(FLAGS.output_dir):
        os.rmdir(FLAGS.output_dir)
    os.replace(staging, FLAGS.output_dir)
    print(f"wrote {len(models)} SavedModels, models.config and bank.rst to {FLAGS.output_dir}")


if __name__ == "__main__":
    common.run(main)
