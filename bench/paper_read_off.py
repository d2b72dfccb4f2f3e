"""The paper protocol's PGD-20 read off the standard run, against its own attack, on a study's runs.

    python bench/paper_read_off.py --study_dir=runs/scaling --seed=0 --test_examples=1000

For the dense AT run and the RST at 20% of each width of seed --seed: PGD-20 at 8/255 under both protocols measured
together (`suite.evaluate_attacks` reads the paper protocol's verdicts off the standard run) and each protocol
alone, on the study's first --test_examples test images (its test seed 0, batch 500). Writes per run whether the
verdicts are identical, how many examples the two protocols judge differently, and the process CPU seconds of each
way to docs/paper_read_off.json.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study_dir", default="runs/scaling")
    parser.add_argument("--data_dir", default=os.environ.get("RST_TF_DATA_DIR", ""))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test_examples", type=int, default=1000)
    parser.add_argument("--name", default="paper_read_off")
    args = parser.parse_args()

    from rst_tf import attacks
    from rst_tf.reports import suite
    from rst_tf.study import measure
    from rst_tf.training import run_dir as run_files

    widths = sorted(name for name in os.listdir(args.study_dir) if name.startswith("width_"))
    test_sets = measure.TestSets(args.data_dir, 500, test_seed=0, test_examples=args.test_examples)
    standard, paper = (attacks.pgd_eval_config(8 / 255, protocol, 20) for protocol in ("standard", "paper"))
    rows = []
    for width in widths:
        for kind in ("dense_at", os.path.join("rst", "ratio_0.2")):
            run_dir = os.path.join(args.study_dir, width, f"seed_{args.seed}", kind)
            if not os.path.isfile(os.path.join(run_dir, "metrics.json")):
                continue
            network, config = run_files.load_run(run_dir, measure.checkpoint_of(run_files.read_config(run_dir)))
            batches = test_sets.batches(config)
            seconds, found = {}, {}
            for way, configs in (("together", [standard, paper]), ("standard", [standard]), ("paper", [paper])):
                began = time.process_time()
                found[way] = suite.evaluate_attacks(network, batches, configs, seed=0)["attacks"]
                seconds[way] = round(time.process_time() - began, 2)
            together_standard, together_paper = (attack["correct"] for attack in found["together"])
            row = {"run": os.path.relpath(run_dir, args.study_dir), "examples": len(together_standard),
                   "standard_accuracy": found["standard"][0]["accuracy"],
                   "paper_accuracy": found["paper"][0]["accuracy"],
                   "standard_identical": together_standard == found["standard"][0]["correct"],
                   "paper_identical": together_paper == found["paper"][0]["correct"],
                   "examples_the_protocols_judge_differently": sum(
                       a != b for a, b in zip(together_standard, together_paper)),
                   "cpu_seconds": seconds}
            rows.append(row)
            print(row, flush=True)
    common.write_results(args.name, {"study_dir": os.path.relpath(args.study_dir), "seed": args.seed,
                                     "test_examples": args.test_examples, "rows": rows})


if __name__ == "__main__":
    main()
