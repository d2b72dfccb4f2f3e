"""Search a Robust Scratch Ticket (or adversarially train the dense baseline).

    python bin/search.py --flagfile=flags/cifar10_quick.cfg --output_dir=runs/quick

Writes checkpoints (last and best by validation PGD-20 accuracy), TensorBoard logs, metrics.json, config.json and
flags.txt to --output_dir. A killed run continues with --resume.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from bin import common  # noqa: E402

FLAGS = flags.FLAGS
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
flags.DEFINE_enum("mode", "rst", ["rst", "dense_at", "natural"],
                  "rst: search masks over frozen random weights; dense_at: PGD adversarial training of the dense "
                  "network; natural: plain training on clean images.")
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
flags.DEFINE_string("output_dir", None, "Where the run writes its files.")
flags.DEFINE_bool("resume", False, "Continue the run in --output_dir from its last checkpoint.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")

_CONFIG_FLAGS = ("dataset", "data_dir", "network", "width_multiplier", "remaining_ratio", "sparsity", "weight_init",
                 "scale_fan", "dense_first_conv", "dense_classifier", "mode", "attack", "epsilon", "attack_steps",
                 "attack_step_size", "attack_bn_training", "epochs", "batch_size", "learning_rate", "weight_decay",
                 "validation_examples", "train_examples", "test_examples", "eval_every", "eval_attack_steps", "seed", "strategy",
                 "jit_compile", "mixed_precision", "deterministic")


def config_from_flags():
    from rst_tf import trainer
    return trainer.SearchConfig(**{name: FLAGS[name].value for name in _CONFIG_FLAGS})


def main(argv):
    common.reject_extra_arguments(argv)
    common.require_flags("output_dir")
    from rst_tf import trainer

    config = config_from_flags()
    with common.clear_errors():
        result = trainer.run(config, FLAGS.output_dir, resume=FLAGS.resume, progress=FLAGS.progress)
        common.write_flags(FLAGS.output_dir)
    final = result["final"]
    print(f"best (epoch {final['best']['epoch']}): natural {final['best']['test_natural_accuracy']:.4f}, "
          f"PGD-{config.eval_attack_steps} {final['best']['test_pgd20_accuracy']:.4f} on "
          f"{final['num_test']} test images; files in {FLAGS.output_dir}")


if __name__ == "__main__":
    common.run(main)
