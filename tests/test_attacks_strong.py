"""Stronger evaluation attacks (cw_inf, cw_l2, bandits, autoattack) against a
small Keras model trained here on synthetic 8x8x3 images."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks
from rst_tf.attacks import AttackConfig
from template_model import train_template_model
from template_model import accuracy as _accuracy
from template_model import logits_fn as _logits_fn

EPSILON = 12 / 255
L2_EPSILON = 0.5
SEED = (1, 2)
# The slower attacks (cw_l2, autoattack, bandits) run on the first examples only.
FEW = 48
FEW_CW = 16


@pytest.fixture(scope="module")
def trained():
    """(model, test_images, test_labels): see tests/template_model.py."""
    model, test_images, test_labels = train_template_model(128)
    assert _accuracy(_logits_fn(model), test_images, test_labels) >= 0.97
    return model, test_images, test_labels


def _config(name):
    if name == "cw_inf":
        return AttackConfig(name="cw_inf", epsilon=EPSILON, steps=10, step_size=EPSILON / 4)
    if name == "cw_l2":
        return attacks.cw_l2_config(L2_EPSILON, steps=40, binary_search_steps=3, learning_rate=0.05, initial_const=1.0)
    if name == "bandits":
        # tile_size 1 (time prior only): the synthetic images have no spatial
        # structure for the tiling prior to exploit.
        return attacks.bandits_config(EPSILON, max_queries=400, tile_size=1)
    if name == "autoattack":
        return dataclasses.replace(attacks.autoattack_config(EPSILON), steps=10, max_queries=100)
    if name == "autoattack_fast":
        return dataclasses.replace(attacks.autoattack_fast_config(EPSILON, malt_targets=2, square_queries=100),
                                   steps=10)
    if name == "fab_t":
        return dataclasses.replace(attacks.fab_t_config(EPSILON), steps=10)
    raise AssertionError(name)


def _generate(logits_fn, images, labels, config, seed=SEED):
    seed = tf.constant(seed, tf.int64)
    if config.name == "bandits":
        # Traced for speed: eager loop iterations are slow.
        traced = tf.function(lambda x, y, s: attacks.generate(logits_fn, x, y, config, s), autograph=False)
        return traced(images, labels, seed).numpy()
    return attacks.generate(logits_fn, images, labels, config, seed).numpy()


def _assert_in_ball_and_box(adversarial, images, config):
    assert adversarial.shape == images.shape and adversarial.dtype == np.float32
    assert adversarial.min() >= config.clip_min and adversarial.max() <= config.clip_max
    perturbation = (adversarial - images).reshape(len(images), -1)
    if config.name == "cw_l2":
        assert np.linalg.norm(perturbation, axis=1).max() <= config.epsilon * (1 + 1e-5)
    else:
        assert np.abs(perturbation).max() <= config.epsilon + 1e-6


@pytest.mark.parametrize("name", ["cw_inf", "cw_l2", "bandits"])
def test_attack_lowers_accuracy_and_stays_in_ball(trained, name):
    model, images, labels = trained
    few = FEW_CW if name == "cw_l2" else FEW
    images, labels = images[:few], labels[:few]
    config = _config(name)
    logits_fn = _logits_fn(model)
    adversarial = _generate(logits_fn, images, labels, config)
    _assert_in_ball_and_box(adversarial, images, config)
    assert _accuracy(logits_fn, adversarial, labels) <= _accuracy(logits_fn, images, labels) - 0.3


def test_cw_inf_more_steps_is_not_weaker_and_traces(trained):
    model, images, labels = trained
    logits_fn = _logits_fn(model)
    short = dataclasses.replace(_config("cw_inf"), steps=3)
    accuracy = {
        steps: _accuracy(
            logits_fn, _generate(logits_fn, images, labels, dataclasses.replace(short, steps=steps)), labels
        )
        for steps in (3, 20)
    }
    assert accuracy[20] <= accuracy[3] + 0.02
    assert accuracy[3] > 0.05, "epsilon too large for the comparison to mean anything"
    traced = tf.function(lambda x, y, seed: attacks.generate(logits_fn, x, y, short, seed), autograph=False)
    np.testing.assert_allclose(
        traced(images, labels, tf.constant(SEED, tf.int64)).numpy(),
        _generate(logits_fn, images, labels, short),
        rtol=0,
        atol=1e-6,
    )


def test_cw_inf_ascends_the_margin_not_the_cross_entropy(trained):
    model, images, labels = trained
    logits_fn = _logits_fn(model)
    config = dataclasses.replace(_config("cw_inf"), steps=3, random_start=False)
    margin = dataclasses.replace(config, name="cw_inf")
    cross_entropy = dataclasses.replace(config, name="pgd")
    assert not np.array_equal(
        _generate(logits_fn, images, labels, margin), _generate(logits_fn, images, labels, cross_entropy)
    )


def _forward_only(logits_fn):
    """logits_fn whose backward pass raises: any gradient through it fails."""

    @tf.custom_gradient
    def no_backward(x):
        def gradient(upstream):
            raise AssertionError("a gradient was computed through the model")

        return tf.identity(x), gradient

    return lambda images: logits_fn(no_backward(images))


def test_forward_only_model_does_detect_gradients(trained):
    model, images, labels = trained
    with pytest.raises(AssertionError, match="gradient was computed"):
        config = dataclasses.replace(_config("cw_inf"), steps=1)
        _generate(_forward_only(_logits_fn(model)), images[:4], labels[:4], config)


def test_bandits_uses_no_gradient(trained):
    model, images, labels = trained
    images, labels = images[:FEW], labels[:FEW]
    logits_fn = _forward_only(_logits_fn(model))
    config = _config("bandits")
    adversarial = _generate(logits_fn, images, labels, config)
    np.testing.assert_array_equal(adversarial, _generate(_logits_fn(model), images, labels, config))
    _assert_in_ball_and_box(adversarial, images, config)
    assert _accuracy(logits_fn, adversarial, labels) <= _accuracy(logits_fn, images, labels) - 0.3
    # Eagerly (a short budget: eager iterations are slow), same result as traced.
    short = dataclasses.replace(config, max_queries=20)
    eager = attacks.generate(logits_fn, images, labels, short, tf.constant(SEED, tf.int64)).numpy()
    # Float rounding differs between eager and graph kernels and can flip the
    # sign of a near-zero prior entry, so allow a few differing pixels.
    assert np.mean(eager != _generate(logits_fn, images, labels, short)) < 1e-3


def test_bandits_is_seeded_and_respects_the_query_budget(trained):
    model, images, labels = trained
    images, labels = images[:FEW], labels[:FEW]
    logits_fn = _logits_fn(model)
    config = dataclasses.replace(_config("bandits"), max_queries=40)
    first = _generate(logits_fn, images, labels, config, seed=(7, 11))
    np.testing.assert_array_equal(first, _generate(logits_fn, images, labels, config, seed=(7, 11)))
    assert not np.array_equal(first, _generate(logits_fn, images, labels, config, seed=(7, 12)))
    # Two queries per iteration: a budget of 3 allows one step of image_lr.
    one_step = dataclasses.replace(config, max_queries=3)
    moved = np.abs(_generate(logits_fn, images, labels, one_step) - images)
    assert moved.max() <= config.image_lr + 1e-6 and moved.max() > 0


def test_eager_only_attacks_refuse_to_be_traced(trained):
    model, images, labels = trained
    logits_fn = _logits_fn(model)
    for name in attacks.EAGER_ONLY_ATTACKS:
        traced = tf.function(lambda x, y: attacks.generate(logits_fn, x, y, _config(name), SEED))
        with pytest.raises(RuntimeError, match="eagerly"):
            traced(images[:4], labels[:4])


def test_cw_l2_keeps_only_results_within_epsilon(trained):
    model, images, labels = trained
    images, labels = images[:4], labels[:4]
    logits_fn = _logits_fn(model)
    tiny = dataclasses.replace(_config("cw_l2"), epsilon=1e-3)
    np.testing.assert_array_equal(_generate(logits_fn, images, labels, tiny), images)


def test_autoattack_settings_describe_the_schedule():
    settings = attacks.autoattack_settings(attacks.autoattack_config(8 / 255), num_classes=10)
    assert "library" not in settings and settings["version"] == "standard"
    assert [c["name"] for c in settings["components"]] == ["APGD-CE", "APGD-T", "FAB-T", "Square"]
    apgd_ce, apgd_t, fab_t, square = settings["components"]
    assert apgd_ce["max_iter"] == apgd_t["max_iter"] == fab_t["max_iter"] == 100
    assert apgd_t["target_classes"] == fab_t["target_classes"] == 9 and fab_t["implementation"] == "rst_tf.attacks.fab"
    assert apgd_ce["implementation"] == apgd_t["implementation"] == "rst_tf.attacks.apgd"
    assert apgd_ce["initial_step_size"] == pytest.approx(16 / 255) and apgd_ce["momentum"] == 0.75
    assert square["n_queries"] == 5000 and square["p_init"] == 0.8
    assert all(c["restarts"] == 1 for c in settings["components"])
    assert settings["standard_budgets"]
    assert not attacks.autoattack_settings(_config("autoattack"), 4)["standard_budgets"]
    assert attacks.autoattack_settings(_config("autoattack"), 4)["components"][1]["target_classes"] == 3
    assert attacks.config.AUTOATTACK_TARGET_CLASSES == attacks.fab.STANDARD_TARGET_CLASSES


def test_autoattack_lowers_accuracy_keeps_only_misclassified_results_and_beats_its_first_stage(trained):
    model, images, labels = trained
    images, labels = images[:FEW], labels[:FEW]
    logits_fn = _logits_fn(model)
    adversarial = _generate(logits_fn, images, labels, _config("autoattack"))
    _assert_in_ball_and_box(adversarial, images, _config("autoattack"))
    assert _accuracy(logits_fn, adversarial, labels) <= _accuracy(logits_fn, images, labels) - 0.3
    changed = np.any(adversarial != images, axis=(1, 2, 3))
    wrong = np.argmax(logits_fn(adversarial), axis=-1) != labels
    assert changed.any() and np.all(wrong[changed])
    first_stage = dataclasses.replace(_config("autoattack"), name="apgd_ce")
    assert _accuracy(logits_fn, adversarial, labels) <= _accuracy(
        logits_fn, _generate(logits_fn, images, labels, first_stage), labels) + 2 / FEW


def test_autoattack_fast_reports_progress_and_is_as_strong_as_the_standard_schedule(trained):
    model, images, labels = trained
    images, labels = images[:FEW], labels[:FEW]
    logits_fn = _logits_fn(model)
    reported = []
    adversarial = attacks.generate(logits_fn, images, labels, _config("autoattack_fast"), tf.constant(SEED, tf.int64),
                                   progress=lambda component, left: reported.append((component, left))).numpy()
    _assert_in_ball_and_box(adversarial, images, _config("autoattack_fast"))
    assert [name for name, _ in reported][0] == "APGD-CE" and reported[-1][0] == "done"
    assert all(later <= earlier for (_, earlier), (_, later) in zip(reported, reported[1:]))
    fast = np.argmax(logits_fn(adversarial), axis=-1) == labels
    assert reported[-1][1] == int(fast.sum())
    standard = np.argmax(logits_fn(_generate(logits_fn, images, labels, _config("autoattack"))), axis=-1) == labels
    assert np.sum(fast & ~standard) <= 1
    settings = attacks.autoattack_fast_settings(_config("autoattack_fast"), 4)
    assert [c["name"] for c in settings["components"]] == ["APGD-CE", "APGD-T", "Square"]
    assert settings["components"][1]["target_classes"] == 2 and settings["components"][1]["target_ranking"] == "MALT"


@pytest.mark.parametrize("targets", [0, 4])
def test_autoattack_fast_rejects_a_target_count_outside_1_to_classes_minus_1(trained, targets):
    model, images, labels = trained
    config = dataclasses.replace(_config("autoattack_fast"), malt_targets=targets)
    with pytest.raises(ValueError, match="malt_targets|MALT targets"):
        attacks.generate(_logits_fn(model), images[:4], labels[:4], config, tf.constant(SEED, tf.int64))


def test_malt_ranks_targets_by_the_linearised_distance_not_the_logit():
    """Logits (0, 2 x1 - 0.5, 0.1 x2 - 0.04) at (0.2, 0.2): class 2 has the higher logit (-0.02 against -0.1),
    but the boundary with class 1 is nearer (gap 0.1 over gradient 2: 0.05; class 2: 0.02 / 0.1 = 0.2)."""
    from rst_tf.attacks import malt

    model_fn = lambda x: tf.matmul(x, tf.constant([[0.0, 2.0, 0.0], [0.0, 0.0, 0.1]])) + [0.0, -0.5, -0.04]  # noqa
    images, labels = tf.constant([[0.2, 0.2]]), tf.constant([0])
    np.testing.assert_allclose(malt.scores(model_fn, images, labels, tf.constant([[1, 2]])).numpy(), [[0.05, 0.2]],
                               rtol=1e-5)
    clean_logits = model_fn(images)
    assert malt.ranked_targets(model_fn, images, labels, clean_logits, 2).numpy().tolist() == [[1, 2]]
    assert attacks.apgd.ranked_targets(clean_logits, labels).numpy().tolist()[0][:2] == [2, 1]


def test_final_check_keeps_only_fooled_finite_results_within_epsilon_and_the_box():
    from rst_tf.attacks import autoattack

    images = np.full([5, 2, 2, 1], 0.5, np.float32)
    adversarial = images + np.float32(0.03)
    adversarial[1, 0, 0, 0] = 0.5 + 0.03 + 1e-3  # beyond epsilon
    adversarial[2] = 1.2  # outside the box (and the ball)
    adversarial[3, 1, 1, 0] = np.nan
    fooled = tf.constant([True, True, True, True, False])
    checked = autoattack.final_check(tf.constant(images), tf.constant(adversarial), fooled, 0.03, 0.0, 1.0).numpy()
    np.testing.assert_array_equal(checked[0], adversarial[0])
    np.testing.assert_array_equal(checked[1:], images[1:])


def _gradient_masked(logits_fn):
    """8-bit quantisation of the input with a zero gradient: the forward pass
    is (almost) the model's, every input gradient is 0."""
    return lambda images: logits_fn(images * 0.0 + tf.stop_gradient(tf.round(images * 255.0) / 255.0))


def test_gradient_masking_defeats_pgd_but_not_black_box_attacks(trained):
    model, images, labels = trained
    images, labels = images[:FEW], labels[:FEW]
    masked = _gradient_masked(_logits_fn(model))
    clean = _accuracy(masked, images, labels)
    assert clean >= 0.95
    pgd = AttackConfig(name="pgd", epsilon=EPSILON, steps=10, step_size=EPSILON / 4)
    assert _accuracy(masked, _generate(masked, images, labels, pgd), labels) >= clean - 0.1
    # Quantisation blurs the finite differences, so bandits gets a larger budget here.
    bandits = dataclasses.replace(_config("bandits"), max_queries=2000)
    assert _accuracy(masked, _generate(masked, images, labels, bandits), labels) <= clean - 0.3


@pytest.mark.parametrize(
    "field, value, name",
    [
        ("max_queries", 1, "bandits"),
        ("tile_size", 0, "bandits"),
        ("fd_eta", 0.0, "bandits"),
        ("online_lr", -1.0, "bandits"),
        ("image_lr", float("nan"), "bandits"),
        ("exploration", 0.0, "bandits"),
        ("binary_search_steps", 0, "cw_l2"),
        ("initial_const", 0.0, "cw_l2"),
        ("confidence", -1.0, "cw_l2"),
        ("steps", 0, "cw_l2"),
        ("steps", 0, "autoattack"),
        ("max_queries", 0, "autoattack"),
        ("step_size", 0.0, "cw_inf"),
    ],
)
def test_validate_names_the_bad_field(field, value, name):
    config = dataclasses.replace(AttackConfig(name=name), **{field: value})
    with pytest.raises(ValueError, match=rf"AttackConfig\.{field}\b"):
        config.validate()


def test_new_fields_keep_old_configs_and_noise_flags():
    assert AttackConfig(name="bandits").uses_noise
    assert AttackConfig(name="cw_inf").uses_noise and not AttackConfig(name="cw_inf", random_start=False).uses_noise
    assert not AttackConfig(name="cw_l2").uses_noise and AttackConfig(name="autoattack").uses_noise
    for config in (attacks.cw_l2_config(0.5), attacks.bandits_config(), attacks.autoattack_config()):
        config.validate()
