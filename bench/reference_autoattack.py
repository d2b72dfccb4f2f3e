"""Reference AutoAttack verdicts from torchattacks on a TensorFlow CIFAR-10 model, for checking rst_tf.attacks.

Runs in its own virtual environment (bench/requirements-reference.txt: TensorFlow plus torch and torchattacks),
never in CI. A `torch.autograd.Function` calls the TensorFlow model on the NumPy copy of the torch input (NCHW ->
NHWC) and returns TensorFlow's vector-Jacobian product in its backward pass, so torchattacks attacks the TensorFlow
model itself. Standard AutoAttack (Croce & Hein 2020, fra31/auto-attack): APGD-CE, APGD-T (9 targets), FAB-T
(9 targets) with 100 iterations each and Square with 5,000 queries, each on the examples still classified correctly;
every component is also run alone on every example. torchattacks' own `AutoAttack(version="standard")` leaves
its components at 10 iterations; it is run too and reported as `torchattacks_autoattack`.

    python bench/reference_autoattack.py --fixture                  # writes tests/fixtures/autoattack_golden.json
    python bench/reference_autoattack.py --run_dir=runs/quick_rst --num_examples=1000 --output=ref.json
    python bench/reference_autoattack.py --saved_model=export/cifar10_ticket/1 --num_examples=1000 --output=ref.json

--num_examples picks the same seeded test subset as bin/evaluate (`rst_tf.data.load_splits(..., seed=--seed)`).
--runs picks what to run (default: every component alone, AutoAttack, torchattacks' AutoAttack); reports of one
model and image set made by several processes join with --merge=a.json,b.json --output=... . The report is rewritten
after each run ("complete": false until the last). On shared cores --threads=1 is several times faster than the
default thread pools.
"""
import argparse
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np
import tensorflow as tf
import torch
import torchattacks

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rst_tf import data  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_MODEL = os.path.join(ROOT, "tests", "fixtures", "autoattack_fixture.keras")
FIXTURE_GOLDEN = os.path.join(ROOT, "tests", "fixtures", "autoattack_golden.json")
# The fixture's test images: FIXTURE_EXAMPLES indices into the CIFAR-10 test split in the loader's order (class
# folders sorted, then file names sorted), drawn without replacement by numpy's default_rng(FIXTURE_SEED).
FIXTURE_EXAMPLES = 300
FIXTURE_SEED = 0
# Standard AutoAttack's budgets (fra31/auto-attack, version="standard").
STANDARD_STEPS = 100
STANDARD_SQUARE_QUERIES = 5000
COMPONENTS = ("apgd_ce", "apgd_t", "fab_t", "square")
# What --runs may name: each component alone on every example, standard AutoAttack (the components in turn, each on
# the examples still classified correctly) and torchattacks' AutoAttack as shipped.
RUNS = COMPONENTS + ("autoattack", "torchattacks_autoattack")


def fixture_indices(num_test):
    """The fixture's test-split indices, sorted. (tests/fixtures/autoattack_golden.json's images were chosen so in
    the loader's earlier order, class by class, and its indices give them in the current, seeded one.)"""
    return np.sort(np.random.default_rng(FIXTURE_SEED).choice(num_test, FIXTURE_EXAMPLES, replace=False))


class _TensorFlowCall(torch.autograd.Function):
    """NCHW torch images -> logits of a TensorFlow model; the backward pass is TensorFlow's VJP."""

    @staticmethod
    def forward(ctx, images, bridge):
        ctx.bridge = bridge
        ctx.save_for_backward(images)
        logits = bridge.logits(tf.constant(_to_nhwc(images)))
        return torch.from_numpy(np.array(logits, dtype=np.float32))

    @staticmethod
    def backward(ctx, upstream):
        (images,) = ctx.saved_tensors
        gradient = ctx.bridge.vjp(tf.constant(_to_nhwc(images)), tf.constant(upstream.detach().cpu().numpy()))
        return torch.from_numpy(np.ascontiguousarray(np.array(gradient).transpose(0, 3, 1, 2))), None


def _to_nhwc(images):
    return np.ascontiguousarray(images.detach().cpu().numpy().astype(np.float32).transpose(0, 2, 3, 1))


class TensorFlowModel(torch.nn.Module):
    """A torch module whose forward pass is `logits_fn` (NHWC float32 images in [0, 1] -> logits), run by TensorFlow."""

    def __init__(self, logits_fn, image_shape):
        super().__init__()
        spec = tf.TensorSpec((None,) + tuple(image_shape), tf.float32)
        self.logits = tf.function(logits_fn, input_signature=[spec])

        @tf.function(input_signature=[spec, tf.TensorSpec((None, None), tf.float32)])
        def vjp(images, upstream):
            with tf.GradientTape() as tape:
                tape.watch(images)
                logits = logits_fn(images)
            return tape.gradient(logits, images, output_gradients=upstream)

        self.vjp = vjp
        # torchattacks reads the device from the model's parameters; this one holds no trainable torch weights.
        self.register_parameter("device_anchor", torch.nn.Parameter(torch.zeros(1), requires_grad=False))
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return _TensorFlowCall.apply(images, self)


def standard_components(model, epsilon, seed):
    """{name: attack}: standard AutoAttack's components with fra31's budgets, in AutoAttack's order."""
    return {
        "apgd_ce": torchattacks.APGD(model, norm="Linf", eps=epsilon, steps=STANDARD_STEPS, n_restarts=1, seed=seed,
                                     loss="ce"),
        "apgd_t": torchattacks.APGDT(model, norm="Linf", eps=epsilon, steps=STANDARD_STEPS, n_restarts=1, seed=seed,
                                     n_classes=10),
        "fab_t": torchattacks.FAB(model, norm="Linf", eps=epsilon, steps=STANDARD_STEPS, n_restarts=1, seed=seed,
                                  multi_targeted=True, n_classes=10),
        "square": torchattacks.Square(model, norm="Linf", eps=epsilon, n_queries=STANDARD_SQUARE_QUERIES,
                                      n_restarts=1, seed=seed),
    }


def correct_after(model, attack, images, labels, epsilon, batch_size):
    """{0, 1} per example: the model classifies `attack`'s image correctly (and it stays in the epsilon-ball)."""
    verdicts = []
    for start in range(0, len(labels), batch_size):
        x = torch.from_numpy(images[start:start + batch_size])
        y = torch.from_numpy(labels[start:start + batch_size].astype(np.int64))
        adv = attack(x, y) if attack is not None else x
        distance = float((adv.detach() - x).abs().max())
        if distance > epsilon + 1e-5:
            raise RuntimeError(f"{type(attack).__name__} left the epsilon-ball: {distance} > {epsilon}")
        with torch.no_grad():
            predictions = model(adv).argmax(1)
        verdicts.append((predictions == y).numpy().astype(int))
    return np.concatenate(verdicts)


def run_reference(model, images_nhwc, labels, epsilon, seed, batch_size, runs, log, save):
    """{name: {"correct": [...], "accuracy": .., "seconds": ..}} for natural and each of `runs` (RUNS), calling
    `save(results)` after each."""
    images = np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2).astype(np.float32))
    labels = np.asarray(labels, np.int64)
    components = standard_components(model, epsilon, seed)
    attacks = dict(components)
    attacks["autoattack"] = torchattacks.MultiAttack([components[name] for name in COMPONENTS])
    attacks["torchattacks_autoattack"] = torchattacks.AutoAttack(model, norm="Linf", eps=epsilon, version="standard",
                                                                 n_classes=10, seed=seed)
    results = {}
    for name in ("natural",) + tuple(runs):
        start, calls = time.time(), model.calls
        correct = correct_after(model, attacks.get(name), images, labels, epsilon, batch_size)
        results[name] = {"correct": correct.tolist(), "accuracy": float(correct.mean()),
                         "seconds": round(time.time() - start, 1), "model_calls": model.calls - calls}
        log(f"{name}: accuracy {correct.mean():.4f} ({results[name]['seconds']} s)")
        save(results)
    return results


def write_json(report, output):
    """Writes `report` to `output` atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output + ".tmp", "w") as handle:
        json.dump(report, handle, indent=1)
    os.replace(output + ".tmp", output)


def merge(paths, output):
    """Joins the results of several complete reports of the same images, model and settings into `output`."""
    reports = [json.load(open(path)) for path in paths]
    same = ("epsilon_255", "labels", "test_indices", "model_sha256", "run_dir", "saved_model", "settings")
    merged = dict(reports[0], results={}, wall_seconds=0.0, merged_from=[os.path.basename(p) for p in paths])
    for path, report in zip(paths, reports):
        if not report.get("complete"):
            raise ValueError(f"{path} is not a complete report")
        for key in same:
            if report.get(key) != reports[0].get(key):
                raise ValueError(f"{path} differs from {paths[0]} in {key}")
        merged["results"].update(report["results"])
        merged["wall_seconds"] += report["wall_seconds"]
    merged["natural_accuracy"] = merged["results"]["natural"]["accuracy"]
    merged["autoattack_accuracy"] = merged["results"].get("autoattack", {}).get("accuracy")
    write_json(merged, output)
    return merged


def settings(epsilon, seed):
    return {
        "norm": "Linf", "epsilon": epsilon, "seed": seed,
        "apgd_ce": {"class": "torchattacks.APGD", "loss": "ce", "steps": STANDARD_STEPS, "n_restarts": 1,
                    "rho": 0.75, "eot_iter": 1},
        "apgd_t": {"class": "torchattacks.APGDT", "loss": "dlr_targeted", "steps": STANDARD_STEPS, "n_restarts": 1,
                   "target_classes": 9, "rho": 0.75},
        "fab_t": {"class": "torchattacks.FAB", "multi_targeted": True, "steps": STANDARD_STEPS, "n_restarts": 1,
                  "target_classes": 9, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9},
        "square": {"class": "torchattacks.Square", "n_queries": STANDARD_SQUARE_QUERIES, "n_restarts": 1,
                   "p_init": 0.8, "loss": "margin"},
        "autoattack": "torchattacks.MultiAttack of apgd_ce, apgd_t, fab_t, square (each on the examples still "
                      "correct), as fra31/auto-attack version='standard'",
        "torchattacks_autoattack": "torchattacks.AutoAttack(norm='Linf', version='standard', n_classes=10, seed): "
                                   "its components at torchattacks' default 10 iterations",
    }


def environment():
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical CPUs)" if names else cpu
    return {"torch": torch.__version__, "torchattacks": torchattacks.__version__, "tensorflow": tf.__version__,
            "numpy": np.__version__, "cpu": cpu, "torch_threads": torch.get_num_threads()}


def load_test_images(data_dir, num_examples, seed, class_subset=None):
    """(NHWC float32 images, int32 labels): the seeded test subset bin/evaluate uses for --num_examples (0: all)."""
    splits = data.load_splits("cifar10", data_dir, validation_examples=0, train_examples=0,
                              test_examples=num_examples or None, class_subset=class_subset or None, seed=seed)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in data.eval_batches(splits.test, 1000)])
    return np.concatenate(images), np.concatenate(labels)


def fixture_images(data_dir):
    """(indices, NHWC images, labels) of the fixture's test images."""
    images, labels = load_test_images(data_dir, 0, 0)
    indices = fixture_indices(len(labels))
    return indices, images[indices], labels[indices]


def logits_of_run(run_dir, checkpoint):
    """(logits function, image shape, class subset) of a search run: masks computed once, BatchNorm in inference."""
    from rst_tf.method import layers, masking
    from rst_tf.training import run_dir as runs

    network, config = runs.load_run(run_dir, checkpoint)
    masked = [layer for layer in layers.masked_layers(network) if layer.remaining_ratio < 1.0]
    masks = dict(zip(masked, [tf.constant(layer.binary_mask()) for layer in masked]))

    def logits(images):
        with masking.supplied_masks(masks):
            return network(images, training=False)

    return logits, tuple(config.class_subset)


def logits_of_saved_model(path):
    """The `serving_default` signature of a SavedModel (float32 NHWC images in [0, 1] -> `logits`)."""
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1].keys()
    return lambda images: signature(**{input_name: images})["logits"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--fixture", action="store_true", help=f"the fixture model; writes {FIXTURE_GOLDEN}")
    source.add_argument("--run_dir", help="a search run folder (its --checkpoint is attacked)")
    source.add_argument("--saved_model", help="a SavedModel folder with a serving_default signature")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--data_dir", default=os.environ.get("RST_TF_DATA_DIR", ""), help="CIFAR-10 class folders")
    parser.add_argument("--num_examples", type=int, default=1000, help="seeded test subset, as bin/evaluate")
    parser.add_argument("--seed", type=int, default=0, help="test subset (as bin/evaluate --seed) and attacks")
    parser.add_argument("--epsilon", type=float, default=8.0, help="L-inf budget in /255")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {','.join(RUNS)}")
    parser.add_argument("--merge", default="", help="comma-separated complete reports of one model and image set "
                        "(e.g. --runs split over processes) to join into --output; nothing is attacked")
    parser.add_argument("--threads", type=int, default=0, help="torch and TensorFlow threads (0: their default)")
    parser.add_argument("--output", default="", help="JSON to write (--fixture: default the golden file)")
    args = parser.parse_args()
    if not args.data_dir or not os.path.isdir(args.data_dir):
        parser.error(f"--data_dir {args.data_dir!r} is not a folder")
    runs = [name for name in args.runs.split(",") if name]
    if not runs or any(name not in RUNS for name in runs):
        parser.error(f"--runs must name some of {','.join(RUNS)}, got {args.runs!r}")
    if args.num_examples < 0:
        parser.error(f"--num_examples must be >= 0, got {args.num_examples}")
    output = args.output or (FIXTURE_GOLDEN if args.fixture else "")
    if not output:
        parser.error("--output is required with --run_dir or --saved_model")
    if args.merge:
        merged = merge(args.merge.split(","), output)
        print(f"wrote {output}: {', '.join(sorted(merged['results']))}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    torch.manual_seed(args.seed)

    def log(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    start = time.time()
    report = {"environment": environment()}
    if args.fixture:
        import keras

        keras_model = keras.saving.load_model(FIXTURE_MODEL)
        logits_fn = lambda images: keras_model(images, training=False)  # noqa: E731
        indices, images, labels = fixture_images(args.data_dir)
        with open(FIXTURE_MODEL, "rb") as handle:
            model_sha256 = hashlib.sha256(handle.read()).hexdigest()
        report.update(model=os.path.relpath(FIXTURE_MODEL, ROOT), model_sha256=model_sha256,
                      test_indices=indices.tolist(),
                      labels=labels.tolist(), pixel_sum=int(np.round(images * 255).astype(np.int64).sum()))
    else:
        if args.run_dir:
            logits_fn, class_subset = logits_of_run(args.run_dir, args.checkpoint)
            report["run_dir"], report["checkpoint"] = os.path.abspath(args.run_dir), args.checkpoint
        else:
            logits_fn, class_subset = logits_of_saved_model(args.saved_model), ()
            report["saved_model"] = os.path.abspath(args.saved_model)
        images, labels = load_test_images(args.data_dir, args.num_examples, args.seed, class_subset)
        report.update(num_examples=int(len(labels)), data_seed=args.seed, labels=labels.tolist())
    epsilon_255 = args.epsilon
    epsilon = epsilon_255 / 255
    model = TensorFlowModel(logits_fn, images.shape[1:]).eval()
    log(f"{len(labels)} images, epsilon {epsilon_255}/255")
    report.update(epsilon_255=epsilon_255, settings=settings(epsilon, args.seed))
    report["complete"] = False

    def save(results):
        report.update(results=results, wall_seconds=round(time.time() - start, 1))
        write_json(report, output)

    results = run_reference(model, images, labels, epsilon, args.seed, args.batch_size, runs, log, save)
    report.update(natural_accuracy=results["natural"]["accuracy"], complete=True,
                  autoattack_accuracy=results.get("autoattack", {}).get("accuracy"))
    save(results)
    log(f"wrote {output}: " + ", ".join(f"{name} {result['accuracy']:.4f}" for name, result in results.items())
        + f"; {report['wall_seconds']} s")

if __name__ == "__main__":
    main()
