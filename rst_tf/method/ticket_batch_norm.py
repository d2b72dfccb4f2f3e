"""`TicketBatchNormalization`: BatchNorm whose statistics switch with the ticket a network runs as.

Masks of different remaining ratios over the same weights give different activation statistics. An R2S bank supplies
each ticket's statistics at inference (`supplied_statistics`); a network searched at several nested ratios holds a set
of moving statistics per ratio (`statistics_slots` when it is made, `supplied_statistics_slots` per call: switchable
BatchNorm, as in slimmable networks). `rst_tf.method.layers` exports every name of this module.
"""
import contextlib

import keras
import tensorflow as tf

from rst_tf.method import masking

_supplied_statistics = masking.SuppliedPerLayer()
_supplied_slots = masking.SuppliedPerLayer()
_slots_by_default = [0]  # statistics slots of the TicketBatchNormalization layers made now (`statistics_slots`)


def supplied_statistics(statistics_by_layer):
    """Within this block, each `TicketBatchNormalization` in `statistics_by_layer` (layer -> (mean, variance))
    normalises with those statistics at inference: every ticket of a mask bank has its own."""
    return _supplied_statistics.block(statistics_by_layer)


@contextlib.contextmanager
def statistics_slots(count):
    """`TicketBatchNormalization` layers made within this block hold `count` extra sets of moving statistics (slots),
    besides their own (switchable BatchNorm: one set per ticket of a network searched at several ratios)."""
    _slots_by_default.append(int(count))
    try:
        yield
    finally:
        _slots_by_default.pop()


def supplied_statistics_slots(slots_by_layer):
    """Within this block, each `TicketBatchNormalization` in `slots_by_layer` (layer -> slot index, a Python int)
    uses that slot's moving statistics in place of its own: updated in training mode, used at inference."""
    return _supplied_slots.block(slots_by_layer)


@keras.saving.register_keras_serializable(package="rst_tf")
class TicketBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose inference statistics can be supplied per call with `supplied_statistics`, and which
    can hold `statistics_slots` extra sets of moving statistics, picked per call with `supplied_statistics_slots`.

    Masks of different remaining ratios over the same weights give different activation statistics, so a network
    that switches masks (R2S, nested tickets) switches statistics with them. Training mode, and inference without a
    supplied block, behave exactly as Keras's layer. Supplied statistics and slots need `center=False, scale=False`.
    """

    def __init__(self, *args, statistics_slots=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.statistics_slots = _slots_by_default[-1] if statistics_slots is None else int(statistics_slots)
        if self.statistics_slots and (self.center or self.scale):
            raise ValueError("statistics slots need a non-affine BatchNormalization (center=False, scale=False)")

    def build(self, input_shape):
        super().build(input_shape)
        if self.statistics_slots:  # one row per slot; a layer made without slots has no such weights
            shape = (self.statistics_slots,) + tuple(self.moving_mean.shape)
            self.slot_moving_mean = self.add_weight(shape=shape, name="slot_moving_mean", initializer="zeros",
                                                    trainable=False, autocast=False)
            self.slot_moving_variance = self.add_weight(shape=shape, name="slot_moving_variance", initializer="ones",
                                                        trainable=False, autocast=False)

    def call(self, inputs, training=None, mask=None):
        statistics, slot = _supplied_statistics.value_for(self), _supplied_slots.value_for(self)
        if slot is not None and not 0 <= slot < self.statistics_slots:
            raise ValueError(f"{self.name} holds {self.statistics_slots} statistics slots; slot {slot} was supplied")
        if slot is not None and training and self.trainable:
            return self._train_slot(inputs, slot)
        if slot is not None and statistics is None:  # inference (as Keras runs a frozen layer) with the slot's
            statistics, training = (self.slot_moving_mean[slot], self.slot_moving_variance[slot]), False
        if statistics is None or training:
            return super().call(inputs, training=training, mask=mask)
        if self.center or self.scale:
            raise ValueError("supplied statistics need a non-affine BatchNormalization (center=False, scale=False)")
        mean, variance = (tf.cast(value, inputs.dtype) for value in statistics)
        return (inputs - mean) * tf.math.rsqrt(variance + self.epsilon)

    def _train_slot(self, inputs, slot):
        """Keras's training-mode computation, with the moving averages of `slot` updated instead of the layer's."""
        values = tf.cast(inputs, tf.float32)
        axes = [axis for axis in range(len(values.shape)) if axis != self.axis % len(values.shape)]
        mean, variance = keras.ops.moments(values, axes=axes, synchronized=self.synchronized)
        for moving, batch in ((self.slot_moving_mean, mean), (self.slot_moving_variance, variance)):
            row = moving[slot] * self.momentum + batch * (1.0 - self.momentum)
            moving.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(moving), [[slot]], [row]))
        outputs = keras.ops.batch_normalization(values, mean, variance, axis=self.axis, epsilon=self.epsilon)
        return tf.cast(outputs, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        if self.statistics_slots:  # a layer without slots keeps Keras's config
            config.update(statistics_slots=self.statistics_slots)
        return config
