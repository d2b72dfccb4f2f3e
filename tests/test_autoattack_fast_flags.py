"""bin/evaluate's flags of autoattack_fast: a MALT target count outside [1, classes - 1] is one clear error line,
before anything is loaded or written."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("targets, message", [
    (0, "--malt_targets must be at least 1, got 0"),
    (-2, "--malt_targets must be at least 1, got -2"),
    (10, "--malt_targets must be from 1 to 9"),
])
def test_target_count_outside_1_to_classes_minus_1_is_one_error_line(tmp_path, targets, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"dataset": "cifar10", "class_subset": []}))
    output_dir = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "evaluate.py"), f"--run_dir={run_dir}", f"--output_dir={output_dir}",
         "--attacks=autoattack_fast", f"--malt_targets={targets}", "--noprogress"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not output_dir.exists()
