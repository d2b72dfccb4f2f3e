"""A small conv net trained on class templates plus noise (8x8x3 images): a fast, real target for attack tests."""
import keras
import numpy as np

NUM_CLASSES = 4
IMAGE_SHAPE = (8, 8, 3)


def make_images(count, rng, templates, noise):
    labels = rng.integers(0, len(templates), count)
    images = templates[labels] + rng.normal(0.0, noise, (count,) + IMAGE_SHAPE)
    return np.clip(images, 0.0, 1.0).astype("float32"), labels.astype("int32")


def train_template_model(test_count):
    """(model, test_images, test_labels): conv + batch norm, ~100% clean test accuracy after 3 epochs."""
    rng = np.random.default_rng(0)
    templates = 0.5 + 0.06 * rng.standard_normal((NUM_CLASSES,) + IMAGE_SHAPE)
    train_images, train_labels = make_images(1024, rng, templates, 0.1)
    test_images, test_labels = make_images(test_count, rng, templates, 0.1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(IMAGE_SHAPE),
        keras.layers.Rescaling(2.0, offset=-1.0),
        keras.layers.Conv2D(8, 3),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(NUM_CLASSES),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    model.fit(train_images, train_labels, epochs=3, batch_size=128, verbose=0)
    return model, test_images, test_labels


def logits_fn(model):
    """The model at inference (BatchNorm with moving statistics), images -> logits."""
    return lambda images: model(images, training=False)


def accuracy(logits_of, images, labels):
    predictions = np.argmax(np.asarray(logits_of(images)), axis=-1)
    return float(np.mean(predictions == labels))
