"""Accuracy of a masked network on clean and attacked inputs, with masks computed once per evaluation."""
import numpy as np
import tensorflow as tf

from rst_tf import attacks, layers, masking


class AttackedAccuracy:
    """Counts correct predictions of `network` under `attack` over batches of (images, labels).

    The masks are computed once per evaluation (they cannot change during one) and handed to a per-batch function
    traced once per object, so keep the object to evaluate again after training. BatchNorm runs in inference mode.
    Each batch draws its random start from `(seed, batch index)`, so an evaluation is reproducible.
    """

    def __init__(self, network, attack, seed=0):
        attack.validate()
        self.network = network
        self.attack = attack
        self.seed = int(seed)
        self._masked_layers = [layer for layer in layers.masked_layers(network) if layer.remaining_ratio < 1.0]
        if attack.name in attacks.EAGER_ONLY_ATTACKS:  # wrappers around libraries that run eagerly only
            self._batch = self._correct_in_batch
        else:
            self._batch = tf.function(self._correct_in_batch, reduce_retracing=True)

    def _correct_in_batch(self, images, labels, masks, seed):
        with masking.supplied_masks(dict(zip(self._masked_layers, masks))):
            logits_fn = lambda x: self.network(x, training=False)
            adversarial = attacks.generate(logits_fn, images, labels, self.attack, seed)
            predictions = tf.argmax(logits_fn(adversarial), axis=-1, output_type=tf.int32)
        return tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.int32)

    def per_example(self, batches):
        """A {0, 1} array: was each example classified correctly under the attack."""
        masks = [layer.binary_mask() for layer in self._masked_layers]
        correct = []
        for index, (images, labels) in enumerate(batches):
            seed = tf.constant([self.seed, index], tf.int64)
            correct.append(self._batch(images, labels, masks, seed).numpy())
        return np.concatenate(correct) if correct else np.zeros([0], np.int32)

    def __call__(self, batches):
        """Accuracy in [0, 1] over all batches."""
        correct = self.per_example(batches)
        return float(correct.mean()) if correct.size else float("nan")
