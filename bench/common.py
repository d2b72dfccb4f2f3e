"""Timing helpers shared by the benchmarks: interleaved repetitions, medians, the machine they ran on (CPU model
and flags, fp32 peak measured in the same run), results files."""
import functools
import json
import os
import platform
import statistics
import time

import tensorflow as tf

from rst_tf.measuring import machine as machine_info

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
PEAK_MATMUL_SIZE = machine_info.PEAK_MATMUL_SIZE
PEAK_REPEATS = 5


@functools.lru_cache(maxsize=None)
def matmul_gflops():
    """fp32 GFLOP/s of a 4096x4096 TensorFlow matmul on this machine now: (median, every sample)."""
    return machine_info.matmul_gflops(PEAK_REPEATS)


def cpu_peak_gflops():
    """The measured fp32 peak (median 4096x4096 matmul), for fractions of peak."""
    return matmul_gflops()[0]


def cpu_info():
    """The CPU's model name and flags from /proc/cpuinfo (first processor), or 'unknown'."""
    return machine_info.cpu_info()


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
