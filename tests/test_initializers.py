"""The four weight inits and the score init: statistics and bit-exact reproducibility."""
import math

import numpy as np
import pytest

from rst_tf.method import initializers

SHAPE = (3, 3, 64, 128)
FAN_IN, FAN_OUT = 3 * 3 * 64, 3 * 3 * 128


def draw(method, seed=(0, 1), **kwargs):
    return initializers.StatelessInitializer(method, seed, **kwargs)(SHAPE).numpy()


def test_signed_kaiming_constant_is_a_signed_constant():
    values = draw("signed_kaiming_constant")
    magnitude = math.sqrt(2.0 / FAN_IN)
    np.testing.assert_allclose(np.abs(values), magnitude, rtol=1e-6)
    assert abs((values > 0).mean() - 0.5) < 0.01


@pytest.mark.parametrize("method,variance", [
    ("kaiming_normal", 2.0 / FAN_IN), ("xavier_normal", 2.0 / (FAN_IN + FAN_OUT)), ("kaiming_uniform", 2.0 / FAN_IN)])
def test_variances(method, variance):
    values = draw(method)
    assert abs(values.mean()) < 0.02 * math.sqrt(variance)
    assert values.var() == pytest.approx(variance, rel=0.02)


def test_kaiming_uniform_bound():
    bound = math.sqrt(6.0 / FAN_IN)
    values = draw("kaiming_uniform")
    assert values.max() <= bound and values.min() >= -bound and values.max() > 0.99 * bound


def test_score_init_is_uniform_in_inverse_sqrt_fan_in():
    values = draw("scores", fan_in=FAN_IN)
    bound = 1 / math.sqrt(FAN_IN)
    assert values.max() <= bound and values.min() >= -bound
    assert values.var() == pytest.approx(bound ** 2 / 3, rel=0.02)


def test_scale_fan_scales_to_the_kept_fan_in():
    values = draw("signed_kaiming_constant", scale_fan=True, remaining_ratio=0.25)
    np.testing.assert_allclose(np.abs(values), math.sqrt(2.0 / (FAN_IN * 0.25)), rtol=1e-6)


# The paper's code: with scale_fan, signed_constant and kaiming_normal use std = gain / sqrt(fan * k), fan the
# PyTorch fan-in of the OIHW weight (in * kh * kw; its configs all say mode fan_in), gain sqrt(2) for ReLU.
def test_scale_fan_scales_the_kaiming_normal_fan_in():
    values = draw("kaiming_normal", scale_fan=True, remaining_ratio=0.3)
    assert values.var() == pytest.approx(2.0 / (FAN_IN * 0.3), rel=0.02)


@pytest.mark.parametrize("method", ["xavier_normal", "kaiming_uniform"])
def test_scale_fan_leaves_xavier_and_kaiming_uniform_as_they_are(method):
    assert draw(method, scale_fan=True, remaining_ratio=0.3).tobytes() == draw(method).tobytes()


def test_score_initializer_fan_in_per_pattern():
    """Fan-in of the score tensor, as PyTorch counts it on the OIHW scores of the paper's code."""
    kh, kw, cin, cout = SHAPE
    expected = {"element": cin * kh * kw, "row": cin * kh, "kernel": cin}
    for sparsity, shape in (("element", SHAPE), ("row", (kh, 1, cin, cout)), ("kernel", (1, 1, cin, cout))):
        initializer = initializers.score_initializer(shape, sparsity, (0, 1))
        assert initializer.get_config()["fan_in"] == expected[sparsity]
        values = initializer(shape).numpy()
        assert values.max() <= 1 / math.sqrt(expected[sparsity]) < values.max() * 1.02
    channel = initializers.score_initializer((1, 1, 1, 4096), "channel", (0, 1))((1, 1, 1, 4096)).numpy()
    assert channel.std() == pytest.approx(1.0, rel=0.04)


@pytest.mark.parametrize("method", initializers.WEIGHT_INITS)
def test_same_seed_same_bits_other_seed_other_bits(method):
    assert draw(method).tobytes() == draw(method).tobytes()
    assert draw(method).tobytes() != draw(method, seed=(0, 2)).tobytes()
    assert draw(method).tobytes() != draw(method, seed=(1, 1)).tobytes()


def test_known_bits_do_not_drift():
    """Philox is a specified algorithm: these bits must come out on every machine and TensorFlow release."""
    initializer = initializers.StatelessInitializer("kaiming_normal", (7, 3))
    assert initializer((2, 2)).numpy().tobytes().hex() == "8729ef3dd69f1bbe5c9e4cbf34f2db3d"
    rebuilt = initializers.StatelessInitializer.from_config(initializer.get_config())
    assert rebuilt((2, 2)).numpy().tobytes().hex() == "8729ef3dd69f1bbe5c9e4cbf34f2db3d"


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="weight_init"):
        initializers.StatelessInitializer("orthogonal", (0, 0))
