"""Shared test set-up: quiet TensorFlow, seeded runs, the offline CIFAR-10 copy."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def cifar10_dir():
    """The folder holding CIFAR-10's train/ and test/ class folders, or None."""
    path = os.environ.get("RST_TF_DATA_DIR", "")
    if path and os.path.isdir(os.path.join(path, "train")):
        return path
    return None


# The test files that take the longest, longest first. pytest-xdist's loadfile hands whole files to its workers in
# collection order (by default: files with more tests first, whatever they cost); these go first, the others follow
# by number of tests, so that no long file starts last and keeps one core busy while the other has nothing left.
LONGEST_FILES = ("test_autoattack_reference.py", "test_executors.py", "test_bin_search.py",
                 "test_bin_search_variants.py", "test_nested_bank.py", "test_bin_r2s.py", "test_nested.py",
                 "test_distribute.py", "test_trainer.py", "test_search.py", "test_scaling.py", "test_r2s.py",
                 "test_bin_evaluate.py", "test_export.py", "test_quiet_start.py")


def pytest_configure(config):
    if getattr(config.option, "dist", "no") == "loadfile" and hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # the order below, not xdist's by number of tests


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONGEST_FILES)}
    tests_per_file = {}
    for item in items:
        tests_per_file[item.path.name] = tests_per_file.get(item.path.name, 0) + 1
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), -tests_per_file[item.path.name]))


@pytest.fixture(scope="session")
def cifar10_path():
    path = cifar10_dir()
    if path is None:
        pytest.fail("RST_TF_DATA_DIR must name the unpacked CIFAR-10 copy (train/ and test/ class folders)")
    return path


@pytest.fixture(scope="session")
def tiny_bank():
    """(MaskBank of three tickets over one tiny random ResNet18, their source networks); see ticket_fixtures."""
    import ticket_fixtures

    return ticket_fixtures.bank()


def write_image_folders(root, images_per_class=8, bad_file="train/dog/broken.jpg"):
    """A tiny class-folder copy under `root` (train/ and test/, classes cat and dog, 32x32 PNG files of seeded
    noise) with one file that is not an image at `bad_file` (None: none). Returns the bad file's path."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for class_name in ("cat", "dog"):
            folder = os.path.join(root, split, class_name)
            os.makedirs(folder, exist_ok=True)
            for index in range(images_per_class):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                tf.io.write_file(os.path.join(folder, f"{index}.png"), tf.io.encode_png(pixels))
    if bad_file is None:
        return None
    path = os.path.join(root, bad_file)
    with open(path, "wb") as handle:
        handle.write(b"this is not a JPEG file")
    return path


@pytest.fixture
def image_folders_with_a_bad_file(tmp_path):
    """(data folder, path of its one undecodable .jpg)."""
    root = str(tmp_path / "images")
    return root, write_image_folders(root)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH_APP = os.path.join(ROOT, "bin", "search.py")
# A tiny deterministic search: one step per epoch, two epochs (the same network and masking as test_trainer's runs).
TINY_SEARCH_FLAGS = ["--network=resnet18", "--width_multiplier=0.0625", "--remaining_ratio=0.2", "--train_examples=32",
                     "--validation_examples=16", "--test_examples=16", "--batch_size=32", "--attack_steps=1",
                     "--eval_attack_steps=1", "--epochs=2", "--deterministic", "--seed=3"]


def start_search(args, cifar10_path, stdout, stderr):
    """bin/search as a subprocess reading CIFAR-10 from `cifar10_path`."""
    import subprocess
    import sys

    env = dict(os.environ, RST_TF_DATA_DIR=cifar10_path)
    return subprocess.Popen([sys.executable, SEARCH_APP, *args], env=env, stdout=stdout, stderr=stderr, text=True)


def shared_folder(tmp_path_factory, name):
    """`name` in the session's base temporary folder: with pytest-xdist the workers' folders (popen-gw<i>) sit in one
    folder of the session, which they share, so what is made there is made once per session, not once per worker."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


def claim(folder):
    """Make `folder` and return True if this process is the first to ask for it; False if another one has it. The
    first one writes its pid to folder/owner, so that the others can tell when it has gone."""
    try:
        folder.mkdir()
    except FileExistsError:
        return False
    _write_atomically(folder / "owner", str(os.getpid()))
    return True


def _write_atomically(path, text):
    """The file appears whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _record_exit(process, folder, timeout=1200):
    """Wait for the process (killed after `timeout` s) and write its exit code to folder/returncode."""
    import subprocess

    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    _write_atomically(folder / "returncode", str(process.returncode))


def _is_running(pid):
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _wait_for_exit(folder, timeout=1500):
    """The exit code recorded in folder/returncode by the process that claimed `folder` (this one or another worker):
    waits until it appears, failing if that process ends without writing it or after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    returncode = folder / "returncode"
    while not returncode.exists():
        owner = folder / "owner"
        if owner.exists() and not _is_running(int(owner.read_text())) and not returncode.exists():
            pytest.fail(f"the worker that started the process of {folder} ended without recording its exit code")
        if time.monotonic() > deadline:
            pytest.fail(f"no exit code in {folder} after {timeout} s")
        time.sleep(0.2)
    return int(returncode.read_text())


@pytest.fixture(scope="session")
def started_tiny_search(tmp_path_factory, cifar10_path):
    """The tiny search (bin/search, progress shown), started and not waited for: (process, output_dir, log folder).

    It runs once per session: under pytest-xdist the first worker to ask starts it in a folder every worker shares
    (the others get None for the process); a thread of that worker records its exit code as soon as it ends, which
    `tiny_search_run` waits for in every worker. Tests that need more searches start them after requesting this, so
    they run alongside it."""
    import threading

    folder = shared_folder(tmp_path_factory, "tiny_search")
    process = recorder = None
    if claim(folder):
        try:
            with open(folder / "stdout.txt", "w") as stdout, open(folder / "stderr.txt", "w") as stderr:
                process = start_search([*TINY_SEARCH_FLAGS, f"--output_dir={folder / 'run'}"], cifar10_path, stdout,
                                       stderr)
        except BaseException as error:  # the workers waiting for it fail now rather than at their deadline
            (folder / "stderr.txt").write_text(f"the search could not start: {error!r}")
            _write_atomically(folder / "returncode", "-1")
            raise
        recorder = threading.Thread(target=_record_exit, args=(process, folder), daemon=True)
        recorder.start()
    yield process, folder / "run", folder
    if recorder is not None:
        recorder.join()  # other workers may still be waiting for its exit code


@pytest.fixture(scope="session")
def tiny_search_run(started_tiny_search):
    """The finished tiny search: (output_dir, its stdout, its stderr)."""
    _, output_dir, folder = started_tiny_search
    returncode = _wait_for_exit(folder)
    stdout, stderr = (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text()
    assert returncode == 0, stderr[-3000:]
    return output_dir, stdout, stderr
