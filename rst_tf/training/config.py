"""SearchConfig: everything that defines a run, each field with its help text, and its validation.

Importing this module does not import TensorFlow: the apps define their flags from `dataclasses.fields(SearchConfig)`
(each field's `metadata["help"]`) before parsing them. The library's names (datasets, networks, ...) are looked up
only when a config is validated.
"""
import dataclasses

import numpy as np

FINETUNE_WEIGHTS = ("inherited", "reinit")
TRAINING_ATTACKS = ("pgd", "fgsm", "fgsm_rs", "pgd_l2")  # attacks that run inside the compiled search step
_REINIT_STREAM = 0x5EED  # mixes the run's seed into the seed of a reinit fine-tune's fresh kernel


def _field(default, help_text):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a run (the paper's CIFAR defaults)."""
    dataset: str = _field("cifar10", "Dataset: cifar10 | cifar100 | imagenet2012.")
    data_dir: str = _field("", "A folder with train/ and test/ class folders, or a tensorflow-datasets data_dir "
                               "holding a prepared copy; empty: download through tensorflow-datasets.")
    class_subset: tuple[int, ...] = _field((), "Keep only these classes (e.g. 0,1,2,3,4), relabelled 0..n-1; "
                                               "empty: all.")
    network: str = _field("resnet18", "resnet18 | preact_resnet18 | wrn_34_10 | resnet18_imagenet | resnet50 | "
                                      "resnet101 | keras:<a keras.applications model, e.g. ResNet50> (its masked "
                                      "twin).")
    width_multiplier: float = _field(1.0, "Scale every layer's channels (CPU-scale runs: 1/8 to 1/4).")
    remaining_ratio: float = _field(0.05, "Fraction of weights each masked layer keeps, in (0, 1].")
    nested_ratios: tuple[float, ...] = _field((), "Search nested tickets at these remaining ratios (e.g. "
                                                  "0.05,0.1,0.2,0.3) from one set of scores, minimising the mean of "
                                                  "their adversarial losses; replaces --remaining_ratio, which becomes "
                                                  "the largest. Mode rst, topk_scope layer. Empty: one ratio.")
    sparsity: str = _field("element", "Sparsity pattern of the mask: element | row | kernel | channel.")
    topk_scope: str = _field("layer", "layer: each masked layer keeps its own top-k (the paper); global: one top-k "
                                      "over the scores of all masked layers (needs sparsity element).")
    weight_init: str = _field("signed_kaiming_constant", "Random weight init: signed_kaiming_constant | "
                                                         "kaiming_normal | xavier_normal | kaiming_uniform.")
    scale_fan: bool = _field(False, "Scale the init's fan-in by the remaining ratio.")
    dense_first_conv: bool = _field(False, "Keep the first conv dense (frozen random, unmasked).")
    dense_classifier: bool = _field(False, "Keep the classifier dense (frozen random, unmasked).")
    mode: str = _field("rst", "rst: search masks over frozen random weights (over --init_from's trained weights: an "
                              "RTT); dense_at: PGD adversarial training of the dense network; natural: plain training "
                              "on clean images; finetune: adversarially train the kernel of the --init_from RST under "
                              "its fixed mask.")
    init_from: str = _field("", "A run folder to start from: the RST of --mode=finetune, or the dense_at / natural "
                                "run whose trained weights --mode=rst searches (a robust trained ticket, RTT).")
    init_checkpoint: str = _field("best", "Which checkpoint of --init_from to start from: best | last.")
    finetune_weights: str = _field("inherited", "finetune: start from the RST's own random kernel (inherited), or "
                                                "from a fresh one (reinit) drawn with --finetune_init and "
                                                "--reinit_seed.")
    finetune_init: str = _field("kaiming_normal", "Init of the fresh kernel of --finetune_weights=reinit (one of "
                                                  "the --weight_init methods); the paper's code uses kaiming_normal.")
    reinit_seed: int = _field(-1, "Seed of the fresh kernel of --finetune_weights=reinit; -1: derived from --seed "
                                  "(config.json records it).")
    reinit_classifier: bool = _field(False, "RTT: draw the classifier afresh even when the task is the same (it "
                                            "always is for another dataset or class subset).")
    attack: str = _field("pgd", "Attack that makes training examples: pgd | fgsm | fgsm_rs | pgd_l2.")
    epsilon: float = _field(8 / 255, "Perturbation budget (pixels in [0, 1]).")
    attack_steps: int = _field(7, "PGD iterations during the search.")
    attack_step_size: float = _field(2 / 255, "PGD step size during the search.")
    attack_bn_training: bool = _field(True, "BatchNorm in training mode while attacking (as the paper's code).")
    objective: str = _field("pgd_at", "pgd_at: cross-entropy on PGD examples (the paper); trades: natural "
                                      "cross-entropy + 6 * KL(clean || adversarial) on examples maximising the KL "
                                      "(--attack pgd's epsilon, steps and step size).")
    epochs: int = _field(160, "Epochs; the learning rate drops x0.1 at each fraction of them in --lr_drops.")
    batch_size: int = _field(256, "Global batch size.")
    learning_rate: float = _field(0.1, "Initial SGD learning rate.")
    momentum: float = _field(0.9, "SGD momentum.")
    weight_decay: float = _field(5e-4, "Coupled L2 weight decay on what is trained.")
    lr_drops: tuple[float, ...] = _field((0.5, 0.75), "Fractions of the run where the learning rate drops x0.1.")
    validation_examples: int = _field(-1, "Training images held out for model selection; -1: dataset default.")
    train_examples: int = _field(0, "Use only this many training images (0: all).")
    test_examples: int = _field(0, "Report on only this many test images (0: all).")
    skip_bad_images: bool = _field(False, "Skip image files that cannot be decoded (metrics.json lists them) "
                                          "instead of stopping with an error naming the first.")
    eval_every: int = _field(1, "Validate (natural + PGD-20) every this many epochs.")
    eval_attack_steps: int = _field(20, "PGD steps of the validation and test attack (step ε/4).")
    seed: int = _field(0, "Seeds the weights, scores, data order, augmentation and attacks.")
    strategy: str = _field("default", "tf.distribute strategy: default | mirrored | multi_worker | tpu.")
    jit_compile: bool = _field(False, "Compile the train step with XLA.")
    mixed_precision: bool = _field(False, "Use the mixed_bfloat16 policy (logits and losses stay float32).")
    deterministic: bool = _field(False, "Enable TensorFlow op determinism (bit-identical reruns).")

    def validate(self):
        """Raise ValueError with one line naming the first bad field."""
        from rst_tf import data, networks
        from rst_tf.method import initializers, layers, masking
        from rst_tf.networks import keras_applications
        from rst_tf.search import distribute, objectives, search_model

        checks = [
            ("dataset", self.dataset in data.DATASETS, f"one of {data.DATASETS}"),
            ("network", self.network in networks.NETWORKS or keras_applications.is_keras_application(self.network),
             f"one of {sorted(networks.NETWORKS)} or keras:<a keras.applications model>"),
            ("width_multiplier",
             not self.network.startswith(keras_applications.KERAS_PREFIX) or self.width_multiplier == 1.0,
             "1.0 for a keras: network"),
            ("topk_scope", self.topk_scope in layers.TOPK_SCOPES, f"one of {layers.TOPK_SCOPES}"),
            ("topk_scope", self.topk_scope == "layer"
             or (self.sparsity == "element" and self.mode in ("rst", "finetune")),
             "layer unless sparsity is element and mode rst or finetune"),
            ("objective", self.objective in objectives.OBJECTIVES, f"one of {objectives.OBJECTIVES}"),
            ("remaining_ratio", 0.0 < self.remaining_ratio <= 1.0, "in (0, 1]"),
            ("width_multiplier", self.width_multiplier > 0, "positive"),
            ("sparsity", self.sparsity in masking.SPARSITY_PATTERNS, f"one of {masking.SPARSITY_PATTERNS}"),
            ("weight_init", self.weight_init in initializers.WEIGHT_INITS, f"one of {initializers.WEIGHT_INITS}"),
            ("mode", self.mode in search_model.MODES, f"one of {search_model.MODES}"),
            ("class_subset", len(set(self.class_subset)) == len(self.class_subset)
             and all(int(c) == c and c >= 0 for c in self.class_subset), "distinct class indices"),
            ("init_from", self.init_from or self.mode != "finetune", "a run folder with mode finetune"),
            ("init_from", not self.init_from or self.mode in ("rst", "finetune"),
             "empty in modes dense_at and natural"),
            ("init_checkpoint", self.init_checkpoint in ("best", "last"), "best or last"),
            ("finetune_weights", self.finetune_weights in FINETUNE_WEIGHTS, f"one of {FINETUNE_WEIGHTS}"),
            ("finetune_init", self.finetune_init in initializers.WEIGHT_INITS,
             f"one of {initializers.WEIGHT_INITS}"),
            ("reinit_classifier", not self.reinit_classifier or (self.init_from and self.mode == "rst"),
             "False unless an RTT search (mode rst with init_from)"),
            ("attack", self.attack in TRAINING_ATTACKS, f"one of {TRAINING_ATTACKS}"),
            ("strategy", self.strategy in distribute.STRATEGIES, f"one of {distribute.STRATEGIES}"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("learning_rate", self.learning_rate > 0, "positive"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("eval_every", self.eval_every >= 1, "at least 1"),
            ("lr_drops", all(0 < f < 1 for f in self.lr_drops), "fractions of the run in (0, 1)"),
            *_nested_checks(self),
        ]
        for field, ok, expected in checks:
            if not ok:
                raise ValueError(f"{field} must be {expected}, got {getattr(self, field)!r}")
        self.attack_config().validate()
        objectives.attack_config(self.objective, self.attack_config()).validate()

    def ticket_ratios(self):
        """The remaining ratios of the run's tickets, ascending: `nested_ratios`, or `remaining_ratio` alone."""
        return tuple(sorted(self.nested_ratios)) if self.nested_ratios else (self.remaining_ratio,)

    def reinit_finetune(self):
        """Whether this run fine-tunes an RST from a fresh kernel."""
        return self.mode == "finetune" and self.finetune_weights == "reinit"

    def resolved(self):
        """This config with the derived values filled in (what config.json records): `reinit_seed`, or a nested
        search's ratios sorted and `remaining_ratio` set to the largest (the network's own masks and statistics)."""
        if self.nested_ratios:
            ratios = self.ticket_ratios()
            return dataclasses.replace(self, nested_ratios=ratios, remaining_ratio=ratios[-1])
        if self.reinit_finetune() and self.reinit_seed < 0:
            derived = int(np.random.SeedSequence([_REINIT_STREAM, self.seed % 2**32]).generate_state(1)[0] >> 1)
            return dataclasses.replace(self, reinit_seed=derived)
        return self

    def weight_seed(self):
        """Seed of the network's random weights: `reinit_seed` for a reinit fine-tune, else `seed`."""
        if self.reinit_finetune():
            return self.resolved().reinit_seed
        return self.seed

    def network_weight_init(self):
        """Init of the network's random kernels: `finetune_init` for a reinit fine-tune, else `weight_init`."""
        return self.finetune_init if self.reinit_finetune() else self.weight_init

    def attack_config(self):
        from rst_tf import attacks

        if self.mode == "natural":
            return attacks.AttackConfig(name="none")
        if self.attack == "fgsm_rs":
            return attacks.fgsm_rs_config(self.epsilon)
        return attacks.AttackConfig(name=self.attack, epsilon=self.epsilon, steps=self.attack_steps,
                                    step_size=self.attack_step_size)

    def eval_attack_config(self):
        """Standard PGD-20 at the search's ε: random start, step 2/255 (scaled with ε), no early stop."""
        from rst_tf import attacks

        return attacks.AttackConfig(name="pgd", epsilon=self.epsilon, steps=self.eval_attack_steps,
                                    step_size=self.epsilon / 4)


def _nested_checks(config):
    """(field, ok, expected) checks of `nested_ratios`: two or more distinct ratios in (0, 1), searched by an `rst`
    run with per-layer top-k from random weights."""
    ratios = config.nested_ratios
    if not ratios:
        return []
    return [("nested_ratios", len(ratios) >= 2 and len(set(ratios)) == len(ratios),
             "two or more distinct remaining ratios"),
            ("nested_ratios", all(0.0 < r < 1.0 for r in ratios), "remaining ratios in (0, 1) (a ratio of 1 keeps "
             "every weight: nothing to search)"),
            ("nested_ratios", config.mode == "rst", f"empty in mode {config.mode} (nested tickets are searched by "
             "mode rst)"),
            ("nested_ratios", config.topk_scope == "layer", "empty with topk_scope global (nested tickets need "
             "per-layer top-k)"),
            ("nested_ratios", not config.init_from, "empty with init_from (nested tickets are searched from random "
             "weights)")]
