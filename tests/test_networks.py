"""The paper's networks: parameter counts, forward passes at CPU width, dense options, reproducible weights."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import networks
from rst_tf.method import layers

CIFAR = dict(num_classes=10, input_shape=(32, 32, 3), dataset="cifar10")
IMAGENET = dict(num_classes=1000, input_shape=(224, 224, 3), dataset="imagenet2012")


def kernel_count(model):
    return sum(layer.kernel.shape.num_elements() for layer in layers.masked_layers(model))


@pytest.mark.parametrize("name,kwargs,paper_millions", [
    ("resnet18", CIFAR, 11.17), ("resnet18_imagenet", IMAGENET, 11.68), ("resnet50", IMAGENET, 25.5),
    ("resnet101", IMAGENET, 44.5)])
def test_parameter_counts_match_the_paper(name, kwargs, paper_millions):
    model = networks.build(name, **kwargs)
    assert kernel_count(model) / 1e6 == pytest.approx(paper_millions, rel=0.01)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", CIFAR), ("preact_resnet18", CIFAR), ("wrn_34_10", CIFAR),
    ("resnet18_imagenet", dict(IMAGENET, input_shape=(64, 64, 3))),
    ("resnet50", dict(IMAGENET, input_shape=(64, 64, 3))), ("resnet101", dict(IMAGENET, input_shape=(64, 64, 3)))])
def test_every_network_runs_forward_at_width_one_eighth(name, kwargs):
    model = networks.build(name, width_multiplier=1 / 8, remaining_ratio=0.1, **kwargs)
    images = tf.random.stateless_uniform((2,) + tuple(kwargs["input_shape"]), seed=[0, 1])
    logits = model(images, training=False)
    assert logits.shape == (2, kwargs["num_classes"])
    assert np.all(np.isfinite(logits.numpy()))
    assert all(v.name == "scores" for v in model.trainable_variables)


def test_dense_first_conv_and_classifier_are_frozen_and_full():
    model = networks.build("resnet18", width_multiplier=1 / 8, remaining_ratio=0.1, dense_first_conv=True,
                           dense_classifier=True, **CIFAR)
    masked = layers.masked_layers(model)
    for layer in (masked[0], masked[-1]):
        assert layer.remaining_ratio == 1.0 and not layer.scores.trainable and not layer.kernel.trainable
    assert all(layer.remaining_ratio == 0.1 for layer in masked[1:-1])
    assert len(model.trainable_variables) == len(masked) - 2


def test_batch_norm_is_non_affine_and_normalisation_is_inside():
    model = networks.build("resnet18", width_multiplier=1 / 8, **CIFAR)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(not n.center and not n.scale for n in norms)
    assert any(isinstance(layer, layers.InputNormalization) for layer in model.layers)


def test_same_seed_same_network_other_seed_other_weights():
    build = lambda seed: networks.build("resnet18", width_multiplier=1 / 8, seed=seed, **CIFAR)
    first, again, other = build(3), build(3), build(4)
    for a, b, c in zip(first.weights, again.weights, other.weights):
        assert a.numpy().tobytes() == b.numpy().tobytes()
    assert any(a.numpy().tobytes() != c.numpy().tobytes() for a, c in zip(first.weights, other.weights)
               if a.name == "kernel")


def test_unknown_network_and_bad_width_are_rejected():
    with pytest.raises(ValueError, match="network"):
        networks.build("vgg16", **CIFAR)
    with pytest.raises(ValueError, match="width_multiplier"):
        networks.build("resnet18", width_multiplier=0, **CIFAR)
