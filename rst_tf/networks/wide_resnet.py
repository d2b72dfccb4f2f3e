"""WRN-34-10 as in the adversarial-training literature (the paper's "WideResNet32")."""
import keras

from rst_tf.networks.common import batch_norm, network_input


def _wide_block(x, factory, planes, stride, name):
    """Pre-activation wide basic block; the 1x1 shortcut sees the pre-activated input when channels change."""
    preact = keras.layers.ReLU()(batch_norm(f"{name}_bn1")(x))
    equal_in_out = x.shape[-1] == planes
    shortcut = x if equal_in_out else factory.conv(planes, 1, stride, padding=0, name=f"{name}_shortcut")(preact)
    out = factory.conv(planes, 3, stride, name=f"{name}_conv1")(preact)
    out = keras.layers.ReLU()(batch_norm(f"{name}_bn2")(out))
    out = factory.conv(planes, 3, 1, name=f"{name}_conv2")(out)
    return keras.layers.Add()([out, shortcut])


def wrn_34_10(factory, num_classes=10, input_shape=(32, 32, 3), dataset="cifar10", dense_first_conv=False,
              dense_classifier=False, depth=34, widen_factor=10):
    """Wide ResNet of `depth` (6n + 4) and `widen_factor`; 46.2M weights at 34-10."""
    if (depth - 4) % 6:
        raise ValueError(f"wide resnet depth must be 6n + 4, got {depth}")
    blocks_per_stage = (depth - 4) // 6
    inputs, x = network_input(input_shape, dataset)
    x = factory.conv(factory.width(16), 3, 1, name="conv1", dense=dense_first_conv)(x)
    for stage, (planes, stride) in enumerate(((16 * widen_factor, 1), (32 * widen_factor, 2),
                                              (64 * widen_factor, 2)), start=1):
        for index in range(blocks_per_stage):
            x = _wide_block(x, factory, factory.width(planes), stride if index == 0 else 1, f"block{stage}_{index}")
    x = keras.layers.ReLU()(batch_norm("bn_final")(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = factory.dense(num_classes, name="classifier", dense=dense_classifier)(x)
    return keras.Model(inputs, logits, name=f"wrn_{depth}_{widen_factor}")
