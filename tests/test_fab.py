"""FAB-T (rst_tf.fab): the box-constrained L-inf projection against a linear program, exact distances on a linear
model, and the attack against the small Keras model of tests/template_model.py."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog

from rst_tf import attacks
from rst_tf.attacks import fab
from template_model import train_template_model
from template_model import accuracy as _accuracy
from template_model import logits_fn as _logits_fn

EPSILON = 8 / 255
STEPS = 20


def _smallest_linf_step(point, normal, offset):
    """min ||d||_inf subject to normal . (point + d) = offset and 0 <= point + d <= 1, by linear programming;
    None when the box does not reach the hyperplane."""
    size = len(point)
    cost = np.r_[np.zeros(size), 1.0]
    bound_by_norm = np.vstack([np.c_[np.eye(size), -np.ones(size)], np.c_[-np.eye(size), -np.ones(size)]])
    result = linprog(
        cost, A_ub=bound_by_norm, b_ub=np.zeros(2 * size), A_eq=np.r_[normal, 0.0][None],
        b_eq=[offset - normal @ point], bounds=[(-p, 1.0 - p) for p in point] + [(0.0, None)],
    )
    return result.x[-1] if result.status == 0 else None


def test_projection_is_the_smallest_linf_step_inside_the_box():
    rng = np.random.default_rng(0)
    reached = unreachable = 0
    for trial in range(120):
        size = int(rng.integers(2, 12))
        point = rng.uniform(0.0, 1.0, size)
        normal = rng.normal(size=size)
        normal[rng.integers(size)] = 0.0 if trial % 4 == 0 else normal[0]
        # Every third hyperplane is far off, often beyond the box.
        offset = normal @ (rng.uniform(0.0, 1.0, size) if trial % 3 else point) + (0.0 if trial % 3 else 3.0)
        step = fab.project_linf(point[None], normal[None], [offset]).numpy()[0]
        moved = point + step
        assert np.all(moved >= -1e-12) and np.all(moved <= 1.0 + 1e-12)
        assert np.all(step[normal == 0.0] == 0.0)
        optimum = _smallest_linf_step(point, normal, offset)
        if optimum is not None:
            reached += 1
            assert normal @ moved == pytest.approx(offset, abs=1e-9)
            assert np.abs(step).max() == pytest.approx(optimum, abs=1e-9)
        else:
            unreachable += 1
            # The closest the box gets: each coordinate at the edge that moves normal . z towards the offset.
            towards = np.sign(offset - normal @ point) * np.sign(normal)
            edge = np.where(towards > 0, 1.0, np.where(towards < 0, 0.0, point))
            np.testing.assert_allclose(moved, edge, atol=1e-12)
    assert reached > 50 and unreachable > 10


def test_projection_batches_rows_independently():
    rng = np.random.default_rng(1)
    points = rng.uniform(0.0, 1.0, (5, 16)).astype("float32")
    normals = rng.normal(size=(5, 16)).astype("float32")
    offsets = (normals * rng.uniform(0.0, 1.0, (5, 16))).sum(-1).astype("float32")
    together = fab.project_linf(points, normals, offsets).numpy()
    for row in range(5):
        alone = fab.project_linf(points[row:row + 1], normals[row:row + 1], offsets[row:row + 1]).numpy()
        np.testing.assert_allclose(together[row], alone[0], atol=1e-7)


def test_on_a_linear_model_fab_finds_the_boundary():
    """For logits x W + c the target boundary is a hyperplane: FAB's closest point must lie within a few percent of
    its exact L-inf distance, and no misclassified point can be closer than the nearest boundary of any class."""
    rng = np.random.default_rng(2)
    size, classes = 12, 4
    weights = rng.normal(size=(size, classes))
    bias = rng.normal(size=classes)
    images = rng.uniform(0.2, 0.8, (16, size))
    labels = np.argmax(images @ weights + bias, axis=-1)
    logits = np.argsort(-(images @ weights + bias), axis=-1)
    targets = logits[:, 1]
    model_fn = lambda x: tf.matmul(x, tf.constant(weights)) + tf.constant(bias)
    closest, distance = fab.targeted_run(model_fn, tf.constant(images), tf.constant(labels), tf.constant(targets),
                                         steps=10)
    closest, distance = closest.numpy(), distance.numpy()
    assert np.all(np.isfinite(distance))
    assert np.all(np.argmax(closest @ weights + bias, axis=-1) != labels)
    np.testing.assert_allclose(np.abs(closest - images).max(-1), distance, rtol=1e-12)
    for row in range(len(images)):
        y, t = labels[row], targets[row]
        exact = _smallest_linf_step(images[row], weights[:, t] - weights[:, y], bias[y] - bias[t])
        nearest = min(
            _smallest_linf_step(images[row], weights[:, c] - weights[:, y], bias[y] - bias[c])
            for c in range(classes) if c != y
        )
        assert nearest - 1e-9 <= distance[row] <= fab.OVERSHOOT * exact + 1e-9


@pytest.fixture(scope="module")
def trained():
    model, test_images, test_labels = train_template_model(128)
    assert _accuracy(_logits_fn(model), test_images, test_labels) >= 0.97
    return model, test_images, test_labels


def _fab_t(logits_fn, images, labels, epsilon=EPSILON, steps=STEPS):
    config = attacks.AttackConfig(name="fab_t", epsilon=epsilon, steps=steps, random_start=False)
    return attacks.generate(logits_fn, images, labels, config, seed=None).numpy()


def test_fab_t_lowers_accuracy_inside_the_ball_and_is_deterministic(trained):
    model, images, labels = trained
    logits_fn = _logits_fn(model)
    adversarial = _fab_t(logits_fn, images, labels)
    assert np.abs(adversarial - images).max() <= EPSILON + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    clean = _accuracy(logits_fn, images, labels)
    attacked = _accuracy(logits_fn, adversarial, labels)
    assert attacked <= clean - 0.2
    # Unbroken examples keep their clean image; broken ones are misclassified.
    unchanged = np.all(adversarial == images, axis=(1, 2, 3))
    predicted = np.argmax(logits_fn(adversarial), axis=-1)
    assert np.all((predicted != labels) | unchanged)
    np.testing.assert_array_equal(_fab_t(logits_fn, images, labels), adversarial)


def test_fab_t_accuracy_falls_with_the_radius_and_reaches_zero(trained):
    model, images, labels = trained
    images, labels = images[:32], labels[:32]
    logits_fn = _logits_fn(model)
    accuracies = [_accuracy(logits_fn, _fab_t(logits_fn, images, labels, epsilon=e), labels)
                  for e in (4 / 255, 8 / 255, 16 / 255, 0.5)]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[-1] == 0.0


def test_fab_t_is_eager_only_and_rejects_bad_steps(trained):
    model, images, labels = trained
    config = attacks.AttackConfig(name="fab_t", epsilon=EPSILON, steps=STEPS)

    @tf.function
    def traced(x, y):
        return attacks.generate(_logits_fn(model), x, y, config, seed=None)

    with pytest.raises(RuntimeError, match="fab_t"):
        traced(images[:2], labels[:2])
    with pytest.raises(ValueError, match="steps"):
        attacks.AttackConfig(name="fab_t", epsilon=EPSILON, steps=0).validate()


def test_fab_t_config_is_the_autoattack_component():
    config = attacks.fab_t_config(8 / 255)
    settings = attacks.autoattack_settings(attacks.autoattack_config(8 / 255), num_classes=10)
    component = next(c for c in settings["components"] if c["name"] == "FAB-T")
    assert config.steps == component["max_iter"] == 100 and component["target_classes"] == 9
    assert not config.uses_noise
