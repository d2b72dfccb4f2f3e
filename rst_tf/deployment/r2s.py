"""R2S (random RST switching, paper §6): a bank of tickets over one random network, picked at random per inference.

A ticket (`rst_tf.method.ticket`) is what a search adds to the random network: a binary mask per masked layer and
the BatchNorm statistics the masked network collected. Tickets of different remaining ratios searched from the same
seed share every weight, so a bank stores the network once. `MaskBank` runs the network under any ticket, under all
of them (for EOT and Ensemble attacks) or under one drawn at random (the defence).

    bank = MaskBank(network, [ticket_of(net_05, "ratio_0.05"), ticket_of(net_10, "ratio_0.1"), ...])
    logits = bank.random_logits(images)                 # one ticket per call, unseeded RNG
    logits = bank.random_logits(images, per_sample=True)
"""
import contextlib

import numpy as np
import tensorflow as tf

from rst_tf import attacks
from rst_tf.measuring import intervals
from rst_tf.method import folding, layers, masking

DEFAULT_REMAINING_RATIOS = (0.05, 0.07, 0.1, 0.15, 0.2, 0.3)

# What must agree for two networks to hold the same random weights (fields of the search config).
SHARED_NETWORK_FIELDS = ("network", "width_multiplier", "sparsity", "weight_init", "seed", "scale_fan",
                         "dense_first_conv", "dense_classifier")


def check_shared_network(configs_by_source):
    """Raise ValueError unless every config (a dict of search-config fields, keyed by where it came from) describes
    the same random network; the message names the field and the two sources."""
    sources = list(configs_by_source)
    first = sources[0]
    for source in sources[1:]:
        for field in SHARED_NETWORK_FIELDS:
            here, there = configs_by_source[first].get(field), configs_by_source[source].get(field)
            if here != there:
                raise ValueError(f"{source} does not share the random network of {first}: {field} is {there!r} "
                                 f"there and {here!r} here")


def check_same_weights(reference, network, source):
    """Raise ValueError unless `network`'s masked-layer kernels equal `reference`'s bit for bit (same names)."""
    kernels = {layer.name: layer.kernel for layer in layers.masked_layers(reference)}
    for layer in layers.masked_layers(network):
        if layer.name not in kernels:
            raise ValueError(f"{source}: layer {layer.name} is not in the bank's network")
        ours, theirs = kernels[layer.name].numpy(), layer.kernel.numpy()
        if ours.shape != theirs.shape:
            if layer.name == "classifier":
                continue  # another task's head: a different number of classes
            raise ValueError(f"{source}: layer {layer.name} has kernel shape {theirs.shape}, the bank {ours.shape}")
        if not np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)):
            raise ValueError(f"{source}: the weights of layer {layer.name} differ from the bank's (trained weights, "
                             "or another seed or init): R2S needs tickets of one random network")


class MaskBank:
    """Tickets of one task over one network; the network's own scores and statistics are not used.

    Args:
      network: the random network (masked layers + `TicketBatchNormalization`), images in [0, 1] -> logits.
      tickets: `ticket.Ticket`s whose masks and statistics name the network's layers.
    """

    def __init__(self, network, tickets):
        if not tickets:
            raise ValueError("a mask bank needs at least one ticket")
        self.network = network
        self.tickets = list(tickets)
        masked = {layer.name: layer for layer in layers.masked_layers(network)}
        norms = {layer.name: layer for layer in layers.batch_norm_layers(network)}
        self._masks, self._statistics = [], []
        for ticket in self.tickets:
            for name, mask in ticket.masks.items():
                if name not in masked:
                    raise ValueError(f"ticket {ticket.name!r}: the network has no masked layer {name!r}")
                if tuple(mask.shape) != tuple(masked[name].scores.shape):
                    raise ValueError(f"ticket {ticket.name!r}: mask of {name} has shape {mask.shape}, the layer's "
                                     f"scores {tuple(masked[name].scores.shape)}")
            if set(ticket.statistics) != set(norms):
                raise ValueError(f"ticket {ticket.name!r}: BatchNorm statistics for {sorted(ticket.statistics)[:3]}..."
                                 f" do not match the network's BatchNorm layers")
            self._masks.append({masked[name]: tf.constant(mask, tf.float32) for name, mask in ticket.masks.items()})
            self._statistics.append({norms[name]: tuple(tf.constant(value, tf.float32) for value in values)
                                     for name, values in ticket.statistics.items()})
        for layer in masked.values():  # masks come from the bank: no score is read or trained
            layer.set_trainable_parts(scores=False, kernel=False)
        # Each ticket's masks and statistics folded into plain kernels once (`rst_tf.method.folding`): the bank's
        # network is frozen, so they cannot change.
        self._folded = folding.FoldedNetwork(network)
        self._parameters = []
        for index in range(len(self.tickets)):
            with self.using(index):
                self._parameters.append(self._folded.parameters(self._masks[index]))

    def __len__(self):
        return len(self.tickets)

    @contextlib.contextmanager
    def using(self, index):
        """Within this block the network runs as ticket `index` (a Python int), at inference."""
        with masking.supplied_masks(self._masks[index]), layers.supplied_statistics(self._statistics[index]):
            yield

    def logits(self, images, index):
        with self.using(index):  # for the layers the folded graph runs as they are
            return self._folded.logits(images, self._parameters[index])

    def all_logits(self, images):
        """Logits under every ticket, shape [tickets, batch, classes] (an exact expectation over the bank)."""
        return tf.stack([self.logits(images, index) for index in range(len(self))])

    def ensemble_logits(self, images):
        """The mean of every ticket's logits."""
        return tf.reduce_mean(self.all_logits(images), axis=0)

    def chosen_logits(self, images, choice):
        """Logits with ticket `choice[i]` (int tensor [batch]) for image i."""
        every = self.all_logits(images)
        return tf.gather(tf.transpose(every, [1, 0, 2]), tf.cast(choice, tf.int32), batch_dims=1)

    def random_choice(self, batch_size, per_sample=False, seed=None):
        """Ticket indices, one per call (repeated over the batch) or one per sample, uniform over the bank.

        Without `seed` the draw comes from TensorFlow's unseeded RNG (not replayable); a `[2]` seed makes it
        stateless and reproducible, for evaluations.
        """
        shape = [batch_size] if per_sample else []
        if seed is None:
            choice = tf.random.uniform(shape, 0, len(self), tf.int32)
        else:
            choice = tf.random.stateless_uniform(shape, seed, 0, len(self), tf.int32, alg="philox")
        return tf.broadcast_to(choice, [batch_size])

    def random_logits(self, images, per_sample=False, seed=None):
        """The defence: logits under a ticket drawn uniformly at random (per call, or per sample)."""
        if per_sample:
            return self.chosen_logits(images, self.random_choice(tf.shape(images)[0], True, seed))
        index = self.random_choice(1, False, seed)[0]
        return tf.switch_case(index, [lambda i=i: self.logits(images, i) for i in range(len(self))])


# --- evaluation (paper §6.2): attacker and defender both draw tickets uniformly from the bank -------------------

ADAPTIVE_ATTACKS = ("vanilla", "eot", "ensemble", "autoattack_rand")
# Every draw of an evaluation comes from (seed, batch index, purpose): the attack's random start, the defender's
# ticket per sample, and the attacker's own ticket per sample (vanilla).
ATTACK_START, DEFENDER_DRAW, ATTACKER_DRAW = 0, 1, 2
_PURPOSES = 4  # seed slots per batch


def _seed(seed, batch_index, purpose):
    return tf.constant([int(seed), _PURPOSES * int(batch_index) + purpose], tf.int64)


def _accuracy(correct):
    return float(correct.mean()) if correct.size else float("nan")


class BankEvaluation:
    """Accuracy of each ticket alone and of R2S under white-box, EOT and Ensemble attacks, reproducibly seeded.

    R2S rows use a defender that draws one ticket per sample (the same draw for clean and attacked images).
    `vanilla` is the paper's protocol: the attacker runs `attack` against a ticket drawn per sample; `eot` ascends
    the loss averaged over every ticket (exact expectation over the bank's uniform draw); `ensemble` attacks the
    mean of every ticket's logits; `autoattack_rand` runs `rand_attack` (default `attacks.autoattack_rand_config`
    at `attack`'s epsilon) on the randomised model itself, whose draws inside the attack are unseeded (the only
    unreproducible row). An attacked example counts as correct only if its clean image is classified correctly too.
    """

    def __init__(self, bank, attack, seed=0, rand_attack=None):
        attack.validate()
        self.bank, self.attack, self.seed = bank, attack, int(seed)
        self.rand_attack = rand_attack or attacks.autoattack_rand_config(attack.epsilon)
        self.rand_attack.validate()
        self._defend = tf.function(lambda images, choice_seed: tf.argmax(
            bank.chosen_logits(images, bank.random_choice(tf.shape(images)[0], True, choice_seed)), -1,
            output_type=tf.int32), reduce_retracing=True)
        self._ticket_predict = tf.function(
            lambda images, index: tf.argmax(self._switch(images, index), -1, output_type=tf.int32),
            reduce_retracing=True)
        self._generators = {}

    def _switch(self, images, index):
        return tf.switch_case(index, [lambda i=i: self.bank.logits(images, i) for i in range(len(self.bank))])

    def _model_fn(self, kind, choice):
        bank = self.bank
        if kind == "ticket":
            return lambda x: self._switch(x, choice)
        if kind == "vanilla":
            return lambda x: bank.chosen_logits(x, choice)
        if kind == "eot":
            return bank.all_logits
        if kind == "ensemble":
            return bank.ensemble_logits
        if kind == "autoattack_rand":
            return lambda x: bank.random_logits(x, per_sample=True)
        raise ValueError(f"adaptive attack must be one of {ADAPTIVE_ATTACKS}, got {kind!r}")

    def _generate(self, kind, images, labels, attack_seed, choice):
        if kind not in self._generators:
            self._generators[kind] = tf.function(
                lambda x, y, s, c, kind=kind: attacks.generate(
                    self._model_fn(kind, c), x, y, self.rand_attack if kind == "autoattack_rand" else self.attack, s),
                reduce_retracing=True)
        return self._generators[kind](images, labels, attack_seed, choice)

    def ticket_correct(self, batches, index, attacked=True, natural=None):
        """A {0, 1} array per example for ticket `index` alone: correct clean, or correct clean and under the
        white-box attack (`natural`: this ticket's clean result from an earlier call, not computed again)."""
        index = tf.constant(index, tf.int32)
        if natural is None:
            natural = np.concatenate([np.equal(self._ticket_predict(images, index).numpy(), np.asarray(labels))
                                      for images, labels in batches]).astype(np.int32)
        if not attacked:
            return natural
        correct = []
        for batch_index, (images, labels) in enumerate(batches):
            adversarial = self._generate("ticket", images, labels, _seed(self.seed, batch_index, ATTACK_START), index)
            correct.append(np.equal(self._ticket_predict(adversarial, index).numpy(), np.asarray(labels)))
        return np.concatenate(correct).astype(np.int32) & natural

    def ticket_accuracy(self, batches, index, attacked=True):
        """Accuracy of ticket `index` alone: natural, or under the white-box attack."""
        return _accuracy(self.ticket_correct(batches, index, attacked))

    def r2s_correct(self, batches, kind=None, natural=None):
        """A {0, 1} array per example for R2S (a ticket drawn per sample): correct clean (`kind` None), or correct
        clean and under an adaptive attack (`natural`: the clean result from an earlier call)."""
        if natural is None and kind is not None:
            natural = self.r2s_correct(batches)
        correct = []
        for batch_index, (images, labels) in enumerate(batches):
            if kind is not None:
                choice = self.bank.random_choice(tf.shape(images)[0], True,
                                                 _seed(self.seed, batch_index, ATTACKER_DRAW))
                images = self._generate(kind, images, labels, _seed(self.seed, batch_index, ATTACK_START), choice)
            predictions = self._defend(images, _seed(self.seed, batch_index, DEFENDER_DRAW))
            correct.append(np.equal(predictions.numpy(), np.asarray(labels)))
        correct = np.concatenate(correct).astype(np.int32)
        return correct if kind is None else correct & natural

    def r2s_accuracy(self, batches, kind=None):
        """Accuracy of R2S (a ticket drawn per sample): natural (`kind` None) or under an adaptive attack."""
        return _accuracy(self.r2s_correct(batches, kind))

    def run(self, batches, adaptive=ADAPTIVE_ATTACKS[:3], log=None):
        """Every ticket's natural and attacked accuracy, then R2S natural and under each of `adaptive`.

        Returns {tickets: [{name, remaining_ratio, natural, attacked, intervals: {natural, attacked}}], r2s: {natural,
        <kind>...}, r2s_intervals: {natural, <kind>...}, best_single, num_examples}; intervals are 95% Wilson
        intervals [low, high] for the number of test images.
        """
        log = log or (lambda line: None)
        num_examples = sum(int(np.shape(labels)[0]) for _, labels in batches)
        interval = lambda value: list(intervals.accuracy_interval(value, num_examples))  # noqa: E731
        report = {"tickets": [], "r2s": {}, "r2s_intervals": {}, "num_examples": num_examples}
        for index, ticket in enumerate(self.bank.tickets):
            natural = self.ticket_correct(batches, index, attacked=False)
            row = {"name": ticket.name, "remaining_ratio": ticket.remaining_ratio, "natural": _accuracy(natural),
                   "attacked": _accuracy(self.ticket_correct(batches, index, natural=natural))}
            row["intervals"] = {"natural": interval(row["natural"]), "attacked": interval(row["attacked"])}
            log(f"ticket {ticket.name}: natural {row['natural']:.4f}, attacked {row['attacked']:.4f}")
            report["tickets"].append(row)
        natural = self.r2s_correct(batches)
        report["r2s"]["natural"] = _accuracy(natural)
        log(f"R2S natural {report['r2s']['natural']:.4f}")
        for kind in adaptive:
            report["r2s"][kind] = _accuracy(self.r2s_correct(batches, kind, natural))
            log(f"R2S under {kind} {report['r2s'][kind]:.4f}")
        report["r2s_intervals"] = {kind: interval(value) for kind, value in report["r2s"].items()}
        best = max(report["tickets"], key=lambda row: row["attacked"])
        report["best_single"] = {"name": best["name"], "natural": best["natural"], "attacked": best["attacked"],
                                 "interval": best["intervals"]["attacked"]}
        return report
