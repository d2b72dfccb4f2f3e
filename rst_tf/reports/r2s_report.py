"""An R2S evaluation of a ticket bank, as bin/r2s writes it: r2s.json, r2s.md and r2s.png.

    request = r2s_report.Request(run_dirs=("runs/r2s/ratio_0.05", "runs/r2s/ratio_0.1"), output_dir="runs/r2s/eval")
    report = r2s_report.evaluate_and_write(request)

Every accuracy is honest (an example counts only if its clean image is classified correctly too, under the same
ticket draw) and carries its 95% Wilson interval for the number of test images.
"""
import dataclasses
import os
import time

from rst_tf import attacks
from rst_tf.deployment import r2s, tickets
from rst_tf.measuring import intervals
from rst_tf.reports import plots, runs
from rst_tf.training import run_dir as run_folder

KIND_DESCRIPTIONS = {
    "vanilla": "PGD on a ticket the attacker draws per sample too",
    "eot": "PGD on the loss averaged over every ticket",
    "ensemble": "PGD on the mean of every ticket's logits",
    "autoattack_rand": "AutoAttack's rand version (APGD-CE + APGD-DLR, EOT) on the randomised model",
}


@dataclasses.dataclass(frozen=True)
class Request:
    """What to evaluate: run folders of one random network, or a `.rst` bank; epsilon in /255 units."""
    output_dir: str
    run_dirs: tuple = ()
    bank: str = ""
    checkpoint: str = "best"
    save_bank: str = ""
    adaptive: tuple = r2s.ADAPTIVE_ATTACKS[:3]
    epsilon: float = 8.0
    steps: int = 20
    pgd_protocol: str = "standard"
    rand_steps: int = 100
    eot_draws: int = 20
    num_examples: int = 0
    batch_size: int = 200
    seed: int = 0
    data_dir: str = ""
    command: str = ""


def load_banks(request):
    """(banks_by_task, specs_by_task) from the request's run folders or `.rst` file."""
    if request.bank:
        return tickets.from_artifact(request.bank)
    return tickets.from_runs(list(request.run_dirs), request.checkpoint)


def _data_dir(request):
    if request.data_dir or not request.run_dirs:
        return request.data_dir
    return run_folder.read_config(request.run_dirs[0]).data_dir


def evaluate_banks(banks, specs, request, log=print):
    """Every bank's `r2s.BankEvaluation` on its task's test images: the report that r2s.json holds."""
    epsilon = request.epsilon / 255
    attack = attacks.pgd_eval_config(epsilon, request.pgd_protocol, request.steps)
    rand_attack = dataclasses.replace(attacks.autoattack_rand_config(epsilon, eot_draws=request.eot_draws),
                                      steps=request.rand_steps)
    result = {"command": request.command, "epsilon": epsilon, "steps": request.steps, "step_size": attack.step_size,
              "pgd_protocol": request.pgd_protocol, "attack": dataclasses.asdict(attack), "seed": request.seed,
              "adaptive": list(request.adaptive), "tasks": {}}
    data_dir = _data_dir(request)
    for task, bank in banks.items():
        start = time.time()
        spec = specs[task]
        batches = runs.test_batches(spec["dataset"], data_dir, request.num_examples, request.batch_size,
                                    request.seed, spec.get("class_subset") or ())
        log(f"[{task}] {len(bank)} tickets: {', '.join(t.name for t in bank.tickets)}")
        task_result = r2s.BankEvaluation(bank, attack, request.seed, rand_attack).run(
            batches, list(request.adaptive), log=lambda line, task=task: log(f"[{task}] {line}"))
        task_result["seconds"] = time.time() - start
        result["tasks"][task] = task_result
        result["num_examples"] = task_result["num_examples"]
    return result


def _accuracy(value, total):
    return intervals.format_accuracy(value, total, digits=2)


def markdown(result):
    """r2s.md: the attack, then per task each ticket and R2S under each adaptive attack, with intervals."""
    protocol = ("early stop per example" if result["pgd_protocol"] == "paper" else "no early stop")
    lines = ["# R2S evaluation", "", "Command:", "", "```", result["command"], "```", "",
             f"Attack: L-inf PGD-{result['steps']} at {result['epsilon'] * 255:g}/255 (PGD protocol "
             f"`{result['pgd_protocol']}`: step {result['step_size'] * 255:g}/255, random start, {protocol}), "
             f"{result['num_examples']} test images per task, seed {result['seed']}. R2S draws a ticket per sample. "
             + "; ".join(f"`{kind}`: {KIND_DESCRIPTIONS[kind]}" for kind in result["adaptive"]) + ". An example "
             "counts as robust only if its clean image is classified correctly too; [low, high] is the 95% Wilson "
             "interval.", ""]
    for task, task_result in result["tasks"].items():
        total = task_result["num_examples"]
        lines += [f"## {task}", "", "| model | natural | attacked |", "|---|---|---|"]
        for row in task_result["tickets"]:
            lines.append(f"| ticket {row['name']} (white-box) | {_accuracy(row['natural'], total)} | "
                         f"{_accuracy(row['attacked'], total)} |")
        r2s_rows = task_result["r2s"]
        for kind in result["adaptive"]:
            lines.append(f"| R2S, {kind} attack | {_accuracy(r2s_rows['natural'], total)} | "
                         f"{_accuracy(r2s_rows[kind], total)} |")
        best = task_result["best_single"]
        lines += ["", f"Best single ticket: {best['name']} ({_accuracy(best['attacked'], total)} attacked).", ""]
    lines += ["![R2S](r2s.png)", ""]
    return "\n".join(lines)


def evaluate_and_write(request, log=print):
    """Load the bank, evaluate it, write r2s.json, r2s.md and r2s.png (and the `.rst` file if asked); returns the
    report. Bad input raises ValueError or FileNotFoundError before anything is written."""
    banks, specs = load_banks(request)
    if request.save_bank:
        tickets.write_artifact(request.save_bank + ".partial", banks, specs)
    result = evaluate_banks(banks, specs, request, log)
    os.makedirs(request.output_dir, exist_ok=True)
    plots.r2s_bars(result, os.path.join(request.output_dir, "r2s.png"))
    run_folder.write_text(os.path.join(request.output_dir, "r2s.md"), markdown(result))
    run_folder.write_json(os.path.join(request.output_dir, "r2s.json"), result, indent=1)
    if request.save_bank:
        os.replace(request.save_bank + ".partial", request.save_bank)
    return result
