"""Many attacks over lists of budgets on the same examples, and the per-example worst case.

`attack_suite` turns attack names and budgets into `attacks.AttackConfig`s (the evaluation settings of each
attack); `evaluate_attacks` measures a network under each of them and returns plain Python values (dicts, lists,
floats) that can be written as JSON. Every accuracy is honest (an example counts only if its clean image is also
classified correctly) and carries its 95% Wilson interval.
"""
import dataclasses
import sys
import time

import numpy as np
import tensorflow as tf

from rst_tf import attacks
from rst_tf.measuring import attacked, intervals
from rst_tf.reports import threats

@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """How each attack of a suite runs. `pgd_protocol` (see `attacks.pgd_eval_config`) sets the step and early
    stop of `pgd`, the sanity probes and the transfer attack; cw_inf and pgd_l2 always step epsilon / 4."""
    steps: int = 20
    restarts: int = 1
    pgd_protocol: str = "standard"
    bandits_queries: int = 10_000
    autoattack_steps: int = 100
    autoattack_queries: int = 5000
    malt_targets: int = attacks.AUTOATTACK_FAST_MALT_TARGETS
    eot_draws: int = 20
    cw_l2_steps: int = 1000
    cw_l2_binary_search_steps: int = 5


def attack_config(name, epsilon, settings=AttackSettings()):
    """The AttackConfig of attack `name` at budget `epsilon` (L-inf in [0, 1] pixels, or L2)."""
    if name == "pgd":
        return attacks.pgd_eval_config(epsilon, settings.pgd_protocol, settings.steps, settings.restarts)
    if name in ("cw_inf", "pgd_l2"):
        return dataclasses.replace(attacks.pgd_eval_config(epsilon, "standard", settings.steps, settings.restarts),
                                   name=name)
    if name == "fgsm":
        return attacks.AttackConfig(name="fgsm", epsilon=epsilon)
    if name == "fgsm_rs":
        return attacks.fgsm_rs_config(epsilon)
    if name == "bandits":
        return attacks.bandits_config(epsilon, max_queries=settings.bandits_queries)
    if name == "autoattack":
        return dataclasses.replace(attacks.autoattack_config(epsilon), steps=settings.autoattack_steps,
                                   max_queries=settings.autoattack_queries)
    if name == "autoattack_fast":
        return dataclasses.replace(attacks.autoattack_fast_config(epsilon, settings.malt_targets),
                                   steps=settings.autoattack_steps)
    if name == "fab_t":
        return dataclasses.replace(attacks.fab_t_config(epsilon), steps=settings.autoattack_steps)
    if name == "square":
        return attacks.square_config(epsilon, queries=settings.autoattack_queries)
    if name in ("apgd_ce", "apgd_dlr", "apgd_t", "autoattack_rand"):
        config = attacks.autoattack_rand_config(epsilon, eot_draws=settings.eot_draws)
        return dataclasses.replace(config, name=name, steps=settings.autoattack_steps)
    if name == "cw_l2":
        return attacks.cw_l2_config(epsilon, steps=settings.cw_l2_steps,
                                    binary_search_steps=settings.cw_l2_binary_search_steps)
    known = ", ".join(threats.LINF_ATTACKS + threats.L2_ATTACKS)
    raise ValueError(f"unknown attack {name!r}; the suite runs {known}")


def attack_suite(names, linf_epsilons, l2_epsilons, settings=AttackSettings(), reference_epsilon=8 / 255,
                 sanity_probes=True):
    """(configs, probes, transfer attack): each of `names` at each budget of its norm, in that order; the sanity
    probes (PGD at `threats.LARGE_EPSILON`, PGD with twice the steps at `reference_epsilon`) not already among the
    configs (empty without `sanity_probes`); and PGD at `reference_epsilon`. ValueError on a bad name or setting."""
    configs = [attack_config(name, epsilon, settings) for name in names
               for epsilon in (l2_epsilons if name in threats.L2_ATTACKS else linf_epsilons)]
    probes = []
    if sanity_probes:
        probes = [attack_config("pgd", threats.LARGE_EPSILON, settings),
                  attack_config("pgd", reference_epsilon, dataclasses.replace(settings, steps=2 * settings.steps))]
        probes = [probe for probe in probes if probe not in configs]
    transfer = attack_config("pgd", reference_epsilon, settings)
    for config in configs + probes + [transfer]:
        config.validate()
    return configs, probes, transfer


def materialize(batches):
    """A list of (images, labels) tensors, so that every attack sees the same examples in the same order."""
    return [(tf.convert_to_tensor(images, tf.float32), tf.convert_to_tensor(labels)) for images, labels in batches]


def _config_record(config, network):
    record = dataclasses.asdict(config)
    if config.name == "autoattack":
        record["settings"] = attacks.autoattack_settings(config, int(network.output_shape[-1]))
    elif config.name == "autoattack_fast":
        record["settings"] = attacks.autoattack_fast_settings(config, int(network.output_shape[-1]))
    elif config.name == "autoattack_rand":
        record["settings"] = attacks.autoattack_rand_settings(config)
    return record


def accuracy_record(correct):
    """{accuracy, num_examples, interval, correct}: a {0, 1} per-example array as the reports write it."""
    correct = np.asarray(correct, np.int32)
    accuracy = float(correct.mean()) if correct.size else float("nan")
    return dict(intervals.with_interval(accuracy, correct.size), correct=[int(c) for c in correct])


class Progress:
    """Progress of the attacks of an evaluation: the attack, batch, component, examples left and elapsed time.
    On a terminal one line rewritten in place (carriage return), otherwise a line per component."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.label, self.batches, self.start, self.width = "", 0, time.perf_counter(), 0

    def begin(self, label, batches):
        self.label, self.batches, self.start = label, batches, time.perf_counter()

    def __call__(self, batch, component, left):
        text = (f"{self.label}: batch {batch + 1}/{self.batches}, {component}, {left} examples left, "
                f"{time.perf_counter() - self.start:.0f} s")
        if self.live:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self):
        if self.live and self.width:
            self.stream.write("\n")
            self.stream.flush()
        self.width = 0


def evaluate_attacks(network, batches, attack_configs, seed=0, log=None, natural=None, progress=None):
    """Accuracy of `network` under each attack in `attack_configs` on the same examples.

    Returns a dict:
      natural: {accuracy, num_examples, interval, correct} on clean inputs;
      attacks: one dict per config, in order: name, label, norm, epsilon, config (every field, via
        dataclasses.asdict; autoattack also records what it runs), accuracy, num_examples, interval (95% Wilson),
        correct (per example, 0/1: correct clean and under the attack), seconds and cpu_seconds (wall and process
        CPU time of the attack). A paper-protocol PGD whose standard twin is in the list too is read off the twin's
        run (`paper_twins`): its record has seconds 0 and `read_off_standard_run`;
      worst_case: {accuracy, num_examples, interval, correct, attacks}: an example counts as robust only if it is
        classified correctly clean and under every attack;
      worst_case_by_threat: the same per threat model (norm, epsilon), e.g. every L-inf attack at 8/255.
    `log`, if given, is called with one line per finished attack. `natural` (optional): the per-example clean
    correctness on these batches from an earlier call, so it is not computed again. `progress`: True for a
    `Progress` on stderr, or a `Progress`; the AutoAttack schedules report each component of each batch.
    """
    progress = Progress() if progress is True else (progress or None)
    batches = materialize(batches)
    if natural is None:
        natural = attacked.AttackedAccuracy(network, attacks.AttackConfig(name="none"), seed).per_example(batches)
    natural = np.asarray(natural, np.int32)
    twins = paper_twins(attack_configs)
    found = {}
    for index, config in enumerate(attack_configs):
        if index in twins.values():
            continue  # read off its standard twin's run
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        if progress is not None:
            progress.begin(threats.attack_label(config), len(batches))
        attack = attacked.AttackedAccuracy(network, config, seed)
        if index in twins:
            correct, paper_correct = attack.per_example_with_paper(batches, attack_configs[twins[index]])
            paper_correct = paper_correct & natural
        else:
            correct = attack.per_example(batches, progress)
        correct = correct & natural
        if progress is not None:
            progress.end()
        found[index] = _attack_record(config, network, correct, time.perf_counter() - wall_start,
                                      time.process_time() - cpu_start)
        done = [index]
        if index in twins:
            found[twins[index]] = dict(_attack_record(attack_configs[twins[index]], network, paper_correct, 0.0, 0.0),
                                       read_off_standard_run=True)
            done.append(twins[index])
        for result in (found[key] for key in done if log is not None):
            log(f"{result['label']}: accuracy {result['accuracy']:.4f} on {result['num_examples']} examples")
    results = [found[index] for index in range(len(attack_configs))]
    by_threat = {}
    for result in results:
        by_threat.setdefault((result["norm"], result["epsilon"]), []).append(result)
    return {
        "natural": accuracy_record(natural),
        "attacks": results,
        "worst_case": worst_case(natural, results),
        "worst_case_by_threat": [dict(norm=norm, epsilon=epsilon, **worst_case(natural, group))
                                 for (norm, epsilon), group in sorted(by_threat.items())],
    }


def paper_twins(attack_configs):
    """{index of a standard PGD config: index of its early-stopping twin} among `attack_configs`: the twin's verdicts
    are read off the standard run (`attacks.pgd.paper_verdicts_follow`) instead of a second attack."""
    twins = {}
    for index, config in enumerate(attack_configs):
        twin = next((other for other, candidate in enumerate(attack_configs)
                     if other not in twins.values() and attacks.pgd.paper_verdicts_follow(config, candidate)), None)
        if twin is not None:
            twins[index] = twin
    return twins


def _attack_record(config, network, correct, seconds, cpu_seconds):
    return dict(name=config.name, label=threats.attack_label(config), norm=threats.norm_of(config),
                epsilon=float(config.epsilon), config=_config_record(config, network), **accuracy_record(correct),
                seconds=seconds, cpu_seconds=cpu_seconds)


def worst_case(natural, results):
    """Examples correct clean and under every one of `results`, with the attacks' labels."""
    robust = np.asarray(natural, bool).copy()
    for result in results:
        robust &= np.asarray(result["correct"], bool)
    return dict(accuracy_record(robust), attacks=[result["label"] for result in results])
