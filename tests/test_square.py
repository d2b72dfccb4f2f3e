"""Square Attack L-inf (rst_tf.attacks.square) against the small Keras model of tests/template_model.py."""
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks
from rst_tf.attacks import square
from template_model import NUM_CLASSES, train_template_model
from template_model import accuracy as _accuracy
from template_model import logits_fn as _logits_fn

EPSILON = 8 / 255
QUERIES = 600
SEED = (3, 4)


@pytest.fixture(scope="module")
def trained():
    """(model, images, labels): the 32 test examples of tests/template_model.py with the smallest clean margin
    z_y - max_{j != y} z_j (Square breaks few of the others within a few hundred queries at 8/255)."""
    model, test_images, test_labels = train_template_model(128)
    assert _accuracy(_logits_fn(model), test_images, test_labels) >= 0.97
    logits = _logits_fn(model)(test_images).numpy()
    true = logits[np.arange(len(logits)), test_labels]
    others = np.where(np.eye(NUM_CLASSES, dtype=bool)[test_labels], -np.inf, logits).max(axis=-1)
    closest = np.argsort(true - others)[:32]
    return model, test_images[closest], test_labels[closest]


@pytest.fixture(scope="module")
def result(trained):
    """(adversarial, broken, queries_used) of one seeded run with QUERIES iterations."""
    model, images, labels = trained
    return [t.numpy() for t in square.search(_logits_fn(model), images, labels, EPSILON, QUERIES, seed=SEED)]


def test_p_schedule_follows_the_reference_thresholds():
    # p_init halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000, whatever the budget.
    expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 200: 0.2, 201: 0.1, 500: 0.1, 501: 0.05, 1000: 0.05,
                1001: 0.025, 2000: 0.025, 2001: 0.0125, 4000: 0.0125, 4001: 0.00625, 4999: 0.00625,
                6001: 0.003125, 8000: 0.003125, 8001: 0.0015625, 20000: 0.0015625}
    for iteration, p in expected.items():
        assert square.p_selection(iteration, 0.8) == pytest.approx(p, rel=1e-12), iteration
    assert square.p_selection(60, 0.5) == 0.125
    # CIFAR-10 (32x32): round(sqrt(p * 1024)) = 29 (p 0.8), 20 (0.4), 14, 10, 7, 5, 4, 3, 2, 1 (0.0015625).
    sides = [square.square_side(square.p_selection(i), 32, 32) for i in (0, 11, 51, 201, 501, 1001, 2001, 4001,
                                                                          6001, 8001)]
    assert sides == [29, 20, 14, 10, 7, 5, 4, 3, 2, 1]
    thresholds = np.array(square.P_THRESHOLDS)
    iterations = np.concatenate([np.arange(0, 9000, 7), thresholds, thresholds + 1])
    for height, width in ((32, 32), (8, 8), (5, 9)):
        in_graph = square.side_at(tf.constant(iterations, tf.int32), 0.8, height, width).numpy()
        in_python = [square.square_side(square.p_selection(int(i)), height, width) for i in iterations]
        np.testing.assert_array_equal(in_graph, in_python)


def test_lowers_accuracy_and_stays_in_ball_and_box(trained, result):
    model, images, labels = trained
    adversarial, broken, _ = result
    assert adversarial.shape == images.shape and adversarial.dtype == np.float32
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    assert np.abs(adversarial - images).max() <= EPSILON + 1e-6
    logits = _logits_fn(model)
    clean = _accuracy(logits, images, labels)
    robust = _accuracy(logits, adversarial, labels)
    assert clean == 1.0 and robust <= 0.85, robust
    # `broken` is what the model says at the returned images; unbroken examples keep their clean image.
    predicted = np.argmax(logits(adversarial).numpy(), axis=-1)
    np.testing.assert_array_equal(broken, predicted != labels)
    np.testing.assert_array_equal(adversarial[~broken], images[~broken])


def test_broken_examples_stop_querying_and_keep_their_point(trained, result):
    """Per example a run is a prefix of a longer run with the same seed: an example broken within half the
    budget has the same point and query count in the run of the whole budget."""
    model, images, labels = trained
    longer, longer_broken, longer_used = result
    budget = QUERIES // 2
    adversarial, broken, used = [t.numpy() for t in square.search(
        _logits_fn(model), images, labels, EPSILON, budget, seed=SEED)]
    assert broken.any() and (longer_broken & ~broken).any()
    np.testing.assert_array_equal(longer[broken], adversarial[broken])
    np.testing.assert_array_equal(longer_used[broken], used[broken])
    assert longer_broken[broken].all()
    # The examples not broken used the whole budget: the start plus one query per iteration.
    np.testing.assert_array_equal(used[~broken], budget + 1)
    assert (used[broken] <= budget).all()


def test_batch_split_with_noise_rows_gives_the_whole_batch_result(trained, result):
    """Each example's run depends only on the seed and its row of the global batch, not on the other examples."""
    model, images, labels = trained
    halves = [[t.numpy() for t in square.search(_logits_fn(model), images[rows], labels[rows], EPSILON, QUERIES,
                                                seed=SEED, noise_rows=(rows.start, len(images)))]
              for rows in (slice(0, 16), slice(16, 32))]
    for whole, first, second in zip(result, *halves):
        np.testing.assert_array_equal(np.concatenate([first, second]), whole)


def test_query_accounting(trained):
    """The model sees, after the clean batch, exactly the queries counted: none for an example misclassified clean,
    one per iteration while an example is correct, at most the budget plus the start."""
    model, images, labels = trained
    labels = labels.copy()
    flipped = np.arange(32) % 4 == 0
    labels[flipped] = (labels[flipped] + 1) % NUM_CLASSES
    rows_seen = tf.Variable(0, dtype=tf.int64)

    def counting(x):
        rows_seen.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
        return model(x, training=False)

    for epsilon, budget in ((EPSILON, 100), (1e-4, 20)):
        rows_seen.assign(0)
        _, broken, used = [t.numpy() for t in square.search(counting, images, labels, epsilon, budget, seed=SEED)]
        assert broken[flipped].all() and (used[flipped] == 0).all()
        assert (used[~flipped] >= 1).all() and (used <= budget + 1).all()
        assert rows_seen.numpy() == len(images) + used.sum()
    # At a radius too small to break anything, every correct example uses the start and all 20 iterations.
    assert not broken[~flipped].any()
    np.testing.assert_array_equal(used[~flipped], 21)


def test_seed_decides_the_result_in_tf_function_and_eagerly(trained, result):
    """`generate` with `square_config` inside tf.function repeats the eager run of the same seed; another seed
    gives another result."""
    model, images, labels = trained
    config = square.square_config(EPSILON, queries=QUERIES)
    assert config.name == "square" and config.max_queries == QUERIES and config.uses_noise
    assert "square" in attacks.ATTACKS and "square" not in attacks.EAGER_ONLY_ATTACKS

    @tf.function
    def attacked(x, y, seed):
        return attacks.generate(_logits_fn(model), x, y, config, seed)

    adversarial = attacked(tf.constant(images), tf.constant(labels), tf.constant(SEED, tf.int64)).numpy()
    np.testing.assert_array_equal(adversarial, result[0])
    other, _, other_used = square.search(_logits_fn(model), images, labels, EPSILON, QUERIES, seed=(5, 6))
    assert not np.array_equal(result[2], other_used.numpy())
    assert not np.array_equal(result[0], other.numpy())


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="epsilon"):
        square.square_config(0.0).validate()
    with pytest.raises(ValueError, match="max_queries"):
        square.square_config(EPSILON, queries=0).validate()
    images = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="p_init"):
        square.attack(lambda x: x, images, np.zeros(2, np.int32), EPSILON, p_init=1.5)
    with pytest.raises(ValueError, match="height, width"):
        square.attack(lambda x: x, images[:, :, :, 0], np.zeros(2, np.int32), EPSILON)
