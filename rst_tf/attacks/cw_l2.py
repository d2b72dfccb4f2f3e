"""Carlini & Wagner L2 (cleverhans 4.0.0, adapted to Keras 3): a minimum-norm attack, evaluated at an L2 radius.
Eager only (per example)."""
import keras
import numpy as np
import tensorflow as tf

from rst_tf.attacks import config as config_lib
from rst_tf.attacks import core


class _KerasAdam:
    """The optimizer interface cleverhans 4.0.0's CarliniWagnerL2 expects
    (``variables()`` as a method, ``apply_gradients``) on a Keras 3 Adam.

    A fresh Adam is built for each new perturbation variable (one per
    example); resetting ``variables()`` leaves the learning rate alone.
    """

    def __init__(self, learning_rate):
        self.learning_rate = learning_rate
        self._optimizer = None
        self._variable = None

    def variables(self):
        if self._optimizer is None:
            return []
        return [v for v in self._optimizer.variables if v is not self._optimizer.learning_rate]

    def apply_gradients(self, grads_and_vars):
        grads_and_vars = list(grads_and_vars)
        variable = grads_and_vars[0][1]
        if variable is not self._variable:
            self._optimizer = keras.optimizers.Adam(self.learning_rate)
            self._variable = variable
        self._optimizer.apply_gradients(grads_and_vars)


def cw_l2(model_fn, images, labels, config, seed=None, noise_rows=None, unroll=False):
    """Carlini & Wagner L2 from cleverhans 4.0.0, kept only within ``epsilon``.

    cleverhans 4.0.0's tf2 CarliniWagnerL2 needs three work-arounds here:
    its optimizer calls ``optimizer.variables()``, a list in Keras 3 (an
    adapter is swapped in); its trade-off constant has the shape of the
    images, which only broadcasts against the per-example loss for one
    example at a time (examples are attacked one by one, with
    ``initial_const`` divided by the number of pixels so that the effective
    constant is ``config.initial_const``); and passing ``y`` turns on its
    targeted mode (the true labels are set on the instance instead, keeping
    the attack untargeted). Examples the model already misclassifies are
    returned clean (distance 0).
    """
    from cleverhans.tf2.attacks.carlini_wagner_l2 import CarliniWagnerL2

    if images.shape.rank != 4:
        raise ValueError(f"cw_l2 needs images of shape [batch, height, width, channels], got {images.shape}")
    model_fn = core.input_gradient_only(model_fn)
    x = images.numpy().astype(np.float32)
    y = labels.numpy()
    logits = tf.convert_to_tensor(model_fn(images))
    num_classes = int(logits.shape[-1])
    already_wrong = np.argmax(logits.numpy(), axis=-1) != y
    pixels = int(np.prod(x.shape[1:]))
    attack = CarliniWagnerL2(
        model_fn,
        batch_size=1,
        clip_min=float(config.clip_min),
        clip_max=float(config.clip_max),
        binary_search_steps=config.binary_search_steps,
        max_iterations=config.steps,
        abort_early=True,
        confidence=float(config.confidence),
        initial_const=float(config.initial_const) / pixels,
        learning_rate=float(config.step_size),
    )
    attack.optimizer = _KerasAdam(float(config.step_size))
    adv = np.copy(x)
    for i in np.flatnonzero(~already_wrong):
        attack.y = tf.one_hot(y[i : i + 1], num_classes)
        adv[i] = attack.attack(x[i : i + 1])[0]
    distance = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)
    adv = np.where((distance <= config.epsilon)[:, None, None, None], adv, x)
    return tf.constant(np.clip(adv, config.clip_min, config.clip_max), images.dtype)


def _check(config):
    config_lib.check_int("steps", config.steps, minimum=1)
    config_lib.check_positive("step_size", config.step_size)
    config_lib.check_int("binary_search_steps", config.binary_search_steps, minimum=1)
    config_lib.check_positive("initial_const", config.initial_const)
    config_lib.check_real("confidence", config.confidence)
    if config.confidence < 0:
        raise ValueError(f"AttackConfig.confidence must be >= 0, got {config.confidence}")


RUNS = {"cw_l2": cw_l2}
config_lib.register(("cw_l2",), config_lib.Rule(check=_check, eager_only=True))
