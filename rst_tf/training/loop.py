"""A whole search run: data, network, strategy, epochs, validation, checkpoints (last and best), metrics files.

`run(config, output_dir)` is what `bin/search` calls. Everything is seeded from `config.seed`; a run killed at any
point and started again with `resume=True` continues from its last finished epoch and ends with the same scores as
an uninterrupted run.
"""
import dataclasses
import math
import os
import time

import keras
import tensorflow as tf

from rst_tf import attacks, data
from rst_tf.measuring import attacked
from rst_tf.method import layers
from rst_tf.search import distribute, nested, search_model
from rst_tf.training import build, run_dir, warm_start

_MIXED_PRECISION_POLICY = "mixed_bfloat16"


def learning_rate_schedule(config, steps_per_epoch):
    """Piecewise constant: x0.1 at each fraction of the run in `lr_drops` (paper: 50% and 75%); constant with none."""
    total_steps = steps_per_epoch * config.epochs
    boundaries = [int(round(fraction * total_steps)) for fraction in config.lr_drops]
    if not boundaries:  # Keras's PiecewiseConstantDecay needs at least one boundary
        return config.learning_rate
    values = [config.learning_rate * 0.1 ** i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


class _ProgressBar(keras.callbacks.Callback):
    """A bar over one epoch's steps (the run prints which epoch of how many)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = keras.utils.Progbar(self.steps)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(batch + 1, [(name, float(value)) for name, value in (logs or {}).items()])


class _Run:
    """State of one run while it executes."""

    def __init__(self, config, output_dir, progress):
        self.config = config
        self.output_dir = output_dir
        self.strategy = distribute.make_strategy(config.strategy)
        self.writes = distribute.is_chief(self.strategy)
        self.progress = progress and self.writes
        self.splits = build.load_data(config)
        global_batch = config.batch_size
        self.steps_per_epoch = self.splits.num_train // global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size {global_batch} is larger than the {self.splits.num_train} training examples")
        with self.strategy.scope():
            self.network = warm_start.initial_network(config, self.splits.num_classes, self.splits.image_shape)
            options = dict(weight_decay=config.weight_decay, attack_bn_training=config.attack_bn_training,
                           seed=config.seed, objective=config.objective)
            if config.nested_ratios:
                self.model = nested.NestedSearchModel(self.network, config.ticket_ratios(), config.attack_config(),
                                                      **options)
            else:
                self.model = search_model.SearchModel(self.network, config.attack_config(), **options)
            self.optimizer = keras.optimizers.SGD(learning_rate_schedule(config, self.steps_per_epoch),
                                                  momentum=config.momentum)
            self.model.compile(optimizer=self.optimizer, jit_compile=config.jit_compile)
            self.model(tf.zeros((1,) + tuple(self.splits.image_shape)))  # builds the wrapper's state
            self.optimizer.build(self.model.trainable_variables)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.best_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_accuracy")
        self.checkpoint = tf.train.Checkpoint(network=self.network, optimizer=self.optimizer, epoch=self.epoch,
                                              best_accuracy=self.best_accuracy)
        checkpoint_dir = os.path.join(output_dir, "checkpoints")
        if not self.writes:  # other workers save to a scratch place, as MultiWorkerMirroredStrategy requires
            checkpoint_dir = os.path.join(output_dir, f".worker_{self.strategy.cluster_resolver.task_id}")
        self.last = tf.train.CheckpointManager(self.checkpoint, os.path.join(checkpoint_dir, "last"), 1)
        self.best = tf.train.CheckpointManager(self.checkpoint, os.path.join(checkpoint_dir, "best"), 1)
        self.history = []
        self._distributed_step = None
        self.natural_accuracy = attacked.AttackedAccuracy(self.network, attacks.AttackConfig(name="none"))
        self.robust_accuracy = attacked.AttackedAccuracy(self.network, config.eval_attack_config(), config.seed)
        self.ticket_accuracies = None  # a nested search reports every ticket, and their means
        if config.nested_ratios:
            self.ticket_accuracies = nested.TicketAccuracies(self.network, config.ticket_ratios(),
                                                             config.eval_attack_config(), config.seed)

    def data_summary(self):
        return {"num_classes": self.splits.num_classes, "image_shape": list(self.splits.image_shape),
                "class_names": list(self.splits.class_names), "skipped_files": list(self.splits.skipped_files)}

    def restore(self):
        if self.last.latest_checkpoint:
            self.checkpoint.restore(self.last.latest_checkpoint).assert_existing_objects_matched()
            self.history = run_dir.read_json(os.path.join(self.output_dir, "metrics.json")).get("epochs", [])
            self.history = [row for row in self.history if row["epoch"] <= int(self.epoch.numpy())]

    def train_epoch(self, epoch):
        batches = data.train_batches(self.splits.train, dataset=self.config.dataset,
                                     batch_size=self.config.batch_size, epoch=epoch, seed=self.config.seed)
        if distribute.fit_can_drive(self.strategy):
            # One epoch per call: Keras's own "Epoch i/n" would count the calls' epochs, not the run's.
            callbacks = [_ProgressBar(self.steps_per_epoch)] if self.progress else []
            history = self.model.fit(batches, epochs=epoch + 1, initial_epoch=epoch, verbose=0, shuffle=False,
                                     callbacks=callbacks)
            return {name: float(values[-1]) for name, values in history.history.items()}
        return self._train_epoch_with_loop(batches)

    def _train_epoch_with_loop(self, batches):
        """The same step under `strategy.run`, for strategies Keras's `fit` cannot drive."""
        if self._distributed_step is None:
            self._distributed_step = tf.function(
                lambda images, labels: self.model.distributed_step(self.strategy, images, labels))
        for metric in self.model.metrics:
            metric.reset_state()
        bar = keras.utils.Progbar(self.steps_per_epoch, verbose=1 if self.progress else 0)
        for step, (images, labels) in enumerate(self.strategy.experimental_distribute_dataset(batches), 1):
            self._distributed_step(images, labels)
            bar.update(step, [(m.name, float(m.result())) for m in self.model.metrics])
        return {metric.name: float(metric.result()) for metric in self.model.metrics}

    def learning_rate(self):
        """The learning rate of the next step."""
        return float(self.optimizer.learning_rate)

    def accuracies(self, batches, prefix):
        """Natural and PGD-20 accuracy (`<prefix>_natural_accuracy`, `<prefix>_pgd20_accuracy`); a nested search
        also gives each ticket's (`..._ratio_<r>`), and the plain names hold the means over the tickets."""
        if self.ticket_accuracies is not None:
            return self.ticket_accuracies(batches, prefix)
        return {f"{prefix}_natural_accuracy": self.natural_accuracy(batches),
                f"{prefix}_pgd20_accuracy": self.robust_accuracy(batches)}

    def validate(self):
        """Natural and PGD-20 accuracy on the held-out validation split."""
        return self.accuracies(data.eval_batches(self.splits.validation, self.config.batch_size), "val")

    def test_report(self, checkpoint_path):
        """Natural and PGD-20 test accuracy of the weights in `checkpoint_path`."""
        self.checkpoint.restore(checkpoint_path).expect_partial()
        batches = data.eval_batches(self.splits.test, self.config.batch_size)
        return {**self.accuracies(batches, "test"), "epoch": int(self.epoch.numpy())}


def _log(message):
    print(message, flush=True)


def run(config, output_dir, resume=False, progress=True, log=_log):
    """Search (or train) as `config` says, writing checkpoints, TensorBoard logs and metrics.json to `output_dir`.

    Returns the final metrics. Raises ValueError (nothing written) for a bad config, a missing data set or an
    undecodable image file (unless `config.skip_bad_images`), or an `output_dir` that already holds a run when
    `resume` is False. With `config.mixed_precision` the run computes under the mixed_bfloat16 policy (logits and
    losses in float32); the global policy is restored when it returns.
    """
    config.validate()
    config = config.resolved()
    if not resume and os.path.isdir(os.path.join(output_dir, "checkpoints")):
        raise ValueError(f"output_dir {output_dir} already holds a run: pass resume or choose another directory")
    warm_start.check_init_from(config)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    policy = keras.mixed_precision.global_policy()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(_MIXED_PRECISION_POLICY)
    try:
        return _run(config, output_dir, resume, progress, log)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _run(config, output_dir, resume, progress, log):
    state = _Run(config, output_dir, progress)  # loads data and builds everything before writing anything
    skipped = len(state.splits.skipped_files)
    if skipped:
        log(f"skipped {skipped} image file{'s' if skipped > 1 else ''} that cannot be decoded (listed in metrics.json)")
    if state.writes:
        os.makedirs(output_dir, exist_ok=True)
        run_dir.write_json(os.path.join(output_dir, "config.json"), dataclasses.asdict(config))
    if resume:
        state.restore()
    start = int(state.epoch.numpy())
    if start:
        log(f"resuming after epoch {start} of {config.epochs}")
    summaries = tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard")) if state.writes else None
    masked_count = sum(layer.kernel.shape.num_elements() for layer in layers.masked_layers(state.network))
    for epoch in range(start, config.epochs):
        log(f"epoch {epoch + 1}/{config.epochs}")
        began = time.time()
        row = {"epoch": epoch + 1, **state.train_epoch(epoch)}
        row["seconds"] = time.time() - began
        row["learning_rate"] = state.learning_rate()
        fractions = layers.kept_fractions(state.network)
        if fractions:  # each masked layer's kept fraction (it varies by layer under a global top-k)
            row["kept_fractions"] = fractions
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            row.update(state.validate())
            log("  " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_")))
        state.history.append(row)
        if state.writes:  # metrics first: a resumed run drops rows past its last checkpoint
            with summaries.as_default(step=epoch + 1):
                for name, value in row.items():
                    if name != "epoch" and isinstance(value, float) and math.isfinite(value):
                        tf.summary.scalar(name, value)
            run_dir.write_json(os.path.join(output_dir, "metrics.json"), {"data": state.data_summary(),
                                                                           "epochs": state.history})
        state.epoch.assign(epoch + 1)
        # best: the highest validation PGD-20 accuracy (of a nested search: its mean over the tickets)
        if "val_pgd20_accuracy" in row and row["val_pgd20_accuracy"] > state.best_accuracy.numpy():
            state.best_accuracy.assign(row["val_pgd20_accuracy"])
            state.best.save(checkpoint_number=epoch + 1)
        state.last.save(checkpoint_number=epoch + 1)
    final = {"weights": masked_count, "steps_per_epoch": state.steps_per_epoch,
             "num_train": state.splits.num_train, "num_validation": state.splits.num_validation,
             "num_test": state.splits.num_test,
             "best": state.test_report(state.best.latest_checkpoint or state.last.latest_checkpoint),
             "last": state.test_report(state.last.latest_checkpoint)}
    if state.writes:
        run_dir.write_json(os.path.join(output_dir, "metrics.json"), {"data": state.data_summary(),
                                                                       "epochs": state.history, "final": final})
    return {"epochs": state.history, "final": final}
