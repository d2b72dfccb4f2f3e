"""Figures of a robustness evaluation, written as PNG files (matplotlib, Agg backend).

Every function writes `path` (atomically: a temporary file, then a rename) and returns the matplotlib Figure, so
callers can check what was drawn. Line labels name the data they hold.
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(figure, path):
    temporary = f"{path}.tmp.png"
    figure.savefig(temporary, dpi=120, bbox_inches="tight")
    os.replace(temporary, path)
    plt.close(figure)
    return figure


def accuracy_vs_epsilon(attack_results, path, natural_accuracy=None, title=None):
    """Accuracy against epsilon, one line per attack name (with its settings) and norm.

    `attack_results`: the `attacks` entries of `suite.evaluate_attacks` (name, label, norm, epsilon, accuracy).
    L-inf budgets are drawn in /255 units on the left axes, L2 budgets on the right axes (when present). Line
    `i` of an axes has the label `"<attack> (<norm>)"`, its x data are the sorted epsilons and its y data the
    accuracies. Natural accuracy is a dashed horizontal line labelled "natural".
    """
    norms = [norm for norm in ("Linf", "L2") if any(r["norm"] == norm for r in attack_results)] or ["Linf"]
    figure, axes = plt.subplots(1, len(norms), figsize=(5.5 * len(norms), 4), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        series = {}
        for result in attack_results:
            if result["norm"] == norm:
                series.setdefault(_series_name(result), []).append((result["epsilon"], result["accuracy"]))
        for name, points in series.items():
            points.sort()
            scale = 255.0 if norm == "Linf" else 1.0
            ax.plot([e * scale for e, _ in points], [a for _, a in points], marker="o", label=f"{name} ({norm})")
        if natural_accuracy is not None:
            ax.axhline(natural_accuracy, linestyle="--", color="gray", label="natural")
        ax.set_xlabel("epsilon (x/255, L-inf)" if norm == "Linf" else "epsilon (L2)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def _series_name(result):
    """The attack label without its budget: 'pgd-20 Linf 8/255' -> 'pgd-20'."""
    return result["label"].rsplit(" ", 2)[0]


def transfer_heatmap(transfer, path, title=None):
    """Heatmap of a `transfer.transfer_matrix` result: rows are source models, columns target models, every cell
    annotated with its accuracy (the text of cell (i, j) is f"{accuracy:.2f}")."""
    names, matrix = transfer["names"], np.asarray(transfer["accuracy"], float)
    size = 1.2 + 1.1 * len(names)
    figure, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), labels=names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("target model (evaluated)")
    ax.set_ylabel("source model (attacked)")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                    color="white" if matrix[i, j] < 0.5 else "black")
    figure.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(title or "transfer attack accuracy")
    return _save(figure, path)


def feature_distance_bars(distances, path, epsilon=None, title=None):
    """Bar chart of `features.feature_distance` results, one bar per model in the given order."""
    names = list(distances)
    figure, ax = plt.subplots(figsize=(1.5 + 1.1 * len(names), 4))
    ax.bar(range(len(names)), [distances[name] for name in names])
    ax.set_xticks(range(len(names)), labels=names, rotation=30, ha="right")
    ax.set_ylabel("||f(x) - f(x+u)|| / ||f(x)||")
    noise = f" (uniform noise, epsilon {epsilon * 255:g}/255)" if epsilon is not None else ""
    ax.set_title(title or f"feature distance{noise}")
    return _save(figure, path)


def accuracy_vs_remaining_ratio(series, path, dense=None, title=None):
    """Robust and natural accuracy against the remaining ratio (paper Fig. 1).

    `series`: {name: [{"remaining_ratio", "natural", "robust"}, ...]}. Each series gives two lines, in this order:
    "<name> robust" (solid) and "<name> natural" (dotted), with the points sorted by remaining ratio. `dense`
    (optional {"natural", "robust"}): the dense baseline as dashed horizontal lines "dense robust" and
    "dense natural".
    """
    figure, ax = plt.subplots(figsize=(6, 4))
    for index, (name, points) in enumerate(series.items()):
        points = sorted(points, key=lambda p: p["remaining_ratio"])
        ratios = [p["remaining_ratio"] for p in points]
        color = f"C{index}"
        ax.plot(ratios, [p["robust"] for p in points], marker="o", color=color, label=f"{name} robust")
        ax.plot(ratios, [p["natural"] for p in points], marker="s", linestyle=":", color=color,
                label=f"{name} natural")
    if dense is not None:
        ax.axhline(dense["robust"], linestyle="--", color="black", label="dense robust")
        ax.axhline(dense["natural"], linestyle="--", color="gray", label="dense natural")
    ratios = [p["remaining_ratio"] for points in series.values() for p in points]
    if ratios and min(ratios) > 0 and max(ratios) / min(ratios) >= 10:
        ax.set_xscale("log")  # ratios spanning decades (the paper's 1% to 80%)
    ax.set_xlabel("remaining ratio")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "accuracy vs remaining ratio")
    return _save(figure, path)


ZOOM_RATIOS = (0.01, 0.2)  # the paper's zoom-in panels: remaining ratios 1% to 20%


def ticket_kinds_vs_remaining_ratio(series, path, dense=None, zoom=ZOOM_RATIOS, title=None):
    """Robust and natural accuracy of several ticket kinds against the remaining ratio (paper Figs. 1-3, 5).

    `series`: {kind: [{"remaining_ratio", "natural", "robust"}, ...]}; `dense` (optional {"natural", "robust"}): the
    dense AT baseline. Axes, in order: robust (all ratios), robust zoomed to `zoom` (ratios in [lo, hi]), natural,
    natural zoomed. On each axes, line i is kind i, labelled with the kind, x data the sorted ratios (those inside
    the zoom on a zoom panel) and y data the accuracies; the baseline is a dashed horizontal line "dense AT".
    Points (and the baseline) with "<metric>_interval": [low, high] get error bars (a vertical segment each; the
    baseline a shaded band).
    """
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    for row, metric in enumerate(("robust", "natural")):
        for column, zoomed in enumerate((False, True)):
            ax = axes[row][column]
            for index, (kind, points) in enumerate(series.items()):
                points = sorted(points, key=lambda p: p["remaining_ratio"])
                if zoomed:
                    points = [p for p in points if zoom[0] <= p["remaining_ratio"] <= zoom[1]]
                ax.plot([p["remaining_ratio"] for p in points], [p[metric] for p in points], marker="o",
                        color=f"C{index}", label=kind)
                _error_bars(ax, points, metric, f"C{index}")
            if dense is not None:
                ax.axhline(dense[metric], linestyle="--", color="black", label="dense AT")
                _error_band(ax, dense, metric)
            if zoomed:
                ax.set_xlim(zoom[0] * 0.9, zoom[1] * 1.05)
                ax.set_title(f"{metric} accuracy, ratios {zoom[0] * 100:g}-{zoom[1] * 100:g}%")
            else:
                ax.set_title(f"{metric} accuracy")
            ax.set_xlabel("remaining ratio")
            ax.set_ylabel(f"{metric} accuracy")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def _error_bars(ax, points, metric, color):
    """Vertical segments over the points that carry "<metric>_interval" (not lines of `ax.lines`)."""
    key = f"{metric}_interval"
    shown = [p for p in points if key in p and not np.isnan(p[key][0])]
    if shown:
        ax.vlines([p["remaining_ratio"] for p in shown], [p[key][0] for p in shown], [p[key][1] for p in shown],
                  color=color, alpha=0.6, linewidth=2)


def _error_band(ax, baseline, metric):
    interval = baseline.get(f"{metric}_interval")
    if interval is not None and not np.isnan(interval[0]):
        ax.axhspan(interval[0], interval[1], color="black", alpha=0.08)


def robust_accuracy_by_epsilon(series_by_epsilon, path, dense_by_epsilon=None, title=None):
    """Robust accuracy against the remaining ratio, one axes per perturbation budget (paper Fig. 6).

    `series_by_epsilon`: {epsilon in /255: {kind: [{"remaining_ratio", "robust"}, ...]}}, axes in that order, each
    titled "epsilon <e>/255"; on each, line i is kind i (label: the kind, x: sorted ratios, y: robust accuracy);
    points with "robust_interval" get error bars.
    `dense_by_epsilon` (optional {epsilon: robust accuracy}): the dense AT baseline, a dashed line "dense AT".
    """
    epsilons = list(series_by_epsilon)
    figure, axes = plt.subplots(1, len(epsilons), figsize=(5.5 * len(epsilons), 4), squeeze=False)
    for ax, epsilon in zip(axes[0], epsilons):
        for index, (kind, points) in enumerate(series_by_epsilon[epsilon].items()):
            points = sorted(points, key=lambda p: p["remaining_ratio"])
            ax.plot([p["remaining_ratio"] for p in points], [p["robust"] for p in points], marker="o",
                    color=f"C{index}", label=kind)
            _error_bars(ax, points, "robust", f"C{index}")
        if dense_by_epsilon is not None and epsilon in dense_by_epsilon:
            ax.axhline(dense_by_epsilon[epsilon], linestyle="--", color="black", label="dense AT")
        ax.set_title(f"epsilon {epsilon:g}/255")
        ax.set_xlabel("remaining ratio")
        ax.set_ylabel("robust accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def r2s_bars(report, path):
    """Attacked accuracy of each ticket alone (gray) and of R2S under each adaptive attack (red), one axes per task.

    `report`: an R2S report (`r2s_report.evaluate_banks`): {"tasks": {task: {"tickets": [{name, attacked}], "r2s":
    {kind: accuracy}}}, "adaptive": [kind], "steps"}. Bar i of a task's axes is ticket i, then R2S per kind, in
    percent.
    """
    tasks = list(report["tasks"])
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        result = report["tasks"][task]
        names = [row["name"] for row in result["tickets"]] + [f"R2S {kind}" for kind in report["adaptive"]]
        values = [row["attacked"] for row in result["tickets"]] + [result["r2s"][k] for k in report["adaptive"]]
        colors = ["tab:gray"] * len(result["tickets"]) + ["tab:red"] * len(report["adaptive"])
        axis.bar(range(len(names)), [100 * v for v in values], color=colors)
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
        axis.set_ylabel(f"accuracy under PGD-{report['steps']} (%)")
        axis.set_title(task)
    figure.tight_layout()
    return _save(figure, path)


def mask_overlap_heatmap(analysis, path, title=None):
    """Two heat maps of a `masks.mask_analysis` result: the overall Jaccard overlap between tickets (cell (i, j)
    annotated f"{overlap:.2f}") and each ticket's kept fraction per layer (rows: tickets, columns: layers)."""
    names, layer_names = analysis["names"], analysis["layers"]
    jaccard = np.asarray(analysis["jaccard"]["overall"], float)
    kept = np.asarray([[analysis["kept_fraction"][name][layer] for layer in layer_names] for name in names], float)
    size = (4 + 1.1 * len(names) + 0.25 * len(layer_names), 1.5 + len(names))
    figure, (left, right) = plt.subplots(1, 2, figsize=size,
                                         gridspec_kw={"width_ratios": [len(names), max(len(layer_names) / 3, 1)]})
    image = left.imshow(jaccard, vmin=0, vmax=1, cmap="viridis")
    left.set_xticks(range(len(names)), labels=names, rotation=30, ha="right")
    left.set_yticks(range(len(names)), labels=names)
    for i in range(len(names)):
        for j in range(len(names)):
            left.text(j, i, f"{jaccard[i, j]:.2f}", ha="center", va="center",
                      color="white" if jaccard[i, j] < 0.5 else "black")
    left.set_title("Jaccard overlap of kept weights")
    figure.colorbar(image, ax=left)
    image = right.imshow(kept, aspect="auto", cmap="magma")
    right.set_yticks(range(len(names)), labels=names)
    right.set_xlabel("masked layer (network order)")
    right.set_title("kept fraction per layer")
    figure.colorbar(image, ax=right)
    if title:
        figure.suptitle(title)
    return _save(figure, path)
