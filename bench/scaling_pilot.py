"""The scaling study's pilot: dense AT at each width on the study's regime, and the cost model of the whole study.

    python bench/scaling_pilot.py --study_dir=runs/scaling --eval_examples=500

Reads each width's seed-0 dense AT run of the study (the study runs them first, so its first runs are the pilot):
test accuracy of its best and last checkpoints and the process CPU seconds of its training (OUTPUT_DIR/
run_times.json, or --train_cpu_seconds=WIDTH:SECONDS for a run timed outside the study). Measures the CPU
milliseconds of one PGD-20 example per width (standard protocol, --eval_examples test images, batch 500) beside
the fp32 peak. Writes docs/scaling_pilot.json, whose "cost_model" `bin/reproduce --study=scaling --dry_run` reads.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def _eval_cpu_ms(run_dir, data_dir, eval_examples):
    """Process CPU milliseconds per example of PGD-20 (standard) on the run's best checkpoint."""
    import dataclasses

    from rst_tf import attacks, data
    from rst_tf.measuring import attacked
    from rst_tf.reports import suite
    from rst_tf.training import build
    from rst_tf.training import run_dir as run_files

    network, config = run_files.load_run(run_dir, "best")
    config = dataclasses.replace(config, data_dir=data_dir, test_examples=eval_examples)
    batches = suite.materialize(data.eval_batches(build.load_data(config).test, 500))
    pgd = attacks.pgd_eval_config(8 / 255, "standard", 20)
    attacked.AttackedAccuracy(network, pgd, 0).per_example(batches[:1])  # trace once, outside the timing
    started = time.process_time()
    attacked.AttackedAccuracy(network, pgd, 0).per_example(batches)
    return 1000 * (time.process_time() - started) / eval_examples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study_dir", default="runs/scaling")
    parser.add_argument("--data_dir", default=os.environ.get("RST_TF_DATA_DIR", ""))
    parser.add_argument("--eval_examples", type=int, default=500)
    parser.add_argument("--train_cpu_seconds", action="append", default=[],
                        help="WIDTH:SECONDS, the training CPU seconds of a run timed outside the study")
    parser.add_argument("--name", default="scaling_pilot")
    args = parser.parse_args()
    timed = json.load(open(os.path.join(args.study_dir, "run_times.json"))) if os.path.isfile(
        os.path.join(args.study_dir, "run_times.json")) else {}
    outside = {float(w): float(s) for w, s in (item.split(":") for item in args.train_cpu_seconds)}
    rows, train_ms, eval_ms = [], {}, {}
    widths = sorted(float(name[len("width_"):]) for name in os.listdir(args.study_dir) if name.startswith("width_"))
    for width in widths:
        run_dir = os.path.join(args.study_dir, f"width_{width:g}", "seed_0", "dense_at")
        metrics_path = os.path.join(run_dir, "metrics.json")
        metrics = json.load(open(metrics_path)) if os.path.isfile(metrics_path) else {}
        if "final" not in metrics:
            print(f"width {width:g}: dense AT not finished, skipped")
            continue
        final = metrics["final"]
        image_epochs = final["num_train"] * len(metrics["epochs"])
        key = next((k for k in timed if os.path.normpath(k) == os.path.normpath(
            os.path.relpath(run_dir)) or k.endswith(os.path.join(f"width_{width:g}", "seed_0", "dense_at"))), None)
        cpu_seconds = timed[key]["cpu_seconds"] if key else outside.get(width)
        train_ms[f"{width:g}"] = None if cpu_seconds is None else 1000 * cpu_seconds / image_epochs
        eval_ms[f"{width:g}"] = _eval_cpu_ms(run_dir, args.data_dir, args.eval_examples)
        rows.append({"width": width, "best": final["best"], "last": final["last"],
                     "epochs": [{k: v for k, v in e.items() if not isinstance(v, (list, dict))}
                                for e in metrics["epochs"]],
                     "train_image_epochs": image_epochs, "train_cpu_seconds": cpu_seconds,
                     "train_cpu_ms_per_image_epoch": train_ms[f"{width:g}"],
                     "eval_pgd20_cpu_ms_per_example": eval_ms[f"{width:g}"]})
        print(f"width {width:g}: natural {final['best']['test_natural_accuracy']:.3f}, PGD-20 "
              f"{final['best']['test_pgd20_accuracy']:.3f}; train {train_ms[f'{width:g}']} ms/image-epoch, "
              f"eval {eval_ms[f'{width:g}']:.2f} ms/example")
    common.write_results(args.name, {
        "study_dir": os.path.relpath(args.study_dir), "eval_examples": args.eval_examples, "runs": rows,
        "cost_model": {"train_ms": {w: v for w, v in train_ms.items() if v is not None}, "eval_pgd_ms": eval_ms}})


if __name__ == "__main__":
    main()
