"""One search setting over a list of remaining ratios: a run folder per ratio, then one table of the results.

    summary = sweep.run_sweep(config, [0.01, 0.05, 0.1], "runs/sweep")

Ratio r runs in `OUTPUT_DIR/ratio_<r>` (`ratio_name`). A finished run (its metrics.json has "final") is skipped, a
killed one continues from its last checkpoint, so running the same sweep again completes it. `{ratio}` in
`init_from` is replaced by each ratio (`0.05`): `init_from="runs/rst_sweep/ratio_{ratio}"` fine-tunes an RST sweep.
"""
import dataclasses
import os

from rst_tf.study import executors
from rst_tf.training import warm_start
from rst_tf.training import run_dir as run_files

SWEEP_MODES = ("rst", "finetune")
RATIO_PLACEHOLDER = "{ratio}"
# Fields that say where a run reads its data and runs, not what it computes: they may differ between a sweep and the
# runs it finds.
LOCATION_FIELDS = ("data_dir", "strategy")


def ratio_name(remaining_ratio):
    """The run folder of one ratio: `ratio_0.05`."""
    return f"ratio_{_ratio_text(remaining_ratio)}"


def _ratio_text(remaining_ratio):
    return f"{remaining_ratio:g}"


def run_configs(config, remaining_ratios):
    """[(remaining ratio, its SearchConfig)], each validated; ValueError (one line) for a bad ratio list or setting."""
    if not remaining_ratios:
        raise ValueError("remaining_ratios must list at least one ratio")
    if any(not 0.0 < r <= 1.0 for r in remaining_ratios):
        raise ValueError(f"remaining_ratios must be in (0, 1], got {list(remaining_ratios)}")
    if len({_ratio_text(r) for r in remaining_ratios}) != len(remaining_ratios):
        raise ValueError(f"remaining_ratios must be distinct, got {list(remaining_ratios)}")
    if getattr(config, "nested_ratios", ()):
        raise ValueError("nested_ratios gives its own ratios from one search; a sweep over remaining_ratios takes "
                         "none")
    if config.mode not in SWEEP_MODES:
        raise ValueError(f"mode must be one of {SWEEP_MODES} for a sweep over remaining ratios, got {config.mode!r}")
    configs = []
    for remaining_ratio in remaining_ratios:
        init_from = config.init_from.replace(RATIO_PLACEHOLDER, _ratio_text(remaining_ratio))
        run_config = dataclasses.replace(config, remaining_ratio=float(remaining_ratio), init_from=init_from)
        run_config.validate()
        configs.append((float(remaining_ratio), run_config.resolved()))
    return configs


def run_sweep(config, remaining_ratios, output_dir, progress=False, log=print, executor=None):
    """Run `config` at every ratio in `remaining_ratios` under `output_dir` through `executor` (default
    `executors.LocalExecutor`: one after another here); write sweep.json and sweep.md.

    Returns the summary written to sweep.json. Raises ValueError before running anything for a bad setting, or
    when a ratio's folder holds a run of another setting.
    """
    configs = run_configs(config, remaining_ratios)
    for _, run_config in configs:
        check_existing_run(run_config, os.path.join(output_dir, ratio_name(run_config.remaining_ratio)))
        warm_start.check_init_from(run_config)
    jobs = [executors.Job(ratio_name(r), run_config, os.path.join(output_dir, ratio_name(r)))
            for r, run_config in configs]
    (executor or executors.LocalExecutor()).run(jobs, output_dir, progress=progress, log=log)
    return write_summary(config, [r for r, _ in configs], output_dir)


def write_summary(config, remaining_ratios, output_dir):
    """sweep.json and sweep.md of a finished sweep; returns the summary written to sweep.json."""
    ratios = [float(r) for r in remaining_ratios]
    setting = {field: value for field, value in dataclasses.asdict(config).items() if field != "remaining_ratio"}
    summary = {"config": setting, "remaining_ratios": ratios,
               "runs": [_run_summary(r, os.path.join(output_dir, ratio_name(r))) for r in ratios]}
    run_files.write_json(os.path.join(output_dir, "sweep.json"), summary)
    run_files.write_text(os.path.join(output_dir, "sweep.md"), markdown_table(summary, config))
    return summary


def markdown_table(summary, config):
    """sweep.md: one row per ratio with the best checkpoint's epoch and test accuracy."""
    attack = f"PGD-{config.eval_attack_steps}"
    lines = [f"# {config.network} {config.mode} on {config.dataset}: test accuracy of the best checkpoint",
             "",
             f"Best: highest validation {attack} accuracy; {attack} at ε {config.epsilon * 255:g}/255.",
             "",
             f"| remaining ratio | best epoch | natural | {attack} |",
             "|---|---|---|---|"]
    for row in summary["runs"]:
        lines.append(f"| {_ratio_text(row['remaining_ratio'])} | {row['best_epoch']} | "
                     f"{row['test_natural_accuracy']:.4f} | {row['test_pgd20_accuracy']:.4f} |")
    return "\n".join(lines) + "\n"


def _run_summary(remaining_ratio, run_dir):
    final = run_files.read_json(os.path.join(run_dir, "metrics.json"))["final"]
    best = final["best"]
    return {"remaining_ratio": remaining_ratio, "run_dir": run_dir, "best_epoch": best["epoch"],
            "test_natural_accuracy": best["test_natural_accuracy"],
            "test_pgd20_accuracy": best["test_pgd20_accuracy"], "weights": final["weights"], "last": final["last"]}


def result_settings(config):
    """A run's configuration as it decides its results, JSON-able: every field but where it reads its data and
    runs (`LOCATION_FIELDS`)."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(config).items() if key not in LOCATION_FIELDS}


def check_existing_run(config, run_dir):
    """ValueError if `run_dir` holds a run whose config differs from `config` (beyond where it found its data)."""
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        return
    config = config.resolved()
    existing = run_files.read_config(run_dir)
    for field in dataclasses.fields(config):
        ours, theirs = getattr(config, field.name), getattr(existing, field.name)
        if field.name not in LOCATION_FIELDS and ours != theirs:
            raise ValueError(f"{run_dir} holds a run with {field.name} {theirs!r}, not {ours!r}: "
                             "choose another output folder")


def run_or_skip(config, run_dir, name, progress=False, log=print):
    """Skip a finished run in `run_dir`, continue a killed one, or start it (see `check_existing_run` first)."""
    executors.run_job(executors.Job(name, config, run_dir), progress, log)
