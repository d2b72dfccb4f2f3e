"""Sanity checks of an evaluation against gradient masking.

They follow Carlini et al. 2019 ("On evaluating adversarial robustness") and Tramer et al. 2020 ("On adaptive
attacks to adversarial example defenses"): accuracy must not rise as the budget grows, must reach about zero at a
large budget, black-box and transfer attacks must not beat white-box PGD, and more PGD steps or restarts must not
raise accuracy. A failed check points at gradient masking (an evaluation that overstates robustness).
"""
from rst_tf import attacks
from rst_tf.reports import threats

BLACK_BOX_ATTACKS = ("bandits", "square")
MASKING_WARNING = "GRADIENT MASKING WARNING"
# A rise of accuracy up to max(1 example, 1%) is noise; at a large L-inf budget accuracy must be at most 5%.
TOLERANCE = 0.01
LARGE_EPSILON_MAX_ACCURACY = 0.05


def _tolerance(num_examples, tolerance):
    return max(tolerance, 1.0 / max(1, num_examples))


def _check(check, passed, detail):
    return {"check": check, "passed": bool(passed), "detail": detail}


def sanity_checks(attack_results, natural_accuracy=None, transfer=None, tolerance=TOLERANCE,
                  large_epsilon=threats.LARGE_EPSILON, large_epsilon_max_accuracy=LARGE_EPSILON_MAX_ACCURACY):
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
        families.setdefault(threats.family_key(config), []).append((config.epsilon, result))
    for members in families.values():
        members.sort(key=lambda member: member[0])
        for (_, smaller), (_, larger) in zip(members, members[1:]):
            slack = _tolerance(larger["num_examples"], tolerance)
            checks.append(_check(
                "accuracy does not rise with epsilon", larger["accuracy"] <= smaller["accuracy"] + slack,
                f"{smaller['label']}: {smaller['accuracy']:.4f} -> {larger['label']}: {larger['accuracy']:.4f}"))

    for config, result in zip(configs, attack_results):
        if threats.norm_of(config) == "Linf" and config.name != "fgsm" and config.epsilon >= large_epsilon - 1e-9:
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
