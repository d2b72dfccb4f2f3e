"""The scaling study: RSTs against dense adversarial training as ResNet18 grows wider, over several seeds.

    steps = scaling.plan(config, widths=(0.0625, 0.125, 0.25), remaining_ratios=(0.05, 0.1, 0.2),
                         output_dir="runs/scaling", seeds=(0, 1, 2))

At every width and seed (a unit): dense PGD-AT (`dense_at`) and an RST sweep over `remaining_ratios` of that
seed's one random network (`rst`), in OUTPUT_DIR/width_<w>/seed_<s>/. The units go from the narrowest width
(`unit_order`), and each is measured as soon as its runs are trained, then recorded (`scaling_records`) where the
study keeps its records. Finished runs are skipped, killed ones resume from their last checkpoint
(`reproduce.run_steps`) and recorded units are read back instead of trained again, as are the trained runs and the
measurements of a unit in progress, so the same call continues a killed study, on this machine or another; the runs
may go to a Ray cluster (`executors`).
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


def unit_order(planned):
    """[(width, seed)]: width by width from the narrowest, each width's seeds in turn. The cheapest units are
    measured (and recorded) first, and a width's claims can be decided as soon as its seeds are done."""
    seeds = list(dict.fromkeys(seed for _, seed in planned))
    return [(width, seed) for width in sorted({width for width, _ in planned}) for seed in seeds]


def running_order(planned):
    """[(width, seed, step)]: unit by unit (`unit_order`); in each, dense AT, then the RST sweep."""
    return [(width, seed, step) for width, seed in unit_order(planned) for step in planned[width, seed]]


def unit_run_dirs(steps):
    """The run folders of one unit's steps: dense AT's, then the RST sweep's."""
    return [run_dir for step in steps for run_dir in step.run_dirs()]


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
    """CPU milliseconds by width, measured by the pilot (docs/scaling_pilot.json): per training image-epoch of dense
    AT (`train_ms`) and of the RST search (`train_rst_ms`, where measured), per test example of one PGD-20 pass
    (`eval_pgd_ms`) and of the fast AutoAttack (`eval_autoattack_fast_ms`), and the ratio of the standard
    AutoAttack's cost to the fast one's (`standard_over_fast_autoattack`). A figure not measured is counted from
    the others: the RST search at dense AT's cost times the ratio of the two where both were measured, the fast
    AutoAttack at `AUTOATTACK_FAST_PASSES` PGD-20 passes."""
    train_ms: dict
    eval_pgd_ms: dict
    train_rst_ms: dict = dataclasses.field(default_factory=dict)
    eval_autoattack_fast_ms: dict = dataclasses.field(default_factory=dict)
    standard_over_fast_autoattack: float = None

    def at(self, table, width):
        """The measured figure at `width`, or the nearest measured one scaled by the ratio of widths squared."""
        table = {float(w): v for w, v in table.items()}
        if width in table:
            return table[width]
        nearest = min(table, key=lambda w: abs(math.log(w / width)))
        return table[nearest] * (width / nearest) ** 2

    def train_rst(self, width):
        """The RST search's figure: measured at `width`, else dense AT's there times the ratio of the two at the
        nearest width where both were measured (dense AT's alone if none was)."""
        both = [float(w) for w in self.train_rst_ms if w in self.train_ms]
        if not both or float(width) in both:
            return self.at(self.train_rst_ms or self.train_ms, width)
        nearest = min(both, key=lambda w: abs(math.log(w / width)))
        return self.at(self.train_ms, width) * self.at(self.train_rst_ms, nearest) / self.at(self.train_ms, nearest)

    def autoattack_fast(self, width):
        if self.eval_autoattack_fast_ms:
            return self.at(self.eval_autoattack_fast_ms, width)
        return AUTOATTACK_FAST_PASSES * self.at(self.eval_pgd_ms, width)


# PGD-20 passes that one fast AutoAttack costs when the pilot did not time it: APGD-CE's 100 iterations on the
# correctly classified, then 3 x 100 targeted ones on the survivors.
AUTOATTACK_FAST_PASSES = 6.0
# The standard AutoAttack's cost in fast ones when the pilot read no measured ratio (the fast one's aim: a fifth).
STANDARD_OVER_FAST_AUTOATTACK = 5.0


def estimate(cost, planned, train_examples, epochs, test_examples, num_ratios, r2s_test_examples=None,
             reference_autoattack_examples=None, epsilon=8.0, reference_unit=None):
    """The plan's CPU minutes: {train_cpu_minutes, eval_cpu_minutes, total_cpu_minutes, parts: {part: minutes},
    per_width: {w: minutes}, budget_cpu_minutes}. Evaluation (as `evaluate` does it) at `epsilon` (/255): PGD-20
    of every run under both protocols on `test_examples` (the paper's one a pass of its own, or none where it is read
    off the standard run: `attacks.pgd.paper_verdicts_follow`, at 8/255); R2S under both protocols, a pass each (the
    vanilla attack one pass, EOT and Ensemble one pass per ticket; the tickets alone are the runs' own results) on
    `r2s_test_examples`; the fast AutoAttack of dense AT and the RST at 20% on `test_examples`; the standard
    AutoAttack of that RST at the widest width's first seed (or `reference_unit`, for a part of a plan) on
    `reference_autoattack_examples`."""
    from rst_tf import attacks

    r2s_examples = test_examples if r2s_test_examples is None else min(r2s_test_examples, test_examples)
    reference_examples = (test_examples if reference_autoattack_examples is None
                          else min(reference_autoattack_examples, test_examples))
    read_off = attacks.pgd.paper_verdicts_follow(attacks.pgd_eval_config(epsilon / 255, "standard"),
                                                 attacks.pgd_eval_config(epsilon / 255, "paper"))
    run_passes, r2s_passes = (1 if read_off else 2), 2
    parts = dict.fromkeys(("training", "pgd", "r2s", "autoattack_fast", "autoattack_standard"), 0.0)
    per_width = {}
    reference_unit = reference_unit or reference_unit_of(planned)
    for (width, seed), steps in planned.items():
        found = {
            "training": sum(len(step.run_dirs()) * train_examples * epochs * (
                cost.at(cost.train_ms, width) if step.name == "dense_at" else cost.train_rst(width))
                for step in steps) / 60000,
            "pgd": (1 + num_ratios) * run_passes * test_examples * cost.at(cost.eval_pgd_ms, width) / 60000,
            "r2s": (1 + 2 * num_ratios) * r2s_passes * r2s_examples * cost.at(cost.eval_pgd_ms, width) / 60000,
            "autoattack_fast": 2 * test_examples * cost.autoattack_fast(width) / 60000,
            "autoattack_standard": (reference_examples * cost.autoattack_fast(width) * (
                cost.standard_over_fast_autoattack or STANDARD_OVER_FAST_AUTOATTACK) / 60000
                if (width, seed) == tuple(reference_unit) else 0.0)}
        for part, minutes in found.items():
            parts[part] += minutes
        per_width[f"{width:g}"] = per_width.get(f"{width:g}", 0.0) + sum(found.values())
    train_minutes = parts["training"]
    eval_minutes = sum(parts.values()) - train_minutes
    return {"train_cpu_minutes": train_minutes, "eval_cpu_minutes": eval_minutes,
            "total_cpu_minutes": train_minutes + eval_minutes, "parts": parts, "per_width": per_width,
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
             reference_autoattack="autoattack", protocols=None, r2s_test_examples=None,
             reference_autoattack_examples=None, reference_unit=None, attack_seed=None, after_each=None):
    """Every measurement of the study on `test_sets` (all cached, so a killed evaluation continues):

    - natural and PGD-`steps` accuracy at `epsilon` (/255) of every run, under each PGD protocol
      (OUTPUT_DIR/evaluation.json, evaluation_paper.json);
    - R2S over each (width, seed)'s RSTs under the vanilla, EOT and Ensemble attacks, under each protocol, on the
      first `r2s_test_examples` test images (None: all); each ticket alone is the run's own PGD result above
      (OUTPUT_DIR/width_<w>/seed_<s>/r2s.json, r2s_paper.json);
    - each attack of `autoattack` that the attack registry holds, on dense AT and the RST nearest 20% of every
      (width, seed), and `reference_autoattack` on that RST of the widest width's first seed, on the first
      `reference_autoattack_examples` test images (None: all) (OUTPUT_DIR/autoattack.json).

    `protocols` (default: every PGD protocol) limits the PGD and R2S measurements to some protocols. For a part of
    a study's plan, `reference_unit` (default: the widest width's first seed) and `attack_seed` (default: the first
    seed) are those of the whole plan. `after_each()` (if given) is called after each run's PGD evaluation, each R2S
    and each run's AutoAttacks, whether measured or read from the caches.

    Returns {"evaluation": {protocol: {run_dir: entry}}, "r2s": {(width, seed, protocol): report},
    "autoattack": {run_dir: {attack: entry}}}.
    """
    from rst_tf import attacks
    from rst_tf.study import measure

    protocols = tuple(attacks.PGD_PROTOCOLS if protocols is None else protocols)
    done = after_each or (lambda: None)
    first_seed = next(iter(planned))[1] if attack_seed is None else attack_seed
    evaluation = {protocol: {} for protocol in protocols}
    for run_dir in run_dirs(planned):
        found = measure.evaluate_runs_under(
            {protocol: os.path.join(output_dir, cache_name("evaluation", protocol)) for protocol in protocols},
            [run_dir], [epsilon], test_sets, first_seed, log)
        for protocol in protocols:
            evaluation[protocol].update(found[protocol])
        done()
    r2s = {}
    for (width, seed), steps_of_run in planned.items():
        folder = reproduce.seed_dir(width_dir(output_dir, width), seed)
        for protocol in protocols:
            ticket_runs = rst_step(steps_of_run).run_dirs()
            log(f"width {width:g} seed {seed}: R2S over {len(ticket_runs)} tickets ({protocol} PGD)")
            r2s[width, seed, protocol] = measure.r2s_of(
                ticket_runs, epsilon, steps, os.path.join(folder, cache_name("r2s", protocol)), test_sets,
                adaptive=("vanilla", "eot", "ensemble"), seed=seed, pgd_protocol=protocol,
                test_examples=r2s_test_examples,
                tickets_measured=[evaluation[protocol][run_dir] for run_dir in ticket_runs])
            done()
    wanted = {}
    for (width, seed), steps_of_run in planned.items():
        rst = rst_step(steps_of_run)
        ratio = claim_ratio(rst.remaining_ratios)
        subject = rst.run_dirs()[list(rst.remaining_ratios).index(ratio)]
        for run_dir in (steps_of_run[0].output_dir, subject):
            wanted.setdefault(run_dir, []).extend(name for name in autoattack if name in attacks.REGISTRY)
    reference_unit = reference_unit or reference_unit_of(planned)
    if reference_unit in planned and reference_autoattack in attacks.REGISTRY:
        rst = rst_step(planned[reference_unit])
        reference_run = rst.run_dirs()[list(rst.remaining_ratios).index(claim_ratio(rst.remaining_ratios))]
        wanted.setdefault(reference_run, []).append(reference_autoattack)
    found = {}
    for run_dir, names in wanted.items():
        found.update(measure.autoattack_runs({run_dir: names}, epsilon, os.path.join(output_dir, "autoattack.json"),
                                             test_sets, first_seed, log,
                                             test_examples={reference_autoattack: reference_autoattack_examples}))
        done()
    return {"evaluation": evaluation, "r2s": r2s, "autoattack": found}


def evaluation_settings(test_seed, test_examples, epsilon, steps, unit, reference_unit, r2s_test_examples=None,
                        reference_autoattack_examples=None, autoattack=("autoattack_fast",),
                        reference_autoattack="autoattack", protocols=None, attack_seed=None):
    """What `evaluate` measures of `unit` (a JSON-able dict): a record of the unit counts only where these agree."""
    from rst_tf import attacks

    reference = unit == tuple(reference_unit)
    return {"test_seed": test_seed, "test_examples": test_examples, "epsilon": float(epsilon), "steps": int(steps),
            "protocols": list(attacks.PGD_PROTOCOLS if protocols is None else protocols),
            "autoattack": list(autoattack), "r2s_test_examples": r2s_test_examples,
            "attack_seed": test_seed if attack_seed is None else attack_seed,
            "reference_autoattack": reference_autoattack if reference else None,
            "reference_autoattack_examples": reference_autoattack_examples if reference else None}


def reference_unit_of(planned):
    """The (width, seed) whose RST at 20% the standard AutoAttack checks: the widest width's first seed."""
    return max(width for width, _ in planned), next(iter(planned))[1]


def unit_settings(planned, unit, output_dir, test_examples, epsilon, r2s_test_examples=None,
                  reference_autoattack_examples=None, autoattack=("autoattack_fast",),
                  reference_autoattack="autoattack", protocols=None):
    """The settings a record of `unit` must have been made with (`scaling_records.settings_of`), as `run` measures
    it."""
    from rst_tf.study import scaling_records

    steps = planned[unit]
    runs = {run_dir: config for step in steps for _, run_dir, config in reproduce.step_configs(step)}
    first_seed = next(iter(planned))[1]
    return scaling_records.settings_of(runs, evaluation_settings(
        first_seed, test_examples, epsilon, steps[0].config.eval_attack_steps, unit, reference_unit_of(planned),
        r2s_test_examples, reference_autoattack_examples, autoattack, reference_autoattack, protocols), output_dir)


def unit_caches(planned, unit, output_dir, protocols=None):
    """The cache files that hold `unit`'s measurements: {path: its run folders there, or None for a file that is
    wholly its own (its R2S)}."""
    from rst_tf import attacks

    protocols = tuple(attacks.PGD_PROTOCOLS if protocols is None else protocols)
    runs = unit_run_dirs(planned[unit])
    folder = reproduce.seed_dir(width_dir(output_dir, unit[0]), unit[1])
    caches = {os.path.join(output_dir, cache_name("evaluation", protocol)): runs for protocol in protocols}
    caches.update({os.path.join(folder, cache_name("r2s", protocol)): None for protocol in protocols})
    caches[os.path.join(output_dir, "autoattack.json")] = runs
    caches[os.path.join(output_dir, "run_times.json")] = runs
    return caches


def run(config, widths, remaining_ratios, output_dir, report_path, seeds, test_examples=10000, epsilon=8.0,
        command="", batch_size=500, progress=False, log=print, stop_after="report", executor=None,
        r2s_test_examples=None, reference_autoattack_examples=None, records_dir="", autoattack=("autoattack_fast",),
        reference_autoattack="autoattack", protocols=None, archive_dir="", pilot_path=""):
    """The whole study, unit by unit (`unit_order`): train its runs (`train`), evaluate them on `test_examples` test
    images (`evaluate`; R2S and the standard AutoAttack on the first `r2s_test_examples` and
    `reference_autoattack_examples` of them) as soon as they are trained, and record the unit's results in
    `records_dir` (if given; `scaling_records`). A unit recorded there with the same settings is read back instead
    of trained and measured; of a unit in progress, its measurements so far (saved there after each one) and its
    runs packed in `archive_dir` once trained (if given: durable storage outside the repository, as trained networks
    are not committed) are taken rather than made again (`restore_progress`). Then the report
    (`scaling_report`; with `records_dir`, made from the records alone, as `report_recorded` makes it, so that units
    recorded on other machines need no runs here): markdown at `report_path`, figures in <report>_figures/,
    everything as JSON in <report>.json; its regime section links `pilot_path`, the pilot's report, if given.
    Returns that JSON's content, or None when `stop_after` is "train" or "evaluate". `autoattack`,
    `reference_autoattack` and `protocols` are `evaluate`'s. The runs go through `executor` (default: one after
    another here), the evaluation runs here: after each unit's last run, or, when the executor trains elsewhere
    (`trains_elsewhere`: Ray), in a background thread while the next runs train (`Measurer`). The same call
    continues a killed study."""
    from rst_tf.study import measure
    from rst_tf.study import scaling_records
    from rst_tf.study import scaling_report
    from rst_tf.training import run_dir as run_files

    if stop_after not in ("train", "evaluate", "report"):
        raise ValueError(f"stop_after must be train, evaluate or report, got {stop_after!r}")
    planned = plan(config, widths, remaining_ratios, output_dir, seeds)
    reference_unit = reference_unit_of(planned)
    eval_steps = config.eval_attack_steps

    def settings(unit):
        return unit_settings(planned, unit, output_dir, test_examples, epsilon, r2s_test_examples,
                             reference_autoattack_examples, autoattack, reference_autoattack, protocols)

    attacks_of = dict(autoattack=autoattack, reference_autoattack=reference_autoattack, protocols=protocols,
                      r2s_test_examples=r2s_test_examples, reference_autoattack_examples=reference_autoattack_examples)

    left = []
    for unit in unit_order(planned):
        if scaling_records.restore(records_dir, unit, settings(unit), output_dir):
            log(f"width {unit[0]:g} seed {unit[1]}: recorded in {scaling_records.record_path(records_dir, unit)}")
        else:
            left.append(unit)
            if records_dir:
                restore_progress(planned, unit, output_dir, records_dir, settings(unit), log, archive_dir)
    test_sets = measure.TestSets(config.data_dir, batch_size, test_seed=seeds[0], test_examples=test_examples)
    untrained = {unit: set(unit_run_dirs(planned[unit])) for unit in left}

    def keep_progress(unit):
        """The unit's measurements and run times so far, in its partial record."""
        scaling_records.save(records_dir, unit, settings(unit), unit_caches(planned, unit, output_dir, protocols),
                             output_dir, partial=True)

    def measure_unit(unit):
        evaluate({unit: planned[unit]}, output_dir, test_sets, epsilon, eval_steps, log,
                 reference_unit=reference_unit, attack_seed=seeds[0],
                 after_each=(lambda: keep_progress(unit)) if records_dir else None, **attacks_of)
        if records_dir:
            path = scaling_records.save(records_dir, unit, settings(unit),
                                        unit_caches(planned, unit, output_dir, protocols), output_dir)
            log(f"width {unit[0]:g} seed {unit[1]}: measured, recorded in {path}")

    # Where the runs train in other processes (Ray), a trained unit is measured here beside the runs that follow.
    measurer = Measurer(measure_unit, log) if getattr(executor, "trains_elsewhere", False) else None

    def trained(run_dir):
        for unit, waiting in untrained.items():
            if run_dir in waiting:
                if archive_dir:
                    path = scaling_records.save_run(archive_dir, unit, run_name(output_dir, unit, run_dir), run_dir)
                    if path:
                        log(f"width {unit[0]:g} seed {unit[1]}: packed {run_dir} in {path}")
                if records_dir:
                    keep_progress(unit)  # with its run time
                waiting.discard(run_dir)
                if not waiting and stop_after != "train":
                    (measurer.submit if measurer else measure_unit)(unit)

    named = [(f"width {width:g} seed {seed}: ", step) for width, seed in left for step in planned[width, seed]]
    reproduce.run_steps(named, output_dir, os.path.join(output_dir, "run_times.json"), executor, progress, log,
                        after_each=trained)
    if measurer:
        measurer.finish()
    if stop_after != "report":
        return None
    if records_dir:  # every unit is recorded by now: those recorded elsewhere have no runs here, only their records
        return report_recorded(config, widths, remaining_ratios, output_dir, report_path, seeds, records_dir,
                               test_examples, epsilon, command, lambda message: None, r2s_test_examples,
                               reference_autoattack_examples, autoattack, reference_autoattack, protocols,
                               pilot_path)
    measured = evaluate(planned, output_dir, test_sets, epsilon, eval_steps, log, **attacks_of)
    times = run_files.read_json(os.path.join(output_dir, "run_times.json"))
    order = unit_order(planned)
    return scaling_report.write(planned, measured, times, config, report_path, command, epsilon, test_examples,
                                units={"planned": order, "recorded": order, "reported": order},
                                pilot_path=pilot_path)


def run_name(output_dir, unit, run_dir):
    """A run's folder within its (width, seed)'s: "dense_at", "rst/ratio_0.2"."""
    return os.path.relpath(run_dir, reproduce.seed_dir(width_dir(output_dir, unit[0]), unit[1]))


def kept_progress(planned, unit, output_dir, records_dir, settings, archive_dir=""):
    """What is kept of `unit` in progress: (its runs packed in `archive_dir` with their planned configuration, its
    runs, the measurements and run times in its partial record in `records_dir` made with `settings` that still
    describe its networks: those of runs packed there or finished in `output_dir`)."""
    from rst_tf.study import executors
    from rst_tf.study import run_archive
    from rst_tf.study import scaling_records

    runs = [(run_dir, run_name(output_dir, unit, run_dir), config) for step in planned[unit]
            for _, run_dir, config in reproduce.step_configs(step)]
    packed = [run_dir for run_dir, name, config in runs if archive_dir
              and os.path.isfile(scaling_records.archive_path(archive_dir, unit, name))
              and run_archive.matches(scaling_records.archive_path(archive_dir, unit, name), config)]
    kept_runs = set(packed) | {run_dir for run_dir, _, _ in runs if executors.is_finished(run_dir)}
    found, _ = scaling_records.partial_entries(scaling_records.load(records_dir, unit, settings, partial=True),
                                               output_dir, kept_runs)
    measured = sum(1 if entries.get("whole") else len(entries["by_run"]) for entries in found.values())
    return len(packed), len(runs), measured


def restore_progress(planned, unit, output_dir, records_dir, settings, log=print, archive_dir=""):
    """What is kept of `unit` in progress (`scaling_records`), written into `output_dir`: its runs packed in
    `archive_dir` that are not finished here, and the measurements of its partial record in `records_dir` that the
    caches here lack, of the runs whose trained networks are here (finished, or unpacked): a run that trains again
    is measured again, and so is the R2S over it."""
    from rst_tf.study import executors
    from rst_tf.study import scaling_records

    prefix = f"width {unit[0]:g} seed {unit[1]}: "
    run_dirs = []
    for step in planned[unit]:
        for _, run_dir, config in reproduce.step_configs(step):
            run_dirs.append(run_dir)
            name = run_name(output_dir, unit, run_dir)
            if archive_dir and not executors.is_finished(run_dir) and scaling_records.restore_run(
                    archive_dir, unit, name, run_dir, config):
                log(prefix + f"{name} unpacked from {scaling_records.archive_path(archive_dir, unit, name)}")
    kept_runs = {run_dir for run_dir in run_dirs if executors.is_finished(run_dir)}
    written, left_out = scaling_records.restore_partial(records_dir, unit, settings, output_dir, kept_runs)
    path = scaling_records.record_path(records_dir, unit, True)
    if written:
        log(prefix + f"{written} measurements read from {path}")
    if left_out:
        log(prefix + f"{left_out} measurements in {path} left out: their runs are not here or in the archive, so "
            "they train and are measured again")


class Measurer:
    """Calls `measure(unit)` for each submitted unit, one after another in a background thread, so that the runs
    that train elsewhere go on meanwhile. A failed measurement is logged at once and raised by the next `submit`
    or by `finish` (which waits for the rest); the thread is a daemon, so a killed study does not wait for it."""

    def __init__(self, measure, log=print):
        import queue
        import threading

        self._measure, self._log, self._units, self._error = measure, log, queue.Queue(), None
        self._thread = threading.Thread(target=self._work, name="measure", daemon=True)
        self._thread.start()

    def _work(self):
        while (unit := self._units.get()) is not None:
            if self._error is None:
                try:
                    self._measure(unit)
                except BaseException as error:  # raised again in the study's thread
                    self._error = error
                    self._log(f"width {unit[0]:g} seed {unit[1]}: measuring failed: {error}")

    def _check(self):
        if self._error is not None:
            raise self._error

    def submit(self, unit):
        self._check()
        self._units.put(unit)

    def finish(self):
        self._units.put(None)
        self._thread.join()
        self._check()


def recorded_grid(units, recorded):
    """The (width, seed)s that a report of a study in progress covers, from the `recorded` ones of `units` (in
    `unit_order`): the first n widths that have a record, with the seeds recorded at every one of them. Of these
    grids, the one with the most (width, seed)s, and of those the one with more widths (a trend needs two); [] if
    nothing is recorded."""
    recorded = set(recorded)
    widths = [w for w in dict.fromkeys(w for w, _ in units) if any((w, s) in recorded for _, s in units)]
    seeds = list(dict.fromkeys(s for _, s in units))
    best = []
    for count in range(1, len(widths) + 1):
        kept = [s for s in seeds if all((w, s) in recorded for w in widths[:count])]
        grid = [(w, s) for w in widths[:count] for s in kept]
        if grid and len(grid) >= len(best):
            best = grid
    return best


def report_recorded(config, widths, remaining_ratios, output_dir, report_path, seeds, records_dir,
                    test_examples=10000, epsilon=8.0, command="", log=print, r2s_test_examples=None,
                    reference_autoattack_examples=None, autoattack=("autoattack_fast",),
                    reference_autoattack="autoattack", protocols=None, pilot_path=""):
    """The report of a study in progress, from its records alone: the (width, seed)s recorded in `records_dir`
    with the study's settings (as `run` would read them back), on the grid of them that `recorded_grid` picks.
    Trains, measures and reads nothing else and writes only the report (`scaling_report.write`, which marks it as
    interim until every (width, seed) is in it); needs neither the runs nor the data. Returns the report's JSON
    content; ValueError (one line, nothing written) if no (width, seed) is recorded with these settings."""
    from rst_tf import attacks
    from rst_tf.study import scaling_records
    from rst_tf.study import scaling_report

    planned = plan(config, widths, remaining_ratios, output_dir, seeds)
    protocols = tuple(attacks.PGD_PROTOCOLS if protocols is None else protocols)
    records = {}
    for unit in unit_order(planned):
        settings = unit_settings(planned, unit, output_dir, test_examples, epsilon, r2s_test_examples,
                                 reference_autoattack_examples, autoattack, reference_autoattack, protocols)
        record = scaling_records.load(records_dir, unit, settings)
        if record:
            records[unit] = record
            log(f"width {unit[0]:g} seed {unit[1]}: recorded in {scaling_records.record_path(records_dir, unit)}")
    if not records:
        raise ValueError(f"--records_dir {records_dir} holds no (width, seed) of this study recorded with its "
                         "settings")
    grid = recorded_grid(unit_order(planned), records)
    measured = {"evaluation": {protocol: {} for protocol in protocols}, "r2s": {}, "autoattack": {}}
    times = {}
    for unit in grid:
        found = scaling_records.measurements(records[unit], output_dir)
        for protocol in protocols:
            measured["evaluation"][protocol].update(found[cache_name("evaluation", protocol)])
            r2s_name = os.path.relpath(os.path.join(reproduce.seed_dir(width_dir(output_dir, unit[0]), unit[1]),
                                                    cache_name("r2s", protocol)), output_dir)
            measured["r2s"][unit[0], unit[1], protocol] = found[r2s_name]
        measured["autoattack"].update(found.get("autoattack.json", {}))
        times.update(found.get("run_times.json", {}))
    part = {unit: steps for unit, steps in planned.items() if unit in grid}
    return scaling_report.write(part, measured, times, config, report_path, command, epsilon, test_examples,
                                units={"planned": unit_order(planned), "recorded": list(records), "reported": grid},
                                measured_on=measuring_machines(records), pilot_path=pilot_path)


def measuring_machines(records):
    """{(width, seed): the machine that measured it} of `records` ({unit: record or None})."""
    return {unit: record["recorded"]["machine"] for unit, record in records.items()
            if record and record.get("recorded", {}).get("machine")}
