"""The adversarial search: a `keras.Model` whose step attacks with the current mask, then updates what is trainable.

One step (Eq. 1 of the paper): compute every layer's mask once; generate adversarial examples inside the ε-ball with
those masks; take one SGD step on the adversarial cross-entropy plus coupled L2 weight decay. The network's trainable
parts decide what the step learns: scores in an RST search, kernels in dense adversarial training or fine-tuning.

`replica_step` is the per-replica body. Keras's `fit` runs it as `train_step` under the default, mirrored and TPU
strategies; `distributed_step` runs the same body with `strategy.run` for strategies `fit` cannot drive
(MultiWorkerMirroredStrategy under Keras 3).
"""
import keras
import tensorflow as tf

from rst_tf import attacks
from rst_tf.method import layers, masking
from rst_tf.search import objectives

MODES = ("rst", "dense_at", "natural", "finetune")


def configure_mode(network, mode):
    """Set which parts of `network` train: scores (`rst`) or kernels (`dense_at`, `natural`, `finetune`).

    `dense_at` and `natural` expect a network built with remaining_ratio 1.0; `finetune` keeps the masks its scores
    select and trains the kernel under them. Layers built dense (first conv / classifier option) stay frozen in `rst`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for layer in layers.masked_layers(network):
        if mode == "rst":
            layer.set_trainable_parts(scores=layer.remaining_ratio < 1.0, kernel=False)
        else:
            layer.set_trainable_parts(scores=False, kernel=True)


class SearchModel(keras.Model):
    """Wraps a masked network; `fit` on (images, labels) batches runs the adversarial search.

    Args:
      network: a Keras model built from masked layers (see `rst_tf.networks`), images in [0, 1] -> logits.
      attack: `attacks.AttackConfig` used to make the training examples ("none" for natural training).
      weight_decay: coupled L2 on trainable variables (gradient += weight_decay * variable), as PyTorch's SGD.
      attack_bn_training: run BatchNorm in training mode while attacking (the paper's code does).
      seed: seeds the attack's random start together with the step counter and replica id.
      objective: `objectives.OBJECTIVES`: `pgd_at` (cross-entropy on `attack`'s examples) or `trades` (TRADES's
        loss on examples of the KL attack at `attack`'s epsilon, steps and step size).
    """

    def __init__(self, network, attack, weight_decay=5e-4, attack_bn_training=True, seed=0, objective="pgd_at",
                 **kwargs):
        super().__init__(**kwargs)
        attack.validate()
        self.network = network
        self.objective = objective
        self.attack = objectives.attack_config(objective, attack)
        self.weight_decay = float(weight_decay)
        self.attack_bn_training = bool(attack_bn_training)
        self.seed = int(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, images, training=False):
        return self._logits(images, training)

    def _logits(self, images, training):
        """float32 logits whatever the network computes in (bfloat16 under a mixed-precision policy)."""
        return tf.cast(self.network(images, training=training), tf.float32)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def train_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.replica_step(images, labels)

    def replica_step(self, images, labels):
        """One search step on this replica's share of the global batch; returns the metric results."""
        variables = self.trainable_variables
        masks = layers.current_masks(self.network)
        with masking.supplied_masks(masks):
            adversarial = self.adversarial_examples(images, labels)
            with tf.GradientTape() as tape:
                per_example, logits = self.per_example_loss(images, adversarial, labels)
                loss = self.replica_loss(per_example, variables)
            gradients = tape.gradient(loss, variables)
        self.optimizer.apply(gradients, variables)
        self.loss_tracker.update_state(per_example)
        self.accuracy_tracker.update_state(labels, logits)
        return {metric.name: metric.result() for metric in self.metrics}

    def adversarial_examples(self, images, labels):
        """The attack's examples against the network as it runs now (masks supplied by the caller)."""
        return attacks.generate(self._attack_logits, images, labels, self.attack, self._attack_seed(),
                                self._noise_rows(images), unroll=self._attack_syncs_replicas())

    def per_example_loss(self, images, adversarial, labels):
        """(the objective per example, the logits it scores), BatchNorm in training mode."""
        return objectives.loss_and_logits(
            self.objective, lambda x: self._logits(x, training=True), images, adversarial, labels)

    def replica_loss(self, per_example, variables):
        """This replica's share of the step's loss: gradients are summed over replicas, so average over the global
        batch and split the weight-decay penalty."""
        loss = tf.nn.compute_average_loss(per_example)
        if self.weight_decay:
            penalty = 0.5 * self.weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])
            loss += tf.nn.scale_regularization_loss(penalty)
        return loss

    def _attack_logits(self, images):
        return self._logits(images, self.attack_bn_training)

    def _attack_seed(self):
        """A stateless seed per (seed, step): a resumed run draws exactly what an uninterrupted one draws."""
        step = tf.cast(tf.convert_to_tensor(self.optimizer.iterations), tf.int64)
        return tf.stack([tf.constant(self.seed, tf.int64), step])

    def _attack_syncs_replicas(self):
        """BatchNorm in training mode synchronises replicas, which TensorFlow allows only outside loops."""
        return self.attack_bn_training and tf.distribute.get_strategy().num_replicas_in_sync > 1

    @staticmethod
    def _noise_rows(images):
        """This replica's rows of the global batch, so the random start does not depend on the replica count."""
        context = tf.distribute.get_replica_context()
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if context is None or replicas == 1:
            return None
        local_batch = tf.shape(images)[0]
        replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
        return replica * local_batch, local_batch * replicas

    def distributed_step(self, strategy, images, labels):
        """Run `replica_step` on every replica of `strategy` (for loops that do not use `fit`)."""
        return strategy.run(self.replica_step, args=(images, labels))

    def get_config(self):
        raise NotImplementedError("SearchModel is a training wrapper: save `model.network` instead")
