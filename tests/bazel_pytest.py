"""Runs a pytest module as a Bazel py_test: ``bazel_pytest.py tests/test_x.py [pytest args]``.

BUILD passes the module's path; Bazel runs this from the runfiles tree, where pytest.ini and
tests/conftest.py sit beside it. ``bazel test --test_filter=EXPR`` becomes ``pytest -k EXPR`` and the
JUnit XML goes where Bazel collects it.
"""
import os
import sys

import pytest


def main():
    sys.dont_write_bytecode = True  # the runfiles tree is not ours to write into
    if "TEST_TMPDIR" in os.environ:  # Bazel leaves HOME unset; ~/.keras and the like go here
        os.environ.setdefault("HOME", os.environ["TEST_TMPDIR"])
    args = sys.argv[1:]
    test_filter = os.environ.get("TESTBRIDGE_TEST_ONLY")
    if test_filter:
        args += ["-k", test_filter]
    xml_path = os.environ.get("XML_OUTPUT_FILE")
    if xml_path:
        args.append("--junitxml=" + xml_path)
    return pytest.main(args)


if __name__ == "__main__":
    sys.exit(main())
