"""A quiet start: an app's first lines are its own; TensorFlow's start-up lines only with --verbosity >= 1."""
import os
import re
import subprocess
import sys

from conftest import SEARCH_APP as SEARCH

# What TensorFlow prints as it loads on a machine without a GPU: absl's notice, oneDNN, the cudart stub, cuInit.
STARTUP_MARKERS = ("absl::InitializeLog", "oneDNN custom operations", "cudart_stub", "cuInit", "cpu_feature_guard")
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+\.cc:\d+\]", re.MULTILINE)  # any C++ log line


def startup_lines(stderr):
    return [line for line in stderr.splitlines() if any(marker in line for marker in STARTUP_MARKERS)]


def search(*args):
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}  # the app's default
    return subprocess.run([sys.executable, SEARCH, *args], env=env, capture_output=True, text=True, timeout=300)


def test_helpfull_prints_only_the_help():
    result = search("--helpfull")
    assert "--remaining_ratio" in result.stdout and "--verbosity" in result.stdout
    assert result.stderr == "", result.stderr[-2000:]


def test_a_run_shows_no_tensorflow_startup_lines(tiny_search_run):
    """conftest's tiny search (2 epochs, progress bar on)."""
    _, stdout, stderr = tiny_search_run
    assert stdout.splitlines()[0] == "epoch 1/2"  # the first line is the app's own
    assert startup_lines(stderr) == [] and not CPP_LOG_LINE.search(stderr), stderr[-2000:]


def test_verbosity_1_shows_the_startup_lines_and_errors_stay_visible():
    """A flag refused after parsing (TensorFlow loaded): the error line always; start-up lines only at -v 1."""
    quiet = search("--remaining_ratio=1.5", "--output_dir=unused")
    assert quiet.returncode == 2
    assert len(quiet.stderr.splitlines()) == 1, quiet.stderr[-2000:]
    assert quiet.stderr.startswith("error: remaining_ratio must be in (0, 1]")

    verbose = search("--remaining_ratio=1.5", "--output_dir=unused", "--verbosity=1")
    assert verbose.returncode == 2
    shown = startup_lines(verbose.stderr)
    assert any("oneDNN" in line for line in shown) or any("cuInit" in line for line in shown), verbose.stderr[-2000:]
    assert verbose.stderr.splitlines()[-1] == quiet.stderr.strip()


def test_lines_written_while_tensorflow_loads_that_are_not_startup_lines_pass_through(capfd, monkeypatch):
    """The capture around TensorFlow's import holds only the known start-up lines; anything else reaches stderr."""
    from bin import common

    monkeypatch.setattr(common, "_show_startup_lines", None)  # flags not parsed yet
    monkeypatch.setattr(common, "_startup_lines", [])
    startup = ("I0000 00:00:1796291885.116684    4595 port.cc:153] oneDNN custom operations are on. You may see "
               "slightly different numerical results")
    with common._startup_lines_held():
        os.write(2, f"{startup}\nE0000 00:00:1.0  1 some_kernel.cc:7] a real error\n".encode())
    err = capfd.readouterr().err
    assert "a real error" in err and "oneDNN" not in err
    assert common._startup_lines == [startup]
