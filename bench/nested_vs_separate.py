"""Nested tickets from one search against tickets searched one ratio at a time: test accuracy per ratio.

    bin/search --flagfile=flags/cifar10_quick_nested.cfg --output_dir=runs/quick_nested
    bin/search --flagfile=flags/cifar10_quick.cfg --remaining_ratio=R --output_dir=runs/quick_ratio_R   # each R
    python bench/nested_vs_separate.py --name=nested_quick --nested=runs/quick_nested \
        runs/quick_ratio_0.05 runs/quick_ratio_0.1 runs/quick_ratio_0.2 runs/quick_ratio_0.3

Both read the best checkpoint's test report in metrics.json (natural and PGD-20 accuracy on the runs' test subset,
with 95% Wilson intervals). Writes docs/<name>.json and docs/<name>.png, and prints a Markdown table.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from rst_tf.measuring import intervals  # noqa: E402
from rst_tf.reports import plots  # noqa: E402


def _read(run_dir, name):
    with open(os.path.join(run_dir, name)) as handle:
        return json.load(handle)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--nested", required=True, help="the nested run folder")
    parser.add_argument("separate", nargs="+", help="single-ratio run folders of the same setting")
    args = parser.parse_args()
    nested_config, nested_final = _read(args.nested, "config.json"), _read(args.nested, "metrics.json")["final"]
    count = nested_final["num_test"]
    nested = [{"remaining_ratio": r, "natural": nested_final["best"][f"test_natural_accuracy_ratio_{r:g}"],
               "robust": nested_final["best"][f"test_pgd20_accuracy_ratio_{r:g}"]}
              for r in nested_config["nested_ratios"]]
    separate = []
    for run_dir in args.separate:
        config, final = _read(run_dir, "config.json"), _read(run_dir, "metrics.json")["final"]
        separate.append({"remaining_ratio": config["remaining_ratio"],
                         "natural": final["best"]["test_natural_accuracy"],
                         "robust": final["best"]["test_pgd20_accuracy"], "run_dir": run_dir,
                         "train_seconds": sum(row["seconds"] for row in _read(run_dir, "metrics.json")["epochs"])})
    nested_seconds = sum(row["seconds"] for row in _read(args.nested, "metrics.json")["epochs"])
    for point in nested + separate:
        point["robust_interval"] = list(intervals.accuracy_interval(point["robust"], count))
    summary = {"nested_run": args.nested, "nested": nested, "separate": separate, "num_test": count,
               "nested_train_seconds": nested_seconds, "machine": common.cpu_info()["cpu_model"]}
    with open(os.path.join(common.DOCS, f"{args.name}.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    plots.accuracy_vs_remaining_ratio({"nested (one search)": nested, "separate searches": separate},
                                      os.path.join(common.DOCS, f"{args.name}.png"),
                                      title="nested vs separately searched tickets, test accuracy")
    print("| remaining ratio | nested: natural | nested: PGD-20 | separate: natural | separate: PGD-20 |")
    print("|---|---|---|---|---|")
    by_ratio = {p["remaining_ratio"]: p for p in separate}
    for point in nested:
        other = by_ratio.get(point["remaining_ratio"])
        row = [intervals.format_accuracy(point["natural"], count), intervals.format_accuracy(point["robust"], count)]
        row += ([intervals.format_accuracy(other["natural"], count), intervals.format_accuracy(other["robust"], count)]
                if other else ["-", "-"])
        print(f"| {point['remaining_ratio']:g} | " + " | ".join(row) + " |")
    print(f"training minutes: nested {nested_seconds / 60:.1f}, separate "
          f"{sum(p['train_seconds'] for p in separate) / 60:.1f} (sum)")


if __name__ == "__main__":
    main()
