"""BUILD names every Python file of the project, and no file that does not exist.

BUILD is read by executing it with stand-ins for the Bazel rules it uses (it is plain Starlark, which
Python runs), so the check sees the same lists Bazel does.
"""
import glob as globlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def load_build():
    """Runs ROOT/BUILD with recording rule stubs; returns {rule kind: [attributes, ...]}."""
    rules = {}

    def rule(kind):
        def record(**attrs):
            rules.setdefault(kind, []).append(attrs)

        return record

    def glob(include, exclude=(), allow_empty=True):
        found = set()
        for pattern in include:
            found.update(globlib.glob(pattern, root_dir=ROOT, recursive=True))
        for pattern in exclude:
            found.difference_update(globlib.glob(pattern, root_dir=ROOT, recursive=True))
        return sorted(path for path in found if os.path.isfile(os.path.join(ROOT, path)))

    namespace = {"glob": glob, "package": lambda **_: None}
    for kind in ("py_library", "py_binary", "py_test"):
        namespace[kind] = rule(kind)
    with open(os.path.join(ROOT, "BUILD")) as f:
        exec(compile(f.read(), "BUILD", "exec"), namespace)
    return rules


def files_of(rules, *kinds, attrs=("srcs", "data")):
    named = set()
    for kind in kinds:
        for target in rules.get(kind, []):
            for attr in attrs:
                named.update(f for f in target.get(attr, []) if not f.startswith((":", "//", "@")))
    return named


def python_files(pattern):
    return {p for p in globlib.glob(pattern, root_dir=ROOT, recursive=True) if "__pycache__" not in p}


@pytest.fixture(scope="module")
def rules():
    return load_build()


def test_every_library_module_is_in_the_library(rules):
    missing = python_files("rst_tf/**/*.py") - files_of(rules, "py_library", attrs=("srcs",))
    assert not missing, "add to py_library srcs in BUILD: %s" % sorted(missing)


def test_every_app_module_is_in_a_target(rules):
    missing = python_files("bin/**/*.py") - files_of(rules, "py_binary", "py_library", attrs=("srcs",))
    assert not missing, "add to APPS (an app) or bin_common (shared code) in BUILD: %s" % sorted(missing)


def test_every_test_module_has_a_test_target(rules):
    mains = {}
    for target in rules.get("py_test", []):
        own = [f for f in target["srcs"] if f != target.get("main")]
        assert len(own) == 1, "%s should hold one test module besides its runner" % target["name"]
        mains[own[0]] = target
    missing = python_files("tests/test_*.py") - set(mains)
    assert not missing, "add to TESTS in BUILD: %s" % sorted(missing)
    for module, target in mains.items():
        assert target["name"] == os.path.basename(module)[: -len(".py")]
        assert any(module in arg for arg in target.get("args", [])), "%s does not run %s" % (target["name"], module)


def test_every_test_helper_is_named(rules):
    """conftest.py, the pytest runner and any shared helper must reach the tests' runfiles."""
    helpers = python_files("tests/**/*.py") - python_files("tests/test_*.py")
    missing = helpers - files_of(rules, "py_test")
    assert not missing, "add to TEST_SUPPORT in BUILD: %s" % sorted(missing)


def test_build_names_no_missing_file(rules):
    named = files_of(rules, *rules)
    named.update(target["main"] for targets in rules.values() for target in targets if "main" in target)
    absent = sorted(f for f in named if not os.path.isfile(os.path.join(ROOT, f)))
    assert not absent, "BUILD names files that do not exist: %s" % absent


def test_target_names_are_unique(rules):
    names = [target["name"] for targets in rules.values() for target in targets if "name" in target]
    assert len(names) == len(set(names))
