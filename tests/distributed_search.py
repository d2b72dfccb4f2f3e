"""Runs one search step under a strategy and saves the score updates; used by tests/test_search.py.

    python tests/distributed_search.py STRATEGY OUTPUT.npz [--logical_cpus N] [--attack_bn_training 0|1]

`multi_worker` reads TF_CONFIG and drives the step with `strategy.run` (Keras's fit cannot); `default` and
`mirrored` use `fit`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(strategy_name, output_path, logical_cpus, attack_bn_training):
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    import keras
    from rst_tf import attacks, data, distribute, networks, search

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    strategy = distribute.make_strategy(strategy_name)
    if strategy_name == "mirrored":
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(logical_cpus)])
    splits = data.load_splits("cifar10", os.environ["RST_TF_DATA_DIR"], validation_examples=0,
                              train_examples=32, test_examples=8, seed=0)
    batches = data.train_batches(splits.train, dataset="cifar10", batch_size=32, epoch=0, seed=0)
    with strategy.scope():
        network = networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                                 remaining_ratio=0.2, width_multiplier=1 / 16, seed=0)
        model = search.SearchModel(network, attacks.AttackConfig(name="pgd", steps=2, step_size=4 / 255), seed=0,
                                   attack_bn_training=attack_bn_training)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    initial = [v.numpy().copy() for v in model.trainable_variables]
    if distribute.fit_can_drive(strategy):
        logs = model.fit(batches, epochs=1, verbose=0).history
        loss = float(logs["loss"][-1])
    else:
        step = tf.function(lambda x, y: model.distributed_step(strategy, x, y))
        for images, labels in strategy.experimental_distribute_dataset(batches):
            step(images, labels)
        loss = float(model.loss_tracker.result())
    updates = {f"update_{i}": v.numpy() - start for i, (v, start) in enumerate(zip(model.trainable_variables, initial))}
    if distribute.is_chief(strategy):
        np.savez(output_path, loss=loss, replicas=strategy.num_replicas_in_sync, **updates)


if __name__ == "__main__":
    def option(name, default):
        return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default
    main(sys.argv[1], sys.argv[2], option("--logical_cpus", 1), bool(option("--attack_bn_training", 1)))
