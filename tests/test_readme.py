"""The README's code example runs and does what it says."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_layer_example_runs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    model, conv = namespace["model"], namespace["conv"]
    assert namespace["logits"].shape == (8, 10)
    assert [v.name for v in conv.trainable_variables] == ["kernel"]
    assert sorted(v.name for v in model.trainable_variables) == ["kernel", "scores"]
