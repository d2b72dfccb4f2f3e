"""The adversarial search step: what it trains and that it learns (strategies: tests/test_distribute.py)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks, data, networks
from rst_tf.method import layers
from rst_tf.search import search_model


@pytest.fixture(scope="module")
def tiny_cifar(cifar10_path):
    splits = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=128,
                              test_examples=8, seed=0)
    return splits, data.train_batches(splits.train, dataset="cifar10", batch_size=64, epoch=0, seed=0)


def make_model(mode, remaining_ratio=0.2, steps=2):
    network = networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                             remaining_ratio=1.0 if mode == "dense_at" else remaining_ratio,
                             width_multiplier=1 / 16, seed=0)
    search_model.configure_mode(network, mode)
    model = search_model.SearchModel(network, attacks.AttackConfig(name="pgd", steps=steps, step_size=4 / 255), seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    return model


def snapshot(network, name):
    return [w.numpy().copy() for w in network.weights if w.name == name]


def test_rst_search_changes_scores_and_never_kernels(tiny_cifar):
    _, batches = tiny_cifar
    model = make_model("rst")
    kernels, scores = snapshot(model.network, "kernel"), snapshot(model.network, "scores")
    masks = [m.numpy() for m in layers.current_masks(model.network).values()]
    model.fit(batches, epochs=1, verbose=0, shuffle=False)
    assert all(np.array_equal(a, b) for a, b in zip(kernels, snapshot(model.network, "kernel")))
    assert all(not np.array_equal(a, b) for a, b in zip(scores, snapshot(model.network, "scores")))
    after = [m.numpy() for m in layers.current_masks(model.network).values()]
    assert any(not np.array_equal(a, b) for a, b in zip(masks, after))
    assert all(a.sum() == b.sum() for a, b in zip(masks, after))


def test_dense_adversarial_training_changes_kernels(tiny_cifar):
    _, batches = tiny_cifar
    model = make_model("dense_at")
    kernels, scores = snapshot(model.network, "kernel"), snapshot(model.network, "scores")
    model.fit(batches, epochs=1, verbose=0, shuffle=False)
    assert all(not np.array_equal(a, b) for a, b in zip(kernels, snapshot(model.network, "kernel")))
    assert all(np.array_equal(a, b) for a, b in zip(scores, snapshot(model.network, "scores")))


def test_mask_is_computed_once_per_step(tiny_cifar, monkeypatch):
    """The attack's forward passes and the update share one top-k per masked layer."""
    _, batches = tiny_cifar
    model = make_model("rst", steps=3)
    from rst_tf.method import masking
    calls = []
    original = masking.top_k_mask
    monkeypatch.setattr(masking, "top_k_mask", lambda *a, **k: calls.append(1) or original(*a, **k))
    images, labels = next(iter(batches))
    model.optimizer.build(model.trainable_variables)  # else tracing runs twice to create the momentum slots
    tf.function(model.replica_step).get_concrete_function(images, labels)  # one trace of one step
    top_k_calls = len(calls)
    assert top_k_calls == len(layers.masked_layers(model.network)) == 21


def test_search_lowers_the_adversarial_loss_on_real_images(cifar10_path):
    """A short real PGD search: the adversarial loss falls (the last three epochs' mean below the first epoch's: one
    epoch of 512 images is noisy, and threads make the trajectory differ between machines)."""
    splits = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=512,
                              test_examples=8, seed=1)
    model = make_model("rst", remaining_ratio=0.3, steps=1)
    losses = []
    for epoch in range(6):
        batches = data.train_batches(splits.train, dataset="cifar10", batch_size=64, epoch=epoch, seed=1)
        losses.append(model.fit(batches, epochs=1, verbose=0, shuffle=False).history["loss"][-1])
    assert np.mean(losses[-3:]) < losses[0] - 0.1, losses


def test_mask_search_alone_fits_real_images(cifar10_path):
    """A few hundred score-only SGD steps on a small real CIFAR-10 set: loss falls, accuracy leaves chance."""
    from rst_tf.measuring import attacked as evaluate
    splits = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=128,
                              test_examples=8, seed=2)
    network = networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                             remaining_ratio=0.3, width_multiplier=1 / 16, seed=2)
    model = search_model.SearchModel(network, attacks.AttackConfig(name="none"), weight_decay=0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    kernels = snapshot(network, "kernel")
    batches = data.train_batches(splits.train, dataset="cifar10", batch_size=64, epoch=0, seed=2, augment=False)
    clean = evaluate.AttackedAccuracy(network, attacks.AttackConfig(name="none"))
    before = clean(data.eval_batches(splits.train, 128))
    history = model.fit(batches.repeat(), steps_per_epoch=50, epochs=4, verbose=0, shuffle=False)  # 200 steps
    losses = history.history["loss"]
    after = clean(data.eval_batches(splits.train, 128))
    assert losses[-1] < losses[0] - 0.3, losses
    assert before < 0.25 and after > 0.5, (before, after)
    assert all(np.array_equal(a, b) for a, b in zip(kernels, snapshot(network, "kernel")))


def test_coupled_weight_decay_adds_the_l2_gradient(tiny_cifar):
    """Against the same step without decay, each score moves by an extra -lr * weight_decay * score."""
    _, batches = tiny_cifar
    images, labels = next(iter(batches))
    after = {}
    for weight_decay in (0.0, 0.01):
        network = networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                                 remaining_ratio=0.5, width_multiplier=1 / 16, seed=0)
        model = search_model.SearchModel(network, attacks.AttackConfig(name="none"), weight_decay=weight_decay)
        model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
        before = snapshot(network, "scores")
        model.train_on_batch(images, labels)
        after[weight_decay] = snapshot(network, "scores")
    for start, plain, decayed in zip(before, after[0.0], after[0.01]):
        np.testing.assert_allclose(decayed - plain, -0.5 * 0.01 * start, atol=2e-5)  # decay term ~1e-3
