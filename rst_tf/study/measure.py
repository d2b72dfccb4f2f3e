"""The reproduction study's measurements, each cached in a JSON file so that a killed study continues where it was.

Every run of the study is measured on one test set: the test subset that the study's first seed draws (for the
runs' task: all classes, or the class subset of the transfer study), so the per-example results of every run and
seed are paired on the same images (`measuring.contrasts`). Per-example results are kept as '0'/'1' strings,
with the test set's fingerprint (`TestSets.fingerprint`): a result made on other images, or on the same ones in
another order, is measured again.
"""
import dataclasses
import hashlib
import time

import numpy as np

from rst_tf import attacks
from rst_tf.measuring import contrasts
from rst_tf.training import build
from rst_tf.training import run_dir as run_files


def pgd(steps, epsilon, pgd_protocol):
    """The evaluation PGD of the study (`attacks.pgd_eval_config`)."""
    return attacks.pgd_eval_config(epsilon, pgd_protocol, steps)


def checkpoint_of(config):
    """The checkpoint the study measures: "best" (by validation PGD accuracy), but the last one of a naturally
    trained run, whose PGD accuracy is ~0 at every epoch and so selects nothing."""
    return "last" if config.mode == "natural" else "best"


class TestSets:
    """The study's test batches per task (class subset), drawn once with `test_seed` whatever the run's seed;
    `test_examples` (if given) replaces every run's own test size."""

    def __init__(self, data_dir, batch_size, test_seed, test_examples=None):
        self.data_dir, self.batch_size, self.test_seed = data_dir, int(batch_size), int(test_seed)
        self.test_examples = test_examples  # None: each run's own config.test_examples
        self._by_task = {}
        self._fingerprints = {}

    def _key(self, config):
        test_examples = config.test_examples if self.test_examples is None else self.test_examples
        return tuple(config.class_subset), config.dataset, test_examples

    def batches(self, config):
        from rst_tf import data
        from rst_tf.reports import suite

        key = _, _, test_examples = self._key(config)
        if key not in self._by_task:
            chosen = dataclasses.replace(config, data_dir=self.data_dir or config.data_dir, seed=self.test_seed,
                                         test_examples=test_examples)
            splits = build.load_data(chosen)
            self._by_task[key] = suite.materialize(data.eval_batches(splits.test, self.batch_size))
        return self._by_task[key]

    def fingerprint(self, config):
        """The test labels of `batches(config)`, in order, hashed: what a cached per-example result must have been
        measured on to count."""
        key = self._key(config)
        if key not in self._fingerprints:
            labels = np.concatenate([np.asarray(labels, np.int64) for _, labels in self.batches(config)])
            self._fingerprints[key] = hashlib.sha256(labels.tobytes()).hexdigest()[:16]
        return self._fingerprints[key]


def evaluate_runs(run_dirs, epsilons, cache_path, test_sets, seed=0, log=print, pgd_protocol="standard"):
    """Natural and PGD accuracy at each ε (in /255) of each run's checkpoint (`checkpoint_of`) on the study's test
    set.

    Returns {run_dir: {natural, natural_correct, robust: {"<ε>": accuracy}, robust_correct: {"<ε>": '0'/'1'},
    robust_intervals, num_examples, pgd_protocol, seconds}}, cached in `cache_path` (a run already there with the
    same protocol, budgets and test seed is not evaluated again). An example counts as robust only if its clean
    image is classified correctly too; PGD runs the runs' `eval_attack_steps`.
    """
    return evaluate_runs_under({pgd_protocol: cache_path}, run_dirs, epsilons, test_sets, seed, log)[pgd_protocol]


def evaluate_runs_under(cache_paths, run_dirs, epsilons, test_sets, seed=0, log=print):
    """`evaluate_runs` under each PGD protocol of `cache_paths` ({protocol: cache path}): {protocol: its result}.
    A run's missing protocols are measured in one `suite.evaluate_attacks` call, so where the paper's protocol takes
    the standard one's steps (at 8/255) its verdicts are read off the standard run, not attacked again."""
    from rst_tf.reports import suite

    caches = {protocol: run_files.read_json(path) for protocol, path in cache_paths.items()}
    wanted = [f"{e:g}" for e in epsilons]
    for run_dir in run_dirs:
        test_set = test_sets.fingerprint(run_files.read_config(run_dir))
        missing = [protocol for protocol, cache in caches.items()
                   if not (cache.get(run_dir, {}).get("pgd_protocol") == protocol
                           and cache[run_dir].get("test_seed") == test_sets.test_seed
                           and cache[run_dir].get("test_set") == test_set
                           and all(key in cache[run_dir].get("robust_correct", {}) for key in wanted))]
        if not missing:
            continue
        network, config = run_files.load_run(run_dir, checkpoint_of(run_files.read_config(run_dir)))
        attack_configs = [pgd(config.eval_attack_steps, e / 255, protocol) for protocol in missing for e in epsilons]
        result = suite.evaluate_attacks(network, test_sets.batches(config), attack_configs, seed=seed)
        for position, protocol in enumerate(missing):
            measured = result["attacks"][position * len(epsilons):(position + 1) * len(epsilons)]
            entry = {
                "natural": result["natural"]["accuracy"],
                "natural_correct": contrasts.pack(result["natural"]["correct"]),
                "robust": {key: attack["accuracy"] for key, attack in zip(wanted, measured)},
                "robust_correct": {key: contrasts.pack(attack["correct"]) for key, attack in zip(wanted, measured)},
                "robust_intervals": {key: attack["interval"] for key, attack in zip(wanted, measured)},
                "num_examples": result["natural"]["num_examples"], "pgd_protocol": protocol,
                "test_seed": test_sets.test_seed, "test_set": test_set,
                "seconds": sum(attack["seconds"] for attack in measured)}
            if any(attack.get("read_off_standard_run") for attack in measured):
                entry["read_off_standard_run"] = True
            caches[protocol][run_dir] = entry
            log(f"evaluated {run_dir} ({protocol} PGD): natural {entry['natural']:.4f}, " + ", ".join(
                f"ε {key} {value:.4f}" for key, value in entry["robust"].items()))
            run_files.write_json(cache_paths[protocol], caches[protocol])
    return {protocol: {run_dir: cache[run_dir] for run_dir in run_dirs} for protocol, cache in caches.items()}


def transfer_between(run_dirs, names, epsilon, steps, cache_path, test_sets, seed=0, pgd_protocol="standard"):
    """`transfer.transfer_matrix` between the runs' best checkpoints (PGD-`steps` at ε/255) on the study's test set,
    with each cell's per-example results ('correct', packed), cached in `cache_path`."""
    from rst_tf.reports import transfer

    cached = run_files.read_json(cache_path)
    attack = pgd(steps, epsilon / 255, pgd_protocol)
    test_set = test_sets.fingerprint(run_files.read_config(run_dirs[0]))
    if (cached.get("names") == list(names) and cached.get("attack") == dataclasses.asdict(attack)
            and cached.get("test_seed") == test_sets.test_seed and cached.get("test_set") == test_set
            and "correct" in cached):
        return cached
    networks, config = {}, None
    for name, run_dir in zip(names, run_dirs):
        networks[name], config = run_files.load_run(run_dir, "best")
    result = transfer.transfer_matrix(networks, test_sets.batches(config), attack, seed=seed)
    result["correct"] = [[contrasts.pack(cell) for cell in row] for row in result["correct"]]
    result.update(run_dirs=list(run_dirs), test_seed=test_sets.test_seed, test_set=test_set)
    run_files.write_json(cache_path, result)
    return result


def first_examples(batches, num_examples):
    """The first `num_examples` examples of the study's test batches (all of them for None), in the same batches."""
    if num_examples is None:
        return batches
    kept, left = [], int(num_examples)
    for images, labels in batches:
        if left <= 0:
            break
        kept.append((images[:left], labels[:left]))
        left -= int(labels.shape[0])
    return kept


def r2s_of(run_dirs, epsilon, steps, cache_path, test_sets, adaptive=("vanilla", "eot"), seed=0,
           pgd_protocol="standard", test_examples=None, tickets_measured=None):
    """R2S over the runs' tickets on the study's test set: each ticket alone under the white-box attack and R2S
    under each of `adaptive`, with per-example results, cached in `cache_path`.

    `test_examples`: R2S on the first that many examples of the study's test set only (None: all). With
    `tickets_measured` (each run's entry of `evaluate_runs` under the same attack and test set, in the order of
    `run_dirs`), the tickets alone are taken from it instead of being attacked again.

    Returns {tickets: [{name, remaining_ratio, natural, attacked, attacked_correct}], r2s: {natural, <kind>...},
    r2s_correct: {<kind>: packed}, best_single: {name, attacked}, num_examples, run_dirs, attack, test_seed,
    seconds, cpu_seconds (wall and process CPU time of the measurement)}.
    """
    from rst_tf.deployment import r2s, tickets

    cached = run_files.read_json(cache_path)
    attack = pgd(steps, epsilon / 255, pgd_protocol)
    config = run_files.read_config(run_dirs[0])
    test_set = test_sets.fingerprint(config)
    if (cached.get("run_dirs") == list(run_dirs) and cached.get("attack") == dataclasses.asdict(attack)
            and cached.get("test_seed") == test_sets.test_seed and cached.get("test_set") == test_set
            and cached.get("test_examples") == test_examples
            and all(kind in cached.get("r2s_correct", {}) for kind in adaptive)):
        return cached
    if tickets_measured and any(entry.get("test_set") != test_set for entry in tickets_measured):
        raise ValueError("the tickets' own results were measured on another test set than R2S's")
    wall, cpu = time.time(), time.process_time()
    banks, _ = tickets.from_runs(list(run_dirs))
    (task, bank), = banks.items()
    batches = first_examples(test_sets.batches(config), test_examples)
    evaluation = r2s.BankEvaluation(bank, attack, seed)
    report = {"tickets": [], "r2s": {}, "r2s_correct": {}, "task": task, "run_dirs": list(run_dirs),
              "attack": dataclasses.asdict(attack), "test_seed": test_sets.test_seed, "test_set": test_set,
              "test_examples": test_examples,
              "tickets_from": "evaluation" if tickets_measured else "r2s"}
    num_examples = sum(int(labels.shape[0]) for _, labels in batches)
    for index, ticket in enumerate(bank.tickets):
        if tickets_measured:
            entry = tickets_measured[index]
            natural = contrasts.unpack(entry["natural_correct"])[:num_examples]
            attacked = contrasts.unpack(entry["robust_correct"][f"{epsilon:g}"])[:num_examples]
        else:
            natural = evaluation.ticket_correct(batches, index, attacked=False)
            attacked = evaluation.ticket_correct(batches, index, natural=natural)
        report["tickets"].append({"name": ticket.name, "remaining_ratio": ticket.remaining_ratio,
                                  "natural": float(natural.mean()), "attacked": float(attacked.mean()),
                                  "attacked_correct": contrasts.pack(attacked)})
    natural = evaluation.r2s_correct(batches)
    report["r2s"]["natural"] = float(natural.mean())
    for kind in adaptive:
        correct = evaluation.r2s_correct(batches, kind, natural)
        report["r2s"][kind] = float(correct.mean())
        report["r2s_correct"][kind] = contrasts.pack(correct)
    best = max(report["tickets"], key=lambda row: row["attacked"])
    report["best_single"] = {"name": best["name"], "attacked": best["attacked"]}
    report["num_examples"] = int(natural.size)
    report.update(seconds=time.time() - wall, cpu_seconds=time.process_time() - cpu)
    run_files.write_json(cache_path, report)
    return report


def autoattack_runs(wanted, epsilon, cache_path, test_sets, seed=0, log=print, test_examples=None):
    """Each attack of the registry named in `wanted` ({run_dir: [attack name]}) at ε/255 on that run's checkpoint
    (`checkpoint_of`), on the study's test set, or on its first `test_examples[name]` examples for an attack that
    `test_examples` ({name: count}) names. Returns {run_dir: {attack: {accuracy, correct (packed), interval,
    num_examples, seconds, cpu_seconds}}}, cached in `cache_path` per run and attack."""
    from rst_tf.reports import suite

    cache = run_files.read_json(cache_path)
    for run_dir, names in wanted.items():
        for name in names:
            cached = cache.get(run_dir, {}).get(name, {})
            limit = (test_examples or {}).get(name)
            config = run_files.read_config(run_dir)
            test_set = test_sets.fingerprint(config)
            if (cached.get("test_seed") == test_sets.test_seed and cached.get("test_set") == test_set
                    and cached.get("epsilon") == float(epsilon) and cached.get("test_examples") == limit):
                continue
            network, config = run_files.load_run(run_dir, checkpoint_of(config))
            attack = suite.attack_config(name, epsilon / 255)
            batches = first_examples(test_sets.batches(config), limit)
            result = suite.evaluate_attacks(network, batches, [attack], seed=seed)["attacks"][0]
            cache.setdefault(run_dir, {})[name] = {
                "accuracy": result["accuracy"], "interval": result["interval"], "correct": contrasts.pack(
                    result["correct"]), "num_examples": result["num_examples"], "seconds": result["seconds"],
                "cpu_seconds": result["cpu_seconds"], "epsilon": float(epsilon), "test_seed": test_sets.test_seed,
                "test_set": test_set, "test_examples": limit}
            log(f"{name} of {run_dir}: {result['accuracy']:.4f} ({result['cpu_seconds'] / 60:.1f} CPU min)")
            run_files.write_json(cache_path, cache)
    return {run_dir: {name: cache[run_dir][name] for name in names} for run_dir, names in wanted.items()}
