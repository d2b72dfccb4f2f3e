"""Networks named `keras:<Application>` (e.g. `keras:ResNet50`): the masked twin (`rst_tf.method.twin`) of a
keras.applications model."""
import keras

from rst_tf.method import layers, twin
from rst_tf.networks.common import NORMALIZATION

KERAS_PREFIX = "keras:"  # network names `keras:<application>` name a keras.applications model


def is_keras_application(network_name):
    """Whether `network_name` is `keras:<name>` of a model builder in keras.applications (e.g. `keras:ResNet50`)."""
    if not network_name.startswith(KERAS_PREFIX):
        return False
    import keras.applications  # noqa: F401 (the attribute lookup below needs the submodule loaded)

    name = network_name[len(KERAS_PREFIX):]
    return bool(name) and name[0].isupper() and callable(getattr(keras.applications, name, None))


def keras_application(name, *, num_classes, input_shape, dataset, remaining_ratio=0.5, sparsity="element",
                      weight_init="signed_kaiming_constant", seed=0, scale_fan=False):
    """The masked twin of `keras.applications.<name>` (e.g. `ResNet50`) built with `weights=None`,
    `classifier_activation=None` and `num_classes` outputs at `input_shape`, behind `dataset`'s input
    normalisation (the network takes [0, 1] pixels, as `rst_tf.networks` do). Raises ValueError naming an unknown
    application or a layer `masked_twin` refuses."""
    if not is_keras_application(KERAS_PREFIX + name):
        raise ValueError(f"network {KERAS_PREFIX}{name}: keras.applications has no model {name!r}")
    if dataset not in NORMALIZATION:
        raise ValueError(f"dataset must be one of {sorted(NORMALIZATION)}, got {dataset!r}")
    mean, std = NORMALIZATION[dataset]
    inputs = keras.Input(tuple(input_shape), name="images")
    normalized = layers.InputNormalization(mean, std, name="input_normalization")(inputs)
    try:
        model = getattr(keras.applications, name)(weights=None, input_tensor=normalized,
                                                  classes=int(num_classes), classifier_activation=None)
    except (TypeError, ValueError) as error:
        raise ValueError(f"network {KERAS_PREFIX}{name}: {error}") from None
    return twin.masked_twin(model, remaining_ratio, sparsity=sparsity, weight_init=weight_init, seed=seed,
                            scale_fan=scale_fan)
