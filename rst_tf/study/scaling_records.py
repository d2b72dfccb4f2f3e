"""The scaling study's records: each wholly measured (width, seed)'s results, kept beside its report, so that the
study continues on another machine, or after its runs are gone, without training or measuring them again.

    record = scaling_records.settings_of(runs, evaluation, output_dir)
    scaling_records.save(records_dir, (0.125, 1), record, caches, output_dir)      # once it is measured
    scaling_records.restore(records_dir, (0.125, 1), record, output_dir)           # True: nothing left to do
    scaling_records.measurements(scaling_records.load(records_dir, (0.125, 1), record), output_dir)  # read only

One JSON file per (width, seed), `width_<w>_seed_<s>.json`: `settings` (every run's configuration but its data
folder and strategy, and the evaluation's settings) and `caches` (the entries of the study's cache files that
belong to it: evaluation under each protocol, AutoAttack and run times by run, its R2S files whole), with every
path relative to the study's output folder. A record counts only for a study with the same settings.
"""
import datetime
import os
import platform

from rst_tf.study import sweep
from rst_tf.training import run_dir as run_files


def record_path(records_dir, unit):
    width, seed = unit
    return os.path.join(records_dir, f"width_{width:g}_seed_{seed}.json")


def _config_settings(config):
    """A run's configuration as it decides its results: every field but where it reads its data and runs
    (`sweep.LOCATION_FIELDS`)."""
    import dataclasses

    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(config).items() if key not in sweep.LOCATION_FIELDS}


def settings_of(runs, evaluation, output_dir):
    """The settings a record must match: `runs` ({run_dir: SearchConfig}) and `evaluation` (a JSON-able dict of
    the evaluation's settings), run folders relative to `output_dir`."""
    return {"runs": {relative(run_dir, output_dir): _config_settings(config) for run_dir, config in runs.items()},
            "evaluation": evaluation}


def relative(value, output_dir):
    """`value` with every string that is `output_dir` or a path inside it (as dict keys, values, list items) made
    relative to it."""
    return _mapped(value, lambda text: _relative_path(text, output_dir))


def absolute(value, output_dir):
    """The inverse of `relative`: relative run paths (as `relative` leaves them) joined to `output_dir`."""
    return _mapped(value, lambda text: (output_dir if text == "./" else os.path.join(output_dir, text[2:]))
                   if text.startswith("./") else text)


def _relative_path(text, output_dir):
    prefix = os.path.normpath(output_dir)
    if not text.startswith(output_dir) and not text.startswith(prefix):
        return text
    normalized = os.path.normpath(text)
    if normalized == prefix:
        return "./"
    if normalized.startswith(prefix + os.sep):
        return "./" + normalized[len(prefix) + 1:]
    return text


def _mapped(value, convert):
    if isinstance(value, dict):
        return {_mapped(key, convert): _mapped(item, convert) for key, item in value.items()}
    if isinstance(value, list):
        return [_mapped(item, convert) for item in value]
    if isinstance(value, str):
        return convert(value)
    return value


def load(records_dir, unit, settings):
    """The record of `unit` if `records_dir` holds one made with `settings` (as `settings_of` gives), else None."""
    found = run_files.read_json(record_path(records_dir, unit)) if records_dir else {}
    return found if found and found.get("settings") == settings else None


def measurements(record, output_dir):
    """A record's results without writing anything: {cache file name, relative to the output folder: its entries
    for the record's runs (by run folder), or the file's whole content}, run paths joined to `output_dir`."""
    return {name: absolute(entries["content"] if entries.get("whole") else entries["by_run"], output_dir)
            for name, entries in record["caches"].items()}


def restore(records_dir, unit, settings, output_dir):
    """Write the recorded results of `unit` into the study's cache files in `output_dir` (replacing what they hold
    for its runs). True if there was a record with these settings, else False (nothing written)."""
    record = load(records_dir, unit, settings)
    if record is None:
        return False
    for name, entries in record["caches"].items():
        path = os.path.join(output_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if entries.get("whole"):
            run_files.write_json(path, absolute(entries["content"], output_dir))
            continue
        cache = run_files.read_json(path)
        cache.update(absolute(entries["by_run"], output_dir))
        run_files.write_json(path, cache)
    return True


def save(records_dir, unit, settings, caches, output_dir):
    """Record `unit`'s results: `caches` ({cache path: the unit's run folders, whose entries are its own, or None
    for a file that belongs wholly to it}). Returns the record's path."""
    recorded = {}
    for path, run_dirs in caches.items():
        cache = run_files.read_json(path)
        name = os.path.relpath(path, output_dir)
        if run_dirs is None:
            recorded[name] = {"whole": True, "content": relative(cache, output_dir)}
        else:
            recorded[name] = {"by_run": relative({run_dir: cache[run_dir] for run_dir in run_dirs
                                                  if run_dir in cache}, output_dir)}
    path = record_path(records_dir, unit)
    os.makedirs(records_dir, exist_ok=True)
    run_files.write_json(path, {
        "unit": {"width": unit[0], "seed": unit[1]}, "settings": settings, "caches": recorded,
        "recorded": {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "machine": _machine()}})
    return path


def _machine():
    """The CPU model and count of this machine (which measured the record's times)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs"
