"""The machine a time was measured on: its CPU model and vector instructions, and its fp32 peak measured now (a
4096x4096 TensorFlow matmul), so that times from different machines are read side by side with their speed.

    machine.cpu_info()            # {"cpu_model": "AMD EPYC 9R14", "cpu_flags": [...]}
    machine.matmul_gflops()       # (median GFLOP/s, every sample), on this process's TensorFlow threads
    machine.describe()            # {"cpu_model", "cpus", "vector_isa", "matmul_4096_fp32_gflops"}
    machine.identity(found)       # "AMD EPYC (AVX-512), 2 CPUs": the machine, whatever its speed now
"""
import os
import re
import statistics
import time

PEAK_MATMUL_SIZE = 4096


def cpu_info():
    """The CPU's model name and flags from /proc/cpuinfo (first processor), or 'unknown' and none."""
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


def vector_isa(flags):
    """The widest x86 vector instructions among /proc/cpuinfo `flags`: AVX-512, AVX2, AVX, SSE, or None."""
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse2", "SSE")):
        if flag in flags:
            return name
    return None


def matmul_gflops(repeats=5):
    """fp32 GFLOP/s of a 4096x4096 TensorFlow matmul in this process now (its TensorFlow threads): (median, every
    sample), after one untimed warm-up."""
    import tensorflow as tf

    a = tf.random.stateless_uniform([PEAK_MATMUL_SIZE] * 2, [0, 1])
    b = tf.random.stateless_uniform([PEAK_MATMUL_SIZE] * 2, [0, 2])
    flops = 2 * PEAK_MATMUL_SIZE ** 3
    tf.matmul(a, b).numpy()
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        tf.matmul(a, b).numpy()
        samples.append(flops / (time.perf_counter() - began) / 1e9)
    return statistics.median(samples), tuple(samples)


def describe(peak_repeats=3):
    """{cpu_model, cpus, vector_isa, matmul_4096_fp32_gflops (median of `peak_repeats`; omitted if 0)}."""
    info = cpu_info()
    found = {"cpu_model": info["cpu_model"], "cpus": os.cpu_count(), "vector_isa": vector_isa(info["cpu_flags"])}
    if peak_repeats:
        found["matmul_4096_fp32_gflops"] = round(matmul_gflops(peak_repeats)[0], 1)
    return found


_LABELLED_PEAK = re.compile(r"^(?P<identity>.*), fp32 matmul (?P<peak>[0-9.]+) GFLOP/s$")


def identity(described):
    """Which machine a `describe` result names, without its speed now: "AMD EPYC (AVX-512), 2 CPUs" (a text, as
    older results give, without the peak that `label` appends)."""
    if isinstance(described, str):
        found = _LABELLED_PEAK.match(described)
        return found["identity"] if found else described
    text = described.get("cpu_model", "unknown")
    if described.get("vector_isa"):
        text += f" ({described['vector_isa']})"
    if described.get("cpus"):
        text += f", {described['cpus']} CPUs"
    return text


def peak_of(described):
    """The fp32 peak a `describe` result (or a `label`) measured, or None."""
    if isinstance(described, str):
        found = _LABELLED_PEAK.match(described)
        return float(found["peak"]) if found else None
    return described.get("matmul_4096_fp32_gflops")


def label(described):
    """One line for a `describe` result: "AMD EPYC (AVX-512), 2 CPUs, fp32 matmul 212 GFLOP/s"."""
    text = identity(described)
    if peak_of(described):
        text += f", fp32 matmul {peak_of(described):.0f} GFLOP/s"
    return text
