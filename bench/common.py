"""Timing helpers shared by the benchmarks: interleaved repetitions, medians, results files."""
import json
import os
import platform
import statistics
import time

import tensorflow as tf

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
CPU_PEAK_GFLOPS = 476.0  # fp32 peak of this 2-core CPU, reached by a large TensorFlow matmul


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
    return {"cpus": os.cpu_count(), "tensorflow": tf.__version__, "platform": platform.platform()}


def write_results(name, results):
    os.makedirs(DOCS, exist_ok=True)
    path = os.path.join(DOCS, f"{name}.json")
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2)
    return path
