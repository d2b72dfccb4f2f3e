"""The paper's claims as seed-paired contrasts, each with its 95% interval and a verdict (`measuring.contrasts`).

A claim is a difference between settings (e.g. RST at 20% minus dense AT), formed per seed from the per-example
results on the study's one test set, and a side of a margin that the paper asserts (e.g. > -3 points). Its verdict
is "holds" when the interval lies on the paper's side, "does not hold" when it lies on the other, and "undecided at
this scale" otherwise; no verdict comes from a single seed's difference.
"""
import dataclasses

from rst_tf.measuring import contrasts

LOW_RATIOS = (0.05, 0.2)  # the paper's "5-20%" range
CLOSE_POINTS = 3.0  # "comparable": within this many points
FINETUNE_GAP_POINTS = 3.52  # §5.1: fine-tuned (inherited) RSTs are -0.22 to 3.52 points above vanilla RSTs
CHANCE = 0.1  # a constant classifier on a ten-class task


class Results:
    """Per-example results of a study, by seed: `correct(seed, step, ratio, epsilon)` is a packed '0'/'1' string.

    `steps_by_seed`: {seed: [reproduce.Step]}; `evaluation`: {run_dir: evaluate_runs entry};
    `measured`: {(seed, pgd_protocol): (transfer, r2s)} of `measure`; `epsilons`: the evaluation's
    budgets (in /255), the first being the claims' budget.
    """

    def __init__(self, steps_by_seed, evaluation, measured, epsilons):
        self.steps_by_seed, self.evaluation, self.measured = steps_by_seed, evaluation, measured
        self.epsilon, self.largest_epsilon = f"{epsilons[0]:g}", f"{max(epsilons):g}"
        self.growth = len(epsilons) > 1
        self.seeds = list(steps_by_seed)
        steps = {step.name: step for step in steps_by_seed[self.seeds[0]]}
        self.ratios = tuple(steps["rst"].remaining_ratios)
        self.comparison_ratios = tuple(steps["finetune_inherited"].remaining_ratios)
        self.transfer_ratio = steps["task_b_rst"].remaining_ratios[0]

    def run_dir(self, seed, name, ratio=None):
        step = next(step for step in self.steps_by_seed[seed] if step.name == name)
        if ratio is None:
            return step.run_dirs()[0]
        return step.run_dirs()[list(step.remaining_ratios).index(ratio)]

    def correct(self, seed, name, ratio=None, epsilon=None):
        """Robust results at `epsilon` (a key such as '8'), or natural results when `epsilon` is None."""
        entry = self.evaluation[self.run_dir(seed, name, ratio)]
        return entry["natural_correct"] if epsilon is None else entry["robust_correct"][epsilon]

    def ratios_of(self, name):
        """The remaining ratios of a sweep step."""
        return tuple(next(step for step in self.steps_by_seed[self.seeds[0]] if step.name == name).remaining_ratios)

    def nearest_ratio(self, target):
        return min(self.ratios, key=lambda r: abs(r - target))

    def low_ratios(self):
        """The comparison ratios in the paper's 5-20% range (or the one nearest 10%)."""
        low = [r for r in self.comparison_ratios if LOW_RATIOS[0] <= r <= LOW_RATIOS[1]]
        return low or [min(self.comparison_ratios, key=lambda r: abs(r - 0.1))]


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim: `terms(results, seed, epsilon)` -> [(weight, packed)], compared with `margin` in `direction`."""
    section: str
    text: str
    contrast: str  # the difference in words
    direction: str
    margin: float
    terms: object
    offset: float = 0.0
    protocol: str = ""  # the PGD protocol of the transfer / R2S measurements it rests on, if any


def _mean_over(results, seed, epsilon, name, ratios, weight=1.0):
    return [(weight / len(ratios), results.correct(seed, name, r, epsilon)) for r in ratios]


def _difference(first, second, ratios_of):
    """Terms of mean(first) - mean(second) over the ratios `ratios_of(results)` (None: a single run)."""
    def terms(results, seed, epsilon):
        ratios = ratios_of(results) if ratios_of else [None]
        return (_mean_over(results, seed, epsilon, first, ratios)
                + _mean_over(results, seed, epsilon, second, ratios, -1.0))
    return terms


def _rst_minus_dense(natural=False):
    """Terms of the RST at the ratio nearest 20% minus dense AT (robust, or natural)."""
    def terms(results, seed, epsilon):
        epsilon = None if natural else epsilon
        return [(1.0, results.correct(seed, "rst", results.nearest_ratio(0.2), epsilon)),
                (-1.0, results.correct(seed, "dense_at", None, epsilon))]
    return terms


def _gap_growth(results, seed, epsilon):
    """(RST - natural RTT) at the largest budget minus the same at the claims' budget."""
    largest = results.largest_epsilon
    ratios = list(results.comparison_ratios)
    return (_mean_over(results, seed, largest, "rst", ratios) + _mean_over(results, seed, largest, "rtt_natural",
                                                                           ratios, -1.0)
            + _mean_over(results, seed, epsilon, "rst", ratios, -1.0)
            + _mean_over(results, seed, epsilon, "rtt_natural", ratios))


def _transfer_terms(protocol):
    def terms(results, seed, epsilon):
        cells = results.measured[seed, protocol][0]["correct"]
        size = len(cells)
        return ([(1.0 / (size * (size - 1)), cells[i][j]) for i in range(size) for j in range(size) if i != j]
                + [(-1.0 / size, cells[i][i]) for i in range(size)])
    return terms


def _r2s_terms(protocol):
    def terms(results, seed, epsilon):
        report = results.measured[seed, protocol][1]
        best = max(report["tickets"], key=lambda row: row["attacked"])
        return [(1.0, report["r2s_correct"]["vanilla"]), (-1.0, best["attacked_correct"])]
    return terms


def _r2s_minus_dense(protocol):
    def terms(results, seed, epsilon):
        report = results.measured[seed, protocol][1]
        return [(1.0, report["r2s_correct"]["vanilla"]), (-1.0, results.correct(seed, "dense_at", None, epsilon))]
    return terms


def claim_list(protocols, growth=True):
    """The claims the study decides; transfer and R2S once per PGD protocol in `protocols`, the first of which is
    the protocol of the evaluation (R2S against dense AT is stated under that one only)."""
    low = lambda results: results.low_ratios()  # noqa: E731
    every = lambda results: list(results.comparison_ratios)  # noqa: E731
    found = [
        Claim("§4.2", "RSTs exist: an RST at 20% is robust above chance without any weight training",
              "robust accuracy of the RST at 20% minus 10%", ">", 0.0, lambda r, s, e: [
                  (1.0, r.correct(s, "rst", r.nearest_ratio(0.2), e))], offset=CHANCE),
        Claim("§4.2", "An RST at 20% is close to dense AT in robust accuracy (paper: 2.08 points lower)",
              "RST at 20% minus dense AT, robust", ">", -CLOSE_POINTS / 100, _rst_minus_dense()),
        Claim("§4.2", "An RST at 20% is close to dense AT in natural accuracy (paper: 2.43 points lower)",
              "RST at 20% minus dense AT, natural", ">", -CLOSE_POINTS / 100, _rst_minus_dense(natural=True)),
        Claim("§5.1", "Fine-tuning an RST with its inherited weights adds at most 3.52 points at 5-20%",
              "fine-tuned (inherited) minus RST, mean over 5-20%", "<", FINETUNE_GAP_POINTS / 100,
              _difference("finetune_inherited", "rst", low)),
        Claim("§5.1", "Fine-tuning re-initialised RSTs is comparable or inferior to the RST at 5-20%",
              "fine-tuned (re-init) minus RST, mean over 5-20%", "<", CLOSE_POINTS / 100,
              _difference("finetune_reinit", "rst", low)),
        Claim("§5.1", "Inherited weights fine-tune better than re-initialised ones at 5-20% (RSTs win a better "
              "initialisation)", "fine-tuned (inherited) minus fine-tuned (re-init), mean over 5-20%", ">", 0.0,
              _difference("finetune_inherited", "finetune_reinit", low)),
        Claim("§5.2", "Adversarial RTTs are more robust than RSTs",
              "adversarial RTT minus RST, mean over the compared ratios", ">", 0.0,
              _difference("rtt_adversarial", "rst", every)),
        Claim("§5.2", "RSTs are more robust than natural RTTs", "RST minus natural RTT, mean over the compared ratios",
              ">", 0.0, _difference("rst", "rtt_natural", every)),
    ]
    if growth:
        found.append(Claim("§5.3", "The RST - natural RTT gap grows under a larger ε (Fig. 6; runs searched at the "
                           "claims' ε)", "(RST - natural RTT) at the largest ε minus at the claims' ε", ">", 0.0,
                           _gap_growth))
    found.append(Claim("§6.3", "An adversarial RTT transferred from task A is less robust on task B than an RST "
                       "searched on task B", "RST minus transferred RTT on classes 5-9", ">", 0.0,
                       _task_b))
    for protocol in protocols:
        found += [
            Claim("§6.1", "Adversarial examples transfer poorly between RSTs of different ratios",
                  "mean off-diagonal minus mean diagonal of the transfer matrix", ">", 0.0,
                  _transfer_terms(protocol), protocol=protocol),
            Claim("§6.3", "R2S is more robust than the best single RST under the vanilla attack",
                  "R2S (vanilla) minus the seed's best single ticket", ">", 0.0, _r2s_terms(protocol),
                  protocol=protocol),
        ]
    found.append(Claim("§6.3", "R2S is more robust than dense AT under the vanilla attack (Table 3)",
                       "R2S (vanilla) minus dense AT", ">", 0.0, _r2s_minus_dense(protocols[0]),
                       protocol=protocols[0]))
    return found


def _task_b(results, seed, epsilon):
    return [(1.0, results.correct(seed, "task_b_rst", results.transfer_ratio, epsilon)),
            (-1.0, results.correct(seed, "task_b_rtt", results.transfer_ratio, epsilon))]


def claims(results, protocols):
    """One row per claim: {section, claim, contrast, rule, estimate, interval, per_seed, seed_sd, test_se, dof,
    num_seeds, protocol, verdict}; differences are accuracy fractions (in [-1, 1])."""
    rows = []
    for claim in claim_list(protocols, growth=results.growth):
        found = contrasts.contrast([claim.terms(results, seed, results.epsilon) for seed in results.seeds],
                                   offset=claim.offset)
        rule = f"{claim.contrast} {claim.direction} {100 * claim.margin:+g} points"
        rows.append({"section": claim.section, "claim": claim.text, "contrast": claim.contrast, "rule": rule,
                     "estimate": found["estimate"], "interval": found["interval"], "per_seed": found["per_seed"],
                     "seed_sd": found["seed_sd"], "test_se": found["test_se"], "dof": found["dof"],
                     "num_seeds": found["num_seeds"], "protocol": claim.protocol,
                     "verdict": contrasts.verdict(found["interval"], claim.direction, claim.margin)})
    return rows
