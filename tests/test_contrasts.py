"""Seed-paired contrasts: the interval against textbook intervals in its two limits, its coverage, the verdicts."""
import math

import numpy as np
import pytest
from scipy import stats

from rst_tf.measuring import contrasts


def test_pack_and_unpack_round_trip():
    correct = np.array([1, 0, 0, 1, 1], np.int32)
    assert contrasts.pack(correct) == "10011"
    np.testing.assert_array_equal(contrasts.unpack("10011"), correct)


def test_identical_seeds_give_the_paired_t_interval_over_images():
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    found = contrasts.contrast([[(1.0, first), (-1.0, second)]] * 3)
    expected = stats.ttest_rel(first, second).confidence_interval(0.95)
    assert found["estimate"] == pytest.approx(np.mean(first - second))
    assert found["interval"] == pytest.approx([expected.low, expected.high], rel=1e-9)
    assert found["seed_sd"] == 0 and found["dof"] == pytest.approx(399)


def test_seeds_that_differ_on_every_image_alike_give_the_t_interval_over_seeds():
    seed_means = [0.1, 0.3, 0.2]
    found = contrasts.contrast([[(1.0, np.full(50, mean))] for mean in seed_means])
    low, high = stats.t.interval(0.95, 2, loc=np.mean(seed_means), scale=stats.sem(seed_means))
    assert found["interval"] == pytest.approx([low, high]) and found["dof"] == pytest.approx(2)
    assert found["per_seed"] == pytest.approx(seed_means)


def test_the_interval_covers_the_true_difference_at_least_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    true_difference, covered, trials = 0.03, 0, 400
    for _ in range(trials):
        # Each seed's models have their own accuracy around the truth; the test images are a fresh sample.
        per_seed = []
        for _ in range(3):
            shift = rng.normal(0, 0.01)
            first = rng.random(300) < 0.30 + true_difference + shift
            second = rng.random(300) < 0.30
            per_seed.append([(1.0, first), (-1.0, second)])
        low, high = contrasts.contrast(per_seed)["interval"]
        covered += low <= true_difference <= high
    assert covered / trials >= 0.95  # each seed on its own images: the rule errs on the wide side


def test_offset_shifts_the_estimate_and_one_seed_has_no_interval():
    found = contrasts.contrast([[(1.0, "1100")]], offset=0.1)
    assert found["estimate"] == pytest.approx(0.4)
    assert all(math.isnan(v) for v in found["interval"])
    assert contrasts.verdict(found["interval"], ">") == "undecided at this scale"


def test_terms_must_cover_the_same_images():
    with pytest.raises(ValueError, match="same test examples"):
        contrasts.contrast([[(1.0, "10")], [(1.0, "101")]])


@pytest.mark.parametrize("interval, direction, margin, expected", [
    ((0.01, 0.05), ">", 0.0, "holds"), ((-0.05, -0.01), ">", 0.0, "does not hold"),
    ((-0.01, 0.05), ">", 0.0, "undecided at this scale"), ((-0.02, 0.01), ">", -0.03, "holds"),
    ((0.01, 0.03), "<", 0.0352, "holds"), ((0.04, 0.06), "<", 0.0352, "does not hold"),
    ((0.02, 0.05), "<", 0.0352, "undecided at this scale")])
def test_verdicts_follow_the_side_of_the_margin(interval, direction, margin, expected):
    assert contrasts.verdict(interval, direction, margin) == expected


def _coverage(num_seeds, spread_ratio, trials, num_examples=400, seed=2):
    """How often the interval covers the true difference when every seed is measured on one shared sample of test
    images and the seeds' own accuracies spread `spread_ratio` times the test standard error of the difference."""
    rng = np.random.default_rng(seed)
    first_accuracy, second_accuracy = 0.30, 0.32
    test_se = math.sqrt((first_accuracy * (1 - first_accuracy) + second_accuracy * (1 - second_accuracy))
                        / num_examples)
    covered = 0
    for _ in range(trials):
        difficulty = rng.random(num_examples)  # shared images: the two models tend to fail on the same ones
        per_seed = []
        for shift in rng.normal(0, spread_ratio * test_se, num_seeds):
            own = lambda: np.where(rng.random(num_examples) < 0.7, difficulty, rng.random(num_examples))  # noqa
            per_seed.append([(1.0, own() < first_accuracy + shift), (-1.0, own() < second_accuracy)])
        low, high = contrasts.contrast(per_seed)["interval"]
        covered += low <= first_accuracy - second_accuracy <= high
    return covered / trials


@pytest.mark.parametrize("num_seeds", [3, 4])
def test_few_seeds_whose_spread_dominates_are_covered_at_least_93_percent(num_seeds):
    assert _coverage(num_seeds, spread_ratio=3.0, trials=1500) >= 0.93


def test_test_sampling_alone_is_covered_at_least_95_percent():
    assert _coverage(3, spread_ratio=0.0, trials=600) >= 0.95
