"""Seconds per training step: RST PGD-7 search vs dense PGD-7 adversarial training, same network and batch.

    python bench/search_step.py [--width 0.25] [--batch 128] [--steps 7] [--remaining_ratio 0.05] [--repeats 5]
        [--xla] [--mixed_precision] [--name NAME]

Both use `SearchModel.replica_step` (one code path) inside tf.function, interleaved on the same batch. Reports
medians, the ratio, and achieved FLOP/s as a fraction of this CPU's fp32 peak, counting the FLOPs a PGD step needs
(see `step_flops`; the cruder count of a full backward pass per attack iteration is reported beside it). Results:
docs/search_step.json
(with --xla: docs/search_step_xla.json; with --mixed_precision, the same steps also built under Keras's
mixed_bfloat16 policy: docs/search_step_mixed_precision.json; with --name: docs/NAME.json).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import common  # noqa: E402
from rst_tf import attacks, networks  # noqa: E402
from rst_tf.search import search_model  # noqa: E402


def forward_flops(model, batch):
    """FLOPs of one forward pass (2 per multiply-add), from TensorFlow's graph profiler."""
    from tensorflow.python.profiler import model_analyzer, option_builder
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([batch, 32, 32, 3], tf.float32))
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return model_analyzer.profile(concrete.graph, options=options).total_float_ops


def step_flops(forward, attack_steps):
    """FLOPs of one PGD-k training step from those of one forward pass: (needed, every pass with a full backward).

    An attack iteration needs the gradient to the input only: a forward pass and a backward pass through the
    activations (~1 forward each), no weight gradients. The update is a forward pass and a full backward pass (input
    and weight gradients, ~2 forwards). So (2k + 3) forwards, 17 for PGD-7; counting a full backward pass for every
    iteration gives 3(k + 1), 24 for PGD-7."""
    return (2 * attack_steps + 3) * forward, 3 * (attack_steps + 1) * forward


def flop_figures(forward_gflop, attack_steps, median_seconds, peak_gflops):
    """The step's FLOP counts and achieved fractions of the fp32 peak; `fraction_of_peak` uses the needed count."""
    needed, full_backward = step_flops(forward_gflop, attack_steps)
    return {
        "forward_gflop": forward_gflop,
        "step_gflop": needed,
        "step_gflop_full_backward": full_backward,
        "flop_count": f"step_gflop: {2 * attack_steps + 3} forwards (each attack iteration a forward and a backward "
                      f"pass to the input, the update a forward and a full backward pass); step_gflop_full_backward: "
                      f"{3 * (attack_steps + 1)} forwards (a full backward pass in every iteration). fraction_of_peak "
                      f"and floor_seconds_at_peak use step_gflop.",
        "floor_seconds_at_peak": needed / peak_gflops,
        "fraction_of_peak": {name: needed / seconds / peak_gflops for name, seconds in median_seconds.items()},
        "fraction_of_peak_full_backward": {name: full_backward / seconds / peak_gflops
                                           for name, seconds in median_seconds.items()},
    }


def make_step(mode, width, steps, xla, policy="float32", remaining_ratio=0.05):
    keras.mixed_precision.set_global_policy(policy)
    network = networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                             remaining_ratio=1.0 if mode == "dense_at" else remaining_ratio, width_multiplier=width,
                             seed=0)
    search_model.configure_mode(network, mode)
    model = search_model.SearchModel(network, attacks.AttackConfig(name="pgd", steps=steps, step_size=2 / 255))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=xla)
    model.optimizer.build(model.trainable_variables)
    keras.mixed_precision.set_global_policy("float32")
    return model, tf.function(model.replica_step, jit_compile=xla)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--remaining_ratio", type=float, default=0.05, help="the RST's remaining ratio")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="", help="results in docs/NAME.json instead of the default name")
    parser.add_argument("--xla", action="store_true",
                        help="also time both with jit_compile=True (results in docs/search_step_xla.json)")
    parser.add_argument("--mixed_precision", action="store_true",
                        help="also time both under mixed_bfloat16 (results in docs/search_step_mixed_precision.json)")
    args = parser.parse_args()
    images = tf.random.stateless_uniform([args.batch, 32, 32, 3], seed=[0, 0])
    labels = tf.random.stateless_uniform([args.batch], seed=[0, 1], maxval=10, dtype=tf.int32)
    variants = [("rst", False, "float32"), ("dense_at", False, "float32")]
    variants += [("rst", True, "float32"), ("dense_at", True, "float32")] if args.xla else []
    if args.mixed_precision:
        variants += [("rst", False, "mixed_bfloat16"), ("dense_at", False, "mixed_bfloat16")]
    functions, flops = {}, None
    for mode, xla, policy in variants:
        model, step = make_step(mode, args.width, args.steps, xla, policy, args.remaining_ratio)
        if flops is None:
            flops = forward_flops(model.network, args.batch)
        name = f"{mode}{'_xla' if xla else ''}{'_bf16' if policy != 'float32' else ''}"
        functions[name] = (lambda s: lambda: float(s(images, labels)["loss"]))(step)
    medians, samples = common.interleaved_medians(functions, args.repeats)
    peak = common.cpu_peak_gflops()
    results = {
        "what": f"ResNet18 PGD-{args.steps} training step: RST search vs dense adversarial training",
        "width_multiplier": args.width, "batch": args.batch, "attack_steps": args.steps,
        "remaining_ratio": args.remaining_ratio, "repeats": args.repeats,
        "median_seconds": medians, "samples": samples,
        "rst_over_dense_at": medians["rst"] / medians["dense_at"],
        **flop_figures(flops / 1e9, args.steps, medians, peak),
        "machine": common.machine(),
    }
    if args.xla:
        results["xla_over_plain"] = {mode: medians[f"{mode}_xla"] / medians[mode] for mode in ("rst", "dense_at")}
    if args.mixed_precision:
        results["bf16_over_float32"] = {mode: medians[f"{mode}_bf16"] / medians[mode] for mode in ("rst", "dense_at")}
    name = args.name or ("search_step_xla" if args.xla else "search_step_mixed_precision" if args.mixed_precision
                         else "search_step")
    print(common.write_results(name, results))
    for key in ("median_seconds", "rst_over_dense_at", "step_gflop", "step_gflop_full_backward",
                "floor_seconds_at_peak", "fraction_of_peak", "fraction_of_peak_full_backward"):
        print(key, results[key])


if __name__ == "__main__":
    main()
