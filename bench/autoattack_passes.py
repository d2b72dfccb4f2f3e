"""The least CPU time any step-for-step standard AutoAttack spends in the model's own passes on a run, from fra31's
budgets and the examples each component leaves, at this machine's cost of a forward and a forward-and-backward pass.

The examples that survive a component run its whole budget in every faithful implementation: APGD-CE and each of
the 9 APGD-T targets a forward and backward pass at the start and per iteration (100), FAB-T per target and
iteration a forward and backward pass (the linearisation) and a forward pass (the check of the moved point), Square
a forward pass per query (5,000). Their count times the measured cost per image (one thread, the batch sizes the
schedule uses) is a floor under the attack's CPU seconds; with the process's time outside the attack (start-up,
masks, data, clean pass, reports: the `autoattack` process's CPU seconds less the attack's, from its eval.json),
a floor under the process's.

    python bench/autoattack_passes.py --run_dir=runs/quick_rst --name=quick_rst --examples_left=75,49,46,46,46 \\
        --standard=STANDARD/eval.json --standard_time_log=STANDARD.time

--examples_left: the examples entering APGD-CE, APGD-T, FAB-T and Square and left at the end (bin/evaluate's
progress lines). Adds "model_pass_floor" to the row --name of docs/autoattack_speed.json (after
bench/compare_autoattack.py --speed has written it) and prints it.
"""
import argparse
import json
import os
import statistics
import sys
import time

import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.compare_autoattack import process_cpu_seconds  # noqa: E402
from rst_tf.attacks import core  # noqa: E402
from rst_tf.method import folding  # noqa: E402
from rst_tf.training import run_dir as run_folder  # noqa: E402

STEPS = 100
QUERIES = 5000
TARGETS = 9
REPEATS = 7


def logits_of_run(run_dir):
    """The run's inference logits as evaluation computes them (the folded graph, `rst_tf.method.folding`)."""
    network, _ = run_folder.load_run(run_dir, "best")
    folded = folding.FoldedNetwork(network)
    parameters = folded.parameters(folding.exact_masks(network))
    return lambda images: folded.logits(images, parameters)


def per_image_seconds(logits_fn, rows):
    """(forward, forward and backward) CPU seconds per image at a batch of `rows` images (median of REPEATS)."""
    images = tf.random.stateless_uniform([rows, 32, 32, 3], [0, rows])
    forward = tf.function(logits_fn)

    @tf.function
    def forward_backward(x):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            logits = logits_fn(x)
            gap = logits[:, 1] - logits[:, 0]
        return tape.gradient(gap, x)

    found = []
    for function in (forward, forward_backward):
        function(images).numpy()
        samples = []
        for _ in range(REPEATS):
            began = time.process_time()
            function(images).numpy()
            samples.append((time.process_time() - began) / rows)
        found.append(statistics.median(samples))
    return tuple(found)


def floor(logits_fn, left):
    """{component: least CPU seconds in model passes} for the examples `left` = (entering APGD-CE, APGD-T, FAB-T,
    Square, left at the end)."""
    apgd_ce, apgd_t, fab_t, square, end = left
    # APGD-T and FAB-T run their targets in turn on the examples left, several per call while those are few.
    rows_t, rows_f = (left * core.targets_per_call(left, TARGETS) for left in (apgd_t, fab_t))
    costs = {}
    for rows in {apgd_ce, rows_t, rows_f, square}:
        if rows > 0:
            costs[rows] = per_image_seconds(logits_fn, rows)
    forward_backward = lambda rows: costs[rows][1]  # noqa: E731
    forward = lambda rows: costs[rows][0]  # noqa: E731
    seconds = {
        "APGD-CE": apgd_t * (STEPS + 1) * forward_backward(apgd_ce) if apgd_ce else 0.0,
        "APGD-T": fab_t * TARGETS * (STEPS + 1) * forward_backward(rows_t) if apgd_t else 0.0,
        "FAB-T": square * TARGETS * STEPS * (forward_backward(rows_f) + forward(rows_f)) if fab_t else 0.0,
        "Square": end * QUERIES * forward(square) if square else 0.0,
    }
    per_image = {str(rows): {"forward": value[0], "forward_backward": value[1]} for rows, value in costs.items()}
    return seconds, per_image


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--name", required=True, help="the row of docs/autoattack_speed.json")
    parser.add_argument("--examples_left", required=True, help="5 comma-separated counts, see above")
    parser.add_argument("--standard", required=True, help="eval.json of bin/evaluate --attacks=autoattack")
    parser.add_argument("--standard_time_log", required=True, help="its /usr/bin/time -v log")
    args = parser.parse_args()
    try:
        left = [int(count) for count in args.examples_left.split(",")]
    except ValueError:
        left = []
    if len(left) != 5 or min(left) < 0:
        parser.error(f"--examples_left must be 5 counts >= 0, got {args.examples_left!r}")
    path = os.path.join(common.DOCS, "autoattack_speed.json")
    speed = json.load(open(path))
    row = next((row for row in speed["rows"] if row["model"] == args.name), None)
    if row is None:
        parser.error(f"{path} has no row {args.name!r}: run bench/compare_autoattack.py --speed first")
    attack = next(attack for attack in json.load(open(args.standard))["runs"][0]["attacks"]
                  if attack["name"] == "autoattack")
    outside = process_cpu_seconds(args.standard_time_log) - attack["cpu_seconds"]
    seconds, per_image = floor(logits_of_run(args.run_dir), left)
    passes = sum(seconds.values())
    reference = row["reference_cpu_seconds"]
    row["model_pass_floor"] = {
        "examples_left": left, "per_image_cpu_seconds": per_image,
        "model_pass_cpu_seconds": {name: round(value, 1) for name, value in seconds.items()},
        "model_pass_cpu_seconds_total": round(passes, 1),
        "outside_attack_cpu_seconds": round(outside, 1),
        "floor_cpu_seconds": round(passes + outside, 1),
        "floor_over_reference": round((passes + outside) / reference, 3),
        "model_passes_over_reference": round(passes / reference, 3),
        "standard_attack_cpu_seconds": round(attack["cpu_seconds"], 1),
        "threads": os.environ.get("TF_NUM_INTRAOP_THREADS", "default"),
        "fp32_peak_gflops_now": round(common.cpu_peak_gflops(), 1),
        "load_average_1min": os.getloadavg()[0],
    }
    with open(path + ".tmp", "w") as handle:
        json.dump(speed, handle, indent=1)
    os.replace(path + ".tmp", path)
    print(json.dumps(row["model_pass_floor"], indent=1))


if __name__ == "__main__":
    main()
