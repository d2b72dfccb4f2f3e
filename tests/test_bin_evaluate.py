"""bin/evaluate end to end on a tiny search run: outputs, and bad input that writes nothing."""
import json
import os
import subprocess
import sys

import pytest

from rst_tf.measuring import intervals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVALUATE = os.path.join(ROOT, "bin", "evaluate.py")
TINY_EVALUATE = ["--attacks=pgd", "--epsilons=8", "--steps=2", "--num_examples=16",
                 "--batch_size=16"]


def run(script, *args, cifar10_path, cwd):
    """The app in `cwd` (a test's own folder: relative paths never reach the repository's runs/)."""
    env = dict(os.environ, RST_TF_DATA_DIR=cifar10_path)
    return subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=900,
                          cwd=cwd)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as bin/search leaves it (config.json, metrics.json, checkpoints/last) for a tiny RST network at
    its random scores: written here directly, as a search (even a tiny one) takes minutes on 2 CPU cores.
    tests/test_bin_search.py checks that `run_dir.load_run` reads what a real search writes."""
    import dataclasses

    import tensorflow as tf

    from rst_tf.training import build
    from rst_tf.training.config import SearchConfig

    path = tmp_path_factory.mktemp("evaluate") / "tiny_rst"
    config = SearchConfig(network="resnet18", width_multiplier=1 / 16, remaining_ratio=0.2, epochs=1, seed=3)
    network = build.build_network(config, 10, (32, 32, 3))
    tf.train.CheckpointManager(tf.train.Checkpoint(network=network), str(path / "checkpoints" / "last"), 1).save()
    (path / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    (path / "metrics.json").write_text(json.dumps({"data": {"num_classes": 10, "image_shape": [32, 32, 3]}}))
    return str(path)


def test_evaluate_writes_json_markdown_and_plots(tmp_path, run_dir, cifar10_path):
    output_dir = tmp_path / "eval"
    result = run(EVALUATE, f"--run_dir={run_dir},{run_dir}", *TINY_EVALUATE, "--transfer", "--feature_distance",
                 "--mask_analysis", f"--output_dir={output_dir}", cifar10_path=cifar10_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[tiny_rst] pgd-2 Linf 8/255: accuracy" in result.stdout  # a progress line per attack
    report = json.loads((output_dir / "eval.json").read_text())
    assert [entry["name"] for entry in report["runs"]] == ["tiny_rst", "tiny_rst_2"]
    assert report["num_examples"] == 16 and report["dataset"] == "cifar10"
    entry = report["runs"][0]
    assert [a["label"] for a in entry["attacks"]] == ["pgd-2 Linf 8/255"]
    pgd8 = entry["attacks"][0]
    assert pgd8["config"]["name"] == "pgd" and pgd8["config"]["steps"] == 2
    assert pgd8["config"]["epsilon"] == pytest.approx(8 / 255) and pgd8["config"]["step_size"] == pytest.approx(2 / 255)
    assert len(pgd8["correct"]) == 16 and pgd8["accuracy"] <= entry["natural"]["accuracy"]
    assert report["pgd_protocol"] == "standard" and pgd8["config"]["early_stop"] is False
    assert all(a <= n for a, n in zip(pgd8["correct"], entry["natural"]["correct"]))  # honest rows
    assert pgd8["num_examples"] == 16 and pgd8["interval"] == pytest.approx(
        list(intervals.wilson_interval(sum(pgd8["correct"]), 16)))
    assert entry["worst_case"]["accuracy"] <= min(a["accuracy"] for a in entry["attacks"])
    assert [p["label"] for p in entry["sanity_probes"]] == ["pgd-2 Linf 64/255", "pgd-4 Linf 8/255"]
    assert entry["sanity_checks"] and {"check", "passed", "detail"} <= set(entry["sanity_checks"][0])
    assert report["transfer"]["names"] == ["tiny_rst", "tiny_rst_2"]
    # The same model twice: every cell is its white-box PGD accuracy at the reference epsilon (8/255).
    assert all(cell == pytest.approx(pgd8["accuracy"]) for row in report["transfer"]["accuracy"] for cell in row)
    assert set(report["feature_distance"]["distance"]) == {"tiny_rst", "tiny_rst_2"}
    masks = report["mask_analysis"]  # one ticket twice: full overlap, no distance
    assert masks["jaccard"]["overall"] == [[1.0, 1.0], [1.0, 1.0]] and masks["hamming"]["overall"][0][1] == 0.0
    assert all(abs(v - 0.2) < 0.05 for v in masks["kept_fraction"]["tiny_rst"].values())
    markdown = (output_dir / "eval.md").read_text()
    assert "bin/evaluate.py" in markdown and "--transfer" in markdown  # the command line
    assert "| pgd-2 Linf 8/255 |" in markdown and "## Transfer attacks" in markdown
    assert f"| {intervals.format_accuracy(pgd8['accuracy'], 16, digits=2)} |" in markdown
    assert ("GRADIENT MASKING WARNING" in markdown) == bool(report["warnings"])
    for name in ("accuracy_vs_epsilon_tiny_rst.png", "transfer_matrix.png", "feature_distance.png",
                 "accuracy_vs_remaining_ratio.png", "mask_overlap.png"):
        assert (output_dir / name).read_bytes()[:4] == b"\x89PNG", name
    assert sorted(report["plots"]) == sorted(p.name for p in output_dir.glob("*.png"))
    assert not list(output_dir.glob("*.tmp*"))


@pytest.mark.parametrize("bad_args,message", [
    (["--run_dir=/no/such/run"], "/no/such/run"),
    (["--attacks=pgd,deepfool"], "unknown attack 'deepfool'"),
    (["--epsilons=8,-1"], "--epsilons must be numbers in (0, 255]"),
    (["--epsilons=eight"], "--epsilons must be numbers"),
    (["--transfer"], "--transfer needs at least two --run_dir"),
    (["--mask_analysis"], "--mask_analysis needs at least two --run_dir"),
    (["--pgd_protocol=official"], "--pgd_protocol"),
])
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, run_dir, cifar10_path, bad_args, message):
    output_dir = tmp_path / "eval"
    result = run(EVALUATE, f"--run_dir={run_dir}", *TINY_EVALUATE, f"--output_dir={output_dir}", *bad_args,
                 cifar10_path=cifar10_path, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not output_dir.exists()


def test_a_folder_without_a_run_fails_before_writing(tmp_path, cifar10_path):
    output_dir = tmp_path / "eval"
    result = run(EVALUATE, f"--run_dir={tmp_path}", *TINY_EVALUATE, f"--output_dir={output_dir}",
                 cifar10_path=cifar10_path, cwd=tmp_path)
    assert result.returncode == 2 and "holds no search run" in result.stderr
    assert not output_dir.exists()


QUICK_FLAGFILE = os.path.join(ROOT, "flags", "evaluate", "quick.cfg")


def test_quick_flagfile_parses(tmp_path, cifar10_path):
    """The flagfile is read (its --run_dir reaches the check), and it asks for the quick evaluation."""
    values = dict(line.strip()[2:].split("=", 1) for line in open(QUICK_FLAGFILE) if line.startswith("--"))
    assert values["run_dir"] == "runs/quick_rst" and values["num_examples"] == "1000"
    assert values["attacks"] == "pgd,cw_inf,pgd_l2,autoattack"
    assert values["epsilons"] == "8" and values["l2_epsilons"] == "0.5"
    result = run(EVALUATE, f"--flagfile={QUICK_FLAGFILE}", f"--output_dir={tmp_path / 'eval'}",
                 cifar10_path=cifar10_path, cwd=tmp_path)
    assert result.returncode == 2 and "error: --run_dir runs/quick_rst is not a folder" in result.stderr
    assert not (tmp_path / "eval").exists()


def test_quick_flagfile_check_does_not_depend_on_the_working_tree(tmp_path, cifar10_path):
    """Where a user has run the quick search (runs/quick_rst exists), the flagfile still parses and the app stops at
    the run folder's content, long before any attack: here the folder holds no search run."""
    (tmp_path / "runs" / "quick_rst").mkdir(parents=True)
    result = run(EVALUATE, f"--flagfile={QUICK_FLAGFILE}", f"--output_dir={tmp_path / 'eval'}",
                 cifar10_path=cifar10_path, cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and errors == ["error: runs/quick_rst holds no search run (no config.json)"]
    assert not (tmp_path / "eval").exists()
