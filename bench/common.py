"""Timing helpers shared by the benchmarks: interleaved repetitions, medians, the machine they ran on (CPU model
and flags, fp32 peak measured in the same run), results files."""
import functools
import json
import os
import platform
import statistics
import time

import tensorflow as tf

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
PEAK_MATMUL_SIZE = 4096
PEAK_REPEATS = 5


@functools.lru_cache(maxsize=None)
def matmul_gflops():
    """fp32 GFLOP/s of a 4096x4096 TensorFlow matmul on this machine now: (median, every sample)."""
    a = tf.random.stateless_uniform([PEAK_MATMUL_SIZE] * 2, [0, 1])
    b = tf.random.stateless_uniform([PEAK_MATMUL_SIZE] * 2, [0, 2])
    flops = 2 * PEAK_MATMUL_SIZE ** 3
    tf.matmul(a, b).numpy()
    samples = []
    for _ in range(PEAK_REPEATS):
        began = time.perf_counter()
        tf.matmul(a, b).numpy()
        samples.append(flops / (time.perf_counter() - began) / 1e9)
    return statistics.median(samples), tuple(samples)


def cpu_peak_gflops():
    """The measured fp32 peak (median 4096x4096 matmul), for fractions of peak."""
    return matmul_gflops()[0]


def cpu_info():
    """The CPU's model name and flags from /proc/cpuinfo (first processor), or 'unknown'."""
    info = {"cpu_model": "unknown", "cpu_flags": []}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and info["cpu_model"] == "unknown":
                    info["cpu_model"] = value.strip()
                elif key.strip() == "flags" and not info["cpu_flags"]:
                    info["cpu_flags"] = value.split()
    except OSError:
        pass
    return info


def interleaved_medians(functions, repeats):
    """Run each function once to warm up, then `repeats` rounds of all of them in turn; median seconds of each."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            began = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in times.items()}, times


def machine():
    """Where a result was measured: cores, TensorFlow, platform, CPU model and flags, the fp32 matmul peak now."""
    peak, samples = matmul_gflops()
    return {"cpus": os.cpu_count(), "tensorflow": tf.__version__, "platform": platform.platform(), **cpu_info(),
            "matmul_4096_fp32_gflops": peak, "matmul_4096_fp32_gflops_samples": list(samples),
            "load_average_1min": os.getloadavg()[0]}


def write_results(name, results):
    """Write docs/<name>.json, its "machine" entry completed with `machine()` (CPU, flags, measured peak)."""
    results = dict(results)
    results["machine"] = {**machine(), **results.get("machine", {})}
    os.makedirs(DOCS, exist_ok=True)
    path = os.path.join(DOCS, f"{name}.json")
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2)
    return path


def write_entry(name, key, entry):
    """Set `key` to `entry` in docs/<name>.json (other keys kept), written whole or not at all."""
    path = os.path.join(DOCS, f"{name}.json")
    found = json.load(open(path)) if os.path.exists(path) else {}
    found[key] = entry
    with open(path + ".tmp", "w") as handle:
        json.dump(found, handle, indent=1)
    os.replace(path + ".tmp", path)
    return path
