"""Size of a `.rst` bank of nested tickets: masks coded as the positions each adds to the previous one, against the
same masks coded independently.

    python bench/nested_codec.py [--ratios 0.05,0.1,0.2,0.3,0.4,0.5] [--seed 0]

The tickets are the nested masks of the full-width CIFAR ResNet18 (10 classes) at the given ratios, all from one set
of random scores (the network's own seeded score init), written with `rst_tf.deployment.artifact.write` twice: with
nested coding (the default) and without. Both files are read back and must give the same masks. The entropy bounds are
sum(size * H(fraction kept)) for independent masks and sum(size * H(the ratio band each weight falls in)) for nested
ones. Results: docs/nested_codec.json.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from rst_tf.deployment import artifact  # noqa: E402
from rst_tf.search import nested  # noqa: E402
from rst_tf.training import build  # noqa: E402
from rst_tf.training.config import SearchConfig  # noqa: E402

IMAGE_SHAPE, NUM_CLASSES = (32, 32, 3), 10


def entropy_bits(probabilities):
    return -sum(p * math.log2(p) for p in probabilities if p > 0)


def mask_bytes(path):
    """{ticket name: bytes of its coded masks} of a `.rst` file (the quotient and remainder streams)."""
    header = json.loads(np.load(path)["header"].tobytes().decode())
    return header["version"], {entry["name"]: sum(code["quotients"][1] + code["remainders"][1]
                                                  for code in entry["masks"]) for entry in header["tickets"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ratios", default="0.05,0.1,0.2,0.3,0.4,0.5")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = SearchConfig(network="resnet18", width_multiplier=1.0,
                          nested_ratios=tuple(float(r) for r in args.ratios.split(",")), seed=args.seed).resolved()
    ratios = config.ticket_ratios()
    network = build.build_network(config, NUM_CLASSES, IMAGE_SHAPE)
    tickets = nested.tickets_of(network, ratios, task=config.dataset)
    spec = artifact.network_spec(dataclasses.asdict(config), NUM_CLASSES, IMAGE_SHAPE)
    sizes = [int(mask.size) for mask in tickets[0].masks.values()]
    results = {"network": "resnet18 (CIFAR, width 1, 10 classes)", "ratios": list(ratios), "seed": args.seed,
               "masked_layers": len(sizes), "mask_entries": sum(sizes)}
    with tempfile.TemporaryDirectory() as folder:
        for name, nested_coding in (("nested", True), ("independent", False)):
            path = os.path.join(folder, f"{name}.rst")
            artifact.write(path, {config.dataset: spec}, tickets, {config.dataset: network},
                           nested_coding=nested_coding)
            _, read_back = artifact.read(path)
            for ours, theirs in zip(tickets, read_back, strict=True):
                for layer, mask in ours.masks.items():
                    if not np.array_equal(mask, theirs.masks[layer]):
                        raise SystemExit(f"error: {name} coding changed {ours.name}'s mask of {layer}")
            version, per_ticket = mask_bytes(path)
            results[name] = {"file_bytes": os.path.getsize(path), "mask_bytes": sum(per_ticket.values()),
                             "mask_bytes_per_ticket": per_ticket, "format_version": version}
    bands = np.diff((0.0,) + ratios + (1.0,))  # the fraction of weights first kept at each ratio, and never
    results["entropy_bound_bytes"] = {
        "independent": sum(size * entropy_bits((r, 1 - r)) for size in sizes for r in ratios) / 8,
        "nested": sum(sizes) * entropy_bits(bands) / 8}
    results["nested_over_independent"] = results["nested"]["mask_bytes"] / results["independent"]["mask_bytes"]
    for name in ("independent", "nested"):
        print(f"{name:>11}: masks {results[name]['mask_bytes'] / 1e6:6.3f} MB, file "
              f"{results[name]['file_bytes'] / 1e6:6.3f} MB (entropy bound "
              f"{results['entropy_bound_bytes'][name] / 1e6:6.3f} MB)")
    print(f"nested / independent mask bytes: {results['nested_over_independent']:.3f}")
    path = os.path.join(common.DOCS, "nested_codec.json")
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
