"""The scaling study's pilot: dense AT at each width on the study's regime, and the cost model of the whole study.

    python bench/scaling_pilot.py --study_dir=runs/scaling --eval_examples=500

Reads each width's seed-0 dense AT run of the study (the study runs them first, so its first runs are the pilot):
test accuracy of its best and last checkpoints and the process CPU seconds of its training (OUTPUT_DIR/
run_times.json, or --train_cpu_seconds=WIDTH:SECONDS for a run timed outside the study). Measures the CPU
milliseconds of one PGD-20 example per width (standard protocol, --eval_examples test images, batch 500) beside
the fp32 peak, and of one autoattack_fast example (--autoattack_examples test images). The training costs per
image-epoch are the means over every run of the study finished and timed in one piece (any seed; a resumed run's
seconds are its last part's only), dense AT's and the RST search's; the standard AutoAttack's cost is counted
as the fast one's times the largest ratio of the two in docs/autoattack_speed.json. Writes docs/scaling_pilot.json,
whose "cost_model" `bin/reproduce --study=scaling --dry_run` reads.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def _eval_cpu_ms(run_dir, data_dir, eval_examples, attack_name="pgd20"):
    """Process CPU milliseconds per example of PGD-20 (standard) or of `attack_name` from the evaluation suite's
    registry on the run's best checkpoint."""
    import dataclasses

    from rst_tf import attacks, data
    from rst_tf.measuring import attacked
    from rst_tf.reports import suite
    from rst_tf.training import build
    from rst_tf.training import run_dir as run_files

    network, config = run_files.load_run(run_dir, "best")
    config = dataclasses.replace(config, data_dir=data_dir, test_examples=eval_examples)
    batches = suite.materialize(data.eval_batches(build.load_data(config).test, 500))
    if attack_name == "pgd20":
        attack = attacks.pgd_eval_config(8 / 255, "standard", 20)
        attacked.AttackedAccuracy(network, attack, 0).per_example(batches[:1])  # trace once, outside the timing
        started = time.process_time()
        attacked.AttackedAccuracy(network, attack, 0).per_example(batches)
        return 1000 * (time.process_time() - started) / eval_examples
    result = suite.evaluate_attacks(network, batches, [suite.attack_config(attack_name, 8 / 255)], seed=0)
    return 1000 * result["attacks"][0]["cpu_seconds"] / eval_examples


def _train_cpu_seconds(timed, relative_run):
    """The CPU seconds that OUTPUT_DIR/run_times.json holds for the run at `relative_run` under the study, or None
    (also for a resumed run, whose seconds are those of its last part only)."""
    key = next((k for k in timed if os.path.normpath(k).endswith(os.path.normpath(relative_run))), None)
    return timed[key]["cpu_seconds"] if key and not timed[key].get("resumed") else None


def _timed_runs(timed, study_dir, width):
    """([dense AT CPU seconds], [RST search CPU seconds]) of the runs at `width`, every seed, timed in one piece."""
    dense, rst = [], []
    width_dir = os.path.join(study_dir, f"width_{width:g}")
    for seed_name in sorted(os.listdir(width_dir)) if os.path.isdir(width_dir) else []:
        root = os.path.join(f"width_{width:g}", seed_name)
        seconds = _train_cpu_seconds(timed, os.path.join(root, "dense_at"))
        dense += [] if seconds is None else [seconds]
        rst_dir = os.path.join(study_dir, root, "rst")
        for name in sorted(os.listdir(rst_dir)) if os.path.isdir(rst_dir) else []:
            seconds = _train_cpu_seconds(timed, os.path.join(root, "rst", name))
            rst += [] if seconds is None else [seconds]
    return dense, rst


def _standard_over_fast(path):
    """The largest ratio of standard to fast AutoAttack CPU seconds in docs/autoattack_speed.json (None if absent)."""
    if not os.path.isfile(path):
        return None
    rows = json.load(open(path))["rows"]
    return max(row["standard_cpu_seconds"] / row["fast_cpu_seconds"] for row in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study_dir", default="runs/scaling")
    parser.add_argument("--data_dir", default=os.environ.get("RST_TF_DATA_DIR", ""))
    parser.add_argument("--eval_examples", type=int, default=500)
    parser.add_argument("--autoattack_examples", type=int, default=500,
                        help="test images for the autoattack_fast timing (0: not measured)")
    parser.add_argument("--train_cpu_seconds", action="append", default=[],
                        help="WIDTH:SECONDS, the training CPU seconds of a run timed outside the study")
    parser.add_argument("--name", default="scaling_pilot")
    args = parser.parse_args()
    timed = json.load(open(os.path.join(args.study_dir, "run_times.json"))) if os.path.isfile(
        os.path.join(args.study_dir, "run_times.json")) else {}
    outside = {float(w): float(s) for w, s in (item.split(":") for item in args.train_cpu_seconds)}
    rows, train_ms, train_rst_ms, eval_ms, autoattack_ms = [], {}, {}, {}, {}
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
        cpu_seconds = _train_cpu_seconds(timed, os.path.join(f"width_{width:g}", "seed_0", "dense_at"))
        cpu_seconds = outside.get(width) if cpu_seconds is None else cpu_seconds
        # The cost model: every run of the width the study has finished and timed in one piece, any seed.
        dense_seconds, rst_seconds = _timed_runs(timed, args.study_dir, width)
        dense_seconds = dense_seconds or ([] if cpu_seconds is None else [cpu_seconds])
        train_ms[f"{width:g}"] = (1000 * sum(dense_seconds) / len(dense_seconds) / image_epochs
                                  if dense_seconds else None)
        if rst_seconds:
            train_rst_ms[f"{width:g}"] = 1000 * sum(rst_seconds) / len(rst_seconds) / image_epochs
        eval_ms[f"{width:g}"] = _eval_cpu_ms(run_dir, args.data_dir, args.eval_examples)
        if args.autoattack_examples:
            autoattack_ms[f"{width:g}"] = _eval_cpu_ms(run_dir, args.data_dir, args.autoattack_examples,
                                                       "autoattack_fast")
        rows.append({"width": width, "best": final["best"], "last": final["last"],
                     "epochs": [{k: v for k, v in e.items() if not isinstance(v, (list, dict))}
                                for e in metrics["epochs"]],
                     "train_image_epochs": image_epochs, "train_cpu_seconds": cpu_seconds,
                     "train_cpu_ms_per_image_epoch": train_ms[f"{width:g}"],
                     "train_rst_cpu_ms_per_image_epoch": train_rst_ms.get(f"{width:g}"),
                     "dense_runs_timed": len(dense_seconds), "rst_runs_timed": len(rst_seconds),
                     "eval_pgd20_cpu_ms_per_example": eval_ms[f"{width:g}"],
                     "eval_autoattack_fast_cpu_ms_per_example": autoattack_ms.get(f"{width:g}")})
        print(f"width {width:g}: natural {final['best']['test_natural_accuracy']:.3f}, PGD-20 "
              f"{final['best']['test_pgd20_accuracy']:.3f}; train {train_ms[f'{width:g}']} ms/image-epoch, "
              f"RST search {train_rst_ms.get(f'{width:g}')} ms/image-epoch, PGD-20 {eval_ms[f'{width:g}']:.2f} "
              f"ms/example, autoattack_fast {autoattack_ms.get(f'{width:g}')} ms/example", flush=True)
    common.write_results(args.name, {
        "study_dir": os.path.relpath(args.study_dir), "eval_examples": args.eval_examples,
        "autoattack_examples": args.autoattack_examples, "runs": rows,
        "cost_model": {"train_ms": {w: v for w, v in train_ms.items() if v is not None}, "train_rst_ms": train_rst_ms,
                       "eval_pgd_ms": eval_ms, "eval_autoattack_fast_ms": autoattack_ms,
                       "standard_over_fast_autoattack": _standard_over_fast(os.path.join(
                           os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                           "autoattack_speed.json"))}})


if __name__ == "__main__":
    main()
