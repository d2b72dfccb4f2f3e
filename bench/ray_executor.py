"""bin/sweep under --executor=local against --executor=ray --cpus_per_run=1: a tiny 4-run sweep, side by side.

    nice -n 5 python bench/ray_executor.py [--repeats 1] [--train_examples 32] [--epochs 1]

Each repetition runs the same sweep (ResNet18 at width 1/16, four remaining ratios) as a fresh command under each
executor in turn, timing the whole command (Python and TensorFlow start-up, Ray's start and its worker processes,
the runs, the summary). Ray's start-up cost is measured on its own: `ray.init` of a Ray on this machine and its
shutdown, in a fresh process. The same run records the CPU model, the measured fp32 rate of a 4096x4096 TensorFlow
matmul (bench/common.py) and the load average (the machine may be shared).
Results: docs/ray_executor.json.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIOS = "0.05,0.1,0.2,0.5"
RAY_START = """
import time
began = time.perf_counter()
import ray
imported = time.perf_counter()
ray.init(address="local", include_dashboard=False, logging_level="ERROR")
started = time.perf_counter()
ray.shutdown()
print(imported - began, started - imported, time.perf_counter() - started)
"""


def sweep_command(executor, output_dir, args):
    return [sys.executable, os.path.join(ROOT, "bin", "sweep.py"), "--network=resnet18", "--width_multiplier=0.0625",
            f"--train_examples={args.train_examples}", "--validation_examples=16", "--test_examples=16",
            "--batch_size=32", "--attack_steps=1", "--eval_attack_steps=1", f"--epochs={args.epochs}", "--seed=3",
            "--noprogress", f"--remaining_ratios={RATIOS}", f"--output_dir={output_dir}", f"--executor={executor}",
            "--cpus_per_run=1"]


def timed(command, env):
    began = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - began


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--train_examples", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    data_dir = os.environ.get("RST_TF_DATA_DIR", "")
    if not os.path.isdir(os.path.join(data_dir, "train")):
        raise SystemExit("RST_TF_DATA_DIR must name the unpacked CIFAR-10 copy")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")

    load_before = os.getloadavg()[0]
    gflops, _ = common.matmul_gflops()  # measured now; common.machine() reuses it
    folder = tempfile.mkdtemp(prefix="bench_ray_")
    walls = {"local": [], "ray": []}
    ray_start = []
    try:
        for repeat in range(args.repeats):
            for executor in walls:
                output_dir = os.path.join(folder, f"{executor}_{repeat}")
                walls[executor].append(timed(sweep_command(executor, output_dir, args), env))
                print(f"repeat {repeat + 1}/{args.repeats}: {executor} {walls[executor][-1]:.1f} s", flush=True)
            result = subprocess.run([sys.executable, "-c", RAY_START], env=env, capture_output=True, text=True,
                                    check=True)
            ray_start.append([float(value) for value in result.stdout.split()[-3:]])
            print(f"  ray import / init / shutdown: {' / '.join(f'{v:.1f}' for v in ray_start[-1])} s", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    median = {executor: statistics.median(values) for executor, values in walls.items()}
    results = {
        "what": "bin/sweep over 4 remaining ratios of a tiny search (ResNet18 at width 1/16), the whole command "
                "timed under each executor; Ray's start-up timed alone in a fresh process",
        "command": f"nice -n 5 python bench/ray_executor.py --repeats {args.repeats} --train_examples "
                   f"{args.train_examples} --epochs {args.epochs}",
        "sweep": {"remaining_ratios": RATIOS, "train_examples": args.train_examples, "epochs": args.epochs,
                  "width_multiplier": 0.0625, "batch_size": 32, "attack_steps": 1},
        "wall_seconds": walls, "median_wall_seconds": median,
        "ray_over_local": median["ray"] / median["local"],
        "ray_start_seconds": {"import": statistics.median(v[0] for v in ray_start),
                              "init": statistics.median(v[1] for v in ray_start),
                              "shutdown": statistics.median(v[2] for v in ray_start),
                              "samples": ray_start},
        "machine": {"load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0],
                    "matmul_4096_fp32_gflops": gflops},
    }
    path = common.write_results("ray_executor", results)
    print(f"local {median['local']:.1f} s, ray {median['ray']:.1f} s (x{results['ray_over_local']:.2f}); Ray "
          f"start {results['ray_start_seconds']['init']:.1f} s; peak {gflops:.0f} GFLOP/s; wrote {path}")


if __name__ == "__main__":
    main()
