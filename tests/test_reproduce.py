"""The reproduction study: its plan (runs, order, init_from), the claims' verdicts, the report, the figures, and
bin/reproduce's flag handling."""
import os
import subprocess
import sys

import numpy as np
import pytest

from rst_tf import reproduce, reproduction_report
from rst_tf.evaluation import intervals, plots
from rst_tf.training.config import SearchConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIOS = (0.05, 0.1, 0.2, 0.5)


def _app(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "bin", "reproduce.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _points(robust_by_ratio, natural=0.4):
    return [{"remaining_ratio": r, "natural": natural, "robust": acc, "robust_by_epsilon": {"8": acc, "12": acc / 2}}
            for r, acc in robust_by_ratio.items()]


def _figures(rst, inherited, reinit, rtt_natural, rtt_adversarial, dense=0.30, task_b=(0.20, 0.25),
             transfer=((0.20, 0.35), (0.33, 0.22)), r2s_vanilla=0.30, best_single=0.22):
    kinds = {"rst": rst, "finetune_inherited": inherited, "finetune_reinit": reinit, "rtt_natural": rtt_natural,
             "rtt_adversarial": rtt_adversarial}
    return {"epsilon": 8.0, "attack_steps": 20,
            "dense_at": {"natural": 0.45, "robust": dense, "robust_by_epsilon": {"8": dense, "12": dense / 2}},
            "natural_training": {"natural": 0.6, "robust": 0.0, "robust_by_epsilon": {"8": 0.0, "12": 0.0}},
            "kinds": {name: _points(values) for name, values in kinds.items()},
            "task_b": {"remaining_ratio": 0.1, "rtt": {"natural": 0.5, "robust": task_b[0]},
                       "rst": {"natural": 0.5, "robust": task_b[1]}},
            "transfer": {"names": ["ratio_0.05", "ratio_0.1"], "accuracy": [list(row) for row in transfer]},
            "r2s": {"natural": 0.4, "vanilla": r2s_vanilla, "eot": 0.21,
                    "best_single": {"name": "ratio_0.1", "natural": 0.41, "attacked": best_single}}}


def _by_ratio(*values):
    return dict(zip(RATIOS, values))


PAPER_LIKE = _figures(rst=_by_ratio(0.26, 0.28, 0.29, 0.25), inherited=_by_ratio(0.27, 0.29, 0.30, 0.27),
                      reinit=_by_ratio(0.22, 0.25, 0.28, 0.27), rtt_natural=_by_ratio(0.10, 0.12, 0.15, 0.14),
                      rtt_adversarial=_by_ratio(0.30, 0.31, 0.31, 0.30))


def test_plan_runs_sources_then_sweeps_with_their_init_from(tmp_path):
    config = SearchConfig(width_multiplier=0.0625, epochs=1, mode="finetune", init_from="x",
                          remaining_ratio=0.3)
    steps = reproduce.plan(config, RATIOS, str(tmp_path))
    names = [step.name for step in steps]
    assert names == ["dense_at", "natural", "rst", "finetune_inherited", "finetune_reinit", "rtt_natural",
                     "rtt_adversarial", "task_a_dense_at", "task_b_rtt", "task_b_rst"]
    by_name = {step.name: step for step in steps}
    modes = {name: step.config.mode for name, step in by_name.items()}
    assert modes == {"dense_at": "dense_at", "natural": "natural", "rst": "rst", "finetune_inherited": "finetune",
                     "finetune_reinit": "finetune", "rtt_natural": "rst", "rtt_adversarial": "rst",
                     "task_a_dense_at": "dense_at", "task_b_rtt": "rst", "task_b_rst": "rst"}
    rst_dir = str(tmp_path / "rst")
    assert by_name["finetune_inherited"].config.init_from == os.path.join(rst_dir, "ratio_{ratio}")
    assert by_name["finetune_reinit"].config.finetune_weights == "reinit"
    assert by_name["finetune_inherited"].config.finetune_weights == "inherited"
    assert by_name["rtt_natural"].config.init_from == str(tmp_path / "natural")
    assert by_name["rtt_adversarial"].config.init_from == str(tmp_path / "dense_at")
    assert by_name["task_b_rtt"].config.init_from == str(tmp_path / "task_a_dense_at")
    assert by_name["task_a_dense_at"].config.class_subset == (0, 1, 2, 3, 4)
    assert by_name["task_b_rtt"].config.class_subset == by_name["task_b_rst"].config.class_subset == (5, 6, 7, 8, 9)
    assert by_name["task_b_rst"].config.init_from == "" and by_name["rst"].config.init_from == ""
    assert by_name["task_b_rst"].remaining_ratios == (0.1,)  # the ratio nearest 0.1
    assert by_name["rst"].run_dirs() == [os.path.join(rst_dir, f"ratio_{r:g}") for r in RATIOS]
    assert by_name["dense_at"].run_dirs() == [str(tmp_path / "dense_at")]
    # every step's init_from is written by an earlier step
    written = []
    for step in steps:
        init_from = step.config.init_from.replace("{ratio}", "0.05")
        assert not init_from or init_from in written, step.name
        written += step.run_dirs()


def test_plan_rejects_bad_ratios(tmp_path):
    with pytest.raises(ValueError, match="remaining_ratios"):
        reproduce.plan(SearchConfig(), [0.1, 1.5], str(tmp_path))


def test_claims_hold_for_paper_like_figures():
    rows = reproduction_report.claims(PAPER_LIKE)
    assert len(rows) == 7
    assert [row["holds"] for row in rows] == [True] * 7, rows
    assert "RST 29.0% (ratio 0.2) vs dense AT 30.0%" in rows[0]["measured"]
    assert "EOT 21.0%" in rows[-1]["measured"]


def test_claims_that_the_figures_contradict_do_not_hold():
    figures = _figures(rst=_by_ratio(0.20, 0.21, 0.22, 0.20), inherited=_by_ratio(0.30, 0.30, 0.30, 0.30),
                       reinit=_by_ratio(0.25, 0.25, 0.25, 0.25), rtt_natural=_by_ratio(0.23, 0.23, 0.23, 0.23),
                       rtt_adversarial=_by_ratio(0.30, 0.30, 0.30, 0.30), task_b=(0.3, 0.2),
                       transfer=((0.30, 0.10), (0.10, 0.30)), r2s_vanilla=0.20, best_single=0.22)
    verdicts = {row["claim"].split(" (")[0]: row["holds"] for row in reproduction_report.claims(figures)}
    assert verdicts == {
        "RSTs at 5-20% remaining ratio are close to dense AT": False,  # 22% vs 30%
        "Fine-tuning re-initialised RSTs is not better than the RST at 5-20%": False,
        "Vanilla RSTs are within a few points of fine-tuned RSTs with inherited weights": False,
        "Adversarial RTT >= RST >= natural RTT": False,
        "A transferred adversarial RTT": False,
        "Adversarial examples transfer poorly between RSTs of different ratios": False,
        "R2S is more robust than the best single RST under PGD-20": False}


def test_report_has_command_scale_time_claims_and_figures():
    rows = reproduction_report.claims(PAPER_LIKE)
    rows[1]["holds"] = False
    config = SearchConfig(width_multiplier=0.0625, epochs=4, train_examples=5000, test_examples=1000)
    text = reproduction_report.markdown_report("python bin/reproduce.py --flagfile=flags/reproduce/cpu.cfg",
                                     reproduction_report.scale_of(config, RATIOS, [8, 12]), 5400, PAPER_LIKE, rows,
                                     {"fig1": "reproduction_figures/fig1.png"}, [8, 12])
    lines = text.splitlines()
    assert "python bin/reproduce.py --flagfile=flags/reproduce/cpu.cfg" in lines
    assert "Wall time: 90.0 minutes (summed over the invocations that built it)." in lines
    assert any(line.startswith("Scale: network resnet18 width 0.0625") and "remaining ratios 0.05, 0.1, 0.2, 0.5"
               in line for line in lines)
    claim_lines = [line for line in lines if line.startswith("| ") and line.endswith(("| holds |", "scale |"))]
    assert len(claim_lines) == 7
    assert claim_lines[1].endswith("| does not hold at this scale |")
    assert "| kind | remaining ratio | natural | PGD-20 ε 8 | PGD-20 ε 12 |" in lines
    assert "| RST | 0.2 | 40.0% | 29.0% | 14.5% |" in lines
    assert "![fig1](reproduction_figures/fig1.png)" in lines


def test_ticket_kind_figure_holds_each_kind_the_baseline_and_the_zoom(tmp_path):
    series = {"RST": [{"remaining_ratio": 0.5, "natural": 0.5, "robust": 0.3},
                      {"remaining_ratio": 0.05, "natural": 0.4, "robust": 0.2},
                      {"remaining_ratio": 0.1, "natural": 0.45, "robust": 0.25}],
              "adversarial RTT": [{"remaining_ratio": 0.1, "natural": 0.6, "robust": 0.35}]}
    figure = plots.ticket_kinds_vs_remaining_ratio(series, str(tmp_path / "kinds.png"),
                                                   dense={"natural": 0.55, "robust": 0.33})
    assert (tmp_path / "kinds.png").is_file()
    robust, robust_zoom, natural, natural_zoom = figure.axes
    lines = robust.get_lines()
    assert [line.get_label() for line in lines] == ["RST", "adversarial RTT", "dense AT"]
    assert list(lines[0].get_xdata()) == [0.05, 0.1, 0.5] and list(lines[0].get_ydata()) == [0.2, 0.25, 0.3]
    assert lines[2].get_linestyle() == "--" and list(lines[2].get_ydata()) == [0.33, 0.33]
    zoomed = robust_zoom.get_lines()[0]
    assert list(zoomed.get_xdata()) == [0.05, 0.1] and robust_zoom.get_xlim()[1] <= 0.25
    assert list(natural.get_lines()[0].get_ydata()) == [0.4, 0.45, 0.5]
    assert list(natural_zoom.get_lines()[2].get_ydata()) == [0.55, 0.55]


def test_epsilon_figure_has_one_axes_per_budget(tmp_path):
    series = {12.0: {"RST": [{"remaining_ratio": 0.2, "robust": 0.1}, {"remaining_ratio": 0.1, "robust": 0.08}]},
              16.0: {"RST": [{"remaining_ratio": 0.1, "robust": 0.03}]}}
    figure = plots.robust_accuracy_by_epsilon(series, str(tmp_path / "eps.png"), dense_by_epsilon={12.0: 0.12})
    assert [ax.get_title() for ax in figure.axes] == ["epsilon 12/255", "epsilon 16/255"]
    first = figure.axes[0].get_lines()
    assert [line.get_label() for line in first] == ["RST", "dense AT"]
    assert list(first[0].get_xdata()) == [0.1, 0.2] and list(first[0].get_ydata()) == [0.08, 0.1]
    assert [line.get_label() for line in figure.axes[1].get_lines()] == ["RST"]


def test_write_figures_draws_every_figure(tmp_path):
    written = reproduction_report.write_figures(PAPER_LIKE, str(tmp_path), [8.0, 12.0])
    assert sorted(written) == ["fig1", "fig2", "fig3", "fig5", "fig6", "transfer"]
    assert all((tmp_path / name).is_file() for name in written.values())


def test_dry_run_lists_the_plan_of_the_cpu_flagfile():
    result = _app("--flagfile=flags/reproduce/cpu.cfg", "--dry_run")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [row[0] for row in rows][:3] == ["dense_at", "natural", "rst"] and len(rows) == 10
    assert rows[3][4] == "init_from=runs/reproduce_cpu/rst/ratio_{ratio}"


@pytest.mark.parametrize("flag", ["--remaining_ratios=0.1,2", "--eval_epsilons=0", "--transfer_ratio=3",
                                  "--network=nope", "--flagfile=flags/missing.cfg", "--pgd_protocol=official"])
def test_bad_flags_give_one_error_line(flag):
    result = _app(flag, "--dry_run")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]


def test_a_source_folder_holding_another_setting_is_refused(tmp_path):
    import dataclasses
    import json

    step = reproduce.plan(SearchConfig(epochs=1), RATIOS, str(tmp_path))[0]
    other = dataclasses.replace(step.config, epochs=2)
    os.makedirs(step.output_dir)
    with open(os.path.join(step.output_dir, "config.json"), "w") as handle:
        json.dump(dataclasses.asdict(other), handle)
    with pytest.raises(ValueError, match="holds a run with epochs 2, not 1"):
        reproduce.run_step(step)


def test_report_states_the_sampling_noise_of_its_test_subset():
    assert reproduction_report.sampling_noise(0.5, 100) == pytest.approx(0.05)
    figures = dict(PAPER_LIKE, num_examples=1000)
    rows = reproduction_report.claims(figures)
    config = SearchConfig(epsilon=0.0313725, epochs=4)
    scale = reproduction_report.scale_of(config, RATIOS, [8])
    assert scale["search attack"].endswith("at 8/255")
    text = reproduction_report.markdown_report("cmd", scale, 60, figures, rows, {}, [8])
    noise = [line for line in text.splitlines() if line.startswith("Noise:")]
    typical = np.mean([p["robust"] for points in figures["kinds"].values() for p in points])
    error = np.sqrt(typical * (1 - typical) / 1000)
    assert len(noise) == 1 and f"one standard error is {100 * error:.1f} points" in noise[0]
    assert f"about {100 * 2 * np.sqrt(2) * error:.1f} points" in noise[0]
    # Without a count (older caches) the paragraph is left out rather than guessed.
    assert "Noise:" not in reproduction_report.markdown_report("cmd", scale, 60, PAPER_LIKE, rows, {}, [8])


def test_transfer_claims_state_both_pgd_protocols_and_every_accuracy_its_interval():
    other = {"pgd_protocol": "paper", "transfer": {"names": ["ratio_0.05", "ratio_0.1"],
                                                   "accuracy": [[0.30, 0.10], [0.10, 0.30]]},
             "r2s": {"natural": 0.4, "vanilla": 0.20, "eot": 0.19,
                     "best_single": {"name": "ratio_0.1", "natural": 0.41, "attacked": 0.22}}}
    figures = dict(PAPER_LIKE, num_examples=1000, pgd_protocol="standard", other_protocol=other)
    rows = {row["claim"].split(" (§")[0]: row for row in reproduction_report.claims(figures)}
    wilson = lambda value: intervals.format_accuracy(value, 1000)  # noqa: E731
    transfer = rows["Adversarial examples transfer poorly between RSTs of different ratios"]
    assert transfer["holds"] is True  # the verdict is the standard protocol's
    assert transfer["measured"] == ("standard PGD: off-diagonal 34.0% vs diagonal 21.0%; paper PGD: off-diagonal "
                                    "10.0% vs diagonal 30.0% (does not hold at this scale)")
    r2s_row = rows["R2S is more robust than the best single RST under PGD-20"]
    assert r2s_row["measured"] == (
        f"standard PGD: R2S vanilla {wilson(0.30)}, EOT {wilson(0.21)} vs best single {wilson(0.22)} (ratio_0.1); "
        f"paper PGD: R2S vanilla {wilson(0.20)}, EOT {wilson(0.19)} vs best single {wilson(0.22)} (ratio_0.1) "
        "(does not hold at this scale)")
    assert wilson(0.30) == "30.0% [27.2, 32.9]"
    assert f"RST {wilson(0.29)} (ratio 0.2) vs dense AT {wilson(0.30)}" in rows[
        "RSTs at 5-20% remaining ratio are close to dense AT"]["measured"]
    config = SearchConfig(width_multiplier=0.0625, epochs=4)
    text = reproduction_report.markdown_report("cmd", reproduction_report.scale_of(config, RATIOS, [8, 12], "paper"),
                                               60, figures, list(rows.values()), {}, [8, 12])
    assert "measured under both PGD protocols: standard and paper" in text
    assert f"| RST | 0.2 | 40.0% | {wilson(0.29)} | {wilson(0.145)} |" in text.splitlines()
    assert "evaluation PGD-20 (paper protocol) at 8, 12/255" in text
