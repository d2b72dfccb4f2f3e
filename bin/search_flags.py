"""The flags that make a SearchConfig, shared by bin/search and bin/sweep (defined on import)."""
import os

from absl import flags

FLAGS = flags.FLAGS


def _is_class_index(value):
    return value.strip().isdigit()


flags.DEFINE_enum("dataset", "cifar10", ["cifar10", "cifar100", "imagenet2012"], "Dataset (tensorflow-datasets name).")
flags.DEFINE_string("data_dir", os.environ.get("RST_TF_DATA_DIR", ""),
                    "A folder with train/ and test/ class folders, or a tensorflow-datasets data_dir holding a "
                    "prepared copy; empty: download through tensorflow-datasets. Default: $RST_TF_DATA_DIR.")
flags.DEFINE_string("network", "resnet18",
                    "resnet18 | preact_resnet18 | wrn_34_10 | resnet18_imagenet | resnet50 | resnet101.")
flags.DEFINE_float("width_multiplier", 1.0, "Scale every layer's channels (CPU-scale runs: 1/8 to 1/4).")
flags.DEFINE_float("remaining_ratio", 0.05, "Fraction of weights each masked layer keeps, in (0, 1].")
flags.DEFINE_enum("sparsity", "element", ["element", "row", "kernel", "channel"], "Sparsity pattern of the mask.")
flags.DEFINE_enum("weight_init", "signed_kaiming_constant",
                  ["signed_kaiming_constant", "kaiming_normal", "xavier_normal", "kaiming_uniform"],
                  "Random weight init.")
flags.DEFINE_bool("scale_fan", False, "Scale the init's fan-in by the remaining ratio.")
flags.DEFINE_bool("dense_first_conv", False, "Keep the first conv dense (frozen random, unmasked).")
flags.DEFINE_bool("dense_classifier", False, "Keep the classifier dense (frozen random, unmasked).")
flags.DEFINE_list("class_subset", [], "Keep only these classes (e.g. 0,1,2,3,4), relabelled 0..n-1; empty: all.")
flags.register_validator("class_subset", lambda values: all(_is_class_index(v) for v in values),
                         "--class_subset must list class indices, e.g. 0,1,2,3,4")
flags.DEFINE_enum("mode", "rst", ["rst", "dense_at", "natural", "finetune"],
                  "rst: search masks over frozen random weights (over --init_from's trained weights: an RTT); "
                  "dense_at: PGD adversarial training of the dense network; natural: plain training on clean "
                  "images; finetune: adversarially train the kernel of the --init_from RST under its fixed mask.")
flags.DEFINE_string("init_from", "", "A run folder to start from: the RST of --mode=finetune, or the dense_at / "
                    "natural run whose trained weights --mode=rst searches (a robust trained ticket, RTT).")
flags.DEFINE_enum("init_checkpoint", "best", ["best", "last"], "Which checkpoint of --init_from to start from.")
flags.DEFINE_enum("finetune_weights", "inherited", ["inherited", "reinit"],
                  "finetune: start from the RST's own random kernel, or from a fresh one drawn with --reinit_seed.")
flags.DEFINE_integer("reinit_seed", -1, "Seed of the fresh kernel of --finetune_weights=reinit; -1: derived from "
                     "--seed (config.json records it).")
flags.DEFINE_bool("reinit_classifier", False, "RTT: draw the classifier afresh even when the task is the same "
                  "(it always is for another dataset or class subset).")
flags.DEFINE_enum("attack", "pgd", ["pgd", "fgsm", "fgsm_rs", "pgd_l2"], "Attack that makes training examples.")
flags.DEFINE_float("epsilon", 8 / 255, "Perturbation budget (pixels in [0, 1]).")
flags.DEFINE_integer("attack_steps", 7, "PGD iterations during the search.")
flags.DEFINE_float("attack_step_size", 2 / 255, "PGD step size during the search.")
flags.DEFINE_bool("attack_bn_training", True, "BatchNorm in training mode while attacking (as the paper's code).")
flags.DEFINE_integer("epochs", 160, "Epochs; the learning rate drops x0.1 at 50% and 75% of them.")
flags.DEFINE_integer("batch_size", 256, "Global batch size.")
flags.DEFINE_float("learning_rate", 0.1, "Initial SGD learning rate (momentum 0.9).")
flags.DEFINE_float("weight_decay", 5e-4, "Coupled L2 weight decay on what is trained.")
flags.DEFINE_integer("validation_examples", -1, "Training images held out for model selection; -1: dataset default.")
flags.DEFINE_integer("train_examples", 0, "Use only this many training images (0: all).")
flags.DEFINE_integer("test_examples", 0, "Report on only this many test images (0: all).")
flags.DEFINE_integer("eval_every", 1, "Validate (natural + PGD-20) every this many epochs.")
flags.DEFINE_integer("eval_attack_steps", 20, "PGD steps of the validation and test attack (step ε/4).")
flags.DEFINE_integer("seed", 0, "Seeds the weights, scores, data order, augmentation and attacks.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy.")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_bool("mixed_precision", False, "Use the mixed_bfloat16 policy.")
flags.DEFINE_bool("deterministic", False, "Enable TensorFlow op determinism (bit-identical reruns).")

_CONFIG_FLAGS = ("dataset", "data_dir", "class_subset", "network", "width_multiplier", "remaining_ratio", "sparsity",
                 "weight_init", "scale_fan", "dense_first_conv", "dense_classifier", "mode", "init_from",
                 "init_checkpoint", "finetune_weights", "reinit_seed", "reinit_classifier", "attack", "epsilon",
                 "attack_steps", "attack_step_size", "attack_bn_training", "epochs", "batch_size", "learning_rate",
                 "weight_decay", "validation_examples", "train_examples", "test_examples", "eval_every",
                 "eval_attack_steps", "seed", "strategy", "jit_compile", "mixed_precision", "deterministic")


def config_from_flags():
    """The SearchConfig the flags describe (TensorFlow is imported only now, after the flags are parsed)."""
    from rst_tf import trainer
    values = {name: FLAGS[name].value for name in _CONFIG_FLAGS}
    values["class_subset"] = tuple(int(value) for value in values["class_subset"])
    return trainer.SearchConfig(**values)
