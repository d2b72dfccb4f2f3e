"""The machine a time was measured on: CPU model, vector instructions, fp32 peak."""
from rst_tf.measuring import machine


def test_the_widest_vector_instructions_are_named():
    assert machine.vector_isa(["sse2", "avx", "avx2", "avx512f"]) == "AVX-512"
    assert machine.vector_isa(["sse2", "avx", "avx2"]) == "AVX2"
    assert machine.vector_isa(["neon"]) is None


def test_a_description_measures_a_positive_peak_and_reads_as_one_line():
    found = machine.describe(peak_repeats=1)
    assert found["matmul_4096_fp32_gflops"] > 0 and found["cpus"] >= 1 and found["cpu_model"]
    assert "matmul_4096_fp32_gflops" not in machine.describe(peak_repeats=0)
    assert machine.label({"cpu_model": "AMD EPYC", "cpus": 2, "vector_isa": "AVX2",
                          "matmul_4096_fp32_gflops": 51.6}) == "AMD EPYC (AVX2), 2 CPUs, fp32 matmul 52 GFLOP/s"
    assert machine.label({"cpu_model": "AMD EPYC"}) == "AMD EPYC"
    assert machine.identity(dict(found, matmul_4096_fp32_gflops=1.0)) == machine.identity(found)
    assert machine.identity("AMD EPYC, 2 CPUs") == "AMD EPYC, 2 CPUs" and machine.peak_of("AMD EPYC") is None
    labelled = machine.label(dict(found, matmul_4096_fp32_gflops=190.4))
    assert machine.identity(labelled) == machine.identity(found) and machine.peak_of(labelled) == 190
