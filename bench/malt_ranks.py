"""How many MALT-ranked targets autoattack_fast needs: for each example that survives APGD-CE, a targeted-APGD run
(100 iterations) towards every other class, and the rank of the best breaking class under MALT's ranking and
under the clean-logit ranking of standard AutoAttack's APGD-T.

    python bench/malt_ranks.py --run_dir=runs/quick_rst --num_examples=300 --name=quick_rst

Same seeded test subset, seeds and component streams as bin/evaluate --num_examples=300 --batch_size=300 --seed=0.
Writes docs/autoattack_malt_ranks.json (one entry per --name) and prints the coverage by number of targets.
"""
import argparse
import os
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from rst_tf import attacks  # noqa: E402
from rst_tf.attacks import apgd, core, malt  # noqa: E402
from rst_tf.method import layers, masking  # noqa: E402
from rst_tf.reports import runs  # noqa: E402
from rst_tf.training import run_dir as run_folder  # noqa: E402


def logits_of_run(run_dir, checkpoint):
    network, config = run_folder.load_run(run_dir, checkpoint)
    masked = [layer for layer in layers.masked_layers(network) if layer.remaining_ratio < 1.0]
    masks = dict(zip(masked, [tf.constant(layer.binary_mask()) for layer in masked]))

    @tf.function(reduce_retracing=True)
    def logits(images):
        with masking.supplied_masks(masks):
            return network(images, training=False)

    return logits, config


def first_rank(breaks, order):
    """Per example, the 1-based rank (in `order`, [examples, classes - 1] class ids) of the first class that breaks
    it (`breaks`: [examples, classes] booleans), or 0 if none does."""
    ranked = np.take_along_axis(breaks, order, axis=1)
    return np.where(ranked.any(axis=1), ranked.argmax(axis=1) + 1, 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--name", required=True)
    parser.add_argument("--data_dir", default=os.environ.get("RST_TF_DATA_DIR", ""))
    parser.add_argument("--num_examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilon", type=float, default=8.0, help="L-inf budget in /255")
    args = parser.parse_args()
    if not os.path.isdir(args.run_dir):
        parser.error(f"--run_dir {args.run_dir} is not a folder")
    start_time = time.time()
    logits_fn, config = logits_of_run(args.run_dir, args.checkpoint)
    batches = runs.test_batches(config.dataset, args.data_dir, args.num_examples, args.num_examples, args.seed,
                                config.class_subset)
    images, labels = [tf.concat(part, 0) for part in zip(*batches)]
    epsilon, steps = args.epsilon / 255, attacks.AUTOATTACK_STEPS
    seed = tf.constant([args.seed, 0], tf.int64)  # bin/evaluate's seed of the first (only) batch
    clean_logits = tf.cast(logits_fn(images), tf.float32)
    _, broken = apgd.untargeted(logits_fn, images, labels, epsilon, steps, "ce", core.fold_seed(seed, 0),
                                clean_logits=clean_logits)
    survivors = np.flatnonzero(~core.predicted_wrong(clean_logits, labels).numpy() & ~broken.numpy())
    x, y, z = (tf.gather(t, survivors) for t in (images, labels, clean_logits))
    classes = clean_logits.shape[-1]
    malt_order = malt.ranked_targets(logits_fn, x, y, z, classes - 1).numpy()
    logit_order = apgd.ranked_targets(z, y).numpy()
    # One run per (example, class), each from the start of its MALT rank (as autoattack_fast draws it).
    targeted_seed = core.fold_seed(seed, 1)
    count, rows = len(survivors), classes - 1
    starts = [tf.gather(apgd.uniform_start(x, core.fold_seed(targeted_seed, rank), epsilon), tf.range(count))
              for rank in range(rows)]
    row_images = tf.tile(x, [rows, 1, 1, 1])
    _, fooled = apgd.run_until_fooled(logits_fn, row_images, tf.tile(y, [rows]), tf.concat(starts, 0), epsilon, steps,
                                      "dlr_targeted", targets=tf.reshape(tf.transpose(malt_order), [-1]))
    fooled_by_rank = fooled.numpy().reshape(rows, count).T  # [examples, MALT rank]
    breaks = np.zeros([count, classes], bool)
    np.put_along_axis(breaks, malt_order, fooled_by_rank, axis=1)
    malt_rank, logit_rank = first_rank(breaks, malt_order), first_rank(breaks, logit_order)
    broken_count = int(np.sum(malt_rank > 0))
    coverage = {ranking: [int(np.sum((rank > 0) & (rank <= k))) for k in range(1, rows + 1)]
                for ranking, rank in (("malt", malt_rank), ("clean_logit", logit_rank))}
    entry = {"run_dir": os.path.basename(os.path.normpath(args.run_dir)), "examples": int(len(labels)),
             "natural_correct": int(np.sum(~core.predicted_wrong(clean_logits, labels).numpy())),
             "survivors_of_apgd_ce": count, "broken_by_some_target": broken_count,
             "broken_within_top_k": coverage, "seconds": round(time.time() - start_time, 1)}
    common.write_entry("autoattack_malt_ranks", args.name, entry)
    print(f"{args.name}: {count} survive APGD-CE, {broken_count} broken by some target; top-k coverage "
          f"MALT {coverage['malt']}, clean logit {coverage['clean_logit']}")


if __name__ == "__main__":
    main()
