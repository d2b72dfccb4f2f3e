"""bench/search_step.py's FLOP count of a PGD step and the figures it stored in docs/."""
import json
import os

import pytest

from bench.search_step import flop_figures, step_flops

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def test_a_pgd_7_step_is_17_forwards_needed_and_24_with_full_backward_passes():
    assert step_flops(9.0, 7) == (17 * 9.0, 24 * 9.0)
    assert step_flops(1.0, 1) == (5.0, 6.0)  # one attack iteration: forward + input backward, then the update


def test_fraction_of_peak_uses_the_needed_count():
    figures = flop_figures(9.0, 7, {"rst": 0.8}, peak_gflops=480.0)
    assert figures["step_gflop"] == pytest.approx(153.0) and figures["step_gflop_full_backward"] == pytest.approx(216)
    assert figures["fraction_of_peak"]["rst"] == pytest.approx(153.0 / 0.8 / 480.0)
    assert figures["fraction_of_peak_full_backward"]["rst"] == pytest.approx(216.0 / 0.8 / 480.0)
    assert figures["floor_seconds_at_peak"] == pytest.approx(153.0 / 480.0)


@pytest.mark.parametrize("name", ["search_step", "search_step_xla", "search_step_mixed_precision"])
def test_stored_results_follow_the_count(name):
    with open(os.path.join(DOCS, f"{name}.json")) as handle:
        results = json.load(handle)
    steps, forward = results["attack_steps"], results["forward_gflop"]
    assert results["step_gflop"] == pytest.approx((2 * steps + 3) * forward)
    assert results["step_gflop_full_backward"] == pytest.approx(3 * (steps + 1) * forward)
    peak = results["step_gflop"] / results["floor_seconds_at_peak"]
    for variant, seconds in results["median_seconds"].items():
        assert results["fraction_of_peak"][variant] == pytest.approx(results["step_gflop"] / seconds / peak)
