"""The scaling study: RSTs against dense adversarial training as ResNet18 grows wider, over several seeds.

    steps = scaling.plan(config, widths=(0.0625, 0.125, 0.25), remaining_ratios=(0.05, 0.1, 0.2),
                         output_dir="runs/scaling", seeds=(0, 1, 2))

At every width and seed: dense PGD-AT (`dense_at`) and an RST sweep over `remaining_ratios` of that seed's one
random network (`rst`), in OUTPUT_DIR/width_<w>/seed_<s>/. The runs go seed by seed (`running_order`), so a study
stopped early still spans the widths. Finished runs are skipped and killed ones resume from their last
checkpoint (`reproduce.run_steps`), so the same call continues a killed study; the runs may go to a Ray cluster
(`executors`).
"""
import dataclasses
import math
import os

from rst_tf.study import reproduce, sweep

STUDY_STEPS = ("dense_at", "rst")
# The budget that the issue of this study sets, in CPU minutes; --dry_run compares the cost model with it.
CPU_MINUTES_BUDGET = 900.0


def check_widths(widths):
    """The width multipliers as floats: ValueError (one line) unless a non-empty, positive, strictly increasing
    list."""
    try:
        values = [float(w) for w in widths]
    except (TypeError, ValueError):
        raise ValueError(f"widths must be numbers, got {list(widths)}") from None
    if not values:
        raise ValueError("widths must list at least one width multiplier, e.g. 0.0625,0.125,0.25")
    if any(not (w > 0 and math.isfinite(w)) for w in values):
        raise ValueError(f"widths must be positive, got {values}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"widths must be sorted in increasing order without repeats, got {values}")
    return tuple(values)


def check_seeds(seeds, minimum=2):
    """Distinct integer seeds, at least `minimum` of them (a trend claim treats seeds as its replicates)."""
    values = [int(s) for s in seeds]
    if len(set(values)) != len(values):
        raise ValueError(f"seeds must be distinct, got {values}")
    if len(values) < minimum:
        raise ValueError(f"seeds must list at least {minimum} seeds for the trend claims (seeds are their "
                         f"replicates), got {values}")
    return tuple(values)


def width_name(width):
    """The folder of one width: `width_0.125`."""
    return f"width_{width:g}"


def width_dir(output_dir, width):
    return os.path.join(output_dir, width_name(width))


def plan(config, widths, remaining_ratios, output_dir, seeds):
    """{(width, seed): [dense_at Step, rst sweep Step]}. `config` gives the scale (images, epochs, attack); each step
    sets its width, seed and mode. ValueError for a bad width, seed or ratio list. `running_order` gives the order
    the steps run in."""
    widths = check_widths(widths)
    seeds = check_seeds(seeds)
    ratios = tuple(float(r) for r in remaining_ratios)
    base = dataclasses.replace(config, init_from="", finetune_weights="inherited", reinit_classifier=False,
                               class_subset=(), nested_ratios=())
    planned = {}
    for seed in seeds:
        for width in widths:
            folder = reproduce.seed_dir(width_dir(output_dir, width), seed)
            scaled = dataclasses.replace(base, width_multiplier=width, seed=seed)
            dense = reproduce.Step("dense_at", dataclasses.replace(scaled, mode="dense_at"),
                                   os.path.join(folder, "dense_at"))
            dense.config.validate()
            rst = reproduce.Step("rst", dataclasses.replace(scaled, mode="rst"), os.path.join(folder, "rst"), ratios)
            sweep.run_configs(rst.config, ratios)  # ValueError on a bad ratio list or setting
            planned[width, seed] = [dense, rst]
    return planned


def running_order(planned):
    """[(width, seed, step)]: seed by seed; within a seed, dense AT at every width first (the baseline whose gain
    from width the regime must show), then the RST sweeps."""
    seeds = list(dict.fromkeys(seed for _, seed in planned))
    widths = sorted({width for width, _ in planned})
    return [(width, seed, planned[width, seed][index]) for seed in seeds for index in (0, 1) for width in widths]


def run_dirs(planned):
    """Every run folder of the plan, in running order."""
    return [run_dir for _, _, step in running_order(planned) for run_dir in step.run_dirs()]


def train(planned, output_dir, progress=False, log=print, executor=None):
    """Run every step of the plan through `executor` (default: one after another here, in `running_order`;
    finished runs skipped, killed ones resumed); each run's wall and CPU seconds go to OUTPUT_DIR/run_times.json."""
    named = [(f"width {width:g} seed {seed}: ", step) for width, seed, step in running_order(planned)]
    reproduce.run_steps(named, output_dir, os.path.join(output_dir, "run_times.json"), executor, progress, log)


@dataclasses.dataclass(frozen=True)
class CostModel:
    """CPU milliseconds per training image-epoch and per evaluated example, by width, measured by the pilot
    (docs/scaling_pilot.json). `eval_pgd_ms` is one PGD-20 pass of one model over one test example; the other
    evaluations are counted in such passes (`evaluation_passes`)."""
    train_ms: dict
    eval_pgd_ms: dict

    def at(self, table, width):
        """The measured figure at `width`, or the nearest measured one scaled by the ratio of widths squared."""
        table = {float(w): v for w, v in table.items()}
        if width in table:
            return table[width]
        nearest = min(table, key=lambda w: abs(math.log(w / width)))
        return table[nearest] * (width / nearest) ** 2


def evaluation_passes(num_ratios, autoattack_fast_passes=6.0, paper_share=0.5):
    """PGD-20-equivalent model passes over the test set per (width, seed): PGD-20 under both protocols for each run
    (the paper's stops attacking an example once it is misclassified: counted as `paper_share` of a pass), R2S under
    both protocols (each ticket alone, the vanilla attack, and EOT and Ensemble at one pass per ticket), and the fast
    AutoAttack of dense AT and the RST at 20% (`autoattack_fast_passes` each: APGD-CE's 100 iterations on the
    correctly classified, then 3 x 100 targeted ones on the survivors)."""
    protocols = 1 + paper_share
    pgd = (1 + num_ratios) * protocols
    r2s = (3 * num_ratios + 1) * protocols
    return pgd + r2s + 2 * autoattack_fast_passes


def estimate(cost, planned, train_examples, epochs, test_examples, num_ratios):
    """{train_cpu_minutes, eval_cpu_minutes, total_cpu_minutes, per_width: {w: minutes}} of the whole plan."""
    per_width = {}
    train_minutes = eval_minutes = 0.0
    for (width, seed), steps in planned.items():
        runs = sum(len(step.run_dirs()) for step in steps)
        trained = runs * train_examples * epochs * cost.at(cost.train_ms, width) / 60000
        evaluated = evaluation_passes(num_ratios) * test_examples * cost.at(cost.eval_pgd_ms, width) / 60000
        train_minutes += trained
        eval_minutes += evaluated
        per_width[f"{width:g}"] = per_width.get(f"{width:g}", 0.0) + trained + evaluated
    return {"train_cpu_minutes": train_minutes, "eval_cpu_minutes": eval_minutes,
            "total_cpu_minutes": train_minutes + eval_minutes, "per_width": per_width,
            "budget_cpu_minutes": CPU_MINUTES_BUDGET}


def cache_name(name, pgd_protocol):
    """evaluation.json for the standard PGD protocol, evaluation_paper.json for the paper's."""
    return f"{name}.json" if pgd_protocol == "standard" else f"{name}_{pgd_protocol}.json"


def rst_step(steps):
    return next(step for step in steps if step.name == "rst")


def claim_ratio(remaining_ratios):
    """The RST of the claims: the ratio nearest 20%."""
    return min(remaining_ratios, key=lambda r: abs(r - 0.2))


def evaluate(planned, output_dir, test_sets, epsilon, steps, log=print, autoattack=("autoattack_fast",),
             reference_autoattack="autoattack", protocols=None):
    """Every measurement of the study on `test_sets` (all cached, so a killed evaluation continues):

    - natural and PGD-`steps` accuracy at `epsilon` (/255) of every run, under each PGD protocol
      (OUTPUT_DIR/evaluation.json, evaluation_paper.json);
    - R2S over each (width, seed)'s RSTs under the vanilla, EOT and Ensemble attacks, each ticket alone too, under
      each protocol (OUTPUT_DIR/width_<w>/seed_<s>/r2s.json, r2s_paper.json);
    - each attack of `autoattack` that the attack registry holds, on dense AT and the RST nearest 20% of every
      (width, seed), and `reference_autoattack` on that RST of the widest width's first seed
      (OUTPUT_DIR/autoattack.json).

    `protocols` (default: every PGD protocol) limits the PGD and R2S measurements to some protocols.

    Returns {"evaluation": {protocol: {run_dir: entry}}, "r2s": {(width, seed, protocol): report},
    "autoattack": {run_dir: {attack: entry}}}.
    """
    from rst_tf import attacks
    from rst_tf.study import measure

    protocols = tuple(attacks.PGD_PROTOCOLS if protocols is None else protocols)
    runs = run_dirs(planned)
    first_seed = next(iter(planned))[1]
    evaluation = {protocol: measure.evaluate_runs(runs, [epsilon], os.path.join(
        output_dir, cache_name("evaluation", protocol)), test_sets, first_seed, log, protocol)
        for protocol in protocols}
    r2s = {}
    for (width, seed), steps_of_run in planned.items():
        folder = reproduce.seed_dir(width_dir(output_dir, width), seed)
        for protocol in protocols:
            log(f"width {width:g} seed {seed}: R2S over {len(rst_step(steps_of_run).run_dirs())} tickets "
                f"({protocol} PGD)")
            r2s[width, seed, protocol] = measure.r2s_of(
                rst_step(steps_of_run).run_dirs(), epsilon, steps, os.path.join(folder, cache_name("r2s", protocol)),
                test_sets, adaptive=("vanilla", "eot", "ensemble"), seed=seed, pgd_protocol=protocol)
    wanted = {}
    for (width, seed), steps_of_run in planned.items():
        rst = rst_step(steps_of_run)
        ratio = claim_ratio(rst.remaining_ratios)
        subject = rst.run_dirs()[list(rst.remaining_ratios).index(ratio)]
        for run_dir in (steps_of_run[0].output_dir, subject):
            wanted.setdefault(run_dir, []).extend(name for name in autoattack if name in attacks.REGISTRY)
    widest, first = max(width for width, _ in planned), first_seed
    rst = rst_step(planned[widest, first])
    reference_run = rst.run_dirs()[list(rst.remaining_ratios).index(claim_ratio(rst.remaining_ratios))]
    if reference_autoattack in attacks.REGISTRY:
        wanted.setdefault(reference_run, []).append(reference_autoattack)
    found = measure.autoattack_runs(wanted, epsilon, os.path.join(output_dir, "autoattack.json"), test_sets,
                                    first_seed, log)
    return {"evaluation": evaluation, "r2s": r2s, "autoattack": found}


def run(config, widths, remaining_ratios, output_dir, report_path, seeds, test_examples=10000, epsilon=8.0,
        command="", batch_size=500, progress=False, log=print, stop_after="report", executor=None):
    """The whole study: train every run (`train`), evaluate them on `test_examples` test images (`evaluate`) and
    write the report (`scaling_report`): markdown at `report_path`, figures in <report>_figures/, everything as
    JSON in <report>.json. Returns that JSON's content, or None when `stop_after` is "train" or "evaluate". The runs
    go through `executor` (default: one after another here), the evaluation runs here. The same call continues a
    killed study."""
    from rst_tf.study import measure
    from rst_tf.study import scaling_report
    from rst_tf.training import run_dir as run_files

    if stop_after not in ("train", "evaluate", "report"):
        raise ValueError(f"stop_after must be train, evaluate or report, got {stop_after!r}")
    planned = plan(config, widths, remaining_ratios, output_dir, seeds)
    train(planned, output_dir, progress=progress, log=log, executor=executor)
    if stop_after == "train":
        return None
    test_sets = measure.TestSets(config.data_dir, batch_size, test_seed=seeds[0], test_examples=test_examples)
    measured = evaluate(planned, output_dir, test_sets, epsilon, config.eval_attack_steps, log)
    if stop_after == "evaluate":
        return None
    times = run_files.read_json(os.path.join(output_dir, "run_times.json"))
    return scaling_report.write(planned, measured, times, config, report_path, command, epsilon, test_examples)
