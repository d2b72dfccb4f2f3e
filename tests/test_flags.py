"""Every flagfile in flags/ parses and describes a valid run."""
import dataclasses
import glob
import os

import pytest

from bin import search as search_app
from rst_tf.training.config import SearchConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "flags", "*.cfg")))


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_gives_a_valid_config(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # flagfiles include each other by paths relative to the repository root
    flags = search_app.FLAGS
    flags.unparse_flags()
    flags(["search", f"--flagfile={os.path.relpath(path, ROOT)}", "--output_dir=unused"])
    try:
        config = search_app.config_from_flags()
        config.validate()
        if "quick" in path and config.network.startswith("keras:"):  # a Keras twin takes width 1 only
            assert config.width_multiplier == 1.0 and config.train_examples <= 10_000 and config.epochs <= 10
        elif "quick" in path:
            assert config.width_multiplier <= 0.25 and config.epochs <= 10
        else:
            assert config.width_multiplier == 1.0 and config.epochs >= 90
    finally:
        flags.unparse_flags()


def test_quick_baseline_matches_the_quick_search_but_for_the_mode(monkeypatch):
    monkeypatch.chdir(ROOT)
    configs = {}
    for name in ("cifar10_quick.cfg", "cifar10_quick_dense_at.cfg"):
        search_app.FLAGS.unparse_flags()
        search_app.FLAGS(["search", f"--flagfile=flags/{name}", "--output_dir=unused"])
        configs[name] = search_app.config_from_flags()
    search_app.FLAGS.unparse_flags()
    rst, dense = configs["cifar10_quick.cfg"], configs["cifar10_quick_dense_at.cfg"]
    assert rst.mode == "rst" and dense.mode == "dense_at"
    assert dataclasses.replace(dense, mode="rst") == rst


REPRODUCE_FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "flags", "reproduce", "*.cfg")))


@pytest.mark.parametrize("path", REPRODUCE_FLAGFILES, ids=os.path.basename)
def test_reproduce_flagfile_plans_a_valid_study(path):
    """bin/reproduce's flagfiles parse with its flags (in their own process) and plan every run."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "reproduce.py"),
                             f"--flagfile={os.path.relpath(path, ROOT)}", "--dry_run"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    if os.path.basename(path) == "scaling.cfg":  # width, seed, step, folder, mode, ratios; then the cost model
        runs = [row for row in rows if row[0].startswith("width ")]
        assert {row[0] for row in runs} == {"width 0.0625", "width 0.125", "width 0.25"}
        assert {row[1] for row in runs} == {"seed 0", "seed 1", "seed 2"} and len(runs) == 18
        assert {row[5] for row in runs if row[2] == "rst"} == {"ratios=0.05,0.1,0.2"}
        cost = next(row[0] for row in rows if row[0].startswith("cost model (docs/scaling_pilot.json): training "))
        assert "by part: training " in cost and "autoattack_standard" in cost
        return
    ratios = rows[2][4].removeprefix("ratios=").split(",")
    assert len({row[0] for row in rows}) >= 2  # at least two seeds
    if "cpu" in os.path.basename(path):
        assert ratios == ["0.05", "0.2", "0.5"]
    else:
        assert ratios == ["0.01", "0.02", "0.05", "0.07", "0.1", "0.15", "0.2", "0.3", "0.5", "0.7", "0.9"]


def test_every_config_field_is_a_flag_with_its_default():
    """bin/search's flags are SearchConfig's fields, with its defaults (but --data_dir: $RST_TF_DATA_DIR)."""
    flags = search_app.FLAGS
    flags.unparse_flags()
    flags(["search", "--data_dir="])
    try:
        assert search_app.config_from_flags() == SearchConfig()
        for field in dataclasses.fields(SearchConfig):
            assert flags[field.name].help.startswith(field.metadata["help"]), field.name
    finally:
        flags.unparse_flags()
