"""Our AutoAttack against the reference's on the same images: per-example verdicts, accuracies and times.

    bin/evaluate --flagfile=flags/evaluate/quick.cfg --run_dir=runs/quick_rst --output_dir=runs/quick_rst/eval
    /tmp/ref_venv/bin/python bench/reference_autoattack.py --run_dir=runs/quick_rst --num_examples=1000 \\
        --runs=autoattack --threads=1 --output=docs/reference_autoattack_quick_rst.json
    python bench/compare_autoattack.py --name=quick_rst --ours=runs/quick_rst/eval/eval.json \\
        --reference=docs/reference_autoattack_quick_rst.json [--ours_time_log=F --reference_time_log=F]

The time logs are the output of `/usr/bin/time -v` around each command (process CPU seconds: user + system).
Writes docs/autoattack_<name>.json and prints one Markdown table row.
"""
import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def process_cpu_seconds(path):
    """User + system seconds from a `/usr/bin/time -v` log, or None."""
    if not path:
        return None
    text = open(path).read()
    parts = [float(re.search(rf"{key} time \(seconds\): ([0-9.]+)", text).group(1)) for key in ("User", "System")]
    return sum(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--ours", required=True, help="eval.json of bin/evaluate with autoattack")
    parser.add_argument("--reference", required=True, help="JSON of bench/reference_autoattack.py --run_dir")
    parser.add_argument("--ours_time_log", default="")
    parser.add_argument("--reference_time_log", default="")
    args = parser.parse_args()
    run = json.load(open(args.ours))["runs"][0]
    ours = next(attack for attack in run["attacks"] if attack["name"] == "autoattack")
    reference = json.load(open(args.reference))
    ref_natural, ref_attack = reference["results"]["natural"], reference["results"]["autoattack"]
    if run["natural"]["correct"] != ref_natural["correct"]:
        raise SystemExit("error: the two evaluations classify the clean images differently (not the same model/images)")
    # An example is robust only if correct clean and under the attack (the reference's verdicts count the same way).
    ours_robust = [a & n for a, n in zip(ours["correct"], run["natural"]["correct"])]
    ref_robust = [a & n for a, n in zip(ref_attack["correct"], ref_natural["correct"])]
    count = len(ours_robust)
    summary = {
        "name": args.name, "num_examples": count,
        "natural_accuracy": run["natural"]["accuracy"],
        "ours": {"accuracy": sum(ours_robust) / count, "wall_seconds": ours.get("seconds"),
                 "attack_cpu_seconds": ours.get("cpu_seconds"),
                 "process_cpu_seconds": process_cpu_seconds(args.ours_time_log)},
        "reference": {"accuracy": sum(ref_robust) / count, "wall_seconds": ref_attack["seconds"],
                      "process_cpu_seconds": process_cpu_seconds(args.reference_time_log),
                      "environment": reference["environment"]},
        "agreement": sum(o == r for o, r in zip(ours_robust, ref_robust)) / count,
        "robust_only_for_ours": sum(o and not r for o, r in zip(ours_robust, ref_robust)),
        "robust_only_for_reference": sum(r and not o for o, r in zip(ours_robust, ref_robust)),
        "machine": common.cpu_info()["cpu_model"],
    }
    with open(os.path.join(common.DOCS, f"autoattack_{args.name}.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    o, r = summary["ours"], summary["reference"]
    print(f"| {args.name} | {summary['natural_accuracy']:.1%} | {o['accuracy']:.1%} | {r['accuracy']:.1%} | "
          f"{summary['agreement']:.1%} | {o['wall_seconds'] / 60:.1f} / {r['wall_seconds'] / 60:.1f} | "
          f"{o['process_cpu_seconds'] or float('nan'):.0f} / {r['process_cpu_seconds'] or float('nan'):.0f} |")


if __name__ == "__main__":
    main()
