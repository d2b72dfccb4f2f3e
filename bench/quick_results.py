"""Summarise the CPU-scale quick search and its dense AT baseline into docs/results.md and docs/results.json.

    python bin/search.py --flagfile=flags/cifar10_quick.cfg --output_dir=runs/quick_rst
    python bin/search.py --flagfile=flags/cifar10_quick_dense_at.cfg --output_dir=runs/quick_dense_at
    python bench/quick_results.py runs/quick_rst runs/quick_dense_at
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def load(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    with open(os.path.join(run_dir, "config.json")) as handle:
        config = json.load(handle)
    return config, metrics


def plot_curves(summary, path):
    """Validation natural and PGD accuracy per epoch of both runs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(6, 4))
    for mode, style in (("rst", "-"), ("dense_at", "--")):
        rows = [row for row in summary[mode]["epochs"] if "val_natural_accuracy" in row]
        epochs = [row["epoch"] for row in rows]
        axis.plot(epochs, [100 * row["val_natural_accuracy"] for row in rows], style, marker="o",
                  label=f"{mode} natural")
        axis.plot(epochs, [100 * row["val_pgd20_accuracy"] for row in rows], style, marker="s",
                  label=f"{mode} PGD-20")
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy (%)")
    axis.set_title("CPU-scale quick search, CIFAR-10 (JPEG copy)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return figure


LATER_SECTIONS = "## Robustness evaluation"


def main(rst_dir, dense_dir):
    rows, summary = [], {}
    for label, run_dir in (("RST (mask search, weights untrained)", rst_dir), ("dense PGD AT baseline", dense_dir)):
        config, metrics = load(run_dir)
        final = metrics["final"]
        minutes = sum(row["seconds"] for row in metrics["epochs"]) / 60
        summary[config["mode"]] = {"config": config, "final": final, "epochs": metrics["epochs"],
                                   "train_minutes": minutes}
        for which in ("best", "last"):
            report = final[which]
            rows.append(f"| {label} | {which} (epoch {report['epoch']}) | "
                        f"{100 * report['test_natural_accuracy']:.2f} | {100 * report['test_pgd20_accuracy']:.2f} | "
                        f"{minutes:.1f} |")
    config = summary["rst"]["config"]
    lines = [
        "# Results",
        "",
        "## CPU-scale quick search (`flags/cifar10_quick.cfg`)",
        "",
        f"Data: CIFAR-10 (JPEG copy), {summary['rst']['final']['num_train']} training images, "
        f"{summary['rst']['final']['num_validation']} held-out validation images for model selection, "
        f"{summary['rst']['final']['num_test']} test images. Network: ResNet18 at width "
        f"{config['width_multiplier']}, remaining ratio {config['remaining_ratio']} for the RST "
        f"({summary['rst']['final']['weights']:,} weights before masking). Search: PGD-{config['attack_steps']} "
        f"ε {config['epsilon'] * 255:.0f}/255, {config['epochs']} epochs, batch {config['batch_size']}, seed "
        f"{config['seed']}; the baseline trains all weights with the same attack, data and schedule. Test attack: "
        f"PGD-{config['eval_attack_steps']} ε {config['epsilon'] * 255:.0f}/255, step ε/4, random start. "
        "2 CPU cores.",
        "",
        "| model | checkpoint | natural acc (%) | PGD-20 acc (%) | training minutes |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Commands:",
        "",
        "```sh",
        *[line.strip() for line in __doc__.strip().splitlines()[2:]],
        "```",
        "",
        "Per-epoch figures are in docs/results.json.",
    ]
    plot_curves(summary, os.path.join(common.DOCS, "results_quick.png"))
    lines += ["", "![validation accuracy per epoch](results_quick.png)", "",
              "Training minutes are wall time on a shared machine and not a speed comparison (see "
              "docs/performance.md for step times measured side by side)."]
    os.makedirs(common.DOCS, exist_ok=True)
    path = os.path.join(common.DOCS, "results.md")
    kept = ""  # sections after the search summary (evaluation, R2S) are kept as they are
    if os.path.exists(path):
        with open(path) as handle:
            text = handle.read()
        if LATER_SECTIONS in text:
            kept = "\n" + text[text.index(LATER_SECTIONS):]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n" + kept)
    common.write_results("results", summary)
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
