"""The evaluation's progress: the attack, batch, component, examples left and elapsed time; one line rewritten in
place on a terminal, a line per component otherwise."""
import io

from rst_tf.reports import suite


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_line_per_component_when_not_on_a_terminal():
    stream = io.StringIO()
    progress = suite.Progress(stream)
    progress.begin("autoattack_fast Linf 8/255", 2)
    progress(0, "APGD-CE", 120)
    progress(0, "APGD-T", 61)
    progress.end()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[0].startswith("autoattack_fast Linf 8/255: batch 1/2, APGD-CE, 120 examples left, ")
    assert lines[1].endswith(" s") and "APGD-T, 61 examples left" in lines[1]


def test_live_on_a_terminal_with_carriage_returns():
    stream = _Terminal()
    progress = suite.Progress(stream)
    progress.begin("autoattack Linf 8/255", 1)
    progress(0, "APGD-CE, a long component name", 300)
    progress(0, "done", 7)
    progress.end()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    # The shorter second line is padded over the first.
    second = text.split("\r")[2].rstrip("\n")
    assert "done, 7 examples left" in second and len(second) >= len(text.split("\r")[1])
