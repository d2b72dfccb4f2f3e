"""Robustness evaluation: many attacks and the worst case, sanity checks against gradient masking, transfer,
feature distance, and the plots."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from rst_tf import attacks, data, networks
from rst_tf.reports import features, masks, plots, sanity, suite, threats, transfer
from rst_tf.search import search_model

EPSILON = 8 / 255


@pytest.fixture(scope="module")
def trained(cifar10_path):
    """A tiny ResNet18 trained naturally for a few epochs on 128 CIFAR-10 images, and those images in batches
    (evaluating on what it has fit keeps natural accuracy well above chance, so attacks have something to lower)."""
    splits = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=128, test_examples=8,
                              seed=0)
    network = networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                             remaining_ratio=1.0, width_multiplier=1 / 16, weight_init="kaiming_normal", seed=1)
    search_model.configure_mode(network, "natural")
    model = search_model.SearchModel(network, attacks.AttackConfig(name="none"), weight_decay=0.0)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    batches = list(data.eval_batches(splits.train, 64))
    model.fit(data.eval_batches(splits.train, 32).repeat(30), shuffle=False, verbose=0)
    return network, batches


def pgd(epsilon=EPSILON, steps=3, restarts=1):
    return attacks.AttackConfig(name="pgd", epsilon=epsilon, steps=steps, step_size=epsilon / 2, restarts=restarts)


def test_attack_accuracies_are_below_natural_and_worst_case_below_each(trained):
    network, batches = trained
    configs = [pgd(2 / 255), pgd(EPSILON), attacks.AttackConfig(name="fgsm", epsilon=EPSILON),
               attacks.AttackConfig(name="pgd_l2", epsilon=0.5, steps=3, step_size=0.25)]
    lines = []
    result = suite.evaluate_attacks(network, batches, configs, seed=1, log=lines.append)
    natural = result["natural"]["accuracy"]
    assert natural > 0.5 and result["natural"]["num_examples"] == 128
    assert [r["name"] for r in result["attacks"]] == ["pgd", "pgd", "fgsm", "pgd_l2"] and len(lines) == 4
    assert result["attacks"][1]["config"] == dataclasses.asdict(configs[1])
    worst = result["worst_case"]
    for attack in result["attacks"]:
        assert len(attack["correct"]) == 128 and attack["accuracy"] == pytest.approx(np.mean(attack["correct"]))
        assert attack["accuracy"] <= natural
        assert worst["accuracy"] <= attack["accuracy"]
        assert all(w <= c for w, c in zip(worst["correct"], attack["correct"]))
    assert result["attacks"][1]["accuracy"] < natural  # the attack does something
    threats = {(t["norm"], t["epsilon"]): t for t in result["worst_case_by_threat"]}
    linf_8 = threats[("Linf", EPSILON)]
    assert linf_8["attacks"] == ["pgd-3 Linf 8/255", "fgsm Linf 8/255"]
    assert linf_8["accuracy"] <= min(result["attacks"][1]["accuracy"], result["attacks"][2]["accuracy"])
    checks = sanity.sanity_checks(result["attacks"], natural)
    assert checks and all(check["passed"] for check in checks), sanity.masking_warnings(checks)

    matrix = transfer.transfer_matrix({"a": network, "b": network}, batches, configs[1], seed=1)
    assert matrix["names"] == ["a", "b"]
    assert np.allclose(matrix["accuracy"], result["attacks"][1]["accuracy"])  # every cell is white-box here

    distances = features.feature_distance({"model": network}, batches[:1], EPSILON, seed=0)
    assert distances["model"] > 0 and np.isfinite(distances["model"])
    assert features.feature_distance({"model": network}, batches[:1], 0.0)["model"] == pytest.approx(0, abs=1e-6)


class HardThreshold(keras.layers.Layer):
    """Rounds pixels to 8 bits with a zero gradient: a gradient-masking input transformation."""

    def call(self, x):
        return 0.0 * x + tf.stop_gradient(tf.round(x * 255.0) / 255.0)


def mean_pixel_classifier(masked):
    """Two classes: is the mean pixel above 0.5 (hand-set weights, optionally behind the hard threshold)."""
    inputs = keras.Input((8, 8, 3))
    x = HardThreshold()(inputs) if masked else inputs
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(2)
    logits = dense(x)
    dense.set_weights([np.full((3, 2), [-100.0 / 3, 100.0 / 3], np.float32), np.array([50.0, -50.0], np.float32)])
    return keras.Model(inputs, logits)


def mean_pixel_batches():
    """Images whose mean pixel is 0.5 +- 0.015 (the class), so an L-inf budget of 8/255 can flip every one.
    (8x8x3: inside tf.function, bandits in rst_tf.attacks fails on one-channel images and on a 1x1 prior.)"""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64).astype(np.int32)
    noise = rng.uniform(-0.01, 0.01, (64, 8, 8, 3))
    noise -= noise.mean(axis=(1, 2, 3), keepdims=True)
    images = 0.5 + np.where(labels == 1, 0.015, -0.015)[:, None, None, None] + noise
    return [(images[:32].astype(np.float32), labels[:32]), (images[32:].astype(np.float32), labels[32:])]


@pytest.mark.parametrize("masked", [True, False])
def test_sanity_checks_flag_a_gradient_masked_model_only(masked):
    model = mean_pixel_classifier(masked)
    configs = [pgd(EPSILON, steps=5), pgd(threats.LARGE_EPSILON, steps=5),
               attacks.bandits_config(EPSILON, max_queries=100)]
    result = suite.evaluate_attacks(model, mean_pixel_batches(), configs, seed=0)
    assert result["natural"]["accuracy"] == 1.0
    pgd_accuracy, large_accuracy, bandits_accuracy = [r["accuracy"] for r in result["attacks"]]
    assert bandits_accuracy <= 0.1
    checks = sanity.sanity_checks(result["attacks"], result["natural"]["accuracy"])
    failed = {check["check"] for check in checks if not check["passed"]}
    if masked:
        assert pgd_accuracy >= 0.9
        assert "black-box accuracy >= white-box PGD accuracy" in failed
        assert any(name.startswith("accuracy near 0 at a large epsilon") for name in failed)
        warnings = sanity.masking_warnings(checks)
        assert warnings and all(line.startswith("GRADIENT MASKING WARNING") for line in warnings)
    else:
        assert pgd_accuracy == 0.0 and large_accuracy == 0.0
        assert not failed and sanity.masking_warnings(checks) == []


def fake_result(name, epsilon, accuracy, steps=20, restarts=1, num_examples=100):
    config = attacks.AttackConfig(name=name, epsilon=epsilon, steps=steps, step_size=epsilon / 4, restarts=restarts)
    return dict(name=name, label=threats.attack_label(config), norm=threats.norm_of(config), epsilon=epsilon,
                config=dataclasses.asdict(config), accuracy=accuracy, num_examples=num_examples)


def test_sanity_checks_on_rising_accuracy_more_steps_and_transfer():
    results = [fake_result("pgd", 4 / 255, 0.40), fake_result("pgd", 8 / 255, 0.50),
               fake_result("pgd", 8 / 255, 0.55, steps=100), fake_result("cw_inf", 8 / 255, 0.30),
               fake_result("cw_inf", 16 / 255, 0.305)]
    transfer = {"names": ["a", "b"], "accuracy": [[0.3, 0.2], [0.6, 0.4]], "num_examples": 100}
    checks = sanity.sanity_checks(results, natural_accuracy=0.52, transfer=transfer)
    failed = sorted(check["detail"] for check in checks if not check["passed"])
    assert failed == sorted([
        "pgd-20 Linf 4/255: 0.4000 -> pgd-20 Linf 8/255: 0.5000",  # rises with epsilon
        "pgd-100 Linf 8/255: 0.5500 vs natural 0.5200",  # above natural
        "pgd-20 Linf 8/255: 0.5000 -> pgd-100 Linf 8/255: 0.5500",  # more steps raise accuracy
        "a -> b: 0.2000 vs white-box on b: 0.4000",  # transfer beats white-box
    ])
    # Within tolerance (0.005 rise of cw_inf with epsilon is below 1%): passes.
    assert all(check["passed"] for check in checks if "cw_inf" in check["detail"])


def test_plots_hold_the_data_they_name(tmp_path):
    results = [fake_result("pgd", 8 / 255, 0.4), fake_result("pgd", 2 / 255, 0.7), fake_result("pgd", 4 / 255, 0.6),
               fake_result("cw_inf", 8 / 255, 0.35), fake_result("pgd_l2", 0.5, 0.55)]
    figure = plots.accuracy_vs_epsilon(results, str(tmp_path / "eps.png"), natural_accuracy=0.8)
    assert (tmp_path / "eps.png").stat().st_size > 0 and not list(tmp_path.glob("*.tmp*"))
    linf, l2 = figure.axes[:2]
    lines = {line.get_label(): line for line in linf.get_lines()}
    np.testing.assert_allclose(lines["pgd-20 (Linf)"].get_xdata(), [2, 4, 8])
    np.testing.assert_allclose(lines["pgd-20 (Linf)"].get_ydata(), [0.7, 0.6, 0.4])
    np.testing.assert_allclose(lines["cw_inf-20 (Linf)"].get_ydata(), [0.35])
    np.testing.assert_allclose(lines["natural"].get_ydata(), [0.8, 0.8])
    l2_lines = {line.get_label(): line for line in l2.get_lines()}
    np.testing.assert_allclose(l2_lines["pgd_l2-20 (L2)"].get_xdata(), [0.5])

    transfer = {"names": ["rst", "dense"], "accuracy": [[0.3, 0.5], [0.6, 0.4]]}
    figure = plots.transfer_heatmap(transfer, str(tmp_path / "transfer.png"))
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts == ["0.30", "0.50", "0.60", "0.40"]
    np.testing.assert_allclose(figure.axes[0].images[0].get_array(), transfer["accuracy"])

    figure = plots.feature_distance_bars({"rst": 0.2, "dense": 0.5}, str(tmp_path / "features.png"), EPSILON)
    assert [patch.get_height() for patch in figure.axes[0].patches] == [0.2, 0.5]

    series = {"RST": [{"remaining_ratio": 0.5, "natural": 0.8, "robust": 0.4},
                      {"remaining_ratio": 0.05, "natural": 0.7, "robust": 0.45}]}
    figure = plots.accuracy_vs_remaining_ratio(series, str(tmp_path / "ratio.png"),
                                               dense={"natural": 0.85, "robust": 0.42})
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    np.testing.assert_allclose(lines["RST robust"].get_xdata(), [0.05, 0.5])
    np.testing.assert_allclose(lines["RST robust"].get_ydata(), [0.45, 0.4])
    np.testing.assert_allclose(lines["RST natural"].get_ydata(), [0.7, 0.8])
    np.testing.assert_allclose(lines["dense robust"].get_ydata(), [0.42, 0.42])
    assert lines["dense natural"].get_linestyle() == "--"
    for name in ("eps", "transfer", "features", "ratio"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def _numpy_mask(scores, ratio):
    """The mask a layer keeps, computed here: the n - floor((1 - ratio) n) largest |score|, ties to the lower index."""
    flat = np.abs(scores).ravel()
    keep = flat.size - int(np.floor((1 - ratio) * flat.size))
    order = np.lexsort((np.arange(flat.size), -flat))[:keep]
    mask = np.zeros(flat.size, bool)
    mask[order] = True
    return mask.reshape(scores.shape)


def test_mask_analysis_matches_an_independent_numpy_computation():
    import ticket_fixtures
    from rst_tf.method import layers as layer_lib

    configs = [ticket_fixtures.tiny_config(ratio, weight_init="kaiming_normal") for ratio in (0.1, 0.3, 0.3)]
    networks_by_name = {f"t{i}": ticket_fixtures.searched_network(config, variation=i)
                        for i, config in enumerate(configs)}
    transfer = {"names": ["t0", "t1", "t2"], "accuracy": [[0.1, 0.5, 0.4], [0.6, 0.2, 0.3], [0.45, 0.35, 0.1]]}
    analysis = masks.mask_analysis(networks_by_name, transfer)
    expected = {name: {layer.name: (_numpy_mask(layer.scores.numpy(), layer.remaining_ratio), layer.kernel.numpy())
                       for layer in layer_lib.masked_layers(network) if layer.remaining_ratio < 1}
                for name, network in networks_by_name.items()}
    names, layer_names = ["t0", "t1", "t2"], list(expected["t0"])
    assert analysis["names"] == names and analysis["layers"] == layer_names
    for name in names:
        for layer in layer_names:
            mask = expected[name][layer][0]
            assert analysis["kept_fraction"][name][layer] == pytest.approx(mask.sum() / mask.size)
    pooled = {name: np.concatenate([expected[name][layer][0].ravel() for layer in layer_names]) for name in names}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            kept_a, kept_b = set(np.flatnonzero(pooled[a])), set(np.flatnonzero(pooled[b]))
            assert analysis["jaccard"]["overall"][i][j] == pytest.approx(len(kept_a & kept_b) / len(kept_a | kept_b))
            assert analysis["hamming"]["overall"][i][j] == pytest.approx(len(kept_a ^ kept_b) / pooled[a].size)
            first = layer_names[0]
            in_a, in_b = set(np.flatnonzero(expected[a][first][0])), set(np.flatnonzero(expected[b][first][0]))
            assert analysis["jaccard"]["by_layer"][first][i][j] == pytest.approx(len(in_a & in_b) / len(in_a | in_b))
    assert analysis["jaccard"]["overall"][1][2] < 1.0  # two tickets at one ratio still differ
    for name in names:
        hits = kept = 0
        for layer in layer_names:
            mask, kernel = expected[name][layer]
            full = np.broadcast_to(mask, kernel.shape).ravel()
            largest = set(np.argsort(-np.abs(kernel).ravel())[:full.sum()])  # distinct normal magnitudes: no ties
            layer_hits = len(largest & set(np.flatnonzero(full)))
            assert analysis["magnitude_overlap"][name]["by_layer"][layer] == pytest.approx(layer_hits / full.sum())
            hits, kept = hits + layer_hits, kept + full.sum()
        assert analysis["magnitude_overlap"][name]["overall"] == pytest.approx(hits / kept)
    off = [(i, j) for i in range(3) for j in range(3) if i != j]
    x = np.array([analysis["jaccard"]["overall"][i][j] for i, j in off])
    y = np.array([transfer["accuracy"][i][j] for i, j in off])
    dx, dy = x - x.mean(), y - y.mean()
    pearson = (dx * dy).sum() / np.sqrt((dx ** 2).sum() * (dy ** 2).sum())
    assert analysis["transfer_correlation"] == pytest.approx(pearson)


def test_mask_analysis_of_signed_constant_kernels_sits_at_chance_and_refuses_other_networks(tiny_bank, tmp_path):
    import ticket_fixtures

    _, sources = tiny_bank
    analysis = masks.mask_analysis({"a": sources[0], "b": sources[1]})
    for value in analysis["magnitude_overlap"].values():  # every |weight| of a layer is equal: no position is larger
        assert value["overall"] == pytest.approx(value["chance"])
    figure = plots.mask_overlap_heatmap(analysis, str(tmp_path / "masks.png"))
    np.testing.assert_allclose(figure.axes[0].images[0].get_array(), analysis["jaccard"]["overall"])
    assert [text.get_text() for text in figure.axes[0].texts][1] == f"{analysis['jaccard']['overall'][0][1]:.2f}"
    other = ticket_fixtures.searched_network(ticket_fixtures.tiny_config(0.1, seed=1))
    with pytest.raises(ValueError, match="does not hold the random weights of a"):
        masks.mask_analysis({"a": sources[0], "other": other})
