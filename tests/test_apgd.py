"""APGD-CE, APGD-DLR and APGD-T with EOT (rst_tf.attacks.apgd): the reference's rules on hand-made inputs, and the
attacks and AutoAttack's rand version against the small Keras model of tests/template_model.py."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks
from rst_tf.attacks import apgd
from rst_tf.attacks import AttackConfig
from template_model import NUM_CLASSES, train_template_model
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


def test_checkpoints_follow_the_reference_schedule():
    # n = 100: first window int(22.0) = 22, then k = max(k - 3, 6): 19, 16, 13, 10, 7, 6, 6.
    assert apgd.checkpoints(100) == [(22, 22), (41, 19), (57, 16), (70, 13), (80, 10), (87, 7), (93, 6), (99, 6)]
    # n = 10: windows max(int(2.2), 1) = 2, then max(2 - 1, max(int(0.6), 1)) = 1 from there on.
    assert apgd.checkpoints(10) == [(2, 2)] + [(done, 1) for done in range(3, 11)]
    assert apgd.checkpoints(1) == [(1, 1)]


def test_dlr_losses_match_their_definitions():
    logits = tf.constant([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    # Label 0 (top): -(3 - 2) / (3 - 1); label 1: -(1 - 3) / (3 - 1).
    np.testing.assert_allclose(apgd.dlr_loss(logits, tf.constant([0, 1])).numpy(), [-0.5, 1.0], rtol=1e-6)
    # Sorted 5 > 4 > 3 > 2 > 1: denominator 5 - (3 + 2) / 2 = 2.5; label 0, target 2: -(5 - 4) / 2.5;
    # target 3: -(5 - 1) / 2.5; label 1 (logit 3), target 4 (logit 2): -(3 - 2) / 2.5.
    logits = tf.constant([[5.0, 3.0, 4.0, 1.0, 2.0]] * 3)
    values = apgd.targeted_dlr_loss(logits, tf.constant([0, 0, 1]), tf.constant([2, 3, 4])).numpy()
    np.testing.assert_allclose(values, [-0.4, -1.6, -0.4], rtol=1e-6)
    with pytest.raises(ValueError, match="3 classes"):
        apgd.dlr_loss(tf.zeros([1, 2]), tf.constant([0]))
    with pytest.raises(ValueError, match="4 classes"):
        apgd.targeted_dlr_loss(tf.zeros([1, 3]), tf.constant([0]), tf.constant([1]))


def test_oscillation_check_indexes_the_loss_history_as_the_reference():
    # A ring of 10 losses, first checkpoint after iteration 1 with a window of 2: losses[1] > losses[0] counts,
    # and losses[0] is compared with losses[-1] = the still-zero last entry. Halve iff at most 0.75 * 2 rose.
    history = np.zeros([10, 3], np.float32)
    history[:2] = [[2.0, -3.0, 1.0], [3.0, -2.0, 0.5]]
    # Rises: [3 > 2, 2 > 0] = 2; [-2 > -3, -3 > 0] = 1; [0.5 > 1, 1 > 0] = 1.
    np.testing.assert_array_equal(apgd.oscillating(tf.constant(history), 1, 2).numpy(), [False, True, True])
    # Later windows compare within the window only: rows 5..7 rise twice of 3 (<= 2.25: halve).
    history[4:8, 0] = [1.0, 2.0, 3.0, 2.5]
    np.testing.assert_array_equal(apgd.oscillating(tf.constant(history), 7, 3).numpy()[0], True)
    history[7, 0] = 4.0
    np.testing.assert_array_equal(apgd.oscillating(tf.constant(history), 7, 3).numpy()[0], False)


def _constant_model(logits):
    """A model whose logits do not depend on the image (zero input gradient)."""
    logits = tf.constant(logits, tf.float32)
    return lambda x: logits[None] + 0.0 * tf.reduce_sum(x, axis=[1, 2, 3])[:, None]


def test_step_size_halves_at_every_checkpoint_without_progress():
    images = tf.fill([2, 2, 2, 1], 0.5)
    labels = tf.constant([0, 0])
    epsilon = 0.1
    # The loss never changes. n = 10: the first checkpoint (2 iterations) sees one rise (the first loss > 0, the
    # zero history entry) <= 1.5; each later one (window 1) sees none: 9 halvings.
    result = apgd.run(_constant_model([2.0, 0.0, 0.0, 0.0]), images, labels, images, epsilon, 10, "ce")
    np.testing.assert_allclose(result["step_size"].numpy(), 2 * epsilon / 2 ** 9, rtol=1e-6)
    assert not result["fooled"].numpy().any()


def test_start_is_on_the_ball_surface_and_the_first_step_has_no_momentum():
    images = tf.fill([4, 3, 3, 2], 0.5)
    start = apgd.uniform_start(images, tf.constant([3, 4]), 0.1)
    np.testing.assert_allclose(np.abs(start.numpy() - 0.5).max(axis=(1, 2, 3)), 0.1, rtol=1e-5)
    # A linear model: the gradient sign of the CE of label 0 is -sign(w) everywhere, so the first iterate
    # (momentum 1) is the start moved by 2 epsilon against w, clipped to the ball.
    weights = tf.constant(np.random.default_rng(0).choice([-1.0, 1.0], size=18), tf.float32)
    calls = []

    def linear(x):
        calls.append(x)
        score = tf.reduce_sum(tf.reshape(x, [-1, 18]) * weights, axis=-1)
        return tf.stack([score, -score, tf.zeros_like(score), tf.zeros_like(score)], axis=-1)

    apgd.run(linear, images, tf.zeros([4], tf.int32), start, 0.1, 1, "ce")
    expected = np.clip(start.numpy() - 0.2 * np.reshape(weights.numpy(), [1, 3, 3, 2]), 0.4, 0.6)
    np.testing.assert_allclose(calls[1].numpy(), expected, atol=1e-6)


def test_a_misclassified_iterate_is_kept_when_the_last_one_is_classified_correctly():
    images = tf.fill([1, 2, 2, 1], 0.5)
    calls = []

    def fooled_once(x):
        # Call 1 evaluates the start, call 1 + i iteration i: only iteration 2 is misclassified.
        calls.append(x.numpy())
        base = tf.constant([[1.0, 0.0, 0.0, 0.0]]) + tf.reduce_sum(x) * tf.constant([[0.1, 0.2, 0.0, 0.0]])
        return base + (tf.constant([[0.0, 5.0, 0.0, 0.0]]) if len(calls) == 4 else 0.0)

    start = images + 0.05
    result = apgd.run(fooled_once, images, tf.constant([0]), start, 0.1, 6, "ce")
    assert len(calls) == 7 and result["fooled"].numpy().all()
    np.testing.assert_array_equal(result["adversarial"].numpy(), calls[3])
    assert not np.array_equal(calls[3], calls[-1])


def test_apgd_t_ranks_targets_by_the_clean_logits():
    logits = tf.constant([[1.0, 5.0, 3.0, 4.0], [0.0, 2.0, 3.0, 1.0]])
    np.testing.assert_array_equal(apgd.ranked_targets(logits, tf.constant([1, 2])).numpy(), [[3, 2, 0], [1, 3, 0]])


@pytest.mark.parametrize("name", ["apgd_ce", "apgd_dlr", "apgd_t"])
def test_apgd_lowers_accuracy_stays_in_ball_and_is_seeded(trained, name):
    model, images, labels = trained
    logits_fn = _logits_fn(model)
    adversarial = _generate(logits_fn, images, labels, _config(name))
    _assert_in_ball_and_box(adversarial, images)
    assert _accuracy(logits_fn, adversarial, labels) <= _accuracy(logits_fn, images, labels) - 0.3
    np.testing.assert_array_equal(adversarial, _generate(logits_fn, images, labels, _config(name)))
    assert not np.array_equal(adversarial, _generate(logits_fn, images, labels, _config(name), seed=(1, 3)))


def _targets_in_turn(logits_fn, images, labels, steps, seed):
    """The reference's APGD-T: one `run` per target rank in turn, each on the examples no earlier rank fooled."""
    clean_logits = logits_fn(images)
    ranked = apgd.ranked_targets(clean_logits, labels)
    robust = np.argmax(clean_logits, axis=-1) == labels
    for rank in range(ranked.shape[-1]):
        start = apgd.uniform_start(images, attacks.core.fold_seed(tf.constant(seed), rank), EPSILON)
        rows = np.flatnonzero(robust)
        result = apgd.run(logits_fn, tf.gather(images, rows), tf.gather(labels, rows), tf.gather(start, rows),
                          EPSILON, steps, "dlr_targeted", targets=tf.gather(ranked[:, rank], rows))
        robust[rows[result["fooled"].numpy()]] = False
    return ~robust & (np.argmax(clean_logits, axis=-1) == labels)


def test_apgd_t_runs_targets_in_turn_on_the_examples_left_and_keeps_the_verdicts(trained):
    """Eagerly: each call holds every example still robust (all its rows, one per target of the call), as many
    targets as `core.targets_per_call` gives for them, and the calls cover the targets in rank order; in a graph,
    one batched call. Both give the verdicts of the reference's runs in turn."""
    model, images, labels = trained
    images, labels = tf.constant(images[:32]), labels[:32]
    logits_fn = _logits_fn(model)
    calls = []
    inner = apgd.runner(logits_fn, EPSILON, 4, "dlr_targeted")

    def run(images, labels, start, targets, groups, num_groups):
        calls.append((int(images.shape[0]), int(num_groups)))
        found, fooled = inner(images, labels, start, targets, groups, num_groups)
        calls[-1] += (int(np.sum(fooled.numpy())),)
        return found, fooled

    adversarial, broken = apgd.targeted(logits_fn, images, labels, EPSILON, 4, SEED, run=run)
    correct = int(np.sum(np.argmax(logits_fn(images), axis=-1) == labels))
    left, ranks = correct, 0
    for rows, groups, fooled in calls:
        per_call = attacks.core.targets_per_call(left, NUM_CLASSES - 1 - ranks)
        assert (groups, rows) == (left, left * per_call)
        left, ranks = left - fooled, ranks + per_call
    assert ranks == NUM_CLASSES - 1 and len(calls) > 1 and calls[-1][1] < correct
    wrong = np.argmax(logits_fn(adversarial.numpy()), axis=-1) != labels
    np.testing.assert_array_equal(wrong, broken.numpy())
    in_turn = _targets_in_turn(logits_fn, images, labels, 4, SEED)
    assert np.sum(in_turn != broken.numpy()) <= 1 and broken.numpy().sum() >= 3
    traced = tf.function(lambda x, y, seed: attacks.generate(logits_fn, x, y, _config("apgd_t", steps=4), seed),
                         autograph=False)
    graph = traced(images, labels, tf.constant(SEED, tf.int64)).numpy()
    assert abs(_accuracy(logits_fn, graph, labels) - (1 - broken.numpy().mean())) <= 2 / len(images)


def test_the_switched_run_is_the_ce_run_or_the_targeted_run_from_one_trace(trained):
    """`switched_runner`, traced once for any batch, gives the CE run's and the targeted DLR run's results."""
    model, images, labels = trained
    images, labels = tf.constant(images[:24]), tf.constant(labels[:24])
    logits_fn = _logits_fn(model)
    start = apgd.uniform_start(images, tf.constant(SEED), EPSILON)
    targets = apgd.ranked_targets(logits_fn(images), labels)[:, 0]
    groups, rows = tf.range(24), tf.constant(24)
    inner, traces = apgd.switched_runner(logits_fn, EPSILON, STEPS), []

    def counting(*args):
        traces.append(1)  # runs when traced
        return inner(*args)

    switched = attacks.core.traced_for_any_batch(counting)
    for loss, targeted in (("ce", False), ("dlr_targeted", True), ("ce", False)):
        expected = apgd.runner(logits_fn, EPSILON, STEPS, loss)(images, labels, start, targets, groups, rows)
        found = switched(images, labels, start, targets, groups, rows, targeted)
        np.testing.assert_array_equal(found[1].numpy(), expected[1].numpy())
        np.testing.assert_allclose(found[0].numpy(), expected[0].numpy(), rtol=0, atol=1e-6)
    assert 3 <= expected[1].numpy().sum() < 24
    found = switched(images[:10], labels[:10], start[:10], targets[:10], groups[:10], tf.constant(10), True)
    assert found[1].shape == [10] and len(traces) == 1


def test_targets_per_call_fills_a_call_only_when_few_examples_are_left():
    assert attacks.core.MIN_ROWS_PER_CALL == 32
    assert attacks.core.targets_per_call(200, 9) == 1
    assert attacks.core.targets_per_call(32, 9) == 1
    assert attacks.core.targets_per_call(20, 9) == 2
    assert attacks.core.targets_per_call(5, 9) == 7
    assert attacks.core.targets_per_call(5, 3) == 3
    assert attacks.core.targets_per_call(0, 4) == 4
    assert attacks.core.targets_per_call(40, 9, min_rows=64) == 2


def test_run_until_fooled_gives_run_s_verdicts_and_stops_fooled_rows(trained):
    model, images, labels = trained
    images, labels = tf.constant(images[:32]), labels[:32]
    logits_fn = _logits_fn(model)
    start = apgd.uniform_start(images, tf.constant(SEED), EPSILON)
    full = apgd.run(logits_fn, images, labels, start, EPSILON, STEPS, "ce")
    batch_sizes = []

    def recording(x):
        batch_sizes.append(int(x.shape[0]))
        return logits_fn(x)

    found, fooled = apgd.run_until_fooled(recording, images, labels, start, EPSILON, STEPS, "ce")
    assert np.sum(fooled.numpy() != full["fooled"].numpy()) <= 1 and fooled.numpy().sum() >= 5
    assert sum(batch_sizes) < len(images) * (STEPS + 1) and np.all(np.diff(batch_sizes) <= 0)
    wrong = np.argmax(logits_fn(found), axis=-1) != labels
    np.testing.assert_array_equal(wrong[fooled.numpy()], True)
    np.testing.assert_array_equal(found.numpy()[~fooled.numpy()], images.numpy()[~fooled.numpy()])
    assert np.abs(found.numpy() - images.numpy()).max() <= EPSILON + 1e-6


def _probabilities(logits_fn):
    return lambda x: tf.nn.softmax(logits_fn(x))


@pytest.mark.parametrize("name", ["apgd_ce", "apgd_dlr", "apgd_t", "autoattack", "autoattack_rand"])
def test_bad_input_stops_with_one_clear_error(trained, name):
    model, images, labels = trained
    images, labels = images[:8], labels[:8]
    logits_fn = _logits_fn(model)
    config = _config(name, steps=2, max_queries=2)
    with pytest.raises(ValueError, match=r"AttackConfig\.epsilon must be > 0"):
        _generate(logits_fn, images, labels, dataclasses.replace(config, epsilon=0.0))
    with pytest.raises(ValueError, match=r"images must lie in \[clip_min, clip_max\]"):
        _generate(logits_fn, images + 1.5, labels, config)
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, classes\)"):
        _generate(logits_fn, images, np.where(np.arange(8) == 3, NUM_CLASSES, labels), config)
    with pytest.raises(ValueError, match="must return logits, not probabilities"):
        _generate(_probabilities(logits_fn), images, labels, config)
    if name != "autoattack":  # (FAB and Square make a full run slow; the check is the same)
        # Logits that happen to be non-negative are fine.
        _generate(lambda x: logits_fn(x) - tf.reduce_min(logits_fn(x)), images, labels, config)


def test_bad_input_fails_an_assertion_inside_tf_function(trained):
    model, images, labels = trained
    logits_fn = _logits_fn(model)
    traced = tf.function(lambda x, y, seed: attacks.generate(logits_fn, x, y, _config("apgd_ce", steps=2), seed),
                         autograph=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must lie in \[clip_min, clip_max\]"):
        traced(images[:8] - 0.5, labels[:8], tf.constant(SEED, tf.int64))


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
    drawn = apgd.untargeted(alternating, images, labels, EPSILON, steps, "ce", SEED, eot_draws=2)[0].numpy()
    # The clean check, the start and every iteration: eot_draws calls each.
    assert len(calls) == 2 * (steps + 2)
    stacked = apgd.untargeted(both, images, labels, EPSILON, steps, "ce", SEED, eot_draws=1)[0].numpy()
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
