"""Random RST switching (R2S): build a mask bank from several searches of one random network, and evaluate it.

    python bin/r2s.py --run_dir=runs/r2s/ratio_0.05,runs/r2s/ratio_0.1,runs/r2s/ratio_0.2 \
        --output_dir=runs/r2s/eval --save_bank=runs/r2s/bank.rst
    python bin/r2s.py --bank=runs/r2s/bank.rst --output_dir=runs/r2s/eval

Reports every ticket alone (natural and white-box PGD) and R2S (a ticket drawn per sample) natural and under the
adaptive attacks: `vanilla` (the paper's protocol: the attacker draws a ticket too), `eot` (loss averaged over
every ticket) and `ensemble` (the mean logits attacked). Writes r2s.json, r2s.md and r2s.png to --output_dir;
nothing is written on bad input.
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
flags.DEFINE_list("run_dir", [], "Mask searches of one random network (same network, seed, init), comma-separated.")
flags.DEFINE_string("bank", "", "A .rst ticket bank to evaluate instead of --run_dir.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint of each run gives its ticket.")
flags.DEFINE_string("save_bank", "", "Also write the bank to this .rst file.")
flags.DEFINE_list("adaptive", ["vanilla", "eot", "ensemble"],
                  "Attacks on R2S: vanilla, eot, ensemble, autoattack_rand (AutoAttack's rand version: APGD-CE and "
                  "APGD-DLR with EOT over --eot_draws calls of the randomised model).")
flags.DEFINE_integer("rand_steps", 100, "APGD iterations of autoattack_rand (standard: 100).")
flags.DEFINE_integer("eot_draws", 20, "EOT draws per gradient of autoattack_rand (standard: 20).")
flags.DEFINE_float("epsilon", 8, "L-inf budget in units of 1/255.")
flags.DEFINE_integer("steps", 20, "PGD iterations.")
flags.DEFINE_float("step_size_ratio", 0.25, "PGD step size as a fraction of epsilon.")
flags.DEFINE_integer("num_examples", 0, "Evaluate on this many test images (a seeded subset; 0: all).")
flags.DEFINE_integer("batch_size", 200, "Evaluation batch size.")
flags.DEFINE_integer("seed", 0, "Seeds the test subset, the random starts and every ticket draw of the evaluation.")
flags.DEFINE_string("data_dir", os.environ.get("RST_TF_DATA_DIR", ""),
                    "Where the test images are (as bin/search's --data_dir); empty: the runs' own data_dir. "
                    "Default: $RST_TF_DATA_DIR.")
flags.DEFINE_string("output_dir", None, "Where r2s.json, r2s.md and r2s.png go.")


def check_flags():
    """Reject bad input with one `error:` line and exit status 2, before anything heavy is imported."""
    if bool(FLAGS.run_dir) == bool(FLAGS.bank):
        common.fail("give either --run_dir (two or more searches) or --bank (a .rst file)")
    for run_dir in FLAGS.run_dir:
        if not os.path.isdir(run_dir):
            common.fail(f"--run_dir {run_dir} is not a folder")
    if FLAGS.bank and not os.path.isfile(FLAGS.bank):
        common.fail(f"--bank {FLAGS.bank} is not a file")
    unknown = [name for name in FLAGS.adaptive if name not in ("vanilla", "eot", "ensemble", "autoattack_rand")]
    if unknown:
        common.fail(f"--adaptive takes vanilla, eot, ensemble, autoattack_rand; got {unknown[0]!r}")
    if not (math.isfinite(FLAGS.epsilon) and 0 < FLAGS.epsilon <= 255):
        common.fail(f"--epsilon must be in (0, 255], got {FLAGS.epsilon}")
    if not 0 < FLAGS.step_size_ratio <= 1:
        common.fail(f"--step_size_ratio must be in (0, 1], got {FLAGS.step_size_ratio}")
    for name in ("steps", "batch_size", "rand_steps", "eot_draws"):
        if FLAGS[name].value < 1:
            common.fail(f"--{name} must be at least 1, got {FLAGS[name].value}")
    if FLAGS.num_examples < 0:
        common.fail(f"--num_examples must be >= 0, got {FLAGS.num_examples}")
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        common.fail(f"--data_dir {FLAGS.data_dir} is not a folder")
    if FLAGS.save_bank and not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.save_bank))):
        common.fail(f"--save_bank {FLAGS.save_bank}: its folder does not exist")


def load_banks():
    from rst_tf import tickets

    if FLAGS.bank:
        return tickets.from_artifact(FLAGS.bank)
    banks, specs = tickets.from_runs(FLAGS.run_dir, FLAGS.checkpoint)
    return banks, specs


def test_batches(spec):
    from rst_tf import data

    data_dir = FLAGS.data_dir
    if not data_dir and FLAGS.run_dir:
        with open(os.path.join(FLAGS.run_dir[0], "config.json")) as handle:
            data_dir = json.load(handle).get("data_dir", "")
    splits = data.load_splits(spec["dataset"], data_dir or None, test_examples=FLAGS.num_examples or None,
                              class_subset=tuple(spec.get("class_subset") or ()) or None, seed=FLAGS.seed)
    return list(data.eval_batches(splits.test, FLAGS.batch_size))


_KIND_DESCRIPTIONS = {
    "vanilla": "PGD on a ticket the attacker draws per sample too",
    "eot": "PGD on the loss averaged over every ticket",
    "ensemble": "PGD on the mean of every ticket's logits",
    "autoattack_rand": "AutoAttack's rand version (APGD-CE + APGD-DLR, EOT) on the randomised model",
}


def markdown(report):
    lines = ["# R2S evaluation", "", "Command:", "", "```", report["command"], "```", "",
             f"Attack: L-inf PGD-{report['steps']} at {report['epsilon'] * 255:g}/255 (step "
             f"{report['step_size'] * 255:g}/255, random start), {report['num_examples']} test images per task, "
             f"seed {report['seed']}. R2S draws a ticket per sample. " + "; ".join(
                 f"`{kind}`: {_KIND_DESCRIPTIONS[kind]}" for kind in report["adaptive"]) + ".", ""]
    for task, result in report["tasks"].items():
        lines += [f"## {task}", "", "| model | natural | attacked |", "|---|---|---|"]
        for row in result["tickets"]:
            lines.append(f"| ticket {row['name']} (white-box) | {100 * row['natural']:.2f}% | "
                         f"{100 * row['attacked']:.2f}% |")
        r2s_rows = result["r2s"]
        for kind in report["adaptive"]:
            lines.append(f"| R2S, {kind} attack | {100 * r2s_rows['natural']:.2f}% | {100 * r2s_rows[kind]:.2f}% |")
        best = result["best_single"]
        lines += ["", f"Best single ticket: {best['name']} ({100 * best['attacked']:.2f}% attacked).", ""]
    lines += ["![R2S](r2s.png)", ""]
    return "\n".join(lines)


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(report["tasks"])
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        result = report["tasks"][task]
        names = [row["name"] for row in result["tickets"]] + [f"R2S {kind}" for kind in report["adaptive"]]
        values = [row["attacked"] for row in result["tickets"]] + [result["r2s"][k] for k in report["adaptive"]]
        colors = ["tab:gray"] * len(result["tickets"]) + ["tab:red"] * len(report["adaptive"])
        axis.bar(range(len(names)), [100 * v for v in values], color=colors)
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
        axis.set_ylabel(f"accuracy under PGD-{report['steps']} (%)")
        axis.set_title(task)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv):
    common.reject_extra_arguments(argv)
    common.require_flags("output_dir")
    check_flags()
    from rst_tf import attacks, r2s, tickets

    epsilon = FLAGS.epsilon / 255
    attack = attacks.AttackConfig(name="pgd", epsilon=epsilon, steps=FLAGS.steps,
                                  step_size=FLAGS.step_size_ratio * epsilon)
    report = {"command": " ".join(shlex.quote(arg) for arg in sys.argv), "epsilon": epsilon, "steps": FLAGS.steps,
              "step_size": attack.step_size, "seed": FLAGS.seed, "adaptive": list(FLAGS.adaptive), "tasks": {}}
    with common.clear_errors():
        banks, specs = load_banks()
        if FLAGS.save_bank:
            tickets.write_artifact(FLAGS.save_bank + ".partial", banks, specs)
        for task, bank in banks.items():
            start = time.time()
            batches = test_batches(specs[task])
            print(f"[{task}] {len(bank)} tickets: {', '.join(t.name for t in bank.tickets)}", flush=True)
            rand_attack = attacks.autoattack_rand_config(epsilon, eot_draws=FLAGS.eot_draws)
            rand_attack = dataclasses.replace(rand_attack, steps=FLAGS.rand_steps)
            result = r2s.BankEvaluation(bank, attack, FLAGS.seed, rand_attack).run(
                batches, FLAGS.adaptive, log=lambda line, task=task: print(f"[{task}] {line}", flush=True))
            result["seconds"] = time.time() - start
            report["tasks"][task] = result
            report["num_examples"] = sum(int(labels.shape[0]) for _, labels in batches)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    plot(report, os.path.join(FLAGS.output_dir, "r2s.png"))
    common.write_text(os.path.join(FLAGS.output_dir, "r2s.md"), markdown(report))
    common.write_text(os.path.join(FLAGS.output_dir, "r2s.json"), json.dumps(report, indent=1))
    if FLAGS.save_bank:
        os.replace(FLAGS.save_bank + ".partial", FLAGS.save_bank)
    print(f"wrote {FLAGS.output_dir}/r2s.md")


if __name__ == "__main__":
    common.run(main)
