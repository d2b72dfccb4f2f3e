"""Search objectives: PGD-AT and TRADES losses against NumPy, the KL attack, and TRADES steps on real CIFAR-10."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks, data, networks
from rst_tf.attacks import trades
from rst_tf.search import objectives

from masked_cnn import masked_cnn

EPSILON = 8 / 255
SEED = tf.constant([3, 4], tf.int64)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _numpy_trades(labels, clean, adversarial, beta):
    log_p, log_q = _log_softmax(clean.astype(np.float64)), _log_softmax(adversarial.astype(np.float64))
    natural = -log_p[np.arange(len(labels)), labels]
    return natural + beta * (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(16, 10)).astype(np.float32) * 3, rng.normal(size=(16, 10)).astype(np.float32) * 3,
            rng.integers(0, 10, 16).astype(np.int32))


def test_trades_loss_equals_numpy(logits):
    clean, adversarial, labels = logits
    ours = objectives.trades_loss(labels, clean, adversarial).numpy()
    np.testing.assert_allclose(ours, _numpy_trades(labels, clean, adversarial, 6.0), rtol=1e-5, atol=1e-5)
    assert objectives.TRADES_BETA == 6.0
    np.testing.assert_allclose(objectives.trades_loss(labels, clean, adversarial, beta=1.5).numpy(),
                               _numpy_trades(labels, clean, adversarial, 1.5), rtol=1e-5, atol=1e-5)


def test_kl_is_zero_on_equal_logits_and_positive_otherwise(logits):
    clean, adversarial, _ = logits
    np.testing.assert_allclose(objectives.kl_divergence(clean, clean).numpy(), 0.0, atol=1e-6)
    assert np.all(objectives.kl_divergence(clean, adversarial).numpy() > 0)


def test_loss_and_logits_of_each_objective(logits):
    clean, adversarial, labels = logits
    images, adversarial_images = tf.constant([[0.0]] * 16), tf.constant([[1.0]] * 16)
    table = lambda x: tf.where(x > 0.5, adversarial, clean)  # noqa: E731 (logits: clean rows for 0, adv for 1)
    loss, returned = objectives.loss_and_logits("pgd_at", table, images, adversarial_images, labels)
    expected_ce = -_log_softmax(adversarial.astype(np.float64))[np.arange(16), labels]
    np.testing.assert_allclose(loss.numpy(), expected_ce, rtol=1e-5)
    np.testing.assert_array_equal(returned.numpy(), adversarial)
    loss, _ = objectives.loss_and_logits("trades", table, images, adversarial_images, labels)
    np.testing.assert_allclose(loss.numpy(), _numpy_trades(labels, clean, adversarial, 6.0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="objective must be one of"):
        objectives.loss_and_logits("mart", table, images, adversarial_images, labels)


def test_attack_config_follows_the_search_attack():
    pgd = attacks.AttackConfig(name="pgd", epsilon=4 / 255, steps=5, step_size=1 / 255)
    assert objectives.attack_config("pgd_at", pgd) is pgd
    kl = objectives.attack_config("trades", pgd)
    assert (kl.name, kl.epsilon, kl.steps, kl.step_size, kl.random_start) == ("trades_kl", 4 / 255, 5, 1 / 255, True)
    none = attacks.AttackConfig(name="none")
    assert objectives.attack_config("trades", none) is none
    with pytest.raises(ValueError, match="objective 'trades' takes"):
        objectives.attack_config("trades", attacks.fgsm_rs_config(EPSILON))
    assert "trades_kl" in attacks.ATTACKS


def _linear_model():
    weights = np.random.default_rng(1).normal(size=(4 * 4 * 3, 5)).astype(np.float32)
    return weights, lambda x: tf.reshape(x, [-1, 48]) @ weights


def test_kl_attack_step_equals_an_independent_computation():
    """One step from the Gaussian start, for logits z = x W: dKL(p || q)/dx = W (q - p) row by row."""
    weights, model_fn = _linear_model()
    images = tf.random.stateless_uniform([6, 4, 4, 3], [0, 1])
    config = dataclasses.replace(objectives.attack_config("trades", attacks.AttackConfig(name="pgd")), steps=1)
    start = trades.gaussian_start(images, SEED, config).numpy()
    x = images.numpy().reshape(6, -1).astype(np.float64)
    p = np.exp(_log_softmax(x @ weights))
    q = np.exp(_log_softmax(start.reshape(6, -1) @ weights))
    gradient = (q - p) @ weights.T
    expected = np.clip(np.clip(start.reshape(6, -1) + config.step_size * np.sign(gradient), x - EPSILON,
                               x + EPSILON), 0, 1).reshape(images.shape)
    ours = attacks.generate(model_fn, images, tf.zeros([6], tf.int32), config, SEED).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    # The start is TRADES's: 0.001 * N(0, 1) around the images, seeded.
    noise = start - images.numpy()
    assert 0.0005 < noise.std() < 0.0015
    np.testing.assert_array_equal(start, trades.gaussian_start(images, SEED, config).numpy())


def test_kl_attack_raises_the_kl_stays_in_the_ball_and_splits_over_rows():
    _, model_fn = _linear_model()
    images = tf.random.stateless_uniform([8, 4, 4, 3], [0, 2])
    config = objectives.attack_config("trades", attacks.AttackConfig(name="pgd", steps=5))
    adversarial = attacks.generate(model_fn, images, tf.zeros([8], tf.int32), config, SEED)
    start = trades.gaussian_start(images, SEED, config)
    kl = lambda x: objectives.kl_divergence(model_fn(images), model_fn(x)).numpy()  # noqa: E731
    assert np.all(kl(adversarial) > 10 * kl(start))
    distance = np.abs(adversarial.numpy() - images.numpy())
    assert distance.max() <= EPSILON + 1e-6 and adversarial.numpy().min() >= 0 and adversarial.numpy().max() <= 1
    # Rows 4..7 of a batch of 8, as a replica would run them, start from the same noise as in the whole batch.
    half = attacks.generate(model_fn, images[4:], tf.zeros([4], tf.int32), config, SEED, noise_rows=(4, 8))
    np.testing.assert_allclose(half.numpy(), adversarial.numpy()[4:], atol=1e-6)


@pytest.fixture(scope="module")
def cifar_batch(cifar10_path):
    splits = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=128, test_examples=1)
    images, labels = next(iter(splits.train.batch(128)))
    return images, labels


def test_trades_steps_on_real_cifar10_lower_the_trades_loss(cifar_batch):
    images, labels = cifar_batch
    keras.utils.set_random_seed(0)
    network = networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                             remaining_ratio=0.5, width_multiplier=1 / 16, seed=0)
    config = objectives.attack_config("trades", attacks.AttackConfig(name="pgd", steps=3))
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    variables = network.trainable_variables
    optimizer.build(variables)
    logits_fn = lambda x: network(x, training=True)  # noqa: E731

    @tf.function
    def loss_then_step():
        """The TRADES loss at the current scores (fresh KL examples), then one SGD step on it."""
        adversarial = attacks.generate(logits_fn, images, labels, config, SEED)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(objectives.loss_and_logits("trades", logits_fn, images, adversarial, labels)[0])
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    losses = [float(loss_then_step()) for _ in range(5)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.2, losses


def test_search_step_with_trades_reports_the_trades_loss_of_its_own_examples(cifar_batch):
    from rst_tf.method import layers, masking
    from rst_tf.search import search_model

    images, labels = cifar_batch[0][:16], cifar_batch[1][:16]
    keras.utils.set_random_seed(0)
    network = masked_cnn(remaining_ratio=0.5)  # what the step reports, whatever the network
    model = search_model.SearchModel(network, attacks.AttackConfig(name="pgd", steps=2), seed=5, objective="trades")
    assert model.attack == objectives.attack_config("trades", attacks.AttackConfig(name="pgd", steps=2))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.optimizer.build(model.trainable_variables)
    # The same examples and loss, computed independently before the step (same masks, seed and BatchNorm mode).
    with masking.supplied_masks(layers.current_masks(network)):
        adversarial = attacks.generate(lambda x: network(x, training=True), images, labels, model.attack,
                                       tf.constant([5, 0], tf.int64))
        expected = objectives.trades_loss(labels, network(images, training=True),
                                          network(adversarial, training=True)).numpy().mean()
    reported = tf.function(model.replica_step)(images, labels)["loss"]
    np.testing.assert_allclose(float(reported), expected, rtol=1e-4)
