"""FAB-T (rst_tf.attacks.fab): the box-constrained L-inf projection against a linear program and hand-derived
values, the rules of the reference FAB-T (fra31/auto-attack) pinned on tiny hand-computed models, exact distances on
a linear model, and the attack against the small Keras model of tests/template_model.py."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog

from rst_tf import attacks
from rst_tf.attacks import fab
from template_model import NUM_CLASSES, train_template_model
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


def test_newton_projection_settles_on_the_sorted_solution_and_falls_back_to_it(monkeypatch):
    """Newton's budget equals the one read off the sorted rooms on image-sized rows, in a few steps; with too few
    steps allowed the projection sorts instead and gives the same steps."""
    rng = np.random.default_rng(2)
    points = rng.uniform(0.0, 1.0, (6, 3072)).astype("float32")
    normals = (rng.normal(size=(6, 3072)) * rng.uniform(0.0, 1.0, (6, 3072)) ** 4).astype("float32")
    targets = np.clip(points + rng.uniform(-0.05, 0.05, (6, 1)) * np.sign(normals), 0, 1)
    offsets = (normals * targets).sum(-1).astype("float32")
    offsets[-1] = 1e4  # beyond the box
    residual = (normals * points).sum(-1) - offsets
    direction = np.where(residual >= 0, -1.0, 1.0)[:, None] * np.sign(normals)
    room = tf.constant(np.where(direction > 0, 1 - points, np.where(direction < 0, points, 0)).astype("float32"))
    weight, needed = tf.constant(np.abs(normals)), tf.constant(np.abs(residual).astype("float32"))
    newton, settled = fab._newton_budget(room, weight, needed)
    assert np.all(settled.numpy())
    np.testing.assert_allclose(newton.numpy(), fab._sorted_budget(room, weight, needed).numpy(), rtol=1e-5)
    assert np.isinf(newton.numpy()[-1]) and np.all(np.isfinite(newton.numpy()[:-1]))
    steps = fab.project_linf(points, normals, offsets).numpy()
    monkeypatch.setattr(fab, "NEWTON_STEPS", 1)
    np.testing.assert_allclose(fab.project_linf(points, normals, offsets).numpy(), steps, atol=1e-6)


def test_projection_batches_rows_independently():
    rng = np.random.default_rng(1)
    points = rng.uniform(0.0, 1.0, (5, 16)).astype("float32")
    normals = rng.normal(size=(5, 16)).astype("float32")
    offsets = (normals * rng.uniform(0.0, 1.0, (5, 16))).sum(-1).astype("float32")
    together = fab.project_linf(points, normals, offsets).numpy()
    for row in range(5):
        alone = fab.project_linf(points[row:row + 1], normals[row:row + 1], offsets[row:row + 1]).numpy()
        np.testing.assert_allclose(together[row], alone[0], atol=1e-7)


@pytest.mark.parametrize("point, normal, offset, step", [
    # Both coordinates move lambda: 2 lambda = 0.5.
    ((0.5, 0.5), (1.0, 1.0), 1.5, (0.25, 0.25)),
    # The first coordinate stops at the box (room 0.1): 0.1 + lambda = 0.4.
    ((0.9, 0.5), (1.0, 1.0), 1.8, (0.1, 0.3)),
    # Beyond the box: every coordinate at the edge that raises normal . z.
    ((0.9, 0.5), (1.0, 1.0), 2.5, (0.1, 0.5)),
    # A zero normal coordinate never moves; the other goes down.
    ((0.5, 0.5), (2.0, 0.0), 0.4, (-0.3, 0.0)),
    # Already on the hyperplane.
    ((0.5, 0.5), (1.0, -1.0), 0.0, (0.0, 0.0)),
])
def test_projection_by_hand(point, normal, offset, step):
    step_found = fab.project_linf(np.array([point]), np.array([normal]), np.array([offset])).numpy()[0]
    np.testing.assert_allclose(step_found, step, atol=1e-12)


def _linear(weights, bias):
    """Logits x W + c of flat float64 inputs."""
    return lambda x: tf.matmul(x, tf.constant(weights, tf.float64)) + tf.constant(bias, tf.float64)


def _run(model_fn, image, label, target, steps):
    closest, distance = fab.targeted_run(model_fn, tf.constant([image], tf.float64), tf.constant([label]),
                                         tf.constant([target]), steps)
    return closest.numpy()[0], distance.numpy()[0]


def test_steps_overshoot_record_and_pull_back_by_hand():
    """z_1 - z_0 = x1 + x2 - 1.5 from (0.5, 0.5). Step 1: both projections are (0.25, 0.25), so the point moves
    1.05 * 0.25 to (0.7625, 0.7625), is adversarial and recorded (distance 0.2625), and is pulled back to
    0.5 + 0.9 * 0.2625 = 0.73625. Step 2: the projection from there is 0.01375 per coordinate, from the clean image
    0.25, so alpha = 0.01375 / 0.26375 (below 0.1) and the new, closer point is recorded."""
    model_fn = _linear([[0.0, 1.0], [0.0, 1.0]], [0.0, -1.5])
    closest, distance = _run(model_fn, (0.5, 0.5), 0, 1, steps=1)
    np.testing.assert_allclose(closest, (0.7625, 0.7625), atol=1e-12)
    assert distance == pytest.approx(0.2625, abs=1e-12)
    alpha = 0.01375 / (0.01375 + 0.25)
    moved = (0.73625 + 1.05 * 0.01375) * (1 - alpha) + (0.5 + 1.05 * 0.25) * alpha
    closest, distance = _run(model_fn, (0.5, 0.5), 0, 1, steps=2)
    np.testing.assert_allclose(closest, (moved, moved), atol=1e-12)
    assert distance == pytest.approx(moved - 0.5, abs=1e-12) and distance < 0.2625


def test_weight_on_the_clean_projection_is_capped_at_alpha_max_by_hand():
    """One input, z_1 - z_0 = g(x) = 0.2 - (x - 1)^2 from x0 = 0.3. Step 1 lands at x1 = 0.3 + 1.05 * 0.29 / 1.4 =
    0.5175, still classified 0 (g < 0). Step 2: the projection from x1 is d1 = -g(x1) / g'(x1), from x0
    d2 = x1 - x0 + d1; d1 / (d1 + d2) is about 0.119, so alpha is capped at 0.1, and the point is adversarial."""
    model_fn = lambda x: tf.concat([tf.zeros_like(x), 0.2 - tf.square(x - 1.0)], axis=-1)
    g = lambda x: 0.2 - (x - 1.0) ** 2
    x0 = 0.3
    x1 = x0 + 1.05 * -g(x0) / (2 * (1.0 - x0))
    assert x1 == pytest.approx(0.5175) and g(x1) < 0
    d1 = -g(x1) / (2 * (1.0 - x1))
    d2 = x1 - x0 + d1
    assert d1 / (d1 + d2) > fab.ALPHA_MAX
    moved = (x1 + 1.05 * d1) * (1 - fab.ALPHA_MAX) + (x0 + 1.05 * d2) * fab.ALPHA_MAX
    assert g(moved) > 0
    closest, distance = _run(model_fn, (x0,), 0, 1, steps=2)
    assert closest[0] == pytest.approx(moved, abs=1e-12) and distance == pytest.approx(moved - x0, abs=1e-12)


def test_clamp_to_the_box_and_unreachable_targets_by_hand():
    """z_1 - z_0 = x1 - 0.99 from (0.5, 0.5): the step 1.05 * 0.49 ends at 1.0145, clamped to 1, which is adversarial
    at distance 0.5; the second coordinate (zero gradient) never moves. With z_1 - z_0 = x1 - 1.6 the box never
    reaches the boundary: nothing is recorded and the attack leaves the image."""
    closest, distance = _run(_linear([[0.0, 1.0], [0.0, 0.0]], [0.0, -0.99]), (0.5, 0.5), 0, 1, steps=1)
    np.testing.assert_allclose(closest, (1.0, 0.5), atol=1e-12)
    assert distance == pytest.approx(0.5, abs=1e-12)
    unreachable = _linear([[0.0, 1.0], [0.0, 0.0]], [0.0, -1.6])
    closest, distance = _run(unreachable, (0.5, 0.5), 0, 1, steps=5)
    assert distance == np.inf and np.all(closest == (0.5, 0.5))
    adversarial, broken = fab.attack(unreachable, tf.constant([[0.5, 0.5]], tf.float64), [0], 1.0, steps=5)
    assert not broken.numpy()[0] and np.all(adversarial.numpy() == [[0.5, 0.5]])


def test_targets_in_turn_acceptance_and_misclassified_examples_by_hand():
    """Logits (0, x1 - 0.6, 10 (x2 - 0.52)). From (0.5, 0.5) (class 0) the targets rank 1 (logit -0.1), then 2
    (-0.2). One step towards class 1 ends at (0.605, 0.5) (distance 0.105); towards class 2 at (0.5, 0.521)
    (distance 0.021). The first target that succeeds within epsilon wins, and a point counts when its distance is
    <= epsilon. (0.7, 0.5) labelled 0 is misclassified from the start: never attacked, never counted as broken."""
    model_fn = _linear([[0.0, 1.0, 0.0], [0.0, 0.0, 10.0]], [0.0, -0.6, -5.2])
    images = tf.constant([[0.5, 0.5], [0.7, 0.5]], tf.float64)
    labels = [0, 0]
    np.testing.assert_array_equal(fab.ranked_targets(model_fn(images), tf.constant(labels), 2).numpy()[0], (1, 2))

    def fab_t(epsilon, target_classes):
        adversarial, broken = fab.attack(model_fn, images, labels, epsilon, steps=1, target_classes=target_classes)
        np.testing.assert_array_equal(adversarial.numpy()[1], (0.7, 0.5))
        assert not broken.numpy()[1]
        return adversarial.numpy()[0], broken.numpy()[0]

    adversarial, broken = fab_t(0.2, 2)
    assert broken and np.allclose(adversarial, (0.605, 0.5), atol=1e-12)
    adversarial, broken = fab_t(0.05, 1)
    assert not broken and np.all(adversarial == (0.5, 0.5))
    adversarial, broken = fab_t(0.05, 2)
    assert broken and np.allclose(adversarial, (0.5, 0.521), atol=1e-12)
    _, distance = _run(model_fn, (0.5, 0.5), 0, 1, steps=1)
    assert fab_t(float(distance), 1)[1] and not fab_t(float(np.nextafter(distance, 0.0)), 1)[1]


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


def test_fab_t_runs_inside_tf_function_like_eagerly_and_rejects_bad_steps(trained):
    model, images, labels = trained
    images, labels = images[:16], labels[:16]
    config = attacks.AttackConfig(name="fab_t", epsilon=EPSILON, steps=STEPS)
    assert "fab_t" not in attacks.EAGER_ONLY_ATTACKS

    @tf.function
    def traced(x, y):
        return attacks.generate(_logits_fn(model), x, y, config, seed=None)

    np.testing.assert_allclose(traced(images, labels).numpy(), _fab_t(_logits_fn(model), images, labels), atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        attacks.AttackConfig(name="fab_t", epsilon=EPSILON, steps=0).validate()


def test_fab_t_runs_targets_in_turn_on_the_examples_left(trained):
    """Eagerly, each call holds every example still robust (all its rows, one per target of the call) and as many
    targets as `core.targets_per_call` gives for them; the calls cover the targets in rank order, and the verdicts
    are those of the batched graph."""
    model, images, labels = trained
    images, labels = images[:32], labels[:32]
    logits_fn = _logits_fn(model)
    inner = fab.broken_runner(logits_fn, STEPS, EPSILON)
    calls = []

    def run(images, labels, targets, groups, num_groups):
        calls.append((int(images.shape[0]), int(num_groups)))
        return inner(images, labels, targets, groups, num_groups)

    adversarial, broken = fab.attack(logits_fn, images, labels, EPSILON, STEPS, run=run)
    ranks, count = 0, min(fab.STANDARD_TARGET_CLASSES, NUM_CLASSES - 1)
    for rows, groups in calls:
        per_call = attacks.core.targets_per_call(groups, count - ranks)
        assert rows == groups * per_call
        ranks += per_call
    assert ranks == count and len(calls) > 1
    groups = [groups for _, groups in calls]
    assert groups[0] == np.sum(np.argmax(logits_fn(images), axis=-1) == labels)
    assert np.all(np.diff(groups) <= 0) and groups[-1] < groups[0]  # broken examples leave
    graph = tf.function(lambda x, y: fab.attack(logits_fn, x, y, EPSILON, STEPS), autograph=False)(images, labels)
    np.testing.assert_array_equal(broken.numpy(), graph[1].numpy())
    np.testing.assert_allclose(adversarial.numpy(), graph[0].numpy(), atol=1e-6)


def test_fab_t_config_is_the_autoattack_component():
    config = attacks.fab_t_config(8 / 255)
    settings = attacks.autoattack_settings(attacks.autoattack_config(8 / 255), num_classes=10)
    component = next(c for c in settings["components"] if c["name"] == "FAB-T")
    assert config.steps == component["max_iter"] == 100 and component["target_classes"] == 9
    assert not config.uses_noise
