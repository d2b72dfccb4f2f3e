"""Our AutoAttack and its components against golden verdicts of the reference implementation.

tests/fixtures/autoattack_golden.json holds, for the fixture model (tests/fixtures/autoattack_fixture.keras, a small
adversarially trained CIFAR-10 CNN) on 300 CIFAR-10 test images, the per-example verdicts of torchattacks' standard
AutoAttack components run through a torch <-> TensorFlow bridge (bench/reference_autoattack.py). Ours must agree on
at least 97% of the examples and may be stronger than the reference, never weaker by more than one point.
"""
import hashlib
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks, data

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
MIN_AGREEMENT = 0.97
MAX_EXCESS_ACCURACY = 0.01
# autoattack_fast may leave robust at most this fraction of the examples that standard autoattack breaks.
MAX_FAST_MISSES = 0.003


@pytest.fixture(scope="module")
def golden():
    with open(os.path.join(FIXTURES, "autoattack_golden.json")) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def fixture_model(golden):
    path = os.path.join(FIXTURES, "autoattack_fixture.keras")
    with open(path, "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == golden["model_sha256"], "regenerate the golden file"
    model = keras.saving.load_model(path)
    return lambda images: model(images, training=False)


@pytest.fixture(scope="module")
def fixture_images(golden, cifar10_path):
    """The golden file's test images: indices into the whole CIFAR-10 test split in the loader's order."""
    splits = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=0)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in data.eval_batches(splits.test, 2000)])
    indices = np.asarray(golden["test_indices"])
    images, labels = np.concatenate(images)[indices], np.concatenate(labels)[indices]
    np.testing.assert_array_equal(labels, golden["labels"], err_msg="the test split's order or labels changed")
    assert int(np.round(images * 255).astype(np.int64).sum()) == golden["pixel_sum"], "the test images changed"
    return tf.constant(images), tf.constant(labels)


@pytest.fixture(scope="module")
def verdicts_of(golden, fixture_model, fixture_images):
    """name -> our verdicts on the golden images, each attack run once per module."""
    cache = {}

    def verdicts(name):
        if name not in cache:
            images, labels = fixture_images
            cache[name] = our_verdicts(fixture_model, images, labels, our_config(name, golden["epsilon_255"] / 255))
        return cache[name]

    return verdicts


def our_config(name, epsilon):
    if name == "autoattack_fast":
        return attacks.autoattack_fast_config(epsilon)
    if name == "autoattack":
        return attacks.autoattack_config(epsilon)
    if name == "fab_t":
        return attacks.fab_t_config(epsilon)
    return attacks.AttackConfig(name=name, epsilon=epsilon, steps=attacks.AUTOATTACK_STEPS,
                                max_queries=attacks.AUTOATTACK_SQUARE_QUERIES, random_start=True)


def our_verdicts(model_fn, images, labels, config):
    """1 where the model classifies both the clean and the attacked image correctly. Only the examples classified
    correctly are attacked (an example misclassified already is broken whatever the attack does)."""
    clean = np.argmax(model_fn(images), axis=-1) == labels.numpy()
    rows = np.flatnonzero(clean)
    images, labels = tf.gather(images, rows), tf.gather(labels, rows)
    run = lambda x, y: attacks.generate(model_fn, x, y, config, tf.constant([0, 0], tf.int64))  # noqa: E731
    if config.name not in attacks.EAGER_ONLY_ATTACKS:
        run = tf.function(run)
    adv = run(images, labels)
    assert float(tf.reduce_max(tf.abs(adv - images))) <= config.epsilon + 1e-6
    verdicts = np.zeros(clean.shape, int)
    verdicts[rows] = np.argmax(model_fn(adv), axis=-1) == labels.numpy()
    return verdicts


def test_golden_file_describes_a_useful_fixture(golden):
    reference = golden["results"]
    assert golden["complete"] and golden["epsilon_255"] == 8
    assert len(golden["test_indices"]) == len(reference["autoattack"]["correct"]) == 300
    # A fair share survives AutoAttack, so robust and broken verdicts are both checked.
    assert 0.2 <= reference["autoattack"]["accuracy"] <= 0.6
    # The reference breaks every example the model misclassifies already (ours are not attacked).
    natural = np.asarray(reference["natural"]["correct"])
    for name in ("autoattack", "apgd_ce", "fab_t", "square"):
        assert not np.any(np.asarray(reference[name]["correct"]) > natural), name


@pytest.mark.parametrize("name", ["autoattack", "apgd_ce", "fab_t", "square"])
def test_verdicts_match_the_reference(name, golden, verdicts_of):
    reference = np.asarray(golden["results"][name]["correct"])
    ours = verdicts_of(name)
    agreement = float(np.mean(ours == reference))
    summary = (f"{name}: ours {ours.mean():.3f}, reference {reference.mean():.3f}, agreement {agreement:.3f} "
               f"({int(np.sum(ours > reference))} robust only for us, {int(np.sum(ours < reference))} only for "
               f"the reference)")
    print(summary)
    assert agreement >= MIN_AGREEMENT, summary
    assert ours.mean() <= reference.mean() + MAX_EXCESS_ACCURACY, summary


def test_fast_schedule_breaks_what_the_standard_one_breaks(golden, verdicts_of):
    """Every example standard autoattack breaks, autoattack_fast breaks too, but for at most 0.3% of the examples;
    and it is within the golden check's agreement of the reference."""
    standard, fast = verdicts_of("autoattack"), verdicts_of("autoattack_fast")
    missed = int(np.sum((standard == 0) & (fast == 1)))
    print(f"autoattack_fast {fast.mean():.3f}, autoattack {standard.mean():.3f}; broken by the standard schedule "
          f"only: {missed}, by the fast one only: {int(np.sum((standard == 1) & (fast == 0)))}")
    assert missed <= int(MAX_FAST_MISSES * len(standard)), missed
    reference = np.asarray(golden["results"]["autoattack"]["correct"])
    assert float(np.mean(fast == reference)) >= MIN_AGREEMENT
    assert fast.mean() <= reference.mean() + MAX_EXCESS_ACCURACY
