"""The top-k mask (`masking.top_k_mask`) vs a mask made with `tf.math.top_k`, on the layer shapes of ResNet18.

    python bench/topk.py [--remaining_ratio 0.05] [--repeats 7]

Both make the same binary mask of the kept fraction of random magnitudes, side by side and interleaved in one run;
the `tf.math.top_k` mask runs in a tf.function (top_k, then a scatter of ones). The same run records the CPU model,
the measured fp32 rate of a 4096x4096 TensorFlow matmul (bench/common.py) and the load average (the machine may be
shared).
Results: docs/topk.json.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import common  # noqa: E402
from rst_tf.method import masking  # noqa: E402

# Distinct kernel shapes (HWIO) of the CIFAR ResNet18 (full width, 10 classes) and how many layers have each.
RESNET18_SHAPES = (
    ((3, 3, 3, 64), 1), ((3, 3, 64, 64), 4), ((3, 3, 64, 128), 1), ((3, 3, 128, 128), 3), ((1, 1, 64, 128), 1),
    ((3, 3, 128, 256), 1), ((3, 3, 256, 256), 3), ((1, 1, 128, 256), 1), ((3, 3, 256, 512), 1),
    ((3, 3, 512, 512), 3), ((1, 1, 256, 512), 1), ((512, 10), 1),
)


@tf.function
def tf_top_k_mask(magnitudes, keep):
    flat = tf.reshape(magnitudes, [-1])
    _, indices = tf.math.top_k(flat, keep)
    kept = tf.scatter_nd(indices[:, None], tf.ones_like(indices, tf.float32), tf.shape(flat))
    return tf.reshape(kept, tf.shape(magnitudes))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--remaining_ratio", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    gflops, _ = common.matmul_gflops()  # measured now; common.machine() reuses it
    rows = []
    for index, (shape, count) in enumerate(RESNET18_SHAPES):
        magnitudes = tf.random.stateless_uniform(shape, seed=[7, index])
        size = int(np.prod(shape))
        keep = tf.constant(masking.kept_count(size, args.remaining_ratio), tf.int32)
        ours = masking.top_k_mask(magnitudes, args.remaining_ratio).numpy()
        theirs = tf_top_k_mask(magnitudes, keep).numpy()
        if not np.array_equal(ours, theirs):
            raise SystemExit(f"error: the masks differ for shape {shape}")
        medians, samples = common.interleaved_medians({
            "top_k_mask": lambda: masking.top_k_mask(magnitudes, args.remaining_ratio).numpy(),
            "tf.math.top_k": lambda: tf_top_k_mask(magnitudes, keep).numpy(),
        }, args.repeats)
        rows.append({"shape": list(shape), "layers": count, "weights": size, "median_seconds": medians,
                     "samples": samples, "speedup": medians["tf.math.top_k"] / medians["top_k_mask"]})
        print(f"{str(shape):>20} x{count}  top_k_mask {medians['top_k_mask'] * 1e3:8.2f} ms   "
              f"tf.math.top_k {medians['tf.math.top_k'] * 1e3:8.2f} ms   {rows[-1]['speedup']:5.1f}x")

    network = {name: sum(row["median_seconds"][name] * row["layers"] for row in rows)
               for name in ("top_k_mask", "tf.math.top_k")}
    results = {
        "machine": dict(common.machine(), load_average_1min_before=load_before),
        "remaining_ratio": args.remaining_ratio, "repeats": args.repeats, "layers": rows,
        "resnet18_all_layers_seconds": network,
        "resnet18_all_layers_speedup": network["tf.math.top_k"] / network["top_k_mask"],
    }
    print(f"CPU {results['machine']['cpu_model']}, {results['machine']['cpus']} cores; "
          f"4096x4096 fp32 matmul {gflops:.0f} GFLOP/s; load average {load_before:.1f}")
    print(f"all 21 layers: top_k_mask {network['top_k_mask']:.3f} s, tf.math.top_k {network['tf.math.top_k']:.3f} s, "
          f"{results['resnet18_all_layers_speedup']:.1f}x")
    print("wrote", common.write_results("topk", results))


if __name__ == "__main__":
    main()
