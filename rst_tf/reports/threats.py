"""Names of attacks and their threat models (norm and budget), without TensorFlow: apps check flags with these
before importing anything heavy."""
import dataclasses

L2_ATTACKS = ("pgd_l2", "cw_l2")
LINF_ATTACKS = ("pgd", "cw_inf", "fgsm", "fgsm_rs", "bandits", "autoattack", "autoattack_fast", "fab_t", "apgd_ce",
                "apgd_dlr", "apgd_t", "square", "autoattack_rand")
PGD_LIKE = ("pgd", "cw_inf", "pgd_l2")
# The budget of the "accuracy near 0" sanity probe (L-inf).
LARGE_EPSILON = 64 / 255


def norm_of(config):
    """'L2' or 'Linf': the norm of the attack's budget."""
    return "L2" if config.name in L2_ATTACKS else "Linf"


def epsilon_label(norm, epsilon):
    return f"{epsilon * 255:g}/255" if norm == "Linf" else f"{epsilon:g}"


def attack_label(config):
    """A short readable name, e.g. 'pgd-20 Linf 8/255', 'bandits Linf 8/255', 'pgd_l2-20 L2 0.5'."""
    name = config.name
    if name in PGD_LIKE:
        name = f"{name}-{config.steps}" + (f"x{config.restarts}" if config.restarts > 1 else "")
    norm = norm_of(config)
    return f"{name} {norm} {epsilon_label(norm, config.epsilon)}"


def family_key(config):
    """Configs that differ only in the budget (epsilon, and the step size that scales with it) form a family."""
    fields = dataclasses.asdict(config)
    for varying in ("epsilon", "step_size"):
        fields.pop(varying)
    return tuple(sorted(fields.items()))
