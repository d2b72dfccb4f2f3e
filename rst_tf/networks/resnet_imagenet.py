"""ImageNet ResNet50/101 in torchvision's layout (v1.5: the stride sits on the 3x3 conv of a bottleneck)."""
import keras

from rst_tf.networks.common import batch_norm, network_input
from rst_tf.networks.resnet_cifar import basic_block

_EXPANSION = 4


def _bottleneck(x, factory, planes, stride, name):
    out = factory.conv(planes, 1, 1, name=f"{name}_conv1")(x)
    out = keras.layers.ReLU()(batch_norm(f"{name}_bn1")(out))
    out = factory.conv(planes, 3, stride, name=f"{name}_conv2")(out)
    out = keras.layers.ReLU()(batch_norm(f"{name}_bn2")(out))
    out = factory.conv(planes * _EXPANSION, 1, 1, name=f"{name}_conv3")(out)
    out = batch_norm(f"{name}_bn3")(out)
    shortcut = x
    if stride != 1 or x.shape[-1] != planes * _EXPANSION:
        shortcut = factory.conv(planes * _EXPANSION, 1, stride, name=f"{name}_downsample")(x)
        shortcut = batch_norm(f"{name}_downsample_bn")(shortcut)
    return keras.layers.ReLU()(keras.layers.Add()([out, shortcut]))


def _resnet(factory, blocks, num_classes, input_shape, dataset, dense_first_conv, dense_classifier, name,
            block=_bottleneck):
    inputs, x = network_input(input_shape, dataset)
    x = factory.conv(factory.width(64), 7, 2, padding=3, name="conv1", dense=dense_first_conv)(x)
    x = keras.layers.ReLU()(batch_norm("bn1")(x))
    # After a ReLU, zero padding is the same as PyTorch's -inf padding for max pooling.
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.MaxPooling2D(3, 2, name="maxpool")(x)
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for index in range(count):
            stride = 2 if stage > 1 and index == 0 else 1
            x = block(x, factory, factory.width(planes), stride, f"layer{stage}_{index}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = factory.dense(num_classes, name="classifier", dense=dense_classifier)(x)
    return keras.Model(inputs, logits, name=name)


def resnet18_imagenet(factory, num_classes=1000, input_shape=(224, 224, 3), dataset="imagenet2012",
                      dense_first_conv=False, dense_classifier=False):
    """torchvision's ResNet18 (BasicBlocks): the paper's dense ImageNet baseline (Table 1)."""
    return _resnet(factory, (2, 2, 2, 2), num_classes, input_shape, dataset, dense_first_conv, dense_classifier,
                   "resnet18_imagenet", block=basic_block)


def resnet50(factory, num_classes=1000, input_shape=(224, 224, 3), dataset="imagenet2012", dense_first_conv=False,
             dense_classifier=False):
    return _resnet(factory, (3, 4, 6, 3), num_classes, input_shape, dataset, dense_first_conv, dense_classifier,
                   "resnet50")


def resnet101(factory, num_classes=1000, input_shape=(224, 224, 3), dataset="imagenet2012",
              dense_first_conv=False, dense_classifier=False):
    return _resnet(factory, (3, 4, 23, 3), num_classes, input_shape, dataset, dense_first_conv, dense_classifier,
                   "resnet101")
