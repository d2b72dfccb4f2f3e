"""What every app shares: a quiet start, one-line errors, flagfile parsing, writing the flags a run used."""
import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

from absl import app, flags, logging

FLAGS = flags.FLAGS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO and WARNING logs; read when it loads

# TensorFlow's start-up lines. The first ones are written by its C++ logging before that is set up, so no environment
# variable silences them (TF_CPP_MIN_LOG_LEVEL included); the oneDNN notice could only go by turning oneDNN off, which
# changes the kernels. So the app reads stderr while TensorFlow loads and lists its devices, keeps these lines until
# the flags are parsed (shown with --verbosity >= 1, else dropped) and passes every other line on at once.
STARTUP_VERBOSITY = 1
_STARTUP_LINE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    r"|[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] (oneDNN custom operations are on\."
    r"|Could not find cuda drivers on your machine"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|failed call to cuInit: "
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|computation placer already registered)).*$")
_startup_lines = []  # held until the flags say whether to show them
_show_startup_lines = None  # unknown until the flags are parsed


def is_startup_line(line):
    return bool(_STARTUP_LINE.match(line))


def _write_stderr(lines):
    if lines:
        sys.stderr.write("".join(line + "\n" for line in lines))
        sys.stderr.flush()


@contextlib.contextmanager
def _startup_lines_held():
    """File descriptor 2 goes to a temporary file for the block; afterwards start-up lines are held (or shown, once
    the flags asked for them) and every other line goes to stderr, so a real error stays visible."""
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            startup = [line for line in lines if is_startup_line(line)]
            if _show_startup_lines:
                _write_stderr(startup)
            elif _show_startup_lines is None:
                _startup_lines.extend(startup)
            _write_stderr([line for line in lines if not is_startup_line(line)])


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Holds TensorFlow's start-up lines when it is first imported, wherever that happens (apps that need no
    TensorFlow, e.g. for --help, still start without it)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            with _startup_lines_held():
                load(module)
                module.config.list_physical_devices()  # looks for GPUs now (the cuInit line), not at the first op

        spec.loader.exec_module = exec_module
        return spec


if "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlowImport())


def _decide_startup_lines():
    """After parsing: show the held start-up lines if --verbosity asks for them, else drop them."""
    global _show_startup_lines
    _show_startup_lines = FLAGS.verbosity >= STARTUP_VERBOSITY
    if _show_startup_lines:
        _write_stderr(_startup_lines)
    _startup_lines.clear()


def _parse_flags_or_exit(argv):
    """absl's parser, but a bad flag or unreadable flagfile is one line on stderr and exit status 2."""
    try:
        remaining = FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if FLAGS["verbosity"].using_default_value:  # else absl shows INFO logs; --verbosity=0 still does
        FLAGS.verbosity = logging.WARNING
    _decide_startup_lines()
    return remaining


def run(main):
    app.run(main, flags_parser=_parse_flags_or_exit)


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def reject_extra_arguments(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")


def require_flags(*names):
    for name in names:
        if not FLAGS[name].value:
            fail(f"--{name} is required")


@contextlib.contextmanager
def clear_errors():
    """Turn the library's ValueError / missing-file errors into one line and exit status 2."""
    try:
        yield
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)


def write_flags(output_dir):
    """Save the flags in flagfile form, so `--flagfile=OUTPUT_DIR/flags.txt` repeats the run."""
    if os.path.isdir(output_dir):
        with open(os.path.join(output_dir, "flags.txt"), "w") as handle:
            handle.write(FLAGS.flags_into_string())


def write_text(path, text):
    """Write atomically: a reader never sees half a file (TensorFlow is imported only now)."""
    from rst_tf.training import run_dir

    run_dir.write_text(path, text)
