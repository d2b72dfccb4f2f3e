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

A (width, seed) in progress keeps what it has done too, so that another machine continues it rather than starting
it again: the measurements made so far in `width_<w>_seed_<s>.partial.json` (a record of the caches as they are,
replaced by the record when the unit is wholly measured), and, in an archive folder of its own outside the
repository (trained networks are not committed), each trained run packed in `width_<w>_seed_<s>/<run>.npz`
(`run_archive`).

    scaling_records.save_run(archive_dir, (0.125, 1), "rst/ratio_0.2", run_dir)       # once the run is trained
    scaling_records.restore_run(archive_dir, (0.125, 1), "rst/ratio_0.2", run_dir, config)   # True: unpacked
    scaling_records.save(records_dir, (0.125, 1), record, caches, output_dir, partial=True)   # as it is measured
    scaling_records.restore_partial(records_dir, (0.125, 1), record, output_dir, kept_runs)  # what is not measured
"""
import datetime
import os

from rst_tf.measuring import machine
from rst_tf.study import sweep
from rst_tf.training import run_dir as run_files


def unit_name(unit):
    width, seed = unit
    return f"width_{width:g}_seed_{seed}"


def record_path(records_dir, unit, partial=False):
    """The record of `unit`, or (`partial`) of its measurements so far."""
    return os.path.join(records_dir, unit_name(unit) + (".partial.json" if partial else ".json"))


def archive_path(archive_dir, unit, run_name):
    """Where a trained run of `unit` is packed: `run_name` is its folder within the unit's ("rst/ratio_0.2")."""
    return os.path.join(archive_dir, unit_name(unit), run_name + ".npz")


def save_run(archive_dir, unit, run_name, run_dir):
    """Pack the finished run in `run_dir` (`run_archive.pack`) unless it is packed already (an archive of another
    configuration is replaced); returns the archive's path if written now, else None."""
    from rst_tf.study import run_archive

    path = archive_path(archive_dir, unit, run_name)
    if os.path.isfile(path) and run_archive.matches(path, run_files.read_config(run_dir)):
        return None
    return run_archive.pack(run_dir, path)


def restore_run(archive_dir, unit, run_name, run_dir, config):
    """Unpack the packed run of `unit` into `run_dir` as a finished run of `config` (`run_archive.unpack`) if one
    was packed with the configuration `config` gives; True if unpacked, else False (nothing written)."""
    from rst_tf.study import run_archive

    path = archive_path(archive_dir, unit, run_name)
    if not os.path.isfile(path) or not run_archive.matches(path, config):
        return False
    run_archive.unpack(path, run_dir, config)
    return True


def settings_of(runs, evaluation, output_dir):
    """The settings a record must match: `runs` ({run_dir: SearchConfig}) and `evaluation` (a JSON-able dict of
    the evaluation's settings), run folders relative to `output_dir`."""
    return {"runs": {relative(run_dir, output_dir): sweep.result_settings(config) for run_dir, config in runs.items()},
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


def load(records_dir, unit, settings, partial=False):
    """The record of `unit` (or, `partial`, of its measurements so far) if `records_dir` holds one made with
    `settings` (as `settings_of` gives), else None."""
    found = run_files.read_json(record_path(records_dir, unit, partial)) if records_dir else {}
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


def partial_entries(record, output_dir, kept_runs):
    """The measurements of a partial `record` that still describe the unit's networks: {cache file name, relative
    to the output folder: {"by_run": its entries by run folder} or {"whole": True, "content": the file}}, run paths
    joined to `output_dir`, of `kept_runs` alone (the unit's run folders whose trained networks are the ones that
    were measured: finished in `output_dir` or unpacked from the archive). Any other run trains again and must be
    measured again, so its entries are left out, and so is a whole file (an R2S result) unless every run it was
    measured over (its `run_dirs`) is kept. Returns (those entries, how many were left out)."""
    kept, left_out = {}, 0
    for name, entries in (record or {}).get("caches", {}).items():
        if entries.get("whole"):
            content = absolute(entries["content"], output_dir)
            if content and not set(content.get("run_dirs", ())) <= set(kept_runs):
                left_out += 1
            elif content:
                kept[name] = {"whole": True, "content": content}
            continue
        by_run = absolute(entries["by_run"], output_dir)
        kept[name] = {"by_run": {run_dir: entry for run_dir, entry in by_run.items()
                                 if run_dir in kept_runs}}
        left_out += len(by_run) - len(kept[name]["by_run"])
    return kept, left_out


def restore_partial(records_dir, unit, settings, output_dir, kept_runs):
    """Write the measurements of `unit` that its partial record (made with `settings`) holds and the study's cache
    files in `output_dir` do not (a run's entries, an R2S file), but those of runs not in `kept_runs`
    (`partial_entries`). Returns (the number of entries written, the number left out)."""
    found, left_out = partial_entries(load(records_dir, unit, settings, partial=True), output_dir, kept_runs)
    written = 0
    for name, entries in found.items():
        path = os.path.join(output_dir, name)
        if entries.get("whole"):
            if not os.path.isfile(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                run_files.write_json(path, entries["content"])
                written += 1
            continue
        cache = run_files.read_json(path)
        missing = {run_dir: entry for run_dir, entry in entries["by_run"].items() if run_dir not in cache}
        if missing:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            run_files.write_json(path, dict(cache, **missing))
            written += len(missing)
    return written, left_out


def save(records_dir, unit, settings, caches, output_dir, partial=False):
    """Record `unit`'s results: `caches` ({cache path: the unit's run folders, whose entries are its own, or None
    for a file that belongs wholly to it}). Returns the record's path. With `partial`, record the measurements made
    so far (a missing file is recorded empty); a whole record removes the partial one."""
    recorded = {}
    for path, run_dirs in caches.items():
        cache = run_files.read_json(path)
        name = os.path.relpath(path, output_dir)
        if run_dirs is None:
            recorded[name] = {"whole": True, "content": relative(cache, output_dir)}
        else:
            recorded[name] = {"by_run": relative({run_dir: cache[run_dir] for run_dir in run_dirs
                                                  if run_dir in cache}, output_dir)}
    path = record_path(records_dir, unit, partial)
    os.makedirs(records_dir, exist_ok=True)
    run_files.write_json(path, {
        "unit": {"width": unit[0], "seed": unit[1]}, "settings": settings, "caches": recorded,
        "recorded": {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "machine": _machine(peak=not partial)}})
    if not partial and os.path.isfile(record_path(records_dir, unit, partial=True)):
        os.remove(record_path(records_dir, unit, partial=True))
    return path


def _machine(peak=True):
    """The machine that measured the record's times (`machine.describe`: CPU model, vector instructions, CPUs and,
    with `peak`, its fp32 peak now)."""
    return machine.describe(peak_repeats=3 if peak else 0)
