"""Accuracy of a masked network on clean and attacked inputs, with masks computed once per evaluation.

An attacked example counts as correct only if the network also classifies its clean image correctly: an attack that
leaves a wrong prediction right (or lands on the label by chance) does not make the network robust there.
"""
import numpy as np
import tensorflow as tf

from rst_tf import attacks
from rst_tf.method import folding, layers


class MaskedAttacker:
    """Adversarial examples of `attack` on a masked `network`, and the network's predictions on any images.

    The masks are computed once per call (they cannot change during an evaluation) and folded, with the BatchNorm
    statistics selected then (inference mode), into plain kernels (`rst_tf.method.folding`) handed to per-batch
    functions traced once per object, so keep the object to evaluate again after training or under another ticket.
    Batch i of a call draws its random start from `(seed, i)`, so results are reproducible and every user of the
    same seed (accuracy, transfer matrices) attacks with the same noise.
    """

    def __init__(self, network, attack, seed=0):
        attack.validate()
        self.network = network
        self.attack = attack
        self.seed = int(seed)
        self._masked_layers = [layer for layer in layers.masked_layers(network) if layer.remaining_ratio < 1.0]
        self._folded = folding.FoldedNetwork(network)
        self._logits = tf.function(self._logits_batch, reduce_retracing=True, autograph=False)
        if attack.name in attacks.EAGER_ONLY_ATTACKS:  # wrappers around libraries that run eagerly only
            self._generate = self._generate_eagerly
        else:
            self._generate = tf.function(self._generate_batch, reduce_retracing=True, autograph=False)
        self._predict = tf.function(self._predict_batch, reduce_retracing=True, autograph=False)

    def _masks(self):
        current = folding.exact_masks(self.network)  # one top-k for all layers under a global top-k
        return [current[layer] for layer in self._masked_layers]

    def _parameters(self, masks):
        return self._folded.parameters(dict(zip(self._masked_layers, masks)))

    def _generate_batch(self, images, labels, parameters, seed):
        return attacks.generate(lambda x: self._folded.logits(x, parameters), images, labels, self.attack, seed)

    def _logits_batch(self, images, parameters):
        return self._folded.logits(images, parameters)

    def _generate_eagerly(self, images, labels, parameters, seed, progress=None, model_fn=None):
        # One model function for every batch of an evaluation: the AutoAttack schedules keep their traced
        # components per model function, so later batches do not trace again.
        model_fn = model_fn or (lambda x: self._logits(x, parameters))
        return attacks.generate(model_fn, images, labels, self.attack, seed, progress=progress)

    def _predict_batch(self, images, parameters):
        return tf.argmax(self._folded.logits(images, parameters), axis=-1, output_type=tf.int32)

    def generate(self, batches, masks=None, progress=None):
        """The adversarial images of every batch of (images, labels), as a list of tensors. `progress`: optional
        ``(batch index, component, examples left)`` callback, called by the AutoAttack schedules."""
        parameters = self._parameters(self._masks() if masks is None else masks)
        model_fn = lambda x: self._logits(x, parameters)  # noqa: E731
        found = []
        for index, (images, labels) in enumerate(batches):
            seed = tf.constant([self.seed, index], tf.int64)
            if self._generate == self._generate_eagerly:
                report = None if progress is None else (
                    lambda component, left, index=index: progress(index, component, left))
                found.append(self._generate_eagerly(images, labels, parameters, seed, report, model_fn))
            else:
                found.append(self._generate(images, labels, parameters, seed))
        return found

    def correct(self, images_list, batches, masks=None):
        """A {0, 1} array: does the network classify each of `images_list` as the label in `batches`."""
        parameters = self._parameters(self._masks() if masks is None else masks)
        correct = [tf.cast(tf.equal(self._predict(images, parameters), tf.cast(labels, tf.int32)), tf.int32).numpy()
                   for images, (_, labels) in zip(images_list, batches)]
        return np.concatenate(correct) if correct else np.zeros([0], np.int32)


    def clean_correct(self, batches, masks=None):
        """A {0, 1} array: does the network classify each clean image of `batches` correctly."""
        return self.correct([images for images, _ in batches], batches, masks)


class AttackedAccuracy(MaskedAttacker):
    """Accuracy of `network` under `attack` over batches of (images, labels)."""

    def __init__(self, network, attack, seed=0):
        super().__init__(network, attack, seed)
        self._track = tf.function(self._track_batch, reduce_retracing=True, autograph=False)

    def per_example(self, batches, progress=None):
        """A {0, 1} array: was each example classified correctly both clean and under the attack."""
        masks = self._masks()
        clean = self.clean_correct(batches, masks)
        if self.attack.name == "none":
            return clean
        return self.correct(self.generate(batches, masks, progress), batches, masks) & clean

    def per_example_with_paper(self, batches, paper):
        """(`per_example`, the same under PGD config `paper`) from one attack: this object's attack is the standard
        PGD whose trajectory gives `paper`'s verdicts (`attacks.pgd.paper_verdicts_follow`; the network runs in
        inference mode, so it is deterministic). An example is robust under `paper` when it is under this attack
        and the model classified every earlier iterate correctly, the start included."""
        if not attacks.pgd.paper_verdicts_follow(self.attack, paper):
            raise ValueError(f"{paper} is not the early-stopping twin of {self.attack}")
        masks = self._masks()
        parameters = self._parameters(masks)
        clean = self.clean_correct(batches, masks)
        found, wrong_before = [], []
        for index, (images, labels) in enumerate(batches):
            adversarial, wrong = self._track(images, labels, parameters, tf.constant([self.seed, index], tf.int64))
            found.append(adversarial)
            wrong_before.append(wrong.numpy())
        standard = self.correct(found, batches, masks) & clean
        wrong_before = np.concatenate(wrong_before) if wrong_before else np.zeros([0], bool)
        return standard, standard & (~wrong_before).astype(np.int32)

    def _track_batch(self, images, labels, parameters, seed):
        return attacks.pgd.pgd_with_wrong_iterates(lambda x: self._folded.logits(x, parameters), images, labels,
                                                   self.attack, seed)

    def __call__(self, batches):
        """Accuracy in [0, 1] over all batches."""
        correct = self.per_example(batches)
        return float(correct.mean()) if correct.size else float("nan")
