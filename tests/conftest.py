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


@pytest.fixture(scope="session")
def started_tiny_search(tmp_path_factory, cifar10_path):
    """The tiny search (bin/search, progress shown), started and not waited for: (process, output_dir, log folder).

    Tests that need more searches start them after requesting this, so they run alongside it."""
    folder = tmp_path_factory.mktemp("tiny_search")
    with open(folder / "stdout.txt", "w") as stdout, open(folder / "stderr.txt", "w") as stderr:
        process = start_search([*TINY_SEARCH_FLAGS, f"--output_dir={folder / 'run'}"], cifar10_path, stdout, stderr)
    yield process, folder / "run", folder
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def tiny_search_run(started_tiny_search):
    """The finished tiny search: (output_dir, its stdout, its stderr)."""
    process, output_dir, folder = started_tiny_search
    process.wait(timeout=1200)
    stdout, stderr = (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text()
    assert process.returncode == 0, stderr[-3000:]
    return output_dir, stdout, stderr
