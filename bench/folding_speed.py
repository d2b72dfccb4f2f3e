"""Forward and forward-and-backward passes of a run's network as evaluation calls it (masks supplied to the masked
layers, BatchNorm in inference mode) against the folded inference graph (`rst_tf.method.folding`), side by side in
one process; and the masks' first top-k (XLA radix select, compile included) against `tf.math.top_k`.

    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 python bench/folding_speed.py --run_dir=runs/quick_rst \\
        --name=quick_rst --rows=46,75,300,414,441

CPU seconds per image (process user + system, median of --repeats interleaved rounds) at each batch of --rows images
(the sizes AutoAttack's components use on the run); the largest difference between the two paths' logits. Writes
docs/folding_speed.json (one entry per --name) and prints it.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from rst_tf.method import folding, layers, masking  # noqa: E402
from rst_tf.training import run_dir as run_folder  # noqa: E402


def _timed(function):
    """(process CPU seconds of `function()`, its value)."""
    began = time.process_time()
    value = function()
    return time.process_time() - began, value


def pass_functions(network, masks):
    """{path: (forward, forward and backward)} tf.functions of images, for the unfolded and the folded path."""
    masked = [layer for layer in layers.masked_layers(network) if layer.remaining_ratio < 1.0]
    mask_list = [masks[layer] for layer in masked]
    folded = folding.FoldedNetwork(network)
    parameters = folded.parameters(masks)

    def unfolded_logits(images, mask_list):
        with masking.supplied_masks(dict(zip(masked, mask_list))):
            return network(images, training=False)

    def folded_logits(images, parameters):
        return folded.logits(images, parameters)

    def functions(logits_fn, arguments):
        forward = tf.function(lambda x, arguments: logits_fn(x, arguments))

        @tf.function
        def forward_backward(x, arguments):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                logits = logits_fn(x, arguments)
                gap = logits[:, 1] - logits[:, 0]
            return tape.gradient(gap, x)

        return (lambda x: forward(x, arguments)), (lambda x: forward_backward(x, arguments))

    return {"unfolded": functions(unfolded_logits, mask_list), "folded": functions(folded_logits, parameters)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--name", required=True, help="the entry of docs/folding_speed.json")
    parser.add_argument("--rows", default="46,75,300,414,441", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    try:
        rows_list = [int(rows) for rows in args.rows.split(",")]
    except ValueError:
        rows_list = []
    if not rows_list or min(rows_list) < 1:
        parser.error(f"--rows must be comma-separated counts >= 1, got {args.rows!r}")
    network, _ = run_folder.load_run(args.run_dir, "best")

    radix_seconds, radix = _timed(lambda: {k: v.numpy() for k, v in layers.current_masks(network).items()})
    top_k_seconds, exact = _timed(lambda: {k: v.numpy() for k, v in folding.exact_masks(network).items()})
    identical = set(map(id, radix)) == set(map(id, exact)) and all(
        np.array_equal(radix[layer], exact[layer]) for layer in radix)
    masks = {layer: tf.constant(value) for layer, value in radix.items()}

    paths = pass_functions(network, masks)
    probe = tf.random.stateless_uniform([64, 32, 32, 3], [0, 1])
    difference = float(tf.reduce_max(tf.abs(paths["unfolded"][0](probe) - paths["folded"][0](probe))))
    per_image = {}
    for rows in rows_list:
        images = tf.random.stateless_uniform([rows, 32, 32, 3], [0, rows])
        samples = {(path, kind): [] for path in paths for kind in ("forward", "forward_backward")}
        for path, pair in paths.items():
            for function in pair:
                function(images).numpy()
        for _ in range(args.repeats):
            for path, (forward, forward_backward) in paths.items():
                for kind, function in (("forward", forward), ("forward_backward", forward_backward)):
                    seconds, _ = _timed(lambda: function(images).numpy())
                    samples[(path, kind)].append(seconds / rows)
        medians = {f"{path}_{kind}": statistics.median(values) for (path, kind), values in samples.items()}
        for kind in ("forward", "forward_backward"):
            medians[f"saved_{kind}"] = 1.0 - medians[f"folded_{kind}"] / medians[f"unfolded_{kind}"]
        per_image[str(rows)] = medians
        print(rows, json.dumps({key: round(value, 7) for key, value in medians.items()}), flush=True)

    entry = {
        "per_image_cpu_seconds": per_image,
        "largest_logit_difference": difference,
        "first_masks_cpu_seconds": {"radix_select_xla": round(radix_seconds, 2),
                                    "tf_math_top_k": round(top_k_seconds, 2)},
        "top_k_masks_identical": bool(identical),
        "threads": os.environ.get("TF_NUM_INTRAOP_THREADS", "default"),
        "repeats": args.repeats,
        "machine": {"cpu_model": common.cpu_info()["cpu_model"], "cpus": os.cpu_count(),
                    "fp32_peak_gflops": round(common.cpu_peak_gflops(), 1),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
    }
    common.write_entry("folding_speed", args.name, entry)
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
