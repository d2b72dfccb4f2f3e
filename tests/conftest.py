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
