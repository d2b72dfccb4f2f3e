"""A small masked network made with the networks' own factory, for tests of the search's mechanics (strategies,
replicas, BatchNorm synchronisation) that do not depend on the architecture: it traces and runs far faster than
ResNet18 and still holds masked convs with searched scores, synchronised TicketBatchNorm layers and a masked
classifier."""
import keras

from rst_tf.method import layers
from rst_tf.networks.common import MaskedLayerFactory, batch_norm, network_input
from rst_tf.search import search_model


def masked_cnn(remaining_ratio=0.2, seed=0, statistics_slots=0, num_classes=10, input_shape=(32, 32, 3),
               dataset="cifar10"):
    """conv(8)-bn-relu, conv(16, stride 2)-bn-relu, global pooling, dense; every layer masked at `remaining_ratio`
    with trainable scores (mode `rst`). `statistics_slots`: extra BatchNorm statistics (a nested search's)."""
    factory = MaskedLayerFactory(remaining_ratio=remaining_ratio, seed=seed)
    with layers.statistics_slots(statistics_slots):
        inputs, x = network_input(input_shape, dataset)
        x = keras.layers.ReLU()(batch_norm("bn1")(factory.conv(8, 3, name="conv1")(x)))
        x = keras.layers.ReLU()(batch_norm("bn2")(factory.conv(16, 3, 2, name="conv2")(x)))
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        logits = factory.dense(num_classes, name="classifier")(x)
    network = keras.Model(inputs, logits, name="masked_cnn")
    search_model.configure_mode(network, "rst")
    return network
