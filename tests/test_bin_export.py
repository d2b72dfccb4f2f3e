"""The executables bin/NAME run their app from any working directory; bin/export and bin/serve refuse bad input
with one line naming the flag, and leave nothing behind."""
import concurrent.futures
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = ("search", "evaluate", "r2s", "export", "sweep", "reproduce", "serve")


def _run(command, cwd):
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=""))


def test_every_launcher_is_executable_and_runs_from_another_folder(tmp_path):
    for name in APPS:
        assert os.access(os.path.join(ROOT, "bin", name), os.X_OK), f"bin/{name} is not executable"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = dict(zip(APPS, pool.map(lambda name: _run([os.path.join(ROOT, "bin", name), "--helpshort"],
                                                            tmp_path), APPS)))
    for name, result in results.items():
        # absl prints the help and exits with status 1, exactly as `python bin/NAME.py --helpshort` does.
        assert result.returncode == 1 and "Traceback" not in result.stderr, f"bin/{name}: {result.stderr[-2000:]}"
        assert f"{name}.py" in result.stdout and "Try --helpfull" in result.stdout, f"bin/{name}: {result.stdout}"
    assert os.listdir(tmp_path) == []


def test_python_bin_app_still_works(tmp_path):
    result = _run([sys.executable, os.path.join(ROOT, "bin", "serve.py"), "--helpshort"], tmp_path)
    assert result.returncode == 1 and "--model_dir" in result.stdout and "Try --helpfull" in result.stdout


def _errors(result):
    return [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("arguments, expected", [
    ([], "error: --output_dir is required"),
    (["--output_dir=out"], "error: give either --run_dir (searches) or --bank (a .rst file)"),
    (["--output_dir=out", "--run_dir=absent"], "error: --run_dir absent is not a folder"),
    (["--output_dir=out", "--bank=absent.rst"], "error: --bank absent.rst is not a file"),
    (["--output_dir=full", "--bank=full/x"], "error: --output_dir full exists and is not an empty folder"),
    (["--output_dir=out", "--bank=full/x", "--noper_ticket", "--nor2s"],
     "error: nothing to export: --noper_ticket and --nor2s"),
    (["--output_dir=out", "--bank=full/x"], "error: full/x is not a .rst ticket bank"),
])
def test_export_refuses_bad_input(tmp_path, arguments, expected):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("not a bank")
    result = _run([os.path.join(ROOT, "bin", "export"), *arguments], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = _errors(result)
    assert len(errors) == 1 and errors[0].startswith(expected), errors  # a .rst refusal adds the reader's reason
    assert sorted(os.listdir(tmp_path)) == ["full"]


@pytest.mark.parametrize("arguments, expected", [
    ([], "error: --model_dir is required"),
    (["--model_dir=absent"], "error: --model_dir absent is not a folder"),
    (["--model_dir=empty"], "error: empty holds no model (NAME/VERSION/saved_model.pb folders, as bin/export writes)"),
    (["--model_dir=empty", "--port=70000"], "error: --port 70000 is not a TCP port (1..65535)"),
])
def test_serve_refuses_bad_input(tmp_path, arguments, expected):
    (tmp_path / "empty" / "model" / "1").mkdir(parents=True)
    result = _run([os.path.join(ROOT, "bin", "serve"), *arguments], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert _errors(result) == [expected]
