"""Runs side by side on one machine: TensorFlow's threads per run as many as its CPUs, or TensorFlow's default.

    nice -n 5 python bench/threads_per_run.py [--runs 2] [--width 0.0625] [--batch 64] [--attack_steps 3]
        [--remaining_ratio 0.2] [--steps 30] [--rounds 3] [--name NAME]

What a study does under `--executor=ray --cpus_per_run=1` on a machine with as many cores as `--runs`: each round
starts `--runs` processes at once with one TensorFlow thread each (within an op and across ops, as
`ray_executor.use_threads` sets them), then `--runs` processes with TensorFlow's default (every core each); the
rounds alternate. Every process builds the RST search step of `bench/search_step.py` (the scaling study's by
default: width 1/16, batch 64, PGD-3, 20% of the weights), warms it up, waits for the others, then times `--steps`
steps: wall seconds, and process CPU seconds. Reported per setting (medians over rounds): images per second of all
runs together, and CPU milliseconds per step. The same run records the CPU model, the measured fp32 rate of a
4096x4096 TensorFlow matmul (bench/common.py) and the load average (the machine may be shared).
Results: docs/threads_per_run.json (with --name: docs/NAME.json).
"""
import argparse
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SETTINGS = {"one_thread": 1, "default": 0}


def _timed_steps(threads, args, barrier, results):
    """In a fresh process: TensorFlow's threads, the step built and warmed up, then `args.steps` timed steps once
    every process is ready; puts (wall seconds, CPU seconds) in `results`."""
    from rst_tf.study import ray_executor

    ray_executor.use_threads(threads)
    import tensorflow as tf

    from bench import search_step

    images = tf.random.stateless_uniform([args.batch, 32, 32, 3], seed=[0, 0])
    labels = tf.random.stateless_uniform([args.batch], seed=[0, 1], maxval=10, dtype=tf.int32)
    _, step = search_step.make_step("rst", args.width, args.attack_steps, False, "float32", args.remaining_ratio)
    for _ in range(3):
        float(step(images, labels)["loss"])
    barrier.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        float(step(images, labels)["loss"])
    results.put((time.perf_counter() - wall, time.process_time() - cpu))


def _round(threads, args, context):
    """`args.runs` processes at once with `threads` each: (images per second of all, CPU ms per step)."""
    barrier, results = context.Barrier(args.runs), context.Queue()
    processes = [context.Process(target=_timed_steps, args=(threads, args, barrier, results))
                 for _ in range(args.runs)]
    for process in processes:
        process.start()
    found = [results.get() for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode:
            raise SystemExit(f"a timed process failed with exit code {process.exitcode}")
    slowest = max(wall for wall, _ in found)
    return args.runs * args.steps * args.batch / slowest, 1000 * sum(cpu for _, cpu in found) / (args.runs * args.steps)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2, help="processes side by side (the cores of the machine)")
    parser.add_argument("--width", type=float, default=0.0625)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--attack_steps", type=int, default=3)
    parser.add_argument("--remaining_ratio", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="threads_per_run", help="results in docs/NAME.json")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    samples = {name: {"images_per_second": [], "cpu_ms_per_step": []} for name in SETTINGS}
    for round_index in range(args.rounds):
        for name, threads in SETTINGS.items():
            images_per_second, cpu_ms = _round(threads, args, context)
            samples[name]["images_per_second"].append(images_per_second)
            samples[name]["cpu_ms_per_step"].append(cpu_ms)
            print(f"round {round_index + 1}/{args.rounds} {name}: {images_per_second:.1f} images/s, "
                  f"{cpu_ms:.0f} CPU ms/step", flush=True)
    medians = {name: {key: statistics.median(values) for key, values in found.items()}
               for name, found in samples.items()}
    from bench import common

    results = {
        "what": f"{args.runs} RST search runs side by side (ResNet18 width {args.width:g}, batch {args.batch}, "
                f"PGD-{args.attack_steps}, remaining ratio {args.remaining_ratio:g}): one TensorFlow thread per run "
                "against TensorFlow's default",
        "runs": args.runs, "width_multiplier": args.width, "batch": args.batch, "attack_steps": args.attack_steps,
        "remaining_ratio": args.remaining_ratio, "timed_steps": args.steps, "rounds": args.rounds,
        "medians": medians, "samples": samples,
        "one_thread_over_default": {
            "images_per_second": medians["one_thread"]["images_per_second"] / medians["default"]["images_per_second"],
            "cpu_ms_per_step": medians["one_thread"]["cpu_ms_per_step"] / medians["default"]["cpu_ms_per_step"]},
    }
    print(common.write_results(args.name, results))
    print(results["medians"], results["one_thread_over_default"])


if __name__ == "__main__":
    main()
