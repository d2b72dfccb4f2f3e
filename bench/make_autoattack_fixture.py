"""Trains the fixture model of the AutoAttack reference check (tests/fixtures/autoattack_fixture.keras).

A small CNN (about 20k weights, no BatchNorm, built-in Keras layers only, so `keras.saving.load_model` reads it
without project code) trained briefly with PGD adversarial training on the CIFAR-10 copy, so that a fair share of
test images survive AutoAttack. Seeded; on 2 CPU cores it takes a few minutes:

    python bench/make_autoattack_fixture.py --data_dir=$RST_TF_DATA_DIR --output=tests/fixtures/autoattack_fixture.keras

Then regenerate the golden verdicts with bench/reference_autoattack.py --fixture (in the reference venv).
"""
import argparse
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rst_tf import attacks, data  # noqa: E402


def build_model():
    """Input NHWC images in [0, 1] -> 10 logits; three 3x3 convolutions with max pooling, then one dense layer."""
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Rescaling(2.0, offset=-1.0),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ], name="autoattack_fixture")


def train(data_dir, epochs, train_examples, epsilon, pgd_steps, batch_size, seed):
    """The model after `epochs` epochs of PGD adversarial training on `train_examples` CIFAR-10 images."""
    keras.utils.set_random_seed(seed)
    splits = data.load_splits("cifar10", data_dir, train_examples=train_examples, seed=seed)
    model = build_model()
    optimizer = keras.optimizers.Adam(2e-3)
    # PGD with step 2.5 * epsilon / steps (Madry et al.'s ratio), random start.
    config = attacks.AttackConfig(name="pgd", epsilon=epsilon, steps=pgd_steps, step_size=2.5 * epsilon / pgd_steps)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(images, labels, attack_seed):
        adv = attacks.generate(lambda x: model(x, training=False), images, labels, config, attack_seed)
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(adv, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    for epoch in range(epochs):
        start, losses = time.time(), []
        batches = data.train_batches(splits, dataset="cifar10", batch_size=batch_size, epoch=epoch, seed=seed)
        for index, (images, labels) in enumerate(batches):
            losses.append(float(step(images, labels, tf.constant([seed, epoch * 100_000 + index], tf.int64))))
        print(f"epoch {epoch}: adversarial loss {np.mean(losses):.4f} ({time.time() - start:.0f} s)", flush=True)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("RST_TF_DATA_DIR"), help="CIFAR-10 class-folder copy")
    parser.add_argument("--output", default="tests/fixtures/autoattack_fixture.keras")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train_examples", type=int, default=49_000)
    parser.add_argument("--epsilon", type=float, default=8 / 255)
    parser.add_argument("--pgd_steps", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data_dir or not os.path.isdir(args.data_dir):
        parser.error(f"--data_dir {args.data_dir!r} is not a folder")
    if not args.output.endswith(".keras"):
        parser.error(f"--output must end in .keras, got {args.output!r}")
    model = train(args.data_dir, args.epochs, args.train_examples, args.epsilon, args.pgd_steps, args.batch_size,
                  args.seed)
    print(f"{model.count_params()} weights", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    partial = args.output[: -len(".keras")] + ".partial.keras"
    model.save(partial)
    os.replace(partial, args.output)
    print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes)")


if __name__ == "__main__":
    main()
