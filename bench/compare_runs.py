"""Test accuracies of finished search runs side by side: natural and PGD-20 of the best and last checkpoints, the
settings that differ between them, the training time (sum of the epochs' seconds, and per training image-epoch),
and, for global top-k runs, the kept fraction per layer.

    python bench/compare_runs.py --name=beyond_quick runs/quick_rst runs/quick_trades runs/quick_global

Writes docs/<name>.json and prints a Markdown table.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("run_dirs", nargs="+")
    args = parser.parse_args()
    runs = []
    for run_dir in args.run_dirs:
        config = json.load(open(os.path.join(run_dir, "config.json")))
        metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
        epochs = metrics.get("epochs", [])
        seconds = sum(row["seconds"] for row in epochs)
        image_epochs = metrics["final"]["num_train"] * len(epochs)
        runs.append({"run_dir": run_dir, "config": config, "final": metrics["final"],
                     "train_seconds": seconds, "ms_per_image_epoch": 1000 * seconds / image_epochs,
                     "epoch_seconds": [row["seconds"] for row in epochs],
                     "kept_fractions": epochs[-1].get("kept_fractions") if epochs else None})
    keys = sorted({key for run in runs for key in run["config"]})
    differing = [key for key in keys if key not in ("data_dir",)
                 and len({json.dumps(run["config"].get(key)) for run in runs}) > 1]
    summary = {"runs": runs, "differing_settings": differing, "machine": common.cpu_info()["cpu_model"]}
    with open(os.path.join(common.DOCS, f"{args.name}.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    print("| run | " + " | ".join(differing) + " | best epoch | natural | PGD-20 | last: natural | last: PGD-20 | "
          "train min | ms per image-epoch |")
    print("|---" * (len(differing) + 8) + "|")
    for run in runs:
        best, last = run["final"]["best"], run["final"]["last"]
        settings = " | ".join(str(run["config"].get(key)) for key in differing)
        print(f"| {os.path.basename(run['run_dir'].rstrip('/'))} | {settings} | {best['epoch']} | "
              f"{best['test_natural_accuracy']:.1%} | {best['test_pgd20_accuracy']:.1%} | "
              f"{last['test_natural_accuracy']:.1%} | {last['test_pgd20_accuracy']:.1%} | "
              f"{run['train_seconds'] / 60:.1f} | {run['ms_per_image_epoch']:.2f} |")


if __name__ == "__main__":
    main()
