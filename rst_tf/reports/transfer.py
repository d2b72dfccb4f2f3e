"""Transfer attacks between models: adversarial examples crafted on one model, tested on another (paper Fig. 7)."""
import dataclasses

from rst_tf.measuring import attacked, intervals
from rst_tf.reports import suite


def transfer_matrix(networks_by_name, batches, attack_config, seed=0):
    """Accuracy of each column model on adversarial examples crafted on each row model.

    Returns {names, accuracy (rows: source, columns: target; the diagonal is white-box), interval (the 95% Wilson
    interval of each cell), correct (each cell's per-example {0, 1} list), attack (the config as a dict),
    num_examples}. A cell counts an example only if the
    target model also classifies its clean image correctly. Each row's examples are drawn as
    `attacked.AttackedAccuracy` draws them (seed, batch index), so the diagonal equals the white-box accuracy of
    `suite.evaluate_attacks` with the same seed.
    """
    batches = suite.materialize(batches)
    names = list(networks_by_name)
    attackers = {name: attacked.MaskedAttacker(networks_by_name[name], attack_config, seed) for name in names}
    clean = {name: attackers[name].clean_correct(batches) for name in names}
    num_examples = sum(int(labels.shape[0]) for _, labels in batches)
    matrix, bounds, per_example = [], [], []
    for source in names:
        adversarial = attackers[source].generate(batches)
        row, row_correct = [], []
        for target in names:
            correct = attackers[target].correct(adversarial, batches) & clean[target]
            row.append(float(correct.mean()) if correct.size else float("nan"))
            row_correct.append([int(value) for value in correct])
        matrix.append(row)
        per_example.append(row_correct)
        bounds.append([list(intervals.accuracy_interval(value, num_examples)) for value in row])
    return {"names": names, "accuracy": matrix, "interval": bounds, "correct": per_example,
            "attack": dataclasses.asdict(attack_config), "num_examples": num_examples}
