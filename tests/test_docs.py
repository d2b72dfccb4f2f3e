"""The documentation site builds with every link resolved, reaches every page, and says nothing machine-specific."""
import glob
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
# An absolute path of some machine: a home, a scratch or a work folder (a container path such as /models is not one).
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|tmp|home|root|Users|mnt|private|var/folders)(?:/|\b)")


def pages():
    return sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))


def nav_pages(entries):
    """Every page file that mkdocs.yml's nav names, however deep."""
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            yield from nav_pages(value)
        else:
            yield value


def test_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a missing page, a broken link or anchor, or a bad docstring fails the build."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f",
                             os.path.join(ROOT, "mkdocs.yml"), "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for page in ("index.html", "getting_started/index.html", "apps/search/index.html", "api/index.html"):
        assert os.path.isfile(tmp_path / "site" / page), page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "MaskedConv2D" in api and "top_k_mask" in api  # the reference holds the library's docstrings


def test_nav_reaches_every_page():
    with open(os.path.join(ROOT, "mkdocs.yml")) as handle:
        nav = set(nav_pages(yaml.safe_load(handle)["nav"]))
    on_disk = {os.path.relpath(page, DOCS) for page in pages()}
    assert not on_disk - nav, "add to mkdocs.yml nav: %s" % sorted(on_disk - nav)
    assert not nav - on_disk, "mkdocs.yml nav names missing pages: %s" % sorted(nav - on_disk)


def test_no_machine_paths_in_docs_or_readme():
    found = []
    for path in pages() + [os.path.join(ROOT, "README.md")]:
        with open(path) as handle:
            for number, line in enumerate(handle, 1):
                if MACHINE_PATH.search(line):
                    found.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert not found, "absolute paths of a machine:\n" + "\n".join(found)


def test_machine_path_pattern():
    """The check above catches what it is for and leaves relative and container paths alone."""
    for line in ("--output_dir=/work/runs/x", "--data_dir=/tmp/cifar", "cd /home/me", "/Users/me/x", "(/root/y)"):
        assert MACHINE_PATH.search(line), line
    for line in ("--output_dir=runs/x", "--serving_base_path=/models", "bin/search", "docs/tmp/x", "./tmp/x",
                 "/v1/models/cifar10_r2s:predict"):
        assert not MACHINE_PATH.search(line), line


def test_method_page_shows_the_readme_example():
    """The layer example appears in README (where tests/test_readme.py runs it) and on the method page unchanged."""
    example = re.compile(r"```python\n(.*?)```", re.S)
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = example.search(handle.read()).group(1)
    with open(os.path.join(DOCS, "method.md")) as handle:
        assert readme in example.findall(handle.read())
