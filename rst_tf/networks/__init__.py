"""The paper's networks, built by name with masked layers throughout."""
from rst_tf.networks.common import NORMALIZATION, MaskedLayerFactory
from rst_tf.networks.resnet_cifar import preact_resnet18, resnet18
from rst_tf.networks.resnet_imagenet import resnet18_imagenet, resnet50, resnet101
from rst_tf.networks.wide_resnet import wrn_34_10

NETWORKS = {
    "resnet18": resnet18,
    "preact_resnet18": preact_resnet18,
    "wrn_34_10": wrn_34_10,
    "resnet18_imagenet": resnet18_imagenet,
    "resnet50": resnet50,
    "resnet101": resnet101,
}


def build(name, *, num_classes, input_shape, dataset, remaining_ratio=0.5, sparsity="element",
          weight_init="signed_kaiming_constant", seed=0, scale_fan=False, width_multiplier=1.0,
          dense_first_conv=False, dense_classifier=False):
    """Build network `name` with every conv and the classifier masked at `remaining_ratio`.

    Weights are drawn from `seed` (layer i from stream i), so the same arguments give the same network anywhere.
    `keras:<Application>` (e.g. `keras:ResNet50`) is the masked twin of that keras.applications model
    (`rst_tf.networks.keras_applications`), which takes no width multiplier and no dense first conv or classifier.
    """
    if name.startswith("keras:"):
        from rst_tf.networks import keras_applications

        for option, value, default in (("width_multiplier", width_multiplier, 1.0),
                                       ("dense_first_conv", dense_first_conv, False),
                                       ("dense_classifier", dense_classifier, False)):
            if value != default:
                raise ValueError(f"network {name} does not take {option} (got {value!r})")
        return keras_applications.keras_application(
            name[len("keras:"):], num_classes=num_classes, input_shape=input_shape, dataset=dataset,
            remaining_ratio=remaining_ratio, sparsity=sparsity, weight_init=weight_init, seed=seed, scale_fan=scale_fan)
    if name not in NETWORKS:
        raise ValueError(f"network must be one of {sorted(NETWORKS)}, got {name!r}")
    if dataset not in NORMALIZATION:
        raise ValueError(f"dataset must be one of {sorted(NORMALIZATION)}, got {dataset!r}")
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
    factory = MaskedLayerFactory(remaining_ratio=remaining_ratio, sparsity=sparsity, weight_init=weight_init,
                                 seed=seed, scale_fan=scale_fan, width_multiplier=width_multiplier)
    return NETWORKS[name](factory, num_classes=num_classes, input_shape=tuple(input_shape), dataset=dataset,
                          dense_first_conv=dense_first_conv, dense_classifier=dense_classifier)


__all__ = ["NETWORKS", "NORMALIZATION", "MaskedLayerFactory", "build"]
