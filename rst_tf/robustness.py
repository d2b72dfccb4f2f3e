"""Robustness evaluation beyond one attack: many attacks and budgets, the per-example worst case, sanity checks
against gradient masking, transfer between models, and feature distances under random noise.

The functions take plain arguments (networks, batches of (images, labels), `attacks.AttackConfig`s) and return
plain Python values (dicts, lists, floats) that can be written as JSON.

Sanity checks follow Carlini et al. 2019 ("On evaluating adversarial robustness") and Tramer et al. 2020 ("On
adaptive attacks to adversarial example defenses"): accuracy must not rise as the budget grows, must reach about
zero at a large budget, black-box and transfer attacks must not beat white-box PGD, and more PGD steps or restarts
must not raise accuracy. A failed check points at gradient masking (an evaluation that overstates robustness).
"""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from rst_tf import attacks, evaluate, layers, masking

L2_ATTACKS = ("pgd_l2", "cw_l2")
BLACK_BOX_ATTACKS = ("bandits",)
MASKING_WARNING = "GRADIENT MASKING WARNING"
# Sanity-check defaults: a rise of accuracy up to max(1 example, 1%) is noise; at a large L-inf budget accuracy
# must be at most 5%.
TOLERANCE = 0.01
LARGE_EPSILON = 64 / 255
LARGE_EPSILON_MAX_ACCURACY = 0.05


def norm_of(config):
    """'L2' or 'Linf': the norm of the attack's budget."""
    return "L2" if config.name in L2_ATTACKS else "Linf"


def epsilon_label(norm, epsilon):
    return f"{epsilon * 255:g}/255" if norm == "Linf" else f"{epsilon:g}"


def attack_label(config):
    """A short readable name, e.g. 'pgd-20 Linf 8/255', 'bandits Linf 8/255', 'pgd_l2-20 L2 0.5'."""
    name = config.name
    if name in ("pgd", "pgd_l2", "cw_inf"):
        name = f"{name}-{config.steps}" + (f"x{config.restarts}" if config.restarts > 1 else "")
    norm = norm_of(config)
    return f"{name} {norm} {epsilon_label(norm, config.epsilon)}"


def _family_key(config):
    """Configs that differ only in the budget (epsilon, and the step size that scales with it) form a family."""
    fields = dataclasses.asdict(config)
    for varying in ("epsilon", "step_size"):
        fields.pop(varying)
    return tuple(sorted(fields.items()))


def materialize(batches):
    """A list of (images, labels) tensors, so that every attack sees the same examples in the same order."""
    return [(tf.convert_to_tensor(images, tf.float32), tf.convert_to_tensor(labels)) for images, labels in batches]


def _num_classes(network):
    return int(network.output_shape[-1])


def _config_record(config, network):
    record = dataclasses.asdict(config)
    if config.name == "autoattack":
        record["settings"] = attacks.autoattack_settings(config, _num_classes(network))
    elif config.name == "autoattack_rand":
        record["settings"] = attacks.autoattack_rand_settings(config)
    return record


def evaluate_attacks(network, batches, attack_configs, seed=0, log=None, natural=None):
    """Accuracy of `network` under each attack in `attack_configs` on the same examples.

    Returns a dict:
      natural: {accuracy, correct} on clean inputs;
      attacks: one dict per config, in order: name, label, norm, epsilon, config (every field, via
        dataclasses.asdict; autoattack also records what it runs), accuracy, correct (per example, 0/1), num_examples;
      worst_case: {accuracy, correct, attacks}: an example counts as robust only if it is classified correctly
        clean and under every attack;
      worst_case_by_threat: the same per threat model (norm, epsilon), e.g. every L-inf attack at 8/255.
    `log`, if given, is called with one line per finished attack. `natural` (optional): the per-example clean
    correctness on these batches from an earlier call, so it is not computed again.
    """
    batches = materialize(batches)
    if natural is None:
        natural = evaluate.AttackedAccuracy(network, attacks.AttackConfig(name="none"), seed).per_example(batches)
    natural = np.asarray(natural, np.int32)
    results = []
    for config in attack_configs:
        correct = evaluate.AttackedAccuracy(network, config, seed).per_example(batches)
        result = dict(name=config.name, label=attack_label(config), norm=norm_of(config), epsilon=float(config.epsilon),
                      config=_config_record(config, network), accuracy=_mean(correct),
                      correct=[int(c) for c in correct], num_examples=int(correct.size))
        results.append(result)
        if log is not None:
            log(f"{result['label']}: accuracy {result['accuracy']:.4f} on {result['num_examples']} examples")
    by_threat = {}
    for result in results:
        by_threat.setdefault((result["norm"], result["epsilon"]), []).append(result)
    return {
        "natural": {"accuracy": _mean(natural), "correct": [int(c) for c in natural],
                    "num_examples": int(natural.size)},
        "attacks": results,
        "worst_case": _worst_case(natural, results),
        "worst_case_by_threat": [dict(norm=norm, epsilon=epsilon, **_worst_case(natural, group))
                                 for (norm, epsilon), group in sorted(by_threat.items())],
    }


def _mean(correct):
    correct = np.asarray(correct)
    return float(correct.mean()) if correct.size else float("nan")


def _worst_case(natural, results):
    robust = np.asarray(natural, bool).copy()
    for result in results:
        robust &= np.asarray(result["correct"], bool)
    return {"accuracy": _mean(robust), "correct": [int(c) for c in robust],
            "attacks": [result["label"] for result in results]}


# ---------------------------------------------------------------- sanity checks.


def _tolerance(num_examples, tolerance):
    return max(tolerance, 1.0 / max(1, num_examples))


def _check(check, passed, detail):
    return {"check": check, "passed": bool(passed), "detail": detail}


def sanity_checks(attack_results, natural_accuracy=None, transfer=None, tolerance=TOLERANCE,
                  large_epsilon=LARGE_EPSILON, large_epsilon_max_accuracy=LARGE_EPSILON_MAX_ACCURACY):
    """Checks that an evaluation is not fooled by gradient masking; a list of {check, passed, detail}.

    `attack_results` are the `attacks` entries of `evaluate_attacks` (configs as dicts), all on the same examples.
    A rise in accuracy counts only beyond max(`tolerance`, one example). Checks (each only when the results hold
    what it compares):
      * no attack is more accurate than clean inputs (`natural_accuracy`);
      * accuracy does not rise as epsilon grows, within each attack family (same attack and settings);
      * L-inf attacks at epsilon >= `large_epsilon` leave at most `large_epsilon_max_accuracy`;
      * black-box (bandits) accuracy >= white-box PGD accuracy at the same epsilon;
      * transfer accuracy >= white-box accuracy of the attacked model (`transfer`: a `transfer_matrix` result,
        whose diagonal is white-box);
      * PGD with at least as many steps and restarts is not more accurate.
    """
    checks = []
    configs = [attacks.AttackConfig(**{k: v for k, v in r["config"].items() if k != "settings"})
               for r in attack_results]
    if natural_accuracy is not None:
        for result in attack_results:
            slack = _tolerance(result["num_examples"], tolerance)
            checks.append(_check(
                "attack accuracy <= natural accuracy", result["accuracy"] <= natural_accuracy + slack,
                f"{result['label']}: {result['accuracy']:.4f} vs natural {natural_accuracy:.4f}"))

    families = {}
    for config, result in zip(configs, attack_results):
        families.setdefault(_family_key(config), []).append((config.epsilon, result))
    for members in families.values():
        members.sort(key=lambda member: member[0])
        for (_, smaller), (_, larger) in zip(members, members[1:]):
            slack = _tolerance(larger["num_examples"], tolerance)
            checks.append(_check(
                "accuracy does not rise with epsilon", larger["accuracy"] <= smaller["accuracy"] + slack,
                f"{smaller['label']}: {smaller['accuracy']:.4f} -> {larger['label']}: {larger['accuracy']:.4f}"))

    for config, result in zip(configs, attack_results):
        if norm_of(config) == "Linf" and config.name != "fgsm" and config.epsilon >= large_epsilon - 1e-9:
            checks.append(_check(
                f"accuracy near 0 at a large epsilon (<= {large_epsilon_max_accuracy:.0%})",
                result["accuracy"] <= large_epsilon_max_accuracy,
                f"{result['label']}: {result['accuracy']:.4f}"))

    pgd = [(config, result) for config, result in zip(configs, attack_results) if config.name == "pgd"]
    for config, result in zip(configs, attack_results):
        if config.name not in BLACK_BOX_ATTACKS:
            continue
        for pgd_config, pgd_result in pgd:
            if abs(pgd_config.epsilon - config.epsilon) < 1e-9:
                slack = _tolerance(result["num_examples"], tolerance)
                checks.append(_check(
                    "black-box accuracy >= white-box PGD accuracy",
                    result["accuracy"] >= pgd_result["accuracy"] - slack,
                    f"{result['label']}: {result['accuracy']:.4f} vs {pgd_result['label']}: "
                    f"{pgd_result['accuracy']:.4f}"))

    for config, result in pgd:
        for other_config, other in pgd:
            stronger = (other_config.steps >= config.steps and other_config.restarts >= config.restarts
                        and (other_config.steps, other_config.restarts) != (config.steps, config.restarts))
            if stronger and abs(other_config.epsilon - config.epsilon) < 1e-9:
                slack = _tolerance(other["num_examples"], tolerance)
                checks.append(_check(
                    "more PGD steps / restarts do not raise accuracy", other["accuracy"] <= result["accuracy"] + slack,
                    f"{result['label']}: {result['accuracy']:.4f} -> {other['label']}: {other['accuracy']:.4f}"))

    if transfer is not None:
        names, matrix = transfer["names"], transfer["accuracy"]
        slack = _tolerance(transfer.get("num_examples", 0), tolerance)
        for row, source in enumerate(names):
            for column, target in enumerate(names):
                if row != column:
                    checks.append(_check(
                        "transfer accuracy >= white-box accuracy",
                        matrix[row][column] >= matrix[column][column] - slack,
                        f"{source} -> {target}: {matrix[row][column]:.4f} vs white-box on {target}: "
                        f"{matrix[column][column]:.4f}"))
    return checks


def masking_warnings(checks):
    """One loud line per failed check."""
    return [f"{MASKING_WARNING}: {check['check']} failed: {check['detail']}" for check in checks if not check["passed"]]


# ---------------------------------------------------------------- transfer attacks.


def transfer_matrix(networks_by_name, batches, attack_config, seed=0):
    """Accuracy of each column model on adversarial examples crafted on each row model (paper Fig. 7).

    Returns {names, accuracy (rows: source, columns: target; the diagonal is white-box), attack (the config as a
    dict), num_examples}. Each row's examples are drawn as `evaluate.AttackedAccuracy` draws them (seed, batch index),
    so the diagonal equals the white-box accuracy of `evaluate_attacks` with the same seed.
    """
    batches = materialize(batches)
    names = list(networks_by_name)
    attackers = {name: evaluate.MaskedAttacker(networks_by_name[name], attack_config, seed) for name in names}
    matrix = []
    num_examples = 0
    for source in names:
        adversarial = attackers[source].generate(batches)
        row = []
        for target in names:
            correct = attackers[target].correct(adversarial, batches)
            num_examples = int(correct.size)
            row.append(_mean(correct))
        matrix.append(row)
    return {"names": names, "accuracy": matrix, "attack": dataclasses.asdict(attack_config),
            "num_examples": num_examples}


# ---------------------------------------------------------------- feature distance.


def feature_model(network, layer_name="pool"):
    """The network up to the input of layer `layer_name` (our networks: the last conv block's features)."""
    return keras.Model(network.input, network.get_layer(layer_name).input)


def feature_distance(networks_by_name, batches, epsilon, seed=0, layer_name="pool"):
    """Mean over examples of ||f(x) - f(x + u)|| / ||f(x)|| for uniform noise u in [-epsilon, epsilon] (clipped to
    [0, 1]), f the features entering global average pooling (paper Fig. 4). Returns {name: mean distance}.

    Every model sees the same noise: batch i draws it from (seed, i).
    """
    batches = materialize(batches)
    distances = {}
    for name, network in networks_by_name.items():
        features = feature_model(network, layer_name)
        masked = list(layers.current_masks(network).items())
        masked_layers, masks = [layer for layer, _ in masked], [mask for _, mask in masked]

        @tf.function(reduce_retracing=True)
        def distance(images, noise_seed, masks, features=features, masked_layers=masked_layers):
            noise = tf.random.stateless_uniform(tf.shape(images), noise_seed, -epsilon, epsilon, alg=attacks.RNG_ALG)
            with masking.supplied_masks(dict(zip(masked_layers, masks))):
                clean = features(images, training=False)
                noisy = features(tf.clip_by_value(images + noise, 0.0, 1.0), training=False)
            flat = lambda t: tf.reshape(t, [tf.shape(t)[0], -1])
            numerator = tf.norm(flat(clean - noisy), axis=1)
            return numerator / tf.maximum(tf.norm(flat(clean), axis=1), 1e-12)

        values = [distance(images, tf.constant([seed, index], tf.int64), masks).numpy()
                  for index, (images, _) in enumerate(batches)]
        distances[name] = float(np.concatenate(values).mean()) if values else float("nan")
    return distances
