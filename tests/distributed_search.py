"""Runs one search step under a strategy and saves the score updates; used by tests/test_distribute.py. The network
is tests/masked_cnn.py's: what is tested is the distribution (replicas, synchronised BatchNorm, summed gradients),
which does not need ResNet18.

    python tests/distributed_search.py STRATEGY OUTPUT_PREFIX [--logical_cpus N] [--attack_bn_training 0,1]

Writes OUTPUT_PREFIX_bn<b>.npz for each BatchNorm mode b (0: inference, 1: training mode while attacking), each
from a fresh model in this one process.
`multi_worker` reads TF_CONFIG and drives the step with `strategy.run` (Keras's fit cannot); `default` and
`mirrored` use `fit`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(strategy_name, output_prefix, logical_cpus, bn_modes):
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    import keras
    from rst_tf import data
    from rst_tf.search import distribute

    keras.utils.set_random_seed(0)  # before the data: the shuffle depends on the global seed
    tf.config.experimental.enable_op_determinism()
    strategy = distribute.make_strategy(strategy_name)
    if strategy_name == "mirrored":
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(logical_cpus)])
    splits = data.load_splits("cifar10", os.environ["RST_TF_DATA_DIR"], validation_examples=0,
                              train_examples=32, test_examples=8, seed=0)
    batches = data.train_batches(splits.train, dataset="cifar10", batch_size=32, epoch=0, seed=0)
    for attack_bn_training in bn_modes:
        loss, replicas, updates = step_updates(strategy, batches, attack_bn_training)
        if distribute.is_chief(strategy):
            np.savez(f"{output_prefix}_bn{int(attack_bn_training)}.npz", loss=loss, replicas=replicas, **updates)


def step_updates(strategy, batches, attack_bn_training):
    """(loss, replicas, {update_i: change of trainable variable i}) of one search step under `strategy`."""
    import keras
    from masked_cnn import masked_cnn
    from rst_tf import attacks
    from rst_tf.search import distribute, search_model

    with strategy.scope():
        network = masked_cnn(remaining_ratio=0.2, seed=0)
        model = search_model.SearchModel(network, attacks.AttackConfig(name="pgd", steps=2, step_size=4 / 255), seed=0,
                                   attack_bn_training=attack_bn_training)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    initial = [v.numpy().copy() for v in model.trainable_variables]
    if distribute.fit_can_drive(strategy):
        logs = model.fit(batches, epochs=1, verbose=0, shuffle=False).history
        loss = float(logs["loss"][-1])
    else:
        step = tf.function(lambda x, y: model.distributed_step(strategy, x, y))
        for images, labels in strategy.experimental_distribute_dataset(batches):
            step(images, labels)
        loss = float(model.loss_tracker.result())
    updates = {f"update_{i}": v.numpy() - start for i, (v, start) in enumerate(zip(model.trainable_variables, initial))}
    return loss, strategy.num_replicas_in_sync, updates


if __name__ == "__main__":
    def option(name, default):
        return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default
    main(sys.argv[1], sys.argv[2], int(option("--logical_cpus", "1")),
         [bool(int(mode)) for mode in option("--attack_bn_training", "1").split(",")])
