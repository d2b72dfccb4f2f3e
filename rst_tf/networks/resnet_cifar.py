"""CIFAR ResNet18 as the paper's official code builds it (post-activation), and PreActResNet18."""
import keras

from rst_tf.networks.common import batch_norm, network_input

_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def basic_block(x, factory, planes, stride, name):
    """conv-bn-relu-conv-bn + shortcut (1x1 masked conv + bn when the shape changes), then relu."""
    out = factory.conv(planes, 3, stride, name=f"{name}_conv1")(x)
    out = keras.layers.ReLU()(batch_norm(f"{name}_bn1")(out))
    out = factory.conv(planes, 3, 1, name=f"{name}_conv2")(out)
    out = batch_norm(f"{name}_bn2")(out)
    shortcut = x
    if stride != 1 or x.shape[-1] != planes:
        shortcut = factory.conv(planes, 1, stride, name=f"{name}_shortcut")(x)
        shortcut = batch_norm(f"{name}_shortcut_bn")(shortcut)
    return keras.layers.ReLU()(keras.layers.Add()([out, shortcut]))


def _preact_block(x, factory, planes, stride, name):
    """bn-relu-conv-bn-relu-conv + shortcut taken from the pre-activated input when the shape changes."""
    preact = keras.layers.ReLU()(batch_norm(f"{name}_bn1")(x))
    shortcut = x
    if stride != 1 or x.shape[-1] != planes:
        shortcut = factory.conv(planes, 1, stride, name=f"{name}_shortcut")(preact)
    out = factory.conv(planes, 3, stride, name=f"{name}_conv1")(preact)
    out = keras.layers.ReLU()(batch_norm(f"{name}_bn2")(out))
    out = factory.conv(planes, 3, 1, name=f"{name}_conv2")(out)
    return keras.layers.Add()([out, shortcut])


def _resnet18(factory, num_classes, input_shape, dataset, dense_first_conv, dense_classifier, preact, name):
    inputs, x = network_input(input_shape, dataset)
    x = factory.conv(factory.width(64), 3, 1, name="conv1", dense=dense_first_conv)(x)
    if not preact:
        x = keras.layers.ReLU()(batch_norm("bn1")(x))
    block = _preact_block if preact else basic_block
    for stage, (planes, stride) in enumerate(_STAGES, start=1):
        for index in range(2):
            x = block(x, factory, factory.width(planes), stride if index == 0 else 1, f"layer{stage}_{index}")
    if preact:
        x = keras.layers.ReLU()(batch_norm("bn_final")(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = factory.dense(num_classes, name="classifier", dense=dense_classifier)(x)
    return keras.Model(inputs, logits, name=name)


def resnet18(factory, num_classes=10, input_shape=(32, 32, 3), dataset="cifar10", dense_first_conv=False,
             dense_classifier=False):
    """ResNet18 for 32x32 inputs: 3x3 stem, no max-pool, post-activation BasicBlocks, masked classifier."""
    return _resnet18(factory, num_classes, input_shape, dataset, dense_first_conv, dense_classifier,
                     preact=False, name="resnet18")


def preact_resnet18(factory, num_classes=10, input_shape=(32, 32, 3), dataset="cifar10", dense_first_conv=False,
                    dense_classifier=False):
    """Pre-activation ResNet18 for 32x32 inputs (He et al. 2016, identity mappings)."""
    return _resnet18(factory, num_classes, input_shape, dataset, dense_first_conv, dense_classifier,
                     preact=True, name="preact_resnet18")
