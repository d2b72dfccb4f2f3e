"""The scaling study: its plan and running order, bad input, the cost model, the claims (per width and the trend
across widths) from per-example results, the report, and evaluation and records of stand-in runs."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from rst_tf.study import executors, report, scaling, scaling_report
from rst_tf.measuring import contrasts
from rst_tf.training.config import SearchConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = (0.0625, 0.125, 0.25)
RATIOS = (0.05, 0.1, 0.2)


def test_plan_runs_width_by_width_from_the_narrowest_each_seed_dense_at_then_its_rst_sweep(tmp_path):
    planned = scaling.plan(SearchConfig(epochs=1), WIDTHS, RATIOS, str(tmp_path), (0, 1, 2))
    assert scaling.unit_order(planned) == [(w, s) for w in WIDTHS for s in (0, 1, 2)]
    order = [(width, seed, step.name) for width, seed, step in scaling.running_order(planned)]
    assert order[:4] == [(WIDTHS[0], 0, "dense_at"), (WIDTHS[0], 0, "rst"), (WIDTHS[0], 1, "dense_at"),
                         (WIDTHS[0], 1, "rst")]
    assert [width for width, _, _ in order] == [w for w in WIDTHS for _ in range(6)]
    dense, rst = planned[0.125, 2]
    assert dense.output_dir == str(tmp_path / "width_0.125" / "seed_2" / "dense_at")
    assert (dense.config.mode, dense.config.width_multiplier, dense.config.seed) == ("dense_at", 0.125, 2)
    assert rst.run_dirs() == [str(tmp_path / "width_0.125" / "seed_2" / "rst" / f"ratio_{r:g}") for r in RATIOS]
    assert (rst.config.mode, rst.config.width_multiplier, rst.config.seed) == ("rst", 0.125, 2)
    assert len(scaling.run_dirs(planned)) == 3 * 3 * 4


@pytest.mark.parametrize("widths, message", [
    ((), "at least one width"), ((0.125, 0.0), "positive"), ((0.25, 0.125), "increasing"),
    ((0.125, 0.125), "increasing"), (("a",), "numbers")])
def test_bad_widths_are_one_clear_error(widths, message):
    with pytest.raises(ValueError, match=message):
        scaling.check_widths(widths)


def test_a_trend_needs_two_distinct_seeds():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        scaling.check_seeds([0])
    with pytest.raises(ValueError, match="distinct"):
        scaling.check_seeds([1, 1])
    assert scaling.check_seeds(["0", "1"]) == (0, 1)


def test_bin_reproduce_rejects_bad_scaling_input_in_one_line_and_writes_nothing(tmp_path):
    output = tmp_path / "study"
    process = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "reproduce.py"), "--study=scaling", f"--output_dir={output}",
         f"--report={tmp_path / 'scaling.md'}", f"--data_dir={tmp_path}", "--widths=0.25,0.125"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--widths: widths must be sorted in increasing order" in errors[0]
    assert not output.exists() and not (tmp_path / "scaling.md").exists()
    (tmp_path / "records").write_text("not a folder")
    process = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "reproduce.py"), "--study=scaling", f"--output_dir={output}",
         f"--report={tmp_path / 'scaling.md'}", f"--data_dir={tmp_path}", f"--records_dir={tmp_path / 'records'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert process.returncode == 2 and len(errors) == 1 and "--records_dir" in errors[0] and "not a folder" in errors[0]
    assert not output.exists() and not (tmp_path / "scaling.md").exists()
    (tmp_path / "no_records").mkdir()
    process = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "reproduce.py"), "--study=scaling", f"--output_dir={output}",
         f"--report={tmp_path / 'scaling.md'}", f"--records_dir={tmp_path / 'no_records'}", "--report_recorded"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert process.returncode == 2 and len(errors) == 1 and "holds no (width, seed)" in errors[0]
    assert not output.exists() and not (tmp_path / "scaling.md").exists()


def test_the_cost_model_counts_every_run_at_its_width(tmp_path):
    planned = scaling.plan(SearchConfig(epochs=1), (0.125, 0.25), (0.1, 0.2), str(tmp_path), (0, 1))
    cost = scaling.CostModel(train_ms={"0.125": 3.0, "0.25": 6.0}, train_rst_ms={"0.125": 4.5},
                             eval_pgd_ms={"0.125": 1.0}, eval_autoattack_fast_ms={"0.125": 10.0},
                             standard_over_fast_autoattack=4.0)
    found = scaling.estimate(cost, planned, train_examples=1000, epochs=2, test_examples=600, num_ratios=2,
                             r2s_test_examples=300, reference_autoattack_examples=100)
    parts = found["parts"]
    # 2 seeds x 2000 image-epochs x (dense 3 + 2 RSTs x 4.5 at 0.125; dense 6 + 2 RSTs x 6 x 4.5 / 3 at 0.25).
    assert parts["training"] == pytest.approx(2 * 2000 * ((3.0 + 2 * 4.5) + (6.0 + 2 * 9.0)) / 60000)
    # Evaluation at 0.25 extrapolated as 4x 0.125's; at 8/255 the paper protocol's PGD is read off the standard
    # run's, R2S's is a pass of its own.
    assert parts["pgd"] == pytest.approx(2 * 3 * 1 * 600 * (1.0 + 4.0) / 60000)
    assert parts["r2s"] == pytest.approx(2 * (1 + 2 * 2) * 2 * 300 * (1.0 + 4.0) / 60000)
    assert parts["autoattack_fast"] == pytest.approx(2 * 2 * 600 * (10.0 + 40.0) / 60000)
    assert parts["autoattack_standard"] == pytest.approx(100 * 40.0 * 4.0 / 60000)  # widest width, first seed
    assert found["train_cpu_minutes"] == pytest.approx(parts["training"])
    assert found["total_cpu_minutes"] == pytest.approx(sum(parts.values()))
    assert sum(found["per_width"].values()) == pytest.approx(found["total_cpu_minutes"])
    # At 12/255 the protocols' steps differ (3/255 and 2/255): the paper's PGD is a pass of its own.
    at_12 = scaling.estimate(cost, planned, train_examples=1000, epochs=2, test_examples=600, num_ratios=2,
                             r2s_test_examples=300, reference_autoattack_examples=100, epsilon=12.0)
    assert at_12["parts"]["pgd"] == pytest.approx(2 * parts["pgd"])


@pytest.mark.parametrize("recorded, grid", [
    ([], []),
    ([(1, 0)], [(1, 0)]),
    ([(1, 0), (1, 1), (1, 2), (2, 0)], [(1, 0), (1, 1), (1, 2)]),  # 3 units at one width beat 2 at two
    ([(1, 0), (1, 1), (1, 2), (2, 0), (2, 2)], [(1, 0), (1, 2), (2, 0), (2, 2)]),  # 4 at two widths beat 3 at one
    ([(1, 0), (1, 1), (2, 0), (2, 1), (4, 1)], [(1, 0), (1, 1), (2, 0), (2, 1)]),
    ([(2, 0), (2, 1)], [(2, 0), (2, 1)])])  # a width without records is left out
def test_a_report_of_the_study_so_far_covers_the_largest_grid_of_recorded_units(recorded, grid):
    units = [(width, seed) for width in (1, 2, 4) for seed in (0, 1, 2)]
    assert scaling.recorded_grid(units, recorded) == grid


def test_slope_weights_recover_a_linear_trend_in_log2_width():
    weights = scaling_report.slope_weights(WIDTHS)
    values = 0.3 + 0.02 * np.log2(WIDTHS)
    assert float(np.dot(weights, values)) == pytest.approx(0.02)
    assert float(weights.sum()) == pytest.approx(0.0)


NUM_IMAGES = 4000


def _correct(accuracy, seed, salt):
    """A packed {0, 1} string with exactly round(accuracy * NUM_IMAGES) ones, placed by (seed, salt)."""
    values = np.zeros(NUM_IMAGES, np.int32)
    values[np.random.default_rng([seed, salt]).permutation(NUM_IMAGES)[:int(round(accuracy * NUM_IMAGES))]] = 1
    return contrasts.pack(values)


def _synthetic(tmp_path, gap_by_width, dense=0.30, seeds=(0, 1, 2), autoattack=False, r2s_examples=NUM_IMAGES,
               dense_gain=0.0):
    """A planned study with per-example results: dense AT robust `dense` at the narrowest width and `dense_gain`
    more per doubling, the RST at 20% robust `gap_by_width[w]` above dense AT, natural 0.2 above each, R2S vanilla
    0.05 above the best ticket, EOT and Ensemble at dense - 0.02 (R2S on the first `r2s_examples` images only)."""
    planned = scaling.plan(SearchConfig(epochs=1), WIDTHS, RATIOS, str(tmp_path), seeds)
    evaluation = {p: {} for p in scaling_report.PROTOCOLS}
    r2s, found_aa = {}, {}
    for (width, seed), (dense_step, rst_step) in planned.items():
        dense_here = dense + dense_gain * np.log2(width / WIDTHS[0])
        accuracies = {dense_step.output_dir: dense_here}
        for ratio, run_dir in zip(RATIOS, rst_step.run_dirs()):
            accuracies[run_dir] = dense_here + gap_by_width[width] - (0.2 - ratio) / 10
        for index, (run_dir, accuracy) in enumerate(accuracies.items()):
            salt = int(width * 1000) + index
            for protocol in scaling_report.PROTOCOLS:
                evaluation[protocol][run_dir] = {
                    "natural_correct": _correct(accuracy + 0.2, seed, salt),
                    "robust_correct": {"8": _correct(accuracy, seed, salt)}}
            if autoattack:
                found_aa[run_dir] = {"autoattack_fast": {"correct": _correct(accuracy - 0.05, seed, salt)}}
        tickets = [{"attacked": accuracies[d], "attacked_correct": _correct(accuracies[d], seed, 7 + i)}
                   for i, d in enumerate(rst_step.run_dirs())]
        best = max(ticket["attacked"] for ticket in tickets)
        for protocol in scaling_report.PROTOCOLS:
            r2s[width, seed, protocol] = {"tickets": tickets, "r2s_correct": {
                "vanilla": _correct(best + 0.05, seed, 50)[:r2s_examples],
                "eot": _correct(dense - 0.02, seed, 51)[:r2s_examples],
                "ensemble": _correct(dense - 0.02, seed, 52)[:r2s_examples]}}
    measured = {"evaluation": evaluation, "r2s": r2s, "autoattack": found_aa}
    return planned, measured


def test_claims_follow_the_per_example_results_at_each_width_and_across_widths(tmp_path):
    planned, measured = _synthetic(tmp_path, {0.0625: -0.06, 0.125: -0.03, 0.25: 0.0})
    results = scaling_report.Measured(planned, measured, 8.0)
    rows = scaling_report.claims(results)
    by = {(row["kind"], row.get("width"), row["protocol"]): row for row in rows}
    close = by["rst_minus_dense_robust", 0.0625, "standard"]
    assert close["estimate"] == pytest.approx(-0.06) and close["verdict"] == "does not hold"
    assert by["rst_minus_dense_robust", 0.25, "standard"]["verdict"] == "holds"
    assert by["rst_minus_dense_robust", 0.125, "standard"]["verdict"] == "undecided at this scale"
    assert by["r2s_minus_best_single", 0.125, "standard"]["estimate"] == pytest.approx(0.05)
    assert by["r2s_eot_minus_dense", 0.125, "paper"]["verdict"] == "does not hold"
    assert "flatters R2S" in by["r2s_ensemble_minus_dense", 0.25, "paper"]["note"]
    assert by["r2s_ensemble_minus_dense", 0.25, "standard"]["note"] == ""
    trend = by["trend", None, "standard"]
    assert trend["estimate"] == pytest.approx(0.03) and trend["verdict"] == "holds"  # +3 points per doubling
    assert trend["per_seed"] == pytest.approx([0.03] * 3)
    assert by["trend", None, "natural"]["estimate"] == pytest.approx(0.03)
    assert "AutoAttack" not in by["trend", None, "worst"]["claim"]
    assert {row["verdict"] for row in rows} <= set(contrasts.VERDICTS)


@pytest.mark.parametrize("dense_gain, verdict", [
    (0.04, "holds"), (0.0, "undecided at this scale"), (-0.04, "does not hold")])
def test_the_regime_checks_that_dense_at_leaves_chance_and_gains_from_width(tmp_path, dense_gain, verdict):
    planned, measured = _synthetic(tmp_path, {w: -0.03 for w in WIDTHS}, dense_gain=dense_gain)
    results = scaling_report.Measured(planned, measured, 8.0)
    rows = {(row["kind"], row.get("width"), row["protocol"]): row for row in scaling_report.regime_checks(results)}
    assert set(rows) == {("dense_above_chance", 0.0625, "natural"), ("dense_above_chance", 0.25, "natural"),
                         ("dense_gains_from_width", None, "natural"), ("dense_gains_from_width", None, "standard")}
    assert rows["dense_above_chance", 0.0625, "natural"]["estimate"] == pytest.approx(0.5 - 0.1)
    assert rows["dense_above_chance", 0.0625, "natural"]["verdict"] == "holds"
    for protocol in ("natural", "standard"):
        gain = rows["dense_gains_from_width", None, protocol]
        assert gain["estimate"] == pytest.approx(dense_gain, abs=1e-9) and gain["verdict"] == verdict
        assert gain["per_seed"] == pytest.approx([dense_gain] * 3, abs=1e-9)
    # The gap's own trend is RST minus dense AT: dense AT's gain alone does not move it.
    trend, = [row for row in scaling_report.claims(results) if row["kind"] == "trend" and row["protocol"] == "standard"]
    assert trend["estimate"] == pytest.approx(0.0, abs=1e-9)
    # At one width there is no gain to check, only that dense AT leaves chance there.
    one_width = {unit: steps for unit, steps in planned.items() if unit[0] == 0.125}
    only = scaling_report.regime_checks(scaling_report.Measured(one_width, measured, 8.0))
    assert [(row["kind"], row["width"]) for row in only] == [("dense_above_chance", 0.125)]


def test_the_worst_case_includes_autoattack_once_every_compared_run_has_it(tmp_path):
    planned, measured = _synthetic(tmp_path, {0.0625: 0.0, 0.125: 0.0, 0.25: 0.0}, autoattack=True)
    results = scaling_report.Measured(planned, measured, 8.0)
    assert results.has_autoattack()
    worst = {(row["kind"], row.get("width")): row for row in scaling_report.claims(results)
             if row["protocol"] == "worst"}
    assert "AutoAttack" in worst["rst_above_chance", 0.125]["claim"]
    assert worst["rst_above_chance", 0.125]["estimate"] == pytest.approx(0.30 - 0.05 - 0.1)
    del measured["autoattack"][planned[0.25, 1][0].output_dir]
    assert not scaling_report.Measured(planned, measured, 8.0).has_autoattack()


def test_r2s_on_the_first_images_is_paired_with_the_other_runs_on_those_images(tmp_path):
    planned, measured = _synthetic(tmp_path, {0.0625: 0.0, 0.125: 0.0, 0.25: 0.0}, r2s_examples=1000)
    rows = scaling_report.claims(scaling_report.Measured(planned, measured, 8.0))
    by = {(row["kind"], row.get("width"), row["protocol"]): row for row in rows}
    eot = by["r2s_eot_minus_dense", 0.125, "standard"]
    dense_run = planned[0.125, 0][0].output_dir
    first = contrasts.unpack(measured["evaluation"]["standard"][dense_run]["robust_correct"]["8"])[:1000]
    r2s_eot = contrasts.unpack(measured["r2s"][0.125, 0, "standard"]["r2s_correct"]["eot"])
    assert eot["per_seed"][0] == pytest.approx(r2s_eot.mean() - first.mean())
    assert by["rst_minus_dense_robust", 0.125, "standard"]["estimate"] == pytest.approx(0.0)  # all images


def test_the_standard_autoattack_on_the_first_images_is_a_check_not_part_of_the_worst_case(tmp_path):
    planned, measured = _synthetic(tmp_path, {0.0625: 0.0, 0.125: 0.0, 0.25: 0.0}, autoattack=True)
    subject = planned[0.25, 0][1].run_dirs()[-1]
    fast = contrasts.unpack(measured["autoattack"][subject]["autoattack_fast"]["correct"])
    standard = fast[:500].copy()
    standard[np.flatnonzero(standard)[:3]] = 0  # three examples that only the standard one breaks
    measured["autoattack"][subject]["autoattack"] = {"correct": contrasts.pack(standard)}
    results = scaling_report.Measured(planned, measured, 8.0)
    assert results.autoattack_names(subject) == ["autoattack_fast"]
    assert results.correct(0.25, 0, 0.2, "worst").size == NUM_IMAGES
    check, = scaling_report.autoattack_check(measured)
    assert check["run_dir"] == subject and check["examples"] == 500
    assert check["broken_by_standard_not_fast"] == 3 and check["broken_by_fast_not_standard"] == 0
    assert check["standard"] == pytest.approx(check["fast"] - 3 / 500)


def test_the_report_of_a_study_writes_its_claims_table_json_and_figure(tmp_path):
    planned, measured = _synthetic(tmp_path / "runs", {0.0625: -0.06, 0.125: -0.03, 0.25: 0.0}, autoattack=True)
    # One search that did not learn (a constant predictor: natural and robust accuracy at chance).
    collapsed = planned[0.125, 1][1].run_dirs()[0]
    for protocol in scaling_report.PROTOCOLS:
        measured["evaluation"][protocol][collapsed] = {"natural_correct": _correct(0.101, 1, 99),
                                                       "robust_correct": {"8": _correct(0.099, 1, 99)}}
    report = str(tmp_path / "docs" / "scaling.md")
    dense, rst = planned[0.0625, 0]
    fast = {"cpu_model": "Fast CPU", "cpus": 2, "vector_isa": "AVX-512", "matmul_4096_fp32_gflops": 101.2}
    times = {dense.output_dir: {"wall_seconds": 120.0, "cpu_seconds": 90.0, "resumed": False, "threads": 1,
                                "machine": fast},
             rst.run_dirs()[0]: {"wall_seconds": 60.0, "cpu_seconds": 114.0, "resumed": True,
                                 "machine": dict(fast, matmul_4096_fp32_gflops=94.6)}}
    measured["evaluation"]["standard"][dense.output_dir]["seconds"] = 30.0
    measured["evaluation"]["paper"][dense.output_dir]["seconds"] = 0.0  # read off the standard run
    measured["autoattack"][dense.output_dir]["autoattack_fast"]["cpu_seconds"] = 600.0
    measured["r2s"][0.0625, 0, "standard"]["cpu_seconds"] = 120.0
    found = scaling_report.write(planned, measured, times, SearchConfig(epochs=4), report,
                                 "bin/reproduce --flagfile=flags/reproduce/scaling.cfg", 8.0, NUM_IMAGES,
                                 measured_on={(0.0625, 0): "Slow CPU, 2 CPUs",
                                              (0.0625, 1): dict(fast, matmul_4096_fp32_gflops=190.4)},
                                 pilot_path=str(tmp_path / "docs" / "scaling_pilot.md"))
    written = json.loads(open(str(tmp_path / "docs" / "scaling.json")).read())
    assert written["widths"] == list(WIDTHS) and written["seeds"] == [0, 1, 2]
    assert written["test_examples"] == NUM_IMAGES
    assert all({"claim", "estimate", "interval", "verdict"} <= set(row) for row in written["claims"])
    assert written["claims"] == json.loads(json.dumps(found["claims"]))
    lines = open(report).read().splitlines()
    assert written["regime"] == json.loads(json.dumps(found["regime"])) and len(found["regime"]) == 4
    regime = lines.index("## The regime")
    assert "[scaling_pilot.md](scaling_pilot.md)" in lines[regime + 2]
    assert lines[regime + 4].startswith("| where | check |")
    assert lines[regime + 6] == ("| width 1/16 | Dense AT leaves chance (natural accuracy) | natural accuracy "
                                 "minus 10% > +0 points | +40.0 [+39.1, +40.9] | +40.0, +40.0, +40.0 | holds |")
    counts = next(line for line in lines if line.startswith("Of "))
    assert counts.startswith(f"Of {len(found['claims'])} claims: ")
    assert lines.index(counts) < next(i for i, line in enumerate(lines) if line.startswith("| where | claim"))
    assert "![RST minus dense AT against width](scaling_figures/gap.png)" in lines
    assert os.path.getsize(str(tmp_path / "docs" / "scaling_figures" / "gap.png")) > 10000
    header = ("| run | wall min | CPU min | resumed | threads | trained on | PGD wall min | AutoAttack CPU min | "
              "measured on |")
    assert lines[lines.index(header) + 2:][:3] == [
        f"| {dense.output_dir} | 2.0 | 1.5 | no | 1 | A | 0.5 | autoattack_fast 10.0 | B |",
        f"| {rst.run_dirs()[0]} | 1.0 | 1.9 | yes | - | A | - | - | B |",
        f"| {rst.run_dirs()[1]} | - | - | - | - | - | - | - | B |"]
    assert ("Machines (fp32 peak: a 4096x4096 TensorFlow matmul at the end of a run, on its threads, or when a "
            "(width, seed) was recorded, on all of them): A: Fast CPU (AVX-512), 2 CPUs (fp32 matmul 95 to 101 "
            "GFLOP/s at the end of its runs; 190 GFLOP/s when it recorded a (width, seed)); B: Slow CPU, "
            "2 CPUs.") in lines
    assert lines[lines.index(header) + 2 + 4].endswith("| A |")  # width 1/16 seed 1: measured on the fast one
    assert lines[lines.index(header) + 2 + 8].endswith("| - |")  # width 1/16 seed 2: on no known machine
    assert len(found["costs"]["runs"]) == 3 * 3 * 4 and found["costs"]["training_cpu_minutes"] == pytest.approx(3.4)
    assert ("In all: training 3 CPU minutes over 36 runs (1 resumed, 34 not timed: their time is counted in part or "
            "not at all), PGD evaluation 0 wall minutes, AutoAttack 10 CPU minutes, R2S 2 CPU minutes (17 of its 18 "
            "measurements, one per (width, seed) and protocol, not timed).") in "\n".join(lines)
    assert [row["run_dir"] for row in found["runs_at_chance"]] == [collapsed]
    assert f"| {collapsed} | 10.1% [9.2, 11.1] | 9.9% |" in lines
    dense = found["accuracy"]["0.125"]["dense AT"]
    assert dense["standard"]["estimate"] == pytest.approx(0.30) and dense["natural"]["estimate"] == pytest.approx(0.5)
    assert any(line.startswith("| 1/8 | dense AT | 50.0% [") for line in lines)
    assert any(line.startswith("| width 1/4 | RST at 20% is within 3 points of dense AT, robust") for line in lines)
    assert any(line.startswith("Scale: network resnet18 at widths 1/16, 1/8, 1/4,") and "ratios 5%, 10%, 20%," in line
               for line in lines)


def test_the_report_writes_widths_as_fractions_ratios_as_percentages_and_counts_in_the_plural():
    widths = (0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 0.3)
    assert [scaling_report.width_label(w) for w in widths] == ["1/16", "1/8", "1/4", "1/2", "1", "2", "0.3"]
    assert [scaling_report.ratio_label(r) for r in (0.05, 0.1, 0.2, 0.007)] == ["5%", "10%", "20%", "0.7%"]
    verdicts = ["holds", "holds", "does not hold", "undecided at this scale"]
    assert report.verdict_counts([{"verdict": v} for v in verdicts]) == (
        "Of 4 claims: 2 hold, 1 does not hold, 1 undecided at this scale.")
    assert report.verdict_counts([{"verdict": v} for v in verdicts[1:] + ["does not hold"]]) == (
        "Of 4 claims: 1 holds, 2 do not hold, 1 undecided at this scale.")


class TrainsElsewhere(executors.LocalExecutor):
    """The local executor, declared to train elsewhere (as Ray does): the study measures in a background thread."""
    trains_elsewhere = True


def test_the_measurer_measures_in_turn_in_the_background_and_raises_a_failure_in_the_study():
    measured, started, release = [], threading.Event(), threading.Event()
    bad = (0.5, 9)

    def measure(unit):
        started.set()
        release.wait(timeout=60)
        if unit == bad:
            raise ValueError("no checkpoint")
        measured.append((unit, threading.current_thread().name))

    measurer = scaling.Measurer(measure, log=lambda message: None)
    measurer.submit((0.25, 0))
    assert started.wait(timeout=60) and measured == []  # submit returned while the unit is being measured
    measurer.submit((0.25, 1))
    release.set()
    measurer.finish()
    assert measured == [((0.25, 0), "measure"), ((0.25, 1), "measure")]
    messages = []
    release.clear()
    measurer = scaling.Measurer(measure, log=messages.append)
    measurer.submit(bad)
    measurer.submit((0.25, 2))  # not measured: the study stops at the failure
    release.set()
    with pytest.raises(ValueError, match="no checkpoint"):
        measurer.finish()
    with pytest.raises(ValueError, match="no checkpoint"):
        measurer.submit((0.25, 3))
    assert len(measured) == 2 and messages == ["width 0.5 seed 9: measuring failed: no checkpoint"]


def _stand_in_study(config, widths, ratios, output_dir, seeds):
    """The plan, with every run a finished stand-in search (as `bin/search` leaves one)."""
    from tests import ticket_fixtures

    planned = scaling.plan(config, widths, ratios, output_dir, seeds)
    for (width, seed), (dense, rst) in planned.items():
        runs = [(dense.output_dir, dense.config)] + [
            (run_dir, dataclasses.replace(rst.config, remaining_ratio=ratio))
            for ratio, run_dir in zip(ratios, rst.run_dirs())]
        for index, (run_dir, run_config) in enumerate(runs):
            ticket_fixtures.write_run(run_dir, run_config, variation=100 * seed + 10 * index + int(64 * width))
            with open(os.path.join(run_dir, "metrics.json")) as handle:
                metrics = json.load(handle)
            with open(os.path.join(run_dir, "metrics.json"), "w") as handle:
                json.dump(dict(metrics, final={"best": {"epoch": 0, "test_natural_accuracy": 0.0,
                                                         "test_pgd20_accuracy": 0.0}, "weights": {}, "last": {}}),
                          handle)
    return planned


def test_a_recorded_study_continues_elsewhere_without_its_runs_and_a_changed_one_does_not(tmp_path, cifar10_path):
    from rst_tf.study import scaling_records

    config = SearchConfig(network="resnet18", remaining_ratio=0.2, test_examples=16, eval_attack_steps=1,
                          data_dir=cifar10_path)
    widths, ratios, seeds = (0.0625,), (0.1, 0.2), (0, 1)
    first, records = str(tmp_path / "first" / "runs"), str(tmp_path / "docs" / "records")
    archive = str(tmp_path / "archive")  # trained runs: outside the repository
    planned = _stand_in_study(config, widths, ratios, first, seeds)
    # One-step attacks stand in for the AutoAttacks; both PGD protocols (the paper's read off the standard one).
    options = dict(test_examples=8, batch_size=8, r2s_test_examples=4, reference_autoattack_examples=4,
                   autoattack=("fgsm",), reference_autoattack="fgsm_rs", protocols=("standard", "paper"),
                   records_dir=records, archive_dir=archive, stop_after="evaluate")
    messages = []
    assert scaling.run(config, widths, ratios, first, str(tmp_path / "first" / "scaling.md"), seeds,
                       log=messages.append, **options) is None
    assert sorted(os.listdir(records)) == ["width_0.0625_seed_0.json", "width_0.0625_seed_1.json"]
    # A unit is measured and recorded as soon as its runs are done, before the next unit's runs.
    done = [m.split(":")[0] for m in messages if m.endswith("finished, skipped") or "recorded in" in m]
    assert done == ["width 0.0625 seed 0"] * 4 + ["width 0.0625 seed 1"] * 4
    assert "measured, recorded in" in [m for m in messages if "recorded in" in m][0]
    record = json.load(open(os.path.join(records, "width_0.0625_seed_0.json")))
    assert set(record["settings"]["runs"]) == {"./width_0.0625/seed_0/dense_at", "./width_0.0625/seed_0/rst/ratio_0.1",
                                               "./width_0.0625/seed_0/rst/ratio_0.2"}
    assert record["settings"]["evaluation"]["reference_autoattack"] == "fgsm_rs"  # the widest width's first seed
    assert "data_dir" not in record["settings"]["runs"]["./width_0.0625/seed_0/dense_at"]
    assert not any(first in open(os.path.join(records, name)).read() for name in os.listdir(records)
                   if name.endswith(".json"))

    # With runs that train elsewhere (Ray), a unit is measured in a background thread beside the next runs: the
    # records it makes are the same (here from the caches, so nothing is attacked again).
    made = {name: json.load(open(os.path.join(records, name))) for name in os.listdir(records)
            if name.endswith(".json")}
    shutil.rmtree(records)
    threads = []
    scaling.run(config, widths, ratios, first, str(tmp_path / "first" / "scaling.md"), seeds,
                log=lambda message: threads.append((message, threading.current_thread().name)),
                executor=TrainsElsewhere(), **options)
    for name, record in made.items():
        assert dict(json.load(open(os.path.join(records, name))), recorded=None) == dict(record, recorded=None)
    assert {thread for message, thread in threads if "measured, recorded in" in message} == {"measure"}
    assert {thread for message, thread in threads if message.endswith("finished, skipped")} == {"MainThread"}

    # What was measured: every run, R2S on the first 4 images (the tickets alone from the runs' own evaluation),
    # the AutoAttack stand-in on dense AT and the RST at 20%, the reference on the first 4 images of one RST.
    from rst_tf.study import measure

    test_sets = measure.TestSets(cifar10_path, 8, test_seed=0, test_examples=8)
    messages = []
    measured = scaling.evaluate(planned, first, test_sets, 8.0, 1, log=messages.append, autoattack=("fgsm",),
                                reference_autoattack="fgsm_rs", protocols=("standard", "paper"), r2s_test_examples=4,
                                reference_autoattack_examples=4)
    assert not any(message.startswith("evaluated") for message in messages)
    subject = planned[0.0625, 0][1].run_dirs()[-1]  # the RST at 20% of the widest width's first seed
    assert set(measured["autoattack"]) == {dense.output_dir for dense, _ in planned.values()} | {
        rst.run_dirs()[-1] for _, rst in planned.values()}
    assert len(measured["autoattack"][subject]["fgsm_rs"]["correct"]) == 4
    assert len(measured["autoattack"][subject]["fgsm"]["correct"]) == 8
    assert [len(measured["r2s"][0.0625, s, "standard"]["r2s_correct"]["eot"]) for s in seeds] == [4, 4]
    assert measured["r2s"][0.0625, 1, "standard"]["tickets_from"] == "evaluation"
    ticket = measured["r2s"][0.0625, 1, "standard"]["tickets"][1]
    assert ticket["attacked_correct"] == measured["evaluation"]["standard"][planned[0.0625, 1][1].run_dirs()[1]][
        "robust_correct"]["8"][:len(ticket["attacked_correct"])]
    assert set(measured["evaluation"]["standard"]) == set(scaling.run_dirs(planned))
    entry = measured["evaluation"]["standard"][planned[0.0625, 1][0].output_dir]
    assert len(entry["natural_correct"]) == 8 and set(entry["robust_correct"]) == {"8"}
    assert entry["test_seed"] == 0 and entry["pgd_protocol"] == "standard"
    r2s = measured["r2s"][0.0625, 1, "standard"]
    assert set(r2s["r2s_correct"]) == {"vanilla", "eot", "ensemble"} and len(r2s["tickets"]) == 2

    # Another machine: a new output folder, no runs. Nothing is trained or measured again, and the study's report
    # comes from the records: the claims of the measurements they were made from.
    second = str(tmp_path / "second" / "runs")
    messages = []
    found = scaling.run(dataclasses.replace(config, data_dir=cifar10_path + "/"), widths, ratios, second,
                        str(tmp_path / "second" / "scaling.md"), seeds, log=messages.append,
                        **dict(options, stop_after="report"))
    assert not os.path.exists(os.path.join(second, "width_0.0625", "seed_0", "dense_at"))
    whole = scaling_report.write(planned, measured, {}, config, str(tmp_path / "whole.md"), "", 8.0, 8)
    assert found["complete"] and found["seeds"] == [0, 1]
    assert json.loads(json.dumps(found["claims"]).replace(second, first)) == json.loads(json.dumps(whole["claims"]))
    assert messages == [f"width 0.0625 seed {s}: recorded in {os.path.join(records, f'width_0.0625_seed_{s}.json')}"
                        for s in seeds]
    for name in ("evaluation.json", "autoattack.json", "width_0.0625/seed_1/r2s.json"):
        ours, theirs = (open(os.path.join(folder, name)).read() for folder in (first, second))
        assert json.loads(theirs.replace(second, first)) == json.loads(ours)

    # Every trained run is packed in the archive folder, and no partial record is left once a unit is recorded.
    assert sorted(os.listdir(records)) == ["width_0.0625_seed_0.json", "width_0.0625_seed_1.json"]
    assert sorted(os.listdir(archive)) == ["width_0.0625_seed_0", "width_0.0625_seed_1"]
    assert sorted(os.listdir(os.path.join(archive, "width_0.0625_seed_1", "rst"))) == ["ratio_0.1.npz",
                                                                                     "ratio_0.2.npz"]
    # A unit in progress continues on another machine: seed 1 not recorded, its runs packed and its PGD and R2S
    # measured. Its runs are unpacked rather than trained, only its AutoAttacks are measured, and they find what
    # they found on the original runs.
    progress = str(tmp_path / "progress_records")
    shutil.copytree(records, progress)
    unit = (0.0625, 1)
    os.remove(scaling_records.record_path(progress, unit))
    settings = scaling.unit_settings(planned, unit, first, 8, 8.0, 4, 4, ("fgsm",), "fgsm_rs", ("standard", "paper"))
    caches = scaling.unit_caches(planned, unit, first, ("standard", "paper"))
    del caches[os.path.join(first, "autoattack.json")]
    dense_dir = planned[unit][0].output_dir
    times = {dense_dir: {"wall_seconds": 60.0, "cpu_seconds": 100.0, "resumed": False, "threads": 1}}
    json.dump(times, open(os.path.join(first, "run_times.json"), "w"))
    partial_path = scaling_records.save(progress, unit, settings, caches, first, partial=True)
    assert scaling.kept_progress(planned, unit, first, progress, settings, archive) == (3, 3, 9)
    assert scaling.kept_progress(planned, unit, first, progress, settings) == (0, 3, 9)
    fourth = str(tmp_path / "fourth" / "runs")
    messages = []
    scaling.run(config, widths, ratios, fourth, str(tmp_path / "fourth" / "scaling.md"), seeds,
                log=messages.append, **dict(options, records_dir=progress))
    assert [m for m in messages if "unpacked from" in m] == [
        f"width 0.0625 seed 1: {name} unpacked from {os.path.join(archive, 'width_0.0625_seed_1', name)}.npz"
        for name in ("dense_at", "rst/ratio_0.1", "rst/ratio_0.2")]
    assert "width 0.0625 seed 1: 9 measurements read from" in "\n".join(messages)
    assert json.load(open(os.path.join(fourth, "run_times.json"))) == {
        dense_dir.replace(first, fourth): times[dense_dir]}
    assert not any("starting" in m or m.startswith("evaluated") for m in messages)
    assert sorted(m.split(" of ")[0] for m in messages if m.startswith("fgsm")) == ["fgsm", "fgsm"]
    assert not os.path.exists(scaling_records.record_path(progress, unit, partial=True))
    again, before = (json.load(open(os.path.join(folder, "width_0.0625_seed_1.json")))
                     for folder in (progress, records))
    assert again["settings"] == before["settings"]
    for name, entries in before["caches"].items():
        if name not in ("autoattack.json", "run_times.json"):
            assert again["caches"][name] == entries
    assert again["caches"]["run_times.json"]["by_run"] == {"./width_0.0625/seed_1/dense_at": times[dense_dir]}
    for run_dir, found in before["caches"]["autoattack.json"]["by_run"].items():
        for attack, entry in found.items():
            assert again["caches"]["autoattack.json"]["by_run"][run_dir][attack]["correct"] == entry["correct"]

    # On a machine where the unit's runs are neither finished nor packed, they train again, so the measurements of
    # the lost networks are left out rather than paired with the new ones; only a run unpacked from the archive
    # keeps its own (here dense AT: its PGD under both protocols and its run time; the R2S files go with the RSTs).
    assert scaling_records.save(progress, unit, settings, caches, first, partial=True) == partial_path
    fifth, only_dense = str(tmp_path / "fifth" / "runs"), str(tmp_path / "only_dense")
    planned_fifth = scaling.plan(config, widths, ratios, fifth, seeds)
    assert scaling.kept_progress(planned_fifth, unit, fifth, progress, settings) == (0, 3, 0)
    os.makedirs(os.path.join(only_dense, "width_0.0625_seed_1"))
    shutil.copy(os.path.join(archive, "width_0.0625_seed_1", "dense_at.npz"),
                os.path.join(only_dense, "width_0.0625_seed_1"))
    assert scaling.kept_progress(planned_fifth, unit, fifth, progress, settings, only_dense) == (1, 3, 3)
    messages = []
    scaling.restore_progress(planned_fifth, unit, fifth, progress, settings, messages.append, only_dense)
    assert messages[1:] == [f"width 0.0625 seed 1: 3 measurements read from {partial_path}",
                            f"width 0.0625 seed 1: 6 measurements in {partial_path} left out: their runs are not "
                            "here or in the archive, so they train and are measured again"]
    dense_fifth = planned_fifth[unit][0].output_dir
    for name in ("evaluation.json", "evaluation_paper.json", "run_times.json"):
        assert list(json.load(open(os.path.join(fifth, name)))) == [dense_fifth]
    assert not os.path.exists(os.path.join(fifth, "width_0.0625", "seed_1", "r2s.json"))

    # The report of the study so far, from the records alone: no runs, no data, nothing written but the report.
    # Every (width, seed) recorded: the claims are those of the measurements the records were made from.
    third, report = str(tmp_path / "third" / "runs"), str(tmp_path / "third" / "docs" / "scaling.md")
    recorded_options = {key: value for key, value in options.items()
                        if key not in ("batch_size", "stop_after", "archive_dir")}
    found = scaling.report_recorded(dataclasses.replace(config, data_dir=str(tmp_path / "no data")), widths, ratios,
                                    third, report, seeds, log=messages.append, **recorded_options)
    assert not os.path.exists(third) and found["complete"] and found["seeds"] == [0, 1]
    assert json.loads(json.dumps(found["claims"]).replace(third, first)) == json.loads(json.dumps(whole["claims"]))
    assert "A study in progress" not in open(report).read()
    # One seed recorded: the report covers it, says so, and decides nothing.
    partial = tmp_path / "partial_records"
    partial.mkdir()
    shutil.copy(os.path.join(records, "width_0.0625_seed_0.json"), partial)
    recorded_options["records_dir"] = str(partial)
    found = scaling.report_recorded(config, widths, ratios, third, report, seeds, **recorded_options)
    assert not found["complete"] and found["units"]["reported"] == [[0.0625, 0]] and found["seeds"] == [0]
    assert {row["verdict"] for row in found["claims"]} == {"undecided at this scale"}
    assert "**A study in progress:** 1 of its 2 (width, seed)s is recorded" in open(report).read()
    assert json.load(open(report.replace(".md", ".json")))["units"]["planned"] == [[0.0625, 0], [0.0625, 1]]
    os.remove(os.path.join(partial, "width_0.0625_seed_0.json"))
    os.remove(report)
    with pytest.raises(ValueError, match="holds no \\(width, seed\\)"):
        scaling.report_recorded(config, widths, ratios, third, report, seeds, **recorded_options)
    assert not os.path.exists(report)

    # A record made with other settings does not count: a changed regime or evaluation trains and measures again.
    unit, attacks = (0.0625, 1), (("fgsm",), "fgsm_rs", ("standard", "paper"))
    assert scaling_records.load(records, unit, scaling.unit_settings(planned, unit, first, 8, 8.0, 4, 4, *attacks))
    longer = scaling.plan(dataclasses.replace(config, epochs=config.epochs + 1), widths, ratios, first, seeds)
    assert not scaling_records.load(records, unit, scaling.unit_settings(longer, unit, first, 8, 8.0, 4, 4, *attacks))
    assert not scaling_records.load(records, unit, scaling.unit_settings(planned, unit, first, 10, 8.0, 4, 4, *attacks))

    # A measurement made on other test images, or on the same ones in another order, is made again: here one run's
    # PGD result and one seed's R2S (R2S is measured after the runs, so its tickets are that run's new result).
    moved = planned[0.0625, 1][0].output_dir
    for name, mark in (("evaluation.json", lambda cache: cache[moved]),
                       ("width_0.0625/seed_0/r2s.json", lambda cache: cache)):
        cache = json.load(open(os.path.join(first, name)))
        mark(cache)["test_set"] = "0" * 16
        json.dump(cache, open(os.path.join(first, name), "w"))
    messages = []
    again = scaling.evaluate(planned, first, test_sets, 8.0, 1, log=messages.append, autoattack=("fgsm",),
                             reference_autoattack="fgsm_rs", protocols=("standard",), r2s_test_examples=4,
                             reference_autoattack_examples=4)
    assert [m.split(" (")[0] for m in messages if m.startswith("evaluated")] == [f"evaluated {moved}"]
    assert again["evaluation"]["standard"][moved]["test_set"] == test_sets.fingerprint(config) != "0" * 16
    assert again["evaluation"]["standard"][moved]["robust_correct"] == measured["evaluation"]["standard"][moved][
        "robust_correct"]
    assert again["r2s"][0.0625, 0, "standard"]["r2s_correct"] == measured["r2s"][0.0625, 0, "standard"]["r2s_correct"]
    assert again["r2s"][0.0625, 0, "standard"]["test_set"] == test_sets.fingerprint(config)
