"""What every app shares: one-line errors, flagfile parsing, writing the flags a run used."""
import contextlib
import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def _parse_flags_or_exit(argv):
    """absl's parser, but a bad flag or unreadable flagfile is one line on stderr and exit status 2."""
    try:
        remaining = FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if FLAGS["verbosity"].using_default_value:  # else absl shows INFO logs; --verbosity=0 still does
        FLAGS.verbosity = logging.WARNING
    return remaining


def run(main):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
