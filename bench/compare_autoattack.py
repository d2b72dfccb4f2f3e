"""Our AutoAttack against the reference's on the same images: per-example verdicts, accuracies and times.

    bin/evaluate --flagfile=flags/evaluate/quick.cfg --run_dir=runs/quick_rst --output_dir=runs/quick_rst/eval
    /tmp/ref_venv/bin/python bench/reference_autoattack.py --run_dir=runs/quick_rst --num_examples=1000 \\
        --runs=autoattack --threads=1 --output=docs/reference_autoattack_quick_rst.json
    python bench/compare_autoattack.py --name=quick_rst --ours=runs/quick_rst/eval/eval.json \\
        --reference=docs/reference_autoattack_quick_rst.json [--ours_time_log=F --reference_time_log=F]

The time logs are the output of `/usr/bin/time -v` around each command (process CPU seconds: user + system).
Writes docs/autoattack_<name>.json and prints one Markdown table row.

With --speed: the reference, our standard `autoattack` and `autoattack_fast` on the same images (each command under
`/usr/bin/time -v`, the same thread count); adds or replaces the row --name of docs/autoattack_speed.json, whose
"machine" is the CPU model and the fp32 peak measured now (see docs/autoattack.md for the commands):

    python bench/compare_autoattack.py --speed --name=quick_rst --reference=REF.json --reference_time_log=REF.time \
        --standard=STANDARD/eval.json --standard_time_log=STANDARD.time --fast=FAST/eval.json \
        --fast_time_log=FAST.time [--load="load average 2.1"]
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
    return round(sum(parts), 2)


def robust_of(eval_json, attack_name):
    """(natural correct, robust per example, seconds) of `attack_name` in a bin/evaluate eval.json."""
    run = json.load(open(eval_json))["runs"][0]
    attack = next(attack for attack in run["attacks"] if attack["name"] == attack_name)
    natural = run["natural"]["correct"]
    return natural, [a & n for a, n in zip(attack["correct"], natural)], attack.get("seconds")


def speed_row(args):
    """One row of docs/autoattack_speed.json from the three evaluations and their time logs."""
    reference = json.load(open(args.reference))
    ref_natural, ref_attack = reference["results"]["natural"]["correct"], reference["results"]["autoattack"]
    ref_robust = [a & n for a, n in zip(ref_attack["correct"], ref_natural)]
    natural, standard, standard_seconds = robust_of(args.standard, "autoattack")
    fast_natural, fast, fast_seconds = robust_of(args.fast, "autoattack_fast")
    if natural != ref_natural or fast_natural != natural:
        raise SystemExit("error: the evaluations classify the clean images differently (not the same model/images)")
    count = len(natural)
    times = {name: process_cpu_seconds(path) for name, path in
             (("reference", args.reference_time_log), ("standard", args.standard_time_log),
              ("fast", args.fast_time_log))}
    return {
        "model": args.name, "examples": count,
        "reference_cpu_seconds": times["reference"], "standard_cpu_seconds": times["standard"],
        "fast_cpu_seconds": times["fast"],
        "reference_accuracy": sum(ref_robust) / count, "standard_accuracy": sum(standard) / count,
        "fast_accuracy": sum(fast) / count,
        "broken_by_standard_not_fast": sum(f and not s for s, f in zip(standard, fast)),
        "broken_by_reference_not_fast": sum(f and not r for r, f in zip(ref_robust, fast)),
        "broken_by_reference_not_standard": sum(s and not r for r, s in zip(ref_robust, standard)),
        "natural_accuracy": sum(natural) / count,
        "reference_wall_seconds": wall_seconds(args.reference_time_log),
        "standard_wall_seconds": wall_seconds(args.standard_time_log),
        "fast_wall_seconds": wall_seconds(args.fast_time_log),
        "attack_wall_seconds": {"reference": ref_attack["seconds"], "standard": standard_seconds,
                                "fast": fast_seconds},
        "threads": reference["environment"].get("torch_threads"),
        "fast_settings": args.fast_settings,
    }


def wall_seconds(path):
    """Elapsed wall seconds from a `/usr/bin/time -v` log, or None."""
    if not path:
        return None
    found = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([0-9:.]+)", open(path).read())
    seconds = 0.0
    for part in found.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def write_speed(row, load):
    """Adds or replaces `row` in docs/autoattack_speed.json (its other keys, e.g. earlier measurements, kept); the
    machine is measured now."""
    path = os.path.join(common.DOCS, "autoattack_speed.json")
    document = json.load(open(path)) if os.path.exists(path) else {}
    rows = [old for old in document.get("rows", []) if old["model"] != row["model"]] + [row]
    peak = common.cpu_peak_gflops()
    machine = {"cpu_model": common.cpu_info()["cpu_model"], "fp32_peak_gflops": round(peak, 1), "cpus": os.cpu_count(),
               "load": load}
    document.update(machine=machine, rows=rows)
    with open(path + ".tmp", "w") as handle:
        json.dump(document, handle, indent=1)
    os.replace(path + ".tmp", path)
    ratio = lambda name: row[f"{name}_cpu_seconds"] / row["reference_cpu_seconds"]  # noqa: E731
    print(f"| {row['model']} | {row['examples']} | {row['reference_accuracy']:.1%} | {row['standard_accuracy']:.1%} | "
          f"{row['fast_accuracy']:.1%} | {row['broken_by_standard_not_fast']} | {row['reference_cpu_seconds']:.0f} | "
          f"{row['standard_cpu_seconds']:.0f} ({ratio('standard'):.2f}) | {row['fast_cpu_seconds']:.0f} "
          f"({ratio('fast'):.2f}) |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--ours", default="", help="eval.json of bin/evaluate with autoattack")
    parser.add_argument("--reference", required=True, help="JSON of bench/reference_autoattack.py --run_dir")
    parser.add_argument("--ours_time_log", default="")
    parser.add_argument("--reference_time_log", default="")
    parser.add_argument("--speed", action="store_true", help="write a row of docs/autoattack_speed.json")
    parser.add_argument("--standard", default="", help="--speed: eval.json of bin/evaluate --attacks=autoattack")
    parser.add_argument("--standard_time_log", default="")
    parser.add_argument("--fast", default="", help="--speed: eval.json of bin/evaluate --attacks=autoattack_fast")
    parser.add_argument("--fast_time_log", default="")
    parser.add_argument("--fast_settings", default="", help="--speed: e.g. '--malt_targets=3'")
    parser.add_argument("--load", default="", help="--speed: the machine's load during the runs, as noted")
    args = parser.parse_args()
    if args.speed:
        for name in ("standard", "fast", "reference_time_log", "standard_time_log", "fast_time_log"):
            if not getattr(args, name):
                parser.error(f"--speed needs --{name}")
        write_speed(speed_row(args), args.load)
        return
    if not args.ours:
        parser.error("--ours is required without --speed")
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
