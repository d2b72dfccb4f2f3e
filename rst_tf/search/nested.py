"""Nested tickets from one search: masks at several remaining ratios from ONE set of scores, searched together.

The top-k of |scores| at a ratio is inside the top-k at any larger ratio (ties go to the lower index at every
ratio), so the masks of ratios r_1 < ... < r_n are nested by construction, each keeping exactly its fraction of every
layer. The network is built at the largest ratio r_n: its own masks and BatchNorm statistics are r_n's ticket, and
each smaller ratio r_i has statistics slot i of every `TicketBatchNormalization` (switchable BatchNorm: masks of
different sizes give different activation statistics). `ticket_scope(network, ratios, i)` runs the network as
ticket i: masks at r_i (`layers.supplied_remaining_ratios`) and slot i's statistics.

`NestedSearchModel`'s step minimises the mean over the ratios of each ticket's adversarial loss, each ticket
attacked through itself (one attack per ratio: the min-max of every ticket, at about one search step's cost per
ratio); each ratio's masks are computed once per step and reused by its attack's iterations and the update.
"""
import contextlib

import keras
import numpy as np
import tensorflow as tf

from rst_tf import attacks
from rst_tf.measuring import attacked
from rst_tf.method import layers, masking, ticket
from rst_tf.search import search_model


def ticket_name(ratio):
    """The name of a ticket at `ratio`, as a bank built from single-ratio runs names it."""
    return f"ratio_{ratio:g}"


def _statistics_slots(network, ratios, index):
    """{BatchNorm layer: slot} for ticket `index` of ascending `ratios`; empty for the largest (the layers' own)."""
    if index == len(ratios) - 1:
        return {}
    return {layer: index for layer in layers.batch_norm_layers(network)}


def _searched_layers(network):
    return [layer for layer in layers.masked_layers(network) if layer.remaining_ratio < 1.0]


def check_network(network, ratios):
    """Raise ValueError unless `network` was built for the nested tickets of ascending `ratios` (masked at the
    largest, one BatchNorm slot per smaller ratio)."""
    if list(ratios) != sorted(set(ratios)) or len(ratios) < 2:
        raise ValueError(f"nested ratios must be two or more distinct ratios in ascending order, got {ratios}")
    kept = {layer.remaining_ratio for layer in _searched_layers(network)}
    if kept != {ratios[-1]}:
        raise ValueError(f"a network of nested tickets at {ratios} is masked at the largest ratio; this one keeps "
                         f"{sorted(kept)}")
    slots = {layer.statistics_slots for layer in layers.batch_norm_layers(network)}
    if slots and slots != {len(ratios) - 1}:
        raise ValueError(f"a network of nested tickets at {ratios} has {len(ratios) - 1} BatchNorm statistics "
                         f"slots per layer; this one has {sorted(slots)}")


@contextlib.contextmanager
def ticket_scope(network, ratios, index):
    """Within this block `network` runs as ticket `index` (a Python int) of ascending `ratios`: masks at that ratio
    from the scores, and that ratio's BatchNorm statistics (updated in training mode, used at inference)."""
    ratio_by_layer = {layer: ratios[index] for layer in _searched_layers(network)}
    with layers.supplied_remaining_ratios(ratio_by_layer), \
            layers.supplied_statistics_slots(_statistics_slots(network, ratios, index)):
        yield


def nested_masks(network, ratios):
    """[{layer: binary mask} for each ratio]: each ratio's top-k of the current scores, computed once."""
    masks = []
    for index in range(len(ratios)):
        with ticket_scope(network, ratios, index):
            masks.append(layers.current_masks(network))
    return masks


def tickets_of(network, ratios, task="default"):
    """One `ticket.Ticket` per ratio of the nested network: its masks now and its BatchNorm statistics (eager)."""
    check_network(network, ratios)
    found = []
    for index, (ratio, masks) in enumerate(zip(ratios, nested_masks(network, ratios))):
        statistics = {}
        for layer in layers.batch_norm_layers(network):
            if index == len(ratios) - 1:  # the largest ratio: the layers' own statistics
                statistics[layer.name] = (layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy())
            else:
                statistics[layer.name] = (layer.slot_moving_mean.numpy()[index].copy(),
                                          layer.slot_moving_variance.numpy()[index].copy())
        found.append(ticket.Ticket(name=ticket_name(ratio), remaining_ratio=float(ratio), task=task,
                                   statistics=statistics,
                                   masks={layer.name: mask.numpy().astype(bool) for layer, mask in masks.items()}))
    return found


class NestedSearchModel(search_model.SearchModel):
    """`search_model.SearchModel` over the nested tickets of ascending `ratios` (a network from `check_network`'s
    build).

    One step: every ratio's masks once; one attack per ratio through that ticket (same random start for every
    ratio); one SGD step on the mean over the ratios of each ticket's objective (plus the weight decay once).
    Metrics: `loss` (that mean), `accuracy` (over every ticket's examples), `loss_ratio_<r>` and
    `accuracy_ratio_<r>` per ticket. Other arguments: `search_model.SearchModel`'s.
    """

    def __init__(self, network, ratios, attack, **kwargs):
        super().__init__(network, attack, **kwargs)
        self.ratios = tuple(float(ratio) for ratio in ratios)
        check_network(network, self.ratios)
        self.ratio_losses = [keras.metrics.Mean(name=f"loss_{ticket_name(r)}") for r in self.ratios]
        self.ratio_accuracies = [keras.metrics.SparseCategoricalAccuracy(name=f"accuracy_{ticket_name(r)}")
                                 for r in self.ratios]

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, *self.ratio_losses, *self.ratio_accuracies]

    @contextlib.contextmanager
    def _as_ticket(self, index, masks):
        """Run as ticket `index` with its masks of this step (computed once) and its BatchNorm statistics."""
        with masking.supplied_masks(masks), \
                layers.supplied_statistics_slots(_statistics_slots(self.network, self.ratios, index)):
            yield

    def replica_step(self, images, labels):
        """One nested search step on this replica's share of the global batch; returns the metric results."""
        variables = self.trainable_variables
        masks = nested_masks(self.network, self.ratios)
        adversarial = []
        for index, ratio_masks in enumerate(masks):
            with self._as_ticket(index, ratio_masks):
                adversarial.append(self.adversarial_examples(images, labels))
        with tf.GradientTape() as tape:
            per_ratio = []
            for index, ratio_masks in enumerate(masks):
                with self._as_ticket(index, ratio_masks):
                    per_ratio.append(self.per_example_loss(images, adversarial[index], labels))
            per_example = tf.add_n([loss for loss, _ in per_ratio]) / len(self.ratios)
            loss = self.replica_loss(per_example, variables)
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply(gradients, variables)
        self.loss_tracker.update_state(per_example)
        for (ratio_loss, logits), loss_tracker, accuracy_tracker in zip(per_ratio, self.ratio_losses,
                                                                       self.ratio_accuracies):
            self.accuracy_tracker.update_state(labels, logits)
            loss_tracker.update_state(ratio_loss)
            accuracy_tracker.update_state(labels, logits)
        return {metric.name: metric.result() for metric in self.metrics}


class TicketAccuracies:
    """Natural and attacked accuracy of every ticket of a nested network, and their means over the tickets.

    Calling it on batches gives {`<prefix>_natural_accuracy_ratio_<r>`, `<prefix>_pgd20_accuracy_ratio_<r>` per
    ratio, `<prefix>_natural_accuracy` and `<prefix>_pgd20_accuracy`: the means}. Each ticket has its own evaluators
    (their traced functions hold that ticket's statistics slot).
    """

    def __init__(self, network, ratios, attack, seed=0):
        check_network(network, ratios)
        self.network, self.ratios = network, tuple(ratios)
        self.natural = [attacked.AttackedAccuracy(network, attacks.AttackConfig(name="none")) for _ in ratios]
        self.attacked = [attacked.AttackedAccuracy(network, attack, seed) for _ in ratios]

    def __call__(self, batches, prefix):
        row = {}
        for index, ratio in enumerate(self.ratios):
            with ticket_scope(self.network, self.ratios, index):
                row[f"{prefix}_natural_accuracy_{ticket_name(ratio)}"] = self.natural[index](batches)
                row[f"{prefix}_pgd20_accuracy_{ticket_name(ratio)}"] = self.attacked[index](batches)
        for kind in ("natural", "pgd20"):
            row[f"{prefix}_{kind}_accuracy"] = float(np.mean(
                [row[f"{prefix}_{kind}_accuracy_{ticket_name(ratio)}"] for ratio in self.ratios]))
        return row
