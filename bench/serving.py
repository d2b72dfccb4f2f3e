"""Sizes of a six-ticket ResNet18 bank (.rst, R2S SavedModel) against one dense fp32 model, and serving latency of
the R2S SavedModel against a single-ticket SavedModel.

    python bench/serving.py [--width 1.0] [--batch 1] [--calls 50] [--repeats 7]

Tickets at the paper's remaining ratios 5, 7, 10, 15, 20 and 30% over one random ResNet18 (seed 0). Their masks
are the top-k of freshly drawn scores (a search moves scores but keeps the count; the code size depends on the
kept fraction, not on where the kept weights lie), with BatchNorm statistics calibrated on random images. Both
SavedModels are loaded with TensorFlow alone and called through `serving_default`; a round times `--calls` calls
of each, interleaved. Results: docs/serving.json.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import common  # noqa: E402
from rst_tf import artifact, export, layers, mask_codec, networks, r2s  # noqa: E402

RATIOS = r2s.DEFAULT_REMAINING_RATIOS


def ticket(width, ratio, index):
    network = networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                             remaining_ratio=ratio, seed=0, width_multiplier=width)
    rng = np.random.default_rng(index)
    for layer in layers.masked_layers(network):
        layer.scores.assign(rng.standard_normal(layer.scores.shape).astype(np.float32))
    norms = layers.batch_norm_layers(network)
    for layer in norms:
        layer.momentum = 0.0
    network(tf.random.stateless_uniform([64, 32, 32, 3], [index, 0]), training=True)
    return network, r2s.ticket_of(network, f"ratio_{ratio:g}")


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    built = [ticket(args.width, ratio, index) for index, ratio in enumerate(RATIOS)]
    network = built[0][0]
    bank = r2s.MaskBank(network, [found for _, found in built])
    spec = artifact.network_spec(dict(network="resnet18", dataset="cifar10", remaining_ratio=RATIOS[0],
                                      sparsity="element", weight_init="signed_kaiming_constant", seed=0,
                                      scale_fan=False, width_multiplier=args.width, dense_first_conv=False,
                                      dense_classifier=False), 10, (32, 32, 3))
    weights = sum(int(np.prod(layer.kernel.shape)) for layer in layers.masked_layers(network))
    with tempfile.TemporaryDirectory() as folder:
        bank_path = os.path.join(folder, "bank.rst")
        artifact.write(bank_path, {"default": spec}, bank.tickets, {"default": network})
        single_path = export.save(os.path.join(folder, "single"), {"cifar10": r2s.MaskBank(network, bank.tickets[:1])})
        r2s_path = export.save(os.path.join(folder, "r2s"), {"cifar10": bank})
        sizes = {"rst_file": os.path.getsize(bank_path), "single_ticket_saved_model": folder_bytes(single_path),
                 "r2s_saved_model": folder_bytes(r2s_path), "dense_fp32_weights": 4 * weights,
                 "masks_bit_packed": sum((mask.size + 7) // 8 for t in bank.tickets for mask in t.masks.values()),
                 "masks_coded": sum(mask_codec.encode(mask).num_bytes for t in bank.tickets
                                    for mask in t.masks.values()),
                 "batch_norm_statistics": sum(mean.nbytes + variance.nbytes for t in bank.tickets
                                              for mean, variance in t.statistics.values())}
        images = tf.random.stateless_uniform([args.batch, 32, 32, 3], [1, 2])
        single = tf.saved_model.load(single_path).signatures["serving_default"]
        switching = tf.saved_model.load(r2s_path).signatures["serving_default"]

        def calls(serve):
            def run():
                for _ in range(args.calls):
                    serve(images=images)["logits"].numpy()
            return run

        medians, times = common.interleaved_medians({"single": calls(single), "r2s": calls(switching)}, args.repeats)
    per_call = {name: value / args.calls for name, value in medians.items()}
    results = {"machine": common.machine(), "width_multiplier": args.width, "batch": args.batch,
               "calls_per_round": args.calls, "repeats": args.repeats, "remaining_ratios": list(RATIOS),
               "masked_weights": weights, "bytes": sizes,
               "rst_vs_dense_fp32": sizes["rst_file"] / sizes["dense_fp32_weights"],
               "seconds_per_call": per_call, "r2s_vs_single": per_call["r2s"] / per_call["single"],
               "round_seconds": times}
    path = common.write_results("serving", results)
    print(f".rst bank of {len(RATIOS)} tickets: {sizes['rst_file'] / 1e6:.2f} MB; dense fp32 weights "
          f"{sizes['dense_fp32_weights'] / 1e6:.2f} MB; single-ticket SavedModel "
          f"{sizes['single_ticket_saved_model'] / 1e6:.2f} MB; R2S SavedModel {sizes['r2s_saved_model'] / 1e6:.2f} MB")
    print(f"batch {args.batch}: single {1e3 * per_call['single']:.2f} ms, R2S {1e3 * per_call['r2s']:.2f} ms per call "
          f"(x{results['r2s_vs_single']:.2f}); {path}")


if __name__ == "__main__":
    main()
