"""The data and the network a SearchConfig describes."""
import keras

from rst_tf import data, networks
from rst_tf.method import layers
from rst_tf.search import search_model

_DENSE_MODES = ("dense_at", "natural")


def load_data(config):
    """The run's train / validation / test splits (`rst_tf.data.DataSplits`)."""
    return data.load_splits(
        config.dataset, config.data_dir or None,
        validation_examples=None if config.validation_examples < 0 else config.validation_examples,
        train_examples=config.train_examples or None, test_examples=config.test_examples or None,
        class_subset=config.class_subset or None, seed=config.seed, skip_bad_images=config.skip_bad_images)


def build_network(config, num_classes, image_shape):
    """The searched network: masked at `remaining_ratio`, or dense (ratio 1) for `dense_at` / `natural`.

    A reinit fine-tune draws its kernels with `finetune_init` from `reinit_seed` (`config.weight_seed()`). A nested
    search's network is masked at the largest of `nested_ratios` and its BatchNorm layers hold one slot of statistics
    for each smaller ratio (`rst_tf.search.nested`).
    """
    ratios = config.ticket_ratios()
    with layers.statistics_slots(len(ratios) - 1):
        network = networks.build(
            config.network, num_classes=num_classes, input_shape=image_shape, dataset=config.dataset,
            remaining_ratio=1.0 if config.mode in _DENSE_MODES else ratios[-1],
            sparsity=config.sparsity, weight_init=config.network_weight_init(), seed=config.weight_seed(),
            scale_fan=config.scale_fan, width_multiplier=config.width_multiplier,
            dense_first_conv=config.dense_first_conv, dense_classifier=config.dense_classifier)
    search_model.configure_mode(network, config.mode)
    if config.topk_scope == "global":
        layers.set_topk_scope(network, "global")
    return _float32_outputs(network)


def _float32_outputs(network):
    """`network` with float32 logits under a mixed-precision policy (Keras's advice: the last layer in float32).

    The added layer holds no weights and comes after every other, so checkpoints fit either way.
    """
    if network.outputs[0].dtype == "float32":
        return network
    logits = keras.layers.Activation("linear", dtype="float32", name="float32_logits")(network.outputs[0])
    return keras.Model(network.inputs, logits, name=network.name)
