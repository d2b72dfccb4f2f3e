"""APGD-CE / APGD-DLR with EOT (rst_tf.apgd) and AutoAttack's rand version, against the small Keras model of
tests/template_model.py."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks
from rst_tf.attacks import apgd
from rst_tf.attacks import AttackConfig
from template_model import IMAGE_SHAPE, NUM_CLASSES, train_template_model
from template_model import accuracy as _accuracy
from template_model import logits_fn as _logits_fn

# At 8/255 PGD and APGD leave about half of the examples, so comparisons between attacks mean something.
EPSILON = 8 / 255
STEPS = 10
SEED = (1, 2)


@pytest.fixture(scope="module")
def trained():
    """(model, test_images, test_labels): see tests/template_model.py."""
    model, test_images, test_labels = train_template_model(128)
    assert _accuracy(_logits_fn(model), test_images, test_labels) >= 0.97
    return model, test_images, test_labels


def _config(name, **overrides):
    fields = dict(name=name, epsilon=EPSILON, steps=STEPS)
    fields.update(overrides)
    return AttackConfig(**fields)


def _generate(logits_fn, images, labels, config, seed=SEED):
    return attacks.generate(logits_fn, images, labels, config, tf.constant(seed, tf.int64)).numpy()


def _assert_in_ball_and_box(adversarial, images):
    assert adversarial.shape == images.shape and adversarial.dtype == np.float32
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    assert np.abs(adversarial - images).max() <= EPSILON + 1e-6


def test_checkpoints_follow_the_paper():
    assert apgd.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd.checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]


def test_dlr_loss_matches_its_definition():
    logits = tf.constant([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    # Label 0 (top): -(3 - 2) / (3 - 1); label 1: -(1 - 3) / (3 - 1).
    np.testing.assert_allclose(apgd.dlr_loss(logits, tf.constant([0, 1])).numpy(), [-0.5, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="3 classes"):
        apgd.dlr_loss(tf.zeros([1, 2]), tf.constant([0]))


@pytest.mark.parametrize("name", ["apgd_ce", "apgd_dlr"])
def test_apgd_lowers_accuracy_stays_in_ball_and_is_seeded(trained, name):
    model, images, labels = trained
    logits_fn = _logits_fn(model)
    adversarial = _generate(logits_fn, images, labels, _config(name))
    _assert_in_ball_and_box(adversarial, images)
    assert _accuracy(logits_fn, adversarial, labels) <= _accuracy(logits_fn, images, labels) - 0.3
    np.testing.assert_array_equal(adversarial, _generate(logits_fn, images, labels, _config(name)))
    assert not np.array_equal(adversarial, _generate(logits_fn, images, labels, _config(name), seed=(1, 3)))


def test_apgd_ce_is_at_least_as_strong_as_art(trained):
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    model, images, labels = trained
    logits_fn = _logits_fn(model)
    classifier = TensorFlowV2Classifier(
        model=lambda inputs, training=False: logits_fn(inputs), nb_classes=NUM_CLASSES, input_shape=IMAGE_SHAPE,
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True), channels_first=False,
        clip_values=(0.0, 1.0), preprocessing=None,
    )
    art_apgd = AutoProjectedGradientDescent(
        estimator=classifier, norm=np.inf, eps=EPSILON, eps_step=2 * EPSILON, max_iter=STEPS, targeted=False,
        nb_random_init=1, batch_size=len(images), loss_type="cross_entropy", verbose=False,
    )
    np.random.seed(0)  # ART's random start
    art_accuracy = _accuracy(logits_fn, art_apgd.generate(images, np.eye(NUM_CLASSES)[labels]), labels)
    accuracy = _accuracy(logits_fn, _generate(logits_fn, images, labels, _config("apgd_ce")), labels)
    assert art_accuracy < 0.9, "epsilon too small for the comparison to mean anything"
    assert accuracy <= art_accuracy + 2 / len(images)


def _two_models(model):
    """Two fixed models: the trained one and the trained one on mirrored images."""
    logits_fn = _logits_fn(model)
    return logits_fn, lambda images: logits_fn(tf.reverse(images, axis=[2]))


def test_eot_draws_average_the_gradients_of_separate_calls(trained):
    model, images, labels = trained
    images, labels = images[:32], labels[:32]
    first, second = _two_models(model)
    calls = []

    def alternating(x):
        calls.append(None)
        return (first if len(calls) % 2 else second)(x)

    both = lambda x: tf.stack([first(x), second(x)])  # rank-3 logits: one call, the loss averaged over both
    steps = 5
    drawn = apgd.apgd(alternating, images, labels, EPSILON, steps, "ce", eot_draws=2, seed=SEED).numpy()
    # The clean check, the start and every iteration: eot_draws calls each.
    assert len(calls) == 2 * (steps + 2)
    stacked = apgd.apgd(both, images, labels, EPSILON, steps, "ce", eot_draws=1, seed=SEED).numpy()
    # Float rounding can flip the sign of a near-zero gradient entry.
    assert np.mean(np.abs(drawn - stacked) > 1e-6) < 1e-3


def _smoothed(logits_fn, sigma):
    """A randomised model: Gaussian input noise from an unseeded op, new on every call."""
    return lambda images: logits_fn(images + tf.random.normal(tf.shape(images), stddev=sigma))


def _smoothed_accuracy(logits_fn, images, labels, sigma, draws=64):
    noise = tf.random.stateless_normal((draws,) + images.shape, seed=[5, 5], stddev=sigma)
    logits = tf.reduce_mean(tf.stack([logits_fn(images + noise[i]) for i in range(draws)]), axis=0)
    return _accuracy(lambda _: logits, images, labels)


def test_eot_draws_strengthen_apgd_on_a_randomised_model_and_trace(trained):
    model, images, labels = trained
    sigma = 0.3
    logits_fn = _logits_fn(model)
    randomised = _smoothed(logits_fn, sigma)
    accuracy = {}
    for draws in (1, 8):
        config = _config("apgd_ce", eot_draws=draws, steps=20)
        traced = tf.function(lambda x, y, seed: attacks.generate(randomised, x, y, config, seed), autograph=False)
        adversarial = traced(images, labels, tf.constant(SEED, tf.int64)).numpy()
        _assert_in_ball_and_box(adversarial, images)
        accuracy[draws] = _smoothed_accuracy(logits_fn, adversarial, labels, sigma)
    assert accuracy[8] <= accuracy[1] - 0.1, accuracy


def test_traced_matches_eager(trained):
    model, images, labels = trained
    logits_fn = _logits_fn(model)
    config = _config("autoattack_rand", steps=5)
    traced = tf.function(lambda x, y, seed: attacks.generate(logits_fn, x, y, config, seed), autograph=False)
    graph = traced(images, labels, tf.constant(SEED, tf.int64)).numpy()
    eager = _generate(logits_fn, images, labels, config)
    # Eager and graph kernels round differently; a flipped gradient sign changes the rest of that example's run.
    differing = np.any(np.abs(graph - eager) > 1e-6, axis=(1, 2, 3))
    assert differing.mean() <= 0.1, differing.mean()
    assert abs(_accuracy(logits_fn, graph, labels) - _accuracy(logits_fn, eager, labels)) <= 2 / len(images)


def test_autoattack_rand_is_no_weaker_than_apgd_ce(trained):
    model, images, labels = trained
    logits_fn = _logits_fn(model)
    rand = _generate(logits_fn, images, labels, _config("autoattack_rand"))
    _assert_in_ball_and_box(rand, images)
    correct_rand = np.argmax(logits_fn(rand), axis=-1) == labels
    correct_ce = np.argmax(logits_fn(_generate(logits_fn, images, labels, _config("apgd_ce"))), axis=-1) == labels
    # Same seed: the APGD-CE stage is apgd_ce; APGD-DLR only replaces examples it fools.
    assert not np.any(correct_rand & ~correct_ce)
    assert correct_rand.mean() < correct_ce.mean(), "APGD-DLR fooled nothing APGD-CE missed"
    # Nothing left for APGD-DLR: the model is not called on an empty batch.
    def non_empty(x):
        tf.debugging.assert_positive(tf.shape(x)[0], message="model called on an empty batch")
        return logits_fn(x)

    large = _generate(non_empty, images[:16], labels[:16], _config("autoattack_rand", epsilon=0.5, steps=3))
    assert _accuracy(logits_fn, large, labels[:16]) == 0.0


def test_autoattack_rand_config_and_settings():
    config = attacks.autoattack_rand_config()
    config.validate()
    assert (config.name, config.epsilon, config.steps, config.eot_draws) == ("autoattack_rand", 8 / 255, 100, 20)
    assert config.uses_noise and "autoattack_rand" not in attacks.EAGER_ONLY_ATTACKS
    settings = attacks.autoattack_rand_settings(config)
    assert [c["name"] for c in settings["components"]] == ["APGD-CE", "APGD-DLR"]
    assert all(c["eot_draws"] == 20 and c["max_iter"] == 100 for c in settings["components"])
    assert settings["standard_budgets"]
    assert not attacks.autoattack_rand_settings(dataclasses.replace(config, eot_draws=1))["standard_budgets"]


@pytest.mark.parametrize("name", ["apgd_ce", "apgd_dlr", "autoattack_rand"])
@pytest.mark.parametrize("field, value", [("eot_draws", 0), ("eot_draws", 2.0), ("steps", 0)])
def test_validate_names_the_bad_field(name, field, value):
    config = dataclasses.replace(_config(name), **{field: value})
    with pytest.raises(ValueError, match=rf"AttackConfig\.{field}\b"):
        config.validate()
