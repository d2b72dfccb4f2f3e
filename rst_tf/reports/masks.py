"""How the tickets of one random network relate: what each keeps, how much any two share, and whether they keep the
largest random weights.

For each masked layer (score-shaped {0, 1} masks; a layer keeping every weight is left out):
  * kept fraction: kept entries / entries of the mask;
  * Jaccard overlap of two tickets: |A ∩ B| / |A ∪ B| of their kept entries;
  * Hamming distance of two tickets: the fraction of mask entries where they differ;
  * magnitude overlap of a ticket: the fraction of its kept weights (the mask broadcast over the kernel) that are
    among the same number of largest-|weight| positions of the random kernel (ties shared out evenly), next to
    the chance level a random mask would reach (kept / total per layer; overall, weighted by the kept counts).
"Overall" values pool every layer's entries. With a transfer matrix over the same tickets, `transfer_correlation`
is the Pearson correlation between the off-diagonal Jaccard overlaps and transfer accuracies.
"""
import numpy as np

from rst_tf.method import layers


def ticket_masks(network):
    """{layer name: (mask as a bool array in the scores' shape, the random kernel as a float array)} of every
    masked layer that drops weights."""
    return {layer.name: (layer.binary_mask().numpy().astype(bool), layer.kernel.numpy())
            for layer in layers.masked_layers(network) if layer.remaining_ratio < 1.0}


def _jaccard(a, b):
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _hamming(a, b):
    return float(np.not_equal(a, b).mean()) if a.size else 0.0


def _magnitude_overlap(mask, kernel):
    """(overlap, chance): the share of kept weights among the largest-|weight| positions (as many as are kept), and
    a random mask's expectation. Positions tied at the threshold count by their expected share under a uniform tie
    break, so a kernel of equal magnitudes (signed constant init) gives exactly the chance level."""
    kept = np.broadcast_to(mask, kernel.shape).ravel()
    count = int(kept.sum())
    if count == 0:
        return 0.0, 0.0
    magnitude = np.abs(kernel).ravel()
    threshold = np.sort(magnitude)[::-1][count - 1]
    above, tied = magnitude > threshold, magnitude == threshold
    hits = np.logical_and(kept, above).sum() + np.logical_and(kept, tied).sum() * (count - above.sum()) / tied.sum()
    return float(hits / count), count / kernel.size


def _pairwise(masks, metric):
    return [[metric(a, b) for b in masks] for a in masks]


def mask_analysis(networks_by_name, transfer=None):
    """Kept fractions, pairwise Jaccard overlaps and Hamming distances (per layer and overall) and magnitude
    overlaps of the tickets `networks_by_name` hold; ValueError unless they share their masked layers' shapes and
    random kernels. `transfer` (optional): a `transfer.transfer_matrix` result over the same names."""
    names = list(networks_by_name)
    tickets = {name: ticket_masks(network) for name, network in networks_by_name.items()}
    reference = tickets[names[0]]
    for name in names[1:]:
        if list(tickets[name]) != list(reference):
            raise ValueError(f"{name} masks layers {list(tickets[name])[:3]}..., {names[0]} {list(reference)[:3]}...")
        for layer, (mask, kernel) in tickets[name].items():
            if mask.shape != reference[layer][0].shape or not np.array_equal(kernel, reference[layer][1]):
                raise ValueError(f"{name}: layer {layer} does not hold the random weights of {names[0]}: mask "
                                 "analysis needs tickets of one random network")
    layer_names = list(reference)
    by_layer = {layer: [tickets[name][layer][0] for name in names] for layer in layer_names}
    pooled = [np.concatenate([tickets[name][layer][0].ravel() for layer in layer_names]) for name in names]
    overlaps = {}
    for name in names:
        per_layer = {layer: _magnitude_overlap(*tickets[name][layer]) for layer in layer_names}
        kept = {layer: int(np.broadcast_to(m, k.shape).sum()) for layer, (m, k) in tickets[name].items()}
        total = max(sum(kept.values()), 1)
        overlaps[name] = {
            "overall": sum(per_layer[layer][0] * kept[layer] for layer in layer_names) / total,
            "chance": sum(per_layer[layer][1] * kept[layer] for layer in layer_names) / total,
            "by_layer": {layer: value for layer, (value, _) in per_layer.items()}}
    result = {
        "names": names, "layers": layer_names,
        "kept_fraction": {name: {layer: float(tickets[name][layer][0].mean()) for layer in layer_names}
                          for name in names},
        "jaccard": {"overall": _pairwise(pooled, _jaccard),
                    "by_layer": {layer: _pairwise(masks, _jaccard) for layer, masks in by_layer.items()}},
        "hamming": {"overall": _pairwise(pooled, _hamming),
                    "by_layer": {layer: _pairwise(masks, _hamming) for layer, masks in by_layer.items()}},
        "magnitude_overlap": overlaps,
        "transfer_correlation": None,
    }
    if transfer is not None and list(transfer["names"]) == names:
        result["transfer_correlation"] = _off_diagonal_correlation(result["jaccard"]["overall"], transfer["accuracy"])
    return result


def _off_diagonal_correlation(first, second):
    """Pearson correlation of the off-diagonal cells of two square matrices (None if undefined)."""
    size = len(first)
    cells = [(first[i][j], second[i][j]) for i in range(size) for j in range(size) if i != j]
    if len(cells) < 2:
        return None
    x, y = np.asarray(cells, float).T
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])
