"""bin/r2s and bin/export end to end on run folders of one tiny random network."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import ticket_fixtures
from rst_tf.measuring import intervals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _errors(result):
    return [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]


def _app(name, *args, data_dir=""):
    env = dict(os.environ, RST_TF_DATA_DIR=data_dir)
    return subprocess.run([sys.executable, os.path.join(ROOT, "bin", f"{name}.py"), *args], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    for index, (ratio, seed) in enumerate([(0.1, 0), (0.2, 0), (0.1, 1)]):
        ticket_fixtures.write_run(str(folder / f"run_{index}"), ticket_fixtures.tiny_config(ratio, seed),
                                  variation=index)
    return [str(folder / f"run_{index}") for index in range(3)]


def test_r2s_evaluates_and_saves_the_bank(run_dirs, tmp_path, cifar10_path):
    output = tmp_path / "r2s"
    result = _app("r2s", f"--run_dir={run_dirs[0]},{run_dirs[1]}", f"--output_dir={output}", "--num_examples=16",
                  "--batch_size=16", "--steps=2", "--pgd_protocol=paper", f"--save_bank={tmp_path / 'bank.rst'}",
                  data_dir=cifar10_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((output / "r2s.json").read_text())
    task = report["tasks"]["cifar10"]
    assert [row["name"] for row in task["tickets"]] == ["ratio_0.1", "ratio_0.2"]
    assert set(task["r2s"]) == {"natural", "vanilla", "eot", "ensemble"}
    assert all(0.0 <= value <= 1.0 for value in task["r2s"].values())
    assert report["num_examples"] == 16
    assert report["pgd_protocol"] == "paper" and report["attack"]["early_stop"] is True
    assert report["attack"]["step_size"] == pytest.approx(2 / 255) and report["attack"]["steps"] == 2
    for kind, value in task["r2s"].items():
        assert task["r2s_intervals"][kind] == pytest.approx(list(intervals.accuracy_interval(value, 16)))
    markdown = (output / "r2s.md").read_text()
    assert "R2S, eot attack" in markdown and "PGD protocol `paper`" in markdown
    assert f"| {intervals.format_accuracy(task['r2s']['eot'], 16, digits=2)} |" in markdown
    assert (output / "r2s.png").stat().st_size > 0
    assert (tmp_path / "bank.rst").is_file() and not (tmp_path / "bank.rst.partial").exists()


def test_r2s_refuses_tickets_of_another_network(run_dirs, tmp_path, cifar10_path):
    result = _app("r2s", f"--run_dir={run_dirs[0]},{run_dirs[2]}", f"--output_dir={tmp_path / 'out'}",
                  data_dir=cifar10_path)
    assert result.returncode == 2
    assert _errors(result) == [
        f"error: {run_dirs[2]} does not share the random network of {run_dirs[0]}: seed is 1 there and 0 here"]
    assert not (tmp_path / "out").exists()


def test_export_writes_servable_models_and_config(run_dirs, tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    output = tmp_path / "export"
    result = _app("export", f"--run_dir={run_dirs[0]},{run_dirs[1]}", f"--output_dir={output}",
                  "--serving_base_path=/models")
    assert result.returncode == 0, result.stderr[-3000:]
    config = text_format.Parse((output / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    names = [entry.name for entry in config.model_config_list.config]
    assert names == ["cifar10_ratio_0_1", "cifar10_ratio_0_2", "cifar10_r2s"]
    assert [entry.base_path for entry in config.model_config_list.config] == [f"/models/{n}" for n in names]
    for name in names:
        assert (output / name / "1" / "saved_model.pb").is_file()
    images = tf.random.stateless_uniform([3, *ticket_fixtures.IMAGE_SHAPE], [5, 5])
    served = tf.saved_model.load(str(output / "cifar10_ratio_0_2" / "1")).signatures["serving_default"]
    expected = ticket_fixtures.searched_network(ticket_fixtures.tiny_config(0.2), variation=1)(images, training=False)
    np.testing.assert_allclose(served(images=images)["logits"], expected, atol=1e-5)

    again = _app("export", f"--bank={output / 'bank.rst'}", f"--output_dir={tmp_path / 'from_bank'}", "--noper_ticket")
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "from_bank")) == ["bank.rst", "cifar10_r2s", "export.json", "models.config"]

    refused = _app("export", f"--bank={output / 'bank.rst'}", f"--output_dir={output}")
    assert refused.returncode == 2
    assert _errors(refused) == [f"error: --output_dir {output} exists and is not an empty folder"]
