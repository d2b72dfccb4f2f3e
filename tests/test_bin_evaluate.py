"""bin/evaluate end to end on a tiny search run: outputs, and bad input that writes nothing."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVALUATE = os.path.join(ROOT, "bin", "evaluate.py")
TINY_EVALUATE = ["--attacks=pgd", "--epsilons=8", "--steps=2", "--num_examples=16",
                 "--batch_size=16"]


def run(script, *args, cifar10_path):
    env = dict(os.environ, RST_TF_DATA_DIR=cifar10_path)
    return subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as bin/search leaves it (config.json, metrics.json, checkpoints/last) for a tiny RST network at
    its random scores: written here directly, as a search (even a tiny one) takes minutes on 2 CPU cores.
    tests/test_bin_search.py checks that `trainer.load_run` reads what a real search writes."""
    import dataclasses

    import tensorflow as tf

    from rst_tf import trainer

    path = tmp_path_factory.mktemp("evaluate") / "tiny_rst"
    config = trainer.SearchConfig(network="resnet18", width_multiplier=1 / 16, remaining_ratio=0.2, epochs=1, seed=3)
    network = trainer.build_network(config, 10, (32, 32, 3))
    tf.train.CheckpointManager(tf.train.Checkpoint(network=network), str(path / "checkpoints" / "last"), 1).save()
    (path / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    (path / "metrics.json").write_text(json.dumps({"data": {"num_classes": 10, "image_shape": [32, 32, 3]}}))
    return str(path)


def test_evaluate_writes_json_markdown_and_plots(tmp_path, run_dir, cifar10_path):
    output_dir = tmp_path / "eval"
    result = run(EVALUATE, f"--run_dir={run_dir},{run_dir}", *TINY_EVALUATE, "--transfer", "--feature_distance",
                 f"--output_dir={output_dir}", cifar10_path=cifar10_path)
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
    assert entry["worst_case"]["accuracy"] <= min(a["accuracy"] for a in entry["attacks"])
    assert [p["label"] for p in entry["sanity_probes"]] == ["pgd-2 Linf 64/255", "pgd-4 Linf 8/255"]
    assert entry["sanity_checks"] and {"check", "passed", "detail"} <= set(entry["sanity_checks"][0])
    assert report["transfer"]["names"] == ["tiny_rst", "tiny_rst_2"]
    # The same model twice: every cell is its white-box PGD accuracy at the reference epsilon (8/255).
    assert all(cell == pytest.approx(pgd8["accuracy"]) for row in report["transfer"]["accuracy"] for cell in row)
    assert set(report["feature_distance"]["distance"]) == {"tiny_rst", "tiny_rst_2"}
    markdown = (output_dir / "eval.md").read_text()
    assert "bin/evaluate.py" in markdown and "--transfer" in markdown  # the command line
    assert "| pgd-2 Linf 8/255 |" in markdown and "## Transfer attacks" in markdown
    assert ("GRADIENT MASKING WARNING" in markdown) == bool(report["warnings"])
    for name in ("accuracy_vs_epsilon_tiny_rst.png", "transfer_matrix.png", "feature_distance.png",
                 "accuracy_vs_remaining_ratio.png"):
        assert (output_dir / name).read_bytes()[:4] == b"\x89PNG", name
    assert sorted(report["plots"]) == sorted(p.name for p in output_dir.glob("*.png"))
    assert not list(output_dir.glob("*.tmp*"))


@pytest.mark.parametrize("bad_args,message", [
    (["--run_dir=/no/such/run"], "/no/such/run"),
    (["--attacks=pgd,deepfool"], "unknown attack 'deepfool'"),
    (["--epsilons=8,-1"], "--epsilons must be numbers in (0, 255]"),
    (["--epsilons=eight"], "--epsilons must be numbers"),
    (["--transfer"], "--transfer needs at least two --run_dir"),
])
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, run_dir, cifar10_path, bad_args, message):
    output_dir = tmp_path / "eval"
    result = run(EVALUATE, f"--run_dir={run_dir}", *TINY_EVALUATE, f"--output_dir={output_dir}", *bad_args,
                 cifar10_path=cifar10_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not output_dir.exists()


def test_a_folder_without_a_run_fails_before_writing(tmp_path, cifar10_path):
    output_dir = tmp_path / "eval"
    result = run(EVALUATE, f"--run_dir={tmp_path}", *TINY_EVALUATE, f"--output_dir={output_dir}",
                 cifar10_path=cifar10_path)
    assert result.returncode == 2 and "holds no search run" in result.stderr
    assert not output_dir.exists()


def test_quick_flagfile_parses(tmp_path, cifar10_path):
    """The flagfile is read (its --run_dir reaches the check), and it asks for the quick evaluation."""
    path = os.path.join(ROOT, "flags", "evaluate", "quick.cfg")
    values = dict(line.strip()[2:].split("=", 1) for line in open(path) if line.startswith("--"))
    assert values["run_dir"] == "runs/quick_rst" and values["num_examples"] == "1000"
    assert values["attacks"] == "pgd,cw_inf,pgd_l2,autoattack"
    assert values["epsilons"] == "8" and values["l2_epsilons"] == "0.5"
    result = run(EVALUATE, f"--flagfile={path}", f"--output_dir={tmp_path / 'eval'}", cifar10_path=cifar10_path)
    if not os.path.isdir(os.path.join(os.getcwd(), "runs", "quick_rst")):
        assert result.returncode == 2 and "error: --run_dir runs/quick_rst is not a folder" in result.stderr
