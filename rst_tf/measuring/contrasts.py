"""Differences between settings measured over several seeds on one test set, with a 95% interval, and a verdict.

A contrast is a weighted sum of per-example {0, 1} results (`weight * correct`), one sum per seed, all on the same
test examples: e.g. RST minus dense AT is [(+1, rst_correct), (-1, dense_correct)] for each seed. With d[s, i] the
contrast of seed s on example i (S seeds, n examples), the estimate is the mean of d and its variance has two parts:

    seed part  v_seed = var_s(mean_i d[s, i]) / S    how much the seeds disagree (sample variance, S - 1 dof)
    test part  v_test = var_i(mean_s d[s, i]) / n    how much another test sample would move the seed mean

The interval is estimate ± sqrt(t_seed² v_seed + t_test² v_test), each part's Student quantile at its own degrees
of freedom (S - 1 for the seeds, n - 1 for the examples), so seeds that disagree give a wide interval and agreeing
seeds one close to the test-set interval. A single t at the Welch-Satterthwaite dof of v_seed + v_test covered only
about 92.6% at 3 seeds whose spread is 3x the test standard error (its dof grows whenever the few seeds happen to
agree); this rule covers about 95% there (tests/test_contrasts.py simulates it). The seed means also carry each
seed's own image-level noise, which v_test counts too: the interval errs on the wide side when test sampling
dominates. `dof` reports the Welch-Satterthwaite degrees of freedom of the sum, for information. Examples are
paired across the terms (the same images), so models that fail on the same images give a narrower interval than
independent samples would.
"""
import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
VERDICTS = ("holds", "does not hold", "undecided at this scale")


def pack(correct):
    """A {0, 1} per-example array as a string of '0'/'1' (compact in JSON)."""
    return "".join("1" if value else "0" for value in np.asarray(correct).ravel())


def unpack(text):
    """The {0, 1} int array of `pack`."""
    return np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int32) - ord("0")


def contrast(terms_by_seed, offset=0.0, confidence=CONFIDENCE):
    """The interval of mean(sum of weight * correct) - offset over seeds and test examples.

    `terms_by_seed`: one list per seed of (weight, per-example {0, 1} array or `pack` string); every array has the
    same length (the same test examples, in the same order). Returns {estimate, interval: [low, high], per_seed,
    seed_sd, test_se, dof, num_seeds, num_examples}; with one seed the seed part is unknown and the interval is
    [nan, nan].
    """
    rows = []
    for terms in terms_by_seed:
        row = None
        for weight, correct in terms:
            values = unpack(correct) if isinstance(correct, str) else np.asarray(correct, np.float64)
            row = weight * values if row is None else row + weight * values
        rows.append(row - offset)
    if not rows:
        raise ValueError("a contrast needs at least one seed")
    lengths = {row.shape[0] for row in rows}
    if len(lengths) != 1:
        raise ValueError(f"every seed's terms must cover the same test examples, got lengths {sorted(lengths)}")
    values = np.stack(rows)
    num_seeds, num_examples = values.shape
    per_seed = values.mean(axis=1)
    estimate = float(values.mean())
    v_test = float(values.mean(axis=0).var(ddof=1) / num_examples) if num_examples > 1 else 0.0
    result = {"estimate": estimate, "per_seed": [float(v) for v in per_seed], "num_seeds": num_seeds,
              "num_examples": num_examples, "test_se": math.sqrt(v_test)}
    if num_seeds < 2:
        return dict(result, interval=[float("nan"), float("nan")], seed_sd=float("nan"), dof=float("nan"))
    seed_variance = float(per_seed.var(ddof=1))
    v_seed = seed_variance / num_seeds
    quantile = lambda dof: float(stats.t.ppf(0.5 + confidence / 2, dof))  # noqa: E731
    test_dof = num_examples - 1 if num_examples > 1 else float("inf")
    # Each part's half-width at its own degrees of freedom, added in quadrature (see the module docstring).
    half = math.sqrt(quantile(num_seeds - 1) ** 2 * v_seed + quantile(test_dof) ** 2 * v_test)
    total = v_seed + v_test
    dof = total ** 2 / (v_seed ** 2 / (num_seeds - 1) + (v_test ** 2 / test_dof)) if total > 0 else float("inf")
    return dict(result, interval=[estimate - half, estimate + half], seed_sd=math.sqrt(seed_variance), dof=dof)


def verdict(interval, direction, margin=0.0):
    """'holds' when the whole interval lies on the claim's side of `margin`, 'does not hold' when it lies wholly
    on the other side, else 'undecided at this scale'. `direction` '>' (the claim: contrast > margin) or '<'."""
    low, high = interval
    if direction not in (">", "<"):
        raise ValueError(f"direction must be '>' or '<', got {direction!r}")
    if math.isnan(low) or math.isnan(high):
        return VERDICTS[2]
    if direction == "<":
        low, high, margin = -high, -low, -margin
    if low > margin:
        return VERDICTS[0]
    if high < margin:
        return VERDICTS[1]
    return VERDICTS[2]


def mean_accuracy(correct_by_seed, confidence=CONFIDENCE):
    """The interval of one setting's accuracy over its seeds (a contrast of one term): error bars of the figures."""
    return contrast([[(1.0, correct)] for correct in correct_by_seed], confidence=confidence)
