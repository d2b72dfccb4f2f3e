"""README stays short, its code example runs and does what it says, and what it names exists."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 250


def readme():
    with open(os.path.join(ROOT, "README.md")) as handle:
        return handle.read()


def test_layer_example_runs():
    example = re.search(r"```python\n(.*?)```", readme(), re.S).group(1)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    model, conv = namespace["model"], namespace["conv"]
    assert namespace["logits"].shape == (8, 10)
    assert [v.name for v in conv.trainable_variables] == ["kernel"]
    assert sorted(v.name for v in model.trainable_variables) == ["kernel", "scores"]


def test_readme_is_short():
    lines = readme().count("\n")
    assert lines <= MAX_LINES, f"README.md has {lines} lines; the details belong on the site (docs/)"


def test_ci_runs_the_readme_test_command():
    """.ci/run ends with README's test command (without the data variable, which .ci/run exports)."""
    command = re.search(r"^(?:RST_TF_DATA_DIR=\S+ )?(python -m pytest .*)$", readme(), re.M).group(1)
    with open(os.path.join(ROOT, ".ci", "run")) as handle:
        last = [line for line in handle.read().splitlines() if line.strip()][-1]
    assert last == command


def test_named_files_and_apps_exist():
    text = readme()
    links = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)]
    links = [target for target in links if target and "://" not in target]
    flagfiles = re.findall(r"--flagfile=(\S+\.cfg)", text)
    apps = re.findall(r"\bbin/([a-z_]+)\b", text)  # bin/NAME is a placeholder
    assert links and flagfiles and apps
    missing = [path for path in links + flagfiles if not os.path.exists(os.path.join(ROOT, path))]
    missing += [f"bin/{app}" for app in apps if not os.path.isfile(os.path.join(ROOT, "bin", app))]
    assert not missing, f"README names files that do not exist: {sorted(set(missing))}"
