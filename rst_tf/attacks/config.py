"""`AttackConfig`: the settings of one attack, and the constructors of the standard settings.

Each attack module registers the names it runs with `register`, giving the rule that checks the fields it uses; a
config is validated by the rule of its name (`AttackConfig.validate`).
"""
import dataclasses
import math
from typing import Callable

import numpy as np

# Step of FGSM-RS as a multiple of epsilon (Wong et al. 2020, "Fast is better than free").
FGSM_RS_STEP_RATIO = 1.25
# Evaluation PGD: the standard step is epsilon / 4; the official RST test code steps 2/255 at every epsilon.
PGD_EVAL_STEPS = 20
PGD_EVAL_STEP_RATIO = 0.25
PGD_PAPER_STEP_SIZE = 2 / 255
PGD_PROTOCOLS = ("standard", "paper")
# Standard AutoAttack (Croce & Hein 2020) budgets.
AUTOATTACK_STEPS = 100
AUTOATTACK_SQUARE_QUERIES = 5000
AUTOATTACK_TARGET_CLASSES = 9  # APGD-T and FAB-T: the 9 highest non-true clean logits
# autoattack_fast: targeted APGD towards this many MALT-ranked classes, then Square with this many queries.
AUTOATTACK_FAST_MALT_TARGETS = 3
AUTOATTACK_FAST_SQUARE_QUERIES = 0
# AutoAttack's rand version: EOT draws per gradient.
AUTOATTACK_RAND_EOT_DRAWS = 20


@dataclasses.dataclass(frozen=True)
class Rule:
    """How the registry knows an attack: the check of the fields it uses, whether it draws random numbers (and so
    needs a seed), and whether it runs eagerly only."""
    check: Callable
    uses_noise: Callable = lambda config: False
    eager_only: bool = False


_RULES = {"none": Rule(check=lambda config: None)}


def register(names, rule: Rule):
    """Make `names` valid `AttackConfig.name`s checked by `rule` (called by each attack module)."""
    for name in names:
        _RULES[name] = rule


def registered_names():
    return tuple(_RULES)


def rule_of(name) -> Rule:
    return _RULES[name]


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Settings of one attack.

    ``fgsm`` uses only ``epsilon`` (one step of size epsilon, no random start); ``fgsm_rs`` uses only ``epsilon``
    (random start, one step of 1.25 * epsilon). ``steps``, ``step_size``, ``random_start``, ``restarts`` and
    ``early_stop`` apply to ``pgd`` (L-inf), ``pgd_l2`` and ``cw_inf`` (L-inf PGD on the Carlini-Wagner margin
    ``max_{j != y} z_j - z_y``); ``early_stop`` stops perturbing an example once the model misclassifies it (the
    official RST test code's PGD). For ``pgd_l2``, ``epsilon`` and ``step_size`` are L2 norms of the whole
    per-example perturbation.

    ``cw_l2`` (see `cw_l2_config`): ``epsilon`` is the L2 budget, ``steps`` the Adam iterations per binary-search
    step, ``step_size`` the Adam learning rate, plus ``binary_search_steps``, ``initial_const`` and ``confidence``.

    ``bandits`` (see `bandits_config`): ``epsilon``, ``max_queries`` (per example, two per iteration), ``fd_eta``,
    ``exploration``, ``online_lr``, ``image_lr`` and ``tile_size`` (1 = time prior only; > 1 adds the tiling prior).

    The AutoAttack family (``autoattack``, ``apgd_ce``, ``apgd_dlr``, ``apgd_t``, ``fab_t``, ``square``,
    ``autoattack_rand``): ``epsilon`` (L-inf), ``steps`` the APGD / FAB iterations, ``max_queries`` the Square
    queries, ``eot_draws`` the calls of ``model_fn`` averaged per gradient (EOT).
    """

    name: str = "pgd"
    epsilon: float = 8 / 255
    steps: int = 7
    step_size: float = 2 / 255
    random_start: bool = True
    restarts: int = 1
    early_stop: bool = False
    clip_min: float = 0.0
    clip_max: float = 1.0
    # cw_l2
    binary_search_steps: int = 5
    initial_const: float = 1e-2
    confidence: float = 0.0
    # bandits, square
    max_queries: int = 10_000
    fd_eta: float = 0.1
    exploration: float = 1.0
    online_lr: float = 100.0
    image_lr: float = 0.01
    tile_size: int = 4
    # the APGD attacks
    eot_draws: int = 1
    # autoattack_fast: classes attacked by targeted APGD, best MALT-ranked first
    malt_targets: int = AUTOATTACK_FAST_MALT_TARGETS

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.name not in _RULES:
            raise ValueError(f"AttackConfig.name must be one of {registered_names()}, got {self.name!r}")
        check_real("clip_min", self.clip_min)
        check_real("clip_max", self.clip_max)
        if not self.clip_min < self.clip_max:
            raise ValueError(
                f"AttackConfig.clip_max ({self.clip_max}) must be greater than clip_min ({self.clip_min})")
        if self.name == "none":
            return
        check_real("epsilon", self.epsilon)
        if self.epsilon < 0:
            raise ValueError(f"AttackConfig.epsilon must be >= 0, got {self.epsilon}")
        _RULES[self.name].check(self)

    @property
    def uses_noise(self) -> bool:
        """Whether the attack draws random numbers (and so needs a seed)."""
        return self.name in _RULES and bool(_RULES[self.name].uses_noise(self))

    @property
    def eager_only(self) -> bool:
        return self.name in _RULES and _RULES[self.name].eager_only


def check_real(field, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"AttackConfig.{field} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"AttackConfig.{field} must be finite, got {value}")


def check_positive(field, value):
    check_real(field, value)
    if value <= 0:
        raise ValueError(f"AttackConfig.{field} must be > 0, got {value}")


def check_int(field, value, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"AttackConfig.{field} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"AttackConfig.{field} must be >= {minimum}, got {value}")


def check_bool(field, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"AttackConfig.{field} must be a bool, got {value!r}")


def pgd_eval_config(epsilon, protocol="standard", steps=PGD_EVAL_STEPS, restarts=1) -> AttackConfig:
    """Evaluation PGD (L-inf) at ``epsilon``. ``standard``: random start, step epsilon / 4, every example runs all
    ``steps``. ``paper``: the official RST test code's PGD: random start, step 2/255 at every epsilon, and an example
    stops being perturbed once the model misclassifies it."""
    if protocol not in PGD_PROTOCOLS:
        raise ValueError(f"pgd protocol must be one of {PGD_PROTOCOLS}, got {protocol!r}")
    paper = protocol == "paper"
    return AttackConfig(name="pgd", epsilon=epsilon, steps=steps, restarts=restarts, random_start=True,
                        step_size=PGD_PAPER_STEP_SIZE if paper else PGD_EVAL_STEP_RATIO * epsilon, early_stop=paper)


def fgsm_rs_config(epsilon) -> AttackConfig:
    """FGSM with random start (Wong et al. 2020): uniform start in the epsilon-ball, one step of 1.25 * epsilon,
    projection back to the ball."""
    return AttackConfig(name="fgsm_rs", epsilon=epsilon, steps=1, step_size=FGSM_RS_STEP_RATIO * epsilon,
                        random_start=True, restarts=1)


def cw_l2_config(epsilon, steps=1000, binary_search_steps=5, learning_rate=5e-3, initial_const=1e-2) -> AttackConfig:
    """Carlini & Wagner L2 with the defaults of cleverhans 4.0.0 (1000 Adam iterations per binary-search step, 5
    binary-search steps, learning rate 5e-3, initial constant 1e-2, confidence 0), evaluated at L2 radius
    ``epsilon``."""
    return AttackConfig(name="cw_l2", epsilon=epsilon, steps=steps, step_size=learning_rate, random_start=False,
                        binary_search_steps=binary_search_steps, initial_const=initial_const)


def bandits_config(epsilon=8 / 255, max_queries=10_000, tile_size=4) -> AttackConfig:
    """Bandits-TD (Ilyas, Engstrom & Madry 2019, "Prior convictions"), L-inf.

    Step parameters are those of the paper's L-inf setting: finite-difference probe ``fd_eta`` 0.1, exploration
    1.0, online (prior) learning rate 100, image learning rate 0.01, and a 10,000 query budget. The paper attacks
    ImageNet; ``tile_size`` 4 (an 8x8 prior on 32x32 CIFAR images) is our choice for small images.
    """
    return AttackConfig(name="bandits", epsilon=epsilon, random_start=False, max_queries=max_queries, fd_eta=0.1,
                        exploration=1.0, online_lr=100.0, image_lr=0.01, tile_size=tile_size)


def autoattack_config(epsilon=8 / 255) -> AttackConfig:
    """Standard AutoAttack at L-inf radius ``epsilon``: 100 APGD / FAB iterations, 5000 Square queries."""
    return AttackConfig(name="autoattack", epsilon=epsilon, steps=AUTOATTACK_STEPS, random_start=False,
                        max_queries=AUTOATTACK_SQUARE_QUERIES)


def autoattack_fast_config(epsilon=8 / 255, malt_targets=AUTOATTACK_FAST_MALT_TARGETS,
                           square_queries=AUTOATTACK_FAST_SQUARE_QUERIES) -> AttackConfig:
    """AutoAttack at a fraction of its cost: APGD-CE, then targeted APGD towards the `malt_targets` best
    MALT-ranked classes (100 iterations each), then Square with `square_queries` queries (none if 0)."""
    return AttackConfig(name="autoattack_fast", epsilon=epsilon, steps=AUTOATTACK_STEPS, random_start=False,
                        max_queries=square_queries, malt_targets=malt_targets)


def fab_t_config(epsilon=8 / 255) -> AttackConfig:
    """FAB-T at L-inf radius ``epsilon`` as standard AutoAttack runs it: 100 iterations for each of the 9 highest
    non-true clean logits, one run from the clean image."""
    return AttackConfig(name="fab_t", epsilon=epsilon, steps=AUTOATTACK_STEPS, random_start=False)


def autoattack_rand_config(epsilon=8 / 255, eot_draws=AUTOATTACK_RAND_EOT_DRAWS) -> AttackConfig:
    """AutoAttack's ``rand`` version at L-inf radius ``epsilon``: APGD-CE and APGD-DLR, 100 iterations, one run
    each, EOT over 20 draws."""
    return AttackConfig(name="autoattack_rand", epsilon=epsilon, steps=AUTOATTACK_STEPS, random_start=True,
                        eot_draws=eot_draws)
