"""A whole search run: data, network, strategy, epochs, validation, checkpoints (last and best), metrics files.

`run(config, output_dir)` is what `bin/search` calls. Everything is seeded from `config.seed`; a run killed at any
point and started again with `resume=True` continues from its last finished epoch and ends with the same scores as
an uninterrupted run.

A run can start from another run's weights (`config.init_from`): `finetune` adversarially trains the kernel of a
found RST under its fixed mask (paper §5.1), starting from the RST's own random kernel (`inherited`) or a fresh one
(`reinit`); `rst` over a `dense_at` / `natural` run searches a mask in trained weights, a robust trained ticket
(RTT, §5.2), whose classifier is drawn afresh for another task or when `reinit_classifier` is set (§6.3).
"""
import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from rst_tf import attacks, data, distribute, evaluate, layers, networks, search


FINETUNE_WEIGHTS = ("inherited", "reinit")

_REINIT_STREAM = 0x5EED  # mixes the run's seed into the seed of a reinit fine-tune's fresh kernel
# The fields that fix a network's layers and masks: a fine-tune must share all of them with its RST.
_TICKET_FIELDS = ("dataset", "class_subset", "network", "width_multiplier", "remaining_ratio", "sparsity",
                  "weight_init", "scale_fan", "dense_first_conv", "dense_classifier")
# An RTT may change the masking and the task, not the trained layers it searches in.
_TRAINED_NETWORK_FIELDS = ("network", "width_multiplier")
CLASSIFIER = "classifier"


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a run (the paper's CIFAR defaults)."""
    dataset: str = "cifar10"
    data_dir: str = ""
    class_subset: tuple = ()  # keep only these classes, relabelled 0..n-1; (): every class
    network: str = "resnet18"
    width_multiplier: float = 1.0
    remaining_ratio: float = 0.05
    sparsity: str = "element"
    weight_init: str = "signed_kaiming_constant"
    scale_fan: bool = False
    dense_first_conv: bool = False
    dense_classifier: bool = False
    mode: str = "rst"
    init_from: str = ""  # a run folder: the RST to fine-tune (finetune) or the trained network of an RTT (rst)
    init_checkpoint: str = "best"  # which checkpoint of init_from: best or last
    finetune_weights: str = "inherited"  # finetune: the RST's own kernel (inherited) or a fresh one (reinit)
    reinit_seed: int = -1  # seed of the fresh kernel of a reinit fine-tune; -1: derived from seed
    reinit_classifier: bool = False  # RTT: draw the classifier afresh even when the classes match
    attack: str = "pgd"
    epsilon: float = 8 / 255
    attack_steps: int = 7
    attack_step_size: float = 2 / 255
    attack_bn_training: bool = True
    epochs: int = 160
    batch_size: int = 256
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_drops: tuple = (0.5, 0.75)
    validation_examples: int = -1  # -1: the dataset's default (1,000 for CIFAR)
    train_examples: int = 0  # 0: all
    test_examples: int = 0  # 0: all
    eval_every: int = 1
    eval_attack_steps: int = 20
    seed: int = 0
    strategy: str = "default"
    jit_compile: bool = False
    mixed_precision: bool = False
    deterministic: bool = False

    def validate(self):
        """Raise ValueError with one line naming the first bad field."""
        checks = [
            ("dataset", self.dataset in data.DATASETS, f"one of {data.DATASETS}"),
            ("network", self.network in networks.NETWORKS, f"one of {sorted(networks.NETWORKS)}"),
            ("remaining_ratio", 0.0 < self.remaining_ratio <= 1.0, "in (0, 1]"),
            ("width_multiplier", self.width_multiplier > 0, "positive"),
            ("mode", self.mode in search.MODES, f"one of {search.MODES}"),
            ("class_subset", len(set(self.class_subset)) == len(self.class_subset)
             and all(int(c) == c and c >= 0 for c in self.class_subset), "distinct class indices"),
            ("init_from", self.init_from or self.mode != "finetune", "a run folder with mode finetune"),
            ("init_from", not self.init_from or self.mode in ("rst", "finetune"),
             "empty in modes dense_at and natural"),
            ("init_checkpoint", self.init_checkpoint in ("best", "last"), "best or last"),
            ("finetune_weights", self.finetune_weights in FINETUNE_WEIGHTS, f"one of {FINETUNE_WEIGHTS}"),
            ("reinit_classifier", not self.reinit_classifier or (self.init_from and self.mode == "rst"),
             "False unless an RTT search (mode rst with init_from)"),
            ("strategy", self.strategy in distribute.STRATEGIES, f"one of {distribute.STRATEGIES}"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("learning_rate", self.learning_rate > 0, "positive"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("eval_every", self.eval_every >= 1, "at least 1"),
            ("lr_drops", all(0 < f < 1 for f in self.lr_drops), "fractions of the run in (0, 1)"),
        ]
        for field, ok, expected in checks:
            if not ok:
                raise ValueError(f"{field} must be {expected}, got {getattr(self, field)!r}")
        self.attack_config().validate()

    def resolved(self):
        """This config with the derived `reinit_seed` filled in (what config.json records)."""
        if self.mode == "finetune" and self.finetune_weights == "reinit" and self.reinit_seed < 0:
            derived = int(np.random.SeedSequence([_REINIT_STREAM, self.seed % 2**32]).generate_state(1)[0] >> 1)
            return dataclasses.replace(self, reinit_seed=derived)
        return self

    def weight_seed(self):
        """Seed of the network's random weights: `reinit_seed` for a reinit fine-tune, else `seed`."""
        if self.mode == "finetune" and self.finetune_weights == "reinit":
            return self.resolved().reinit_seed
        return self.seed

    def attack_config(self):
        if self.mode == "natural":
            return attacks.AttackConfig(name="none")
        if self.attack == "fgsm_rs":
            return attacks.fgsm_rs_config(self.epsilon)
        return attacks.AttackConfig(name=self.attack, epsilon=self.epsilon, steps=self.attack_steps,
                                    step_size=self.attack_step_size)

    def eval_attack_config(self):
        """Standard PGD-20 at the search's ε: random start, step 2/255 (scaled with ε), no early stop."""
        return attacks.AttackConfig(name="pgd", epsilon=self.epsilon, steps=self.eval_attack_steps,
                                    step_size=self.epsilon / 4)


def load_data(config):
    return data.load_splits(
        config.dataset, config.data_dir or None,
        validation_examples=None if config.validation_examples < 0 else config.validation_examples,
        train_examples=config.train_examples or None, test_examples=config.test_examples or None,
        class_subset=config.class_subset or None, seed=config.seed)


def build_network(config, num_classes, image_shape):
    """The searched network: masked at `remaining_ratio`, or dense (ratio 1) for `dense_at` / `natural`."""
    dense_modes = ("dense_at", "natural")
    network = networks.build(
        config.network, num_classes=num_classes, input_shape=image_shape, dataset=config.dataset,
        remaining_ratio=1.0 if config.mode in dense_modes else config.remaining_ratio,
        sparsity=config.sparsity, weight_init=config.weight_init, seed=config.weight_seed(),
        scale_fan=config.scale_fan, width_multiplier=config.width_multiplier,
        dense_first_conv=config.dense_first_conv, dense_classifier=config.dense_classifier)
    search.configure_mode(network, config.mode)
    return network


def initial_network(config, num_classes, image_shape):
    """The network a run starts from: `build_network`, then given `config.init_from`'s weights when set.

    finetune: the RST's scores (so its mask) and, when `inherited`, every other weight of it (kernels, BatchNorm
    statistics); `reinit` keeps the fresh kernel drawn from `reinit_seed`. rst (RTT): the trained network's kernels
    and BatchNorm statistics with this run's fresh scores; the classifier keeps its fresh kernel when the task
    (dataset, class subset, number of classes) differs or `reinit_classifier` is set (a transferred RTT). Raises
    ValueError naming what does not fit.
    """
    network = build_network(config, num_classes, image_shape)
    if not config.init_from:
        return network
    check_init_from(config)
    try:
        source, source_config = load_run(config.init_from, config.init_checkpoint)
    except ValueError as error:
        raise ValueError(f"init_from {error}") from error
    source_classes = int(source.output_shape[-1])
    finetune = config.mode == "finetune"
    if finetune and source_classes != num_classes:
        raise ValueError(f"init_from {config.init_from} has {source_classes} classes, this run {num_classes}")
    other_task = (source_config.dataset, source_config.class_subset) != (config.dataset, config.class_subset)
    fresh_classifier = not finetune and (config.reinit_classifier or other_task or source_classes != num_classes)
    masked = {id(layer) for layer in layers.masked_layers(network)}
    for layer, source_layer in _layer_pairs(network, source, config.init_from):
        if id(layer) not in masked:  # BatchNorm statistics
            if not finetune or config.finetune_weights == "inherited":
                _copy_weights(layer.weights, source_layer.weights, config.init_from)
        elif finetune:
            _copy_weights([layer.scores], [source_layer.scores], config.init_from)
            if config.finetune_weights == "inherited":
                _copy_weights([layer.kernel], [source_layer.kernel], config.init_from)
        elif not (layer.name == CLASSIFIER and fresh_classifier):
            _copy_weights([layer.kernel], [source_layer.kernel], config.init_from)
    return network


def check_init_from(config):
    """Raise ValueError (one line naming init_from) unless `config.init_from` holds a run this run can start from.

    A fine-tune needs an `rst` run with the same network, task and masking; an RTT (`rst`) a `dense_at` or
    `natural` run of the same network and width.
    """
    if not config.init_from:
        return
    source_config = read_config(config.init_from, "init_from ")
    if config.mode == "finetune":
        wanted, fields = ("rst",), _TICKET_FIELDS
    else:
        wanted, fields = ("dense_at", "natural"), _TRAINED_NETWORK_FIELDS
    if source_config.mode not in wanted:
        raise ValueError(f"init_from {config.init_from} is a mode {source_config.mode} run; mode {config.mode} "
                         f"starts from a run of mode {' or '.join(wanted)}")
    for field in fields:
        ours, theirs = getattr(config, field), getattr(source_config, field)
        if ours != theirs:
            raise ValueError(f"init_from {config.init_from} has {field} {theirs!r}, this run {ours!r}")
    reinit = config.mode == "finetune" and config.finetune_weights == "reinit"
    if reinit and config.weight_seed() == source_config.seed:
        raise ValueError(f"reinit_seed {config.weight_seed()} is the seed of init_from {config.init_from}: "
                         "the fresh kernel would be its kernel")


def _layer_pairs(network, source, source_dir):
    """(layer, layer of the same name in `source`) for every layer of `network` that holds weights."""
    source_layers = {layer.name: layer for layer in source.layers}
    for layer in network.layers:
        if not layer.weights:
            continue
        if layer.name not in source_layers:
            raise ValueError(f"init_from {source_dir} has no layer {layer.name}")
        yield layer, source_layers[layer.name]


def _copy_weights(variables, source_variables, source_dir):
    for variable, source_variable in zip(variables, source_variables, strict=True):
        if tuple(variable.shape) != tuple(source_variable.shape):
            raise ValueError(f"init_from {source_dir}: {source_variable.path} has shape "
                             f"{tuple(source_variable.shape)}, this run's {tuple(variable.shape)}")
        variable.assign(source_variable)


def learning_rate_schedule(config, steps_per_epoch):
    """Piecewise constant: x0.1 at each fraction of the run in `lr_drops` (paper: 50% and 75%)."""
    total_steps = steps_per_epoch * config.epochs
    boundaries = [int(round(fraction * total_steps)) for fraction in config.lr_drops]
    values = [config.learning_rate * 0.1 ** i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


class _Run:
    """State of one run while it executes."""

    def __init__(self, config, output_dir, progress):
        self.config = config
        self.output_dir = output_dir
        self.progress = progress
        self.strategy = distribute.make_strategy(config.strategy)
        self.writes = distribute.is_chief(self.strategy)
        self.splits = load_data(config)
        global_batch = config.batch_size
        self.steps_per_epoch = self.splits.num_train // global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size {global_batch} is larger than the {self.splits.num_train} training examples")
        with self.strategy.scope():
            self.network = initial_network(config, self.splits.num_classes, self.splits.image_shape)
            self.model = search.SearchModel(self.network, config.attack_config(), config.weight_decay,
                                            config.attack_bn_training, config.seed)
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
        self.natural_accuracy = evaluate.AttackedAccuracy(self.network, attacks.AttackConfig(name="none"))
        self.robust_accuracy = evaluate.AttackedAccuracy(self.network, config.eval_attack_config(), config.seed)

    def data_summary(self):
        return {"num_classes": self.splits.num_classes, "image_shape": list(self.splits.image_shape),
                "class_names": list(self.splits.class_names)}

    def restore(self):
        if self.last.latest_checkpoint:
            self.checkpoint.restore(self.last.latest_checkpoint).assert_existing_objects_matched()
            self.history = read_json(os.path.join(self.output_dir, "metrics.json")).get("epochs", [])
            self.history = [row for row in self.history if row["epoch"] <= int(self.epoch.numpy())]

    def train_epoch(self, epoch):
        batches = data.train_batches(self.splits.train, dataset=self.config.dataset,
                                     batch_size=self.config.batch_size, epoch=epoch, seed=self.config.seed)
        if distribute.fit_can_drive(self.strategy):
            history = self.model.fit(batches, epochs=epoch + 1, initial_epoch=epoch,
                                     verbose=1 if self.progress else 0)
            return {name: float(values[-1]) for name, values in history.history.items()}
        return self._train_epoch_with_loop(batches)

    def _train_epoch_with_loop(self, batches):
        """The same step under `strategy.run`, for strategies Keras's `fit` cannot drive."""
        if self._distributed_step is None:
            self._distributed_step = tf.function(
                lambda images, labels: self.model.distributed_step(self.strategy, images, labels))
        for metric in self.model.metrics:
            metric.reset_state()
        bar = keras.utils.Progbar(self.steps_per_epoch, verbose=1 if self.progress and self.writes else 0)
        for step, (images, labels) in enumerate(self.strategy.experimental_distribute_dataset(batches), 1):
            self._distributed_step(images, labels)
            bar.update(step, [(m.name, float(m.result())) for m in self.model.metrics])
        return {metric.name: float(metric.result()) for metric in self.model.metrics}

    def validate(self):
        """Natural and PGD-20 accuracy on the held-out validation split."""
        batches = data.eval_batches(self.splits.validation, self.config.batch_size)
        return {"val_natural_accuracy": self.natural_accuracy(batches),
                "val_pgd20_accuracy": self.robust_accuracy(batches)}

    def test_report(self, checkpoint_path):
        """Natural and PGD-20 test accuracy of the weights in `checkpoint_path`."""
        self.checkpoint.restore(checkpoint_path).expect_partial()
        batches = data.eval_batches(self.splits.test, self.config.batch_size)
        return {"test_natural_accuracy": self.natural_accuracy(batches),
                "test_pgd20_accuracy": self.robust_accuracy(batches), "epoch": int(self.epoch.numpy())}


def _log(message):
    print(message, flush=True)


def run(config, output_dir, resume=False, progress=True, log=_log):
    """Search (or train) as `config` says, writing checkpoints, TensorBoard logs and metrics.json to `output_dir`.

    Returns the final metrics. Raises ValueError (nothing written) for a bad config, a missing data set, or an
    `output_dir` that already holds a run when `resume` is False.
    """
    config.validate()
    config = config.resolved()
    if not resume and os.path.isdir(os.path.join(output_dir, "checkpoints")):
        raise ValueError(f"output_dir {output_dir} already holds a run: pass resume or choose another directory")
    check_init_from(config)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    state = _Run(config, output_dir, progress)  # loads data and builds everything before writing anything
    if state.writes:
        os.makedirs(output_dir, exist_ok=True)
        write_json(os.path.join(output_dir, "config.json"), dataclasses.asdict(config))
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
        row["learning_rate"] = float(state.optimizer.learning_rate)
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            row.update(state.validate())
            log("  " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_")))
        state.history.append(row)
        if state.writes:  # metrics first: a resumed run drops rows past its last checkpoint
            with summaries.as_default(step=epoch + 1):
                for name, value in row.items():
                    if name != "epoch" and isinstance(value, float) and math.isfinite(value):
                        tf.summary.scalar(name, value)
            write_json(os.path.join(output_dir, "metrics.json"), {"data": state.data_summary(),
                                                                    "epochs": state.history})
        state.epoch.assign(epoch + 1)
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
        write_json(os.path.join(output_dir, "metrics.json"), {"data": state.data_summary(),
                                                                "epochs": state.history, "final": final})
    return {"epochs": state.history, "final": final}


def load_run(run_dir, checkpoint="best"):
    """The network of a finished (or running) search in `run_dir`, with its `best` or `last` checkpoint restored.

    Returns (network, config). Raises ValueError naming the folder if it holds no run or no such checkpoint.
    """
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    config = read_config(run_dir)
    path = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints", checkpoint))
    if checkpoint == "best" and path is None:
        path = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints", "last"))
    if path is None:
        raise ValueError(f"{run_dir} has no {checkpoint} checkpoint")
    num_classes, image_shape = _data_shape(config, run_dir)
    network = build_network(config, num_classes, image_shape)
    tf.train.Checkpoint(network=network).restore(path).expect_partial()
    return network, config


def read_config(run_dir, prefix=""):
    """The SearchConfig in `run_dir`/config.json; ValueError (starting with `prefix`) if there is none."""
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{prefix}{run_dir} holds no search run (no config.json)")
    values = read_json(config_path)
    for field in ("lr_drops", "class_subset"):
        if field in values:
            values[field] = tuple(values[field])
    return SearchConfig(**values)


def _data_shape(config, run_dir):
    metrics = read_json(os.path.join(run_dir, "metrics.json"))
    shape = metrics.get("data", {})
    if shape:
        return shape["num_classes"], tuple(shape["image_shape"])
    splits = load_data(config)
    return splits.num_classes, tuple(splits.image_shape)


def write_json(path, value):
    """Write atomically: a reader never sees half a file."""
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(value, handle, indent=2, default=_json_default)
    os.replace(temporary, path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_json(path):
    """The JSON value in `path`, or {} if there is no such file."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {}
