"""Attacks against a small Keras model trained here on synthetic 8x8x3 images."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks
from rst_tf.attacks import AttackConfig
from rst_tf.attacks import config as config_lib
from rst_tf.attacks import core
from template_model import IMAGE_SHAPE, NUM_CLASSES, train_template_model

# Large enough that every attack clearly hurts this model, small enough that
# PGD-5 leaves some accuracy for comparisons between attacks.
EPSILON = 12 / 255
L2_EPSILON = 0.5
SEED = (1, 2)


@pytest.fixture(scope="module")
def trained():
    """(model, test_images, test_labels): see tests/template_model.py."""
    model, test_images, test_labels = train_template_model(256)
    assert _accuracy(model, test_images, test_labels) >= 0.97
    return model, test_images, test_labels


def _logits_fn(model):
    return lambda images: model(images, training=False)


def _accuracy(model, images, labels):
    predictions = np.argmax(np.asarray(model(images, training=False)), axis=-1)
    return float(np.mean(predictions == labels))


def _linf_config(name, **overrides):
    if name == "fgsm_rs":
        return dataclasses.replace(attacks.fgsm_rs_config(EPSILON), **overrides)
    fields = dict(name=name, epsilon=EPSILON, steps=10, step_size=EPSILON / 4)
    fields.update(overrides)
    return AttackConfig(**fields)


def _l2_config(**overrides):
    fields = dict(name="pgd_l2", epsilon=L2_EPSILON, steps=10, step_size=L2_EPSILON / 4)
    fields.update(overrides)
    return AttackConfig(**fields)


def _all_configs(steps=10):
    return [
        _linf_config("fgsm"),
        _linf_config("fgsm_rs"),
        _linf_config("pgd", steps=steps),
        _l2_config(steps=steps),
    ]


def _generate(model, images, labels, config, seed=SEED):
    seed = None if seed is None else tf.constant(seed, tf.int64)
    return attacks.generate(_logits_fn(model), images, labels, config, seed).numpy()


@pytest.mark.parametrize("config", _all_configs(), ids=lambda c: c.name)
def test_attack_lowers_accuracy_and_stays_in_ball(trained, config):
    model, images, labels = trained
    adversarial = _generate(model, images, labels, config)
    assert adversarial.shape == images.shape and adversarial.dtype == np.float32
    assert _accuracy(model, adversarial, labels) <= _accuracy(model, images, labels) - 0.3
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    perturbation = (adversarial - images).reshape(len(images), -1)
    if config.name == "pgd_l2":
        assert np.linalg.norm(perturbation, axis=1).max() <= config.epsilon * (1 + 1e-5)
    else:
        assert np.abs(perturbation).max() <= config.epsilon + 1e-6


def test_none_returns_images_unchanged(trained):
    model, images, labels = trained
    np.testing.assert_array_equal(_generate(model, images, labels, AttackConfig(name="none"), seed=None), images)


def test_fgsm_moves_every_pixel_by_epsilon_unless_clipped(trained):
    model, images, labels = trained
    adversarial = _generate(model, images, labels, _linf_config("fgsm"), seed=None)
    step = np.abs(adversarial - images)
    inside_box = (images > EPSILON) & (images < 1 - EPSILON)
    np.testing.assert_allclose(step[inside_box], EPSILON, rtol=1e-4)


def test_zero_epsilon_returns_images(trained):
    model, images, labels = trained
    zero_configs = (_linf_config("pgd", epsilon=0.0, steps=2), _l2_config(epsilon=0.0, steps=2))
    for config in zero_configs + (_linf_config("fgsm_rs", epsilon=0.0),):
        np.testing.assert_allclose(_generate(model, images, labels, config), images, atol=1e-7)


@pytest.mark.parametrize(
    "config", [_linf_config("fgsm_rs"), _linf_config("pgd", steps=3), _l2_config(steps=3)], ids=lambda c: c.name
)
def test_same_seed_same_output_different_seed_different_output(trained, config):
    model, images, labels = trained
    first = _generate(model, images, labels, config, seed=(7, 11))
    np.testing.assert_array_equal(first, _generate(model, images, labels, config, seed=(7, 11)))
    assert not np.array_equal(first, _generate(model, images, labels, config, seed=(7, 12)))


def test_int32_and_int64_seeds_are_accepted(trained):
    model, images, labels = trained
    config = _linf_config("pgd", steps=2)
    for dtype in (tf.int32, tf.int64):
        adversarial = attacks.generate(_logits_fn(model), images, labels, config, tf.constant(SEED, dtype))
        assert np.abs(adversarial.numpy() - images).max() <= EPSILON + 1e-6


def test_without_random_start_the_seed_is_not_used(trained):
    model, images, labels = trained
    config = _linf_config("pgd", steps=3, random_start=False)
    first = _generate(model, images, labels, config, seed=(7, 11))
    np.testing.assert_array_equal(first, _generate(model, images, labels, config, seed=(3, 5)))
    np.testing.assert_array_equal(first, _generate(model, images, labels, config, seed=None))


def test_more_steps_and_restarts_are_not_weaker(trained):
    model, images, labels = trained
    accuracy = {
        (steps, restarts): _accuracy(
            model, _generate(model, images, labels, _linf_config("pgd", steps=steps, restarts=restarts)), labels
        )
        for steps, restarts in [(5, 1), (20, 1), (5, 3)]
    }
    assert accuracy[(20, 1)] <= accuracy[(5, 1)] + 0.02
    assert accuracy[(5, 3)] <= accuracy[(5, 1)]
    assert accuracy[(5, 1)] > 0.05, "epsilon too large for the step/restart comparisons to mean anything"


def test_restarts_keep_the_worst_case_per_example(trained):
    model, images, labels = trained
    logits_fn = _logits_fn(model)

    def loss_and_wrong(adversarial):
        logits = logits_fn(adversarial)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits).numpy()
        return loss, np.argmax(logits.numpy(), axis=-1) != labels

    single_loss, single_wrong = loss_and_wrong(_generate(model, images, labels, _linf_config("pgd", steps=3)))
    multi_loss, multi_wrong = loss_and_wrong(
        _generate(model, images, labels, _linf_config("pgd", steps=3, restarts=4))
    )
    # Restart 0 is the single run, so no example gets better.
    assert np.all(multi_wrong[single_wrong])
    both_right = ~single_wrong & ~multi_wrong
    assert np.all(multi_loss[both_right] >= single_loss[both_right] - 1e-5)
    assert multi_wrong.sum() > single_wrong.sum() or np.any(multi_loss[both_right] > single_loss[both_right])


@pytest.mark.parametrize(
    "config", _all_configs(steps=3) + [_linf_config("pgd", steps=3, restarts=2)], ids=lambda c: c.name
)
def test_tf_function_matches_eager(trained, config):
    model, images, labels = trained
    logits_fn = _logits_fn(model)
    # autograph=False: Keras traces train_step without autograph.
    traced = tf.function(lambda x, y, seed: attacks.generate(logits_fn, x, y, config, seed), autograph=False)
    seed = tf.constant(SEED, tf.int64)
    np.testing.assert_allclose(
        traced(images, labels, seed).numpy(), _generate(model, images, labels, config), rtol=0, atol=1e-6
    )


def test_pgd_loop_is_not_unrolled():
    pixels = int(np.prod(IMAGE_SHAPE))
    weights = tf.constant(np.random.default_rng(0).normal(size=(pixels, NUM_CLASSES)), tf.float32)

    def logits_fn(images):
        return tf.matmul(tf.reshape(images, [tf.shape(images)[0], -1]), weights)

    def graph_size(steps, restarts):
        config = _linf_config("pgd", steps=steps, restarts=restarts)
        traced = tf.function(lambda x, y, seed: attacks.generate(logits_fn, x, y, config, seed), autograph=False)
        specs = (
            tf.TensorSpec((None,) + IMAGE_SHAPE, tf.float32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((2,), tf.int64),
        )
        return len(traced.get_concrete_function(*specs).graph.get_operations())

    assert graph_size(100, 1) == graph_size(2, 1)
    assert graph_size(100, 10) == graph_size(2, 2)


def test_xla_compiled_attack_is_seeded_and_stays_in_ball(trained):
    # Keras compiles train_step with XLA by default (jit_compile="auto").
    # XLA draws different stateless-RNG values than the TF kernels for the same
    # seed (tensorflow/tensorflow#121243), so only XLA-to-XLA equality holds.
    model, images, labels = trained
    logits_fn = _logits_fn(model)
    config = _linf_config("pgd", steps=3, step_size=EPSILON / 2)
    compiled = tf.function(lambda x, y, seed: attacks.generate(logits_fn, x, y, config, seed), jit_compile=True)
    adversarial = compiled(images, labels, tf.constant(SEED, tf.int64)).numpy()
    np.testing.assert_array_equal(adversarial, compiled(images, labels, tf.constant(SEED, tf.int64)).numpy())
    assert not np.array_equal(adversarial, compiled(images, labels, tf.constant((7, 12), tf.int64)).numpy())
    assert np.abs(adversarial - images).max() <= EPSILON + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    assert _accuracy(model, adversarial, labels) <= _accuracy(model, images, labels) - 0.3


def test_attack_leaves_weights_unchanged_and_has_no_gradient_path(trained):
    model, images, labels = trained
    before = [np.copy(w) for w in model.get_weights()]
    images_tensor = tf.constant(images)
    for config in _all_configs(steps=2) + [AttackConfig(name="none")]:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(images_tensor)
            adversarial = attacks.generate(
                _logits_fn(model), images_tensor, labels, config, tf.constant(SEED, tf.int64)
            )
            total = tf.reduce_sum(adversarial)
        assert all(g is None for g in tape.gradient(total, model.trainable_variables)), config.name
        assert tape.gradient(total, images_tensor) is None, config.name
        del tape
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_labels_with_trailing_unit_axis_are_accepted(trained):
    model, images, labels = trained
    config = _linf_config("pgd", steps=2)
    np.testing.assert_array_equal(
        _generate(model, images, labels[:, None], config), _generate(model, images, labels, config)
    )


class _AdversarialTrainer(keras.Model):
    """Adversarial training with a per-step seed derived from the step count,
    as a resumable training loop would do."""

    def __init__(self, network, config):
        super().__init__(name="adversarial_trainer")
        self.network = network
        self.attack = config

    def call(self, images, training=False):
        return self.network(images, training=training)

    def train_step(self, data):
        images, labels = data
        seed = tf.stack([tf.constant(5, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        adversarial = attacks.generate(lambda x: self(x, training=False), images, labels, self.attack, seed)
        with tf.GradientTape() as tape:
            logits = self(adversarial, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)
            )
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        # Not "loss": Keras would report its own (unused) loss tracker instead.
        return {"adversarial_loss": loss}


def test_runs_inside_keras_train_step_under_mirrored_strategy(trained):
    _, images, labels = trained
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        network = keras.Sequential(
            [keras.Input(IMAGE_SHAPE), keras.layers.Flatten(), keras.layers.Dense(NUM_CLASSES)]
        )
        trainer = _AdversarialTrainer(network, _linf_config("pgd", steps=3, restarts=2))
        trainer.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    before = [np.copy(w) for w in network.get_weights()]
    history = trainer.fit(images[:128], labels[:128], epochs=1, batch_size=64, verbose=0)
    loss = history.history["adversarial_loss"][0]
    assert np.isfinite(loss) and loss > 0
    assert int(trainer.optimizer.iterations.numpy()) == 2
    assert any(not np.array_equal(old, new) for old, new in zip(before, network.get_weights()))


@pytest.mark.parametrize(
    "field, value, name",
    [
        ("name", "pgd_l1", "pgd"),
        ("epsilon", -0.1, "pgd"),
        ("epsilon", float("nan"), "fgsm"),
        ("epsilon", -1.0, "fgsm_rs"),
        ("steps", 0, "pgd"),
        ("steps", 2.5, "pgd_l2"),
        ("step_size", 0.0, "pgd"),
        ("step_size", -0.01, "pgd_l2"),
        ("restarts", 0, "pgd"),
        ("random_start", "yes", "pgd"),
        ("clip_max", 0.0, "pgd"),
        ("clip_min", "0", "fgsm"),
    ],
)
def test_validate_names_the_bad_field(field, value, name):
    config = dataclasses.replace(AttackConfig(name=name), **{field: value})
    with pytest.raises(ValueError, match=rf"AttackConfig\.{field}\b"):
        config.validate()
    with pytest.raises(ValueError, match=rf"AttackConfig\.{field}\b"):
        attacks.generate(lambda x: x, tf.zeros((1,) + IMAGE_SHAPE), tf.zeros([1], tf.int32), config, SEED)


def test_validate_accepts_defaults_and_ignores_fields_an_attack_does_not_use(trained):
    model, images, labels = trained
    for name in attacks.ATTACKS:
        assert AttackConfig(name=name).validate() is None
    assert set(attacks.ATTACKS) == set(config_lib.registered_names())
    # Fields fgsm does not use change nothing, and "none" ignores epsilon.
    unused = AttackConfig(name="fgsm", epsilon=EPSILON, steps=0, step_size=0.0, restarts=0)
    np.testing.assert_array_equal(_generate(model, images, labels, unused, seed=None),
                                  _generate(model, images, labels, _linf_config("fgsm"), seed=None))
    np.testing.assert_array_equal(
        _generate(model, images, labels, AttackConfig(name="none", epsilon=-1.0), seed=None), images)
    assert attacks.fgsm_rs_config(8 / 255).validate() is None


def test_early_stop_never_moves_an_example_misclassified_at_the_start(trained):
    model, images, labels = trained
    # Wrong labels for half of the examples: misclassified at the clean start, so never moved.
    wrong_labels = np.where(np.arange(len(labels)) % 2 == 0, (labels + 1) % NUM_CLASSES, labels).astype(labels.dtype)
    config = _linf_config("pgd", steps=5, random_start=False, early_stop=True)
    adversarial = _generate(model, images, wrong_labels, config)
    np.testing.assert_array_equal(adversarial[::2], images[::2])
    assert np.all(np.any(adversarial[1::2] != images[1::2], axis=(1, 2, 3)))
    # Without early stop they move.
    moved = _generate(model, images, wrong_labels, dataclasses.replace(config, early_stop=False))
    assert np.all(np.any(moved[::2] != images[::2], axis=(1, 2, 3)))


def test_paper_protocol_is_weaker_than_the_standard_one_and_both_lower_accuracy(trained):
    model, images, labels = trained
    clean = _accuracy(model, images, labels)
    accuracy = {protocol: _accuracy(model, _generate(model, images, labels, attacks.pgd_eval_config(
        EPSILON, protocol)), labels) for protocol in attacks.PGD_PROTOCOLS}
    assert attacks.pgd_eval_config(EPSILON, "paper").step_size == pytest.approx(2 / 255)
    assert accuracy["paper"] >= accuracy["standard"] - 2 / len(images), accuracy
    assert accuracy["standard"] <= clean - 0.3 and accuracy["paper"] <= clean - 0.3, accuracy
    with pytest.raises(ValueError, match="protocol"):
        attacks.pgd_eval_config(EPSILON, "official")


def test_fgsm_rs_config_follows_wong_et_al():
    config = attacks.fgsm_rs_config(8 / 255)
    assert config.name == "fgsm_rs" and config.random_start and config.steps == 1
    assert config.epsilon == pytest.approx(8 / 255) and config.step_size == pytest.approx(10 / 255)


def test_bad_seed_is_rejected(trained):
    model, images, labels = trained
    config = _linf_config("pgd", steps=1)
    with pytest.raises(ValueError, match="seed"):
        attacks.generate(_logits_fn(model), images, labels, config, None)
    with pytest.raises(ValueError, match="seed"):
        attacks.generate(_logits_fn(model), images, labels, config, tf.constant([1, 2, 3]))
    with pytest.raises(ValueError, match="seed"):
        attacks.generate(_logits_fn(model), images, labels, config, tf.constant([1.0, 2.0]))


def test_select_picks_whole_rows_or_elements_as_tf_where_does_and_passes_gradients_to_the_picked():
    when_true = tf.random.stateless_uniform([3, 4, 4, 2], (0, 1))
    when_false = tf.random.stateless_uniform([3, 4, 4, 2], (0, 2))
    rows = tf.constant([True, False, True])
    np.testing.assert_array_equal(core.select(rows, when_true, when_false),
                                  tf.where(rows[:, None, None, None], when_true, when_false))
    elements = when_true > when_false
    np.testing.assert_array_equal(core.select(elements, when_true, when_false),
                                  tf.where(elements, when_true, when_false))
    with tf.GradientTape() as tape:
        tape.watch(when_true)
        total = tf.reduce_sum(core.select(rows, when_true, when_false))
    np.testing.assert_array_equal(tf.reduce_sum(tape.gradient(total, when_true), [1, 2, 3]), [32.0, 0.0, 32.0])


@pytest.mark.parametrize("traced", [False, True])
def test_keep_rows_gathers_only_the_rows_kept(traced):
    structure = {"x": tf.reshape(tf.range(12.0), [4, 3]), "history": tf.reshape(tf.range(8), [2, 4])}
    keep_rows = tf.function(core.keep_rows, autograph=False) if traced else core.keep_rows
    every = keep_rows(structure, tf.range(4, dtype=tf.int64), {"history": 1})
    for key in structure:
        np.testing.assert_array_equal(every[key], structure[key])
    some = keep_rows(structure, tf.constant([1, 3], tf.int64), {"history": 1})
    np.testing.assert_array_equal(some["x"], [[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]])
    np.testing.assert_array_equal(some["history"], [[1, 3], [5, 7]])
    assert keep_rows(structure, tf.zeros([0], tf.int64), {"history": 1})["x"].shape == (0, 3)


@pytest.mark.parametrize("name", ["autoattack_fast", "autoattack"])
def test_the_autoattack_schedules_trace_once_per_model_function_not_per_batch(trained, name, monkeypatch):
    """Every batch of an evaluation gets the same model function (`MaskedAttacker.generate`): the schedules' traced
    components are kept for it, so later batches trace nothing (Square's search included), and the results are
    those of a fresh function."""
    model, images, labels = trained
    traces, square_traces, square_batches = [], [], []
    search = attacks.square._search

    def counting_search(*args):
        square_traces.append(1)  # runs when Square's search is traced
        return search(*args)

    monkeypatch.setattr(attacks.square, "_search", counting_search)

    def progress(component, left):
        if component == "Square" and left:
            square_batches.append(left)

    def model_fn(x):
        traces.append(x.shape)  # runs when a traced function traces the model, and on eager calls
        return model(x, training=False)

    config = dataclasses.replace(attacks.autoattack_fast_config(8 / 255) if name == "autoattack_fast"
                                 else attacks.autoattack_config(8 / 255), steps=3, max_queries=20)
    found = []
    for index in range(4):
        rows = slice(16 * index, 16 * index + 16)
        found.append(attacks.generate(model_fn, images[rows], labels[rows], config, tf.constant([0, index]),
                                      progress=progress))
        if index == 1:
            after_two = len(traces)
    assert len(traces) == after_two  # the third and fourth batches trace nothing (the second relaxes shapes)
    assert len(square_batches) >= 2 and len(square_traces) == 1
    fresh = attacks.generate(lambda x: model(x, training=False), images[48:64], labels[48:64], config,
                             tf.constant([0, 3]))
    np.testing.assert_array_equal(found[3].numpy(), fresh.numpy())
