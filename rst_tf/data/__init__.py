"""Input pipelines for CIFAR-10, CIFAR-100 and ImageNet.

`load_splits` gives unbatched train / validation / test splits of
(float32 image in [0, 1], int32 label); `train_batches` turns the training
split into one shuffled, augmented epoch whose batches depend only on
(seed, epoch); `eval_batches` batches a split in its stored order.
Normalisation is left to the model.

`data_dir` chooses where the images come from:
  * a folder with `train/` and `test/` folders of class folders (the label of
    an image is the position of its class folder in sorted order), read here;
  * any other folder: a prepared tensorflow-datasets copy, never downloaded;
  * None: tensorflow-datasets, which downloads the dataset on first use.
"""
import dataclasses
import os
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from rst_tf.data import image_files

DATASETS = ("cifar10", "cifar100", "imagenet2012")

_IMAGE_SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "imagenet2012": (224, 224, 3)}
_DEFAULT_VALIDATION_EXAMPLES = {"cifar10": 1000, "cifar100": 1000, "imagenet2012": 10_000}
# ImageNet's labelled held-out split is called "validation" in tensorflow-datasets.
_TFDS_TEST_SPLITS = {"cifar10": "test", "cifar100": "test", "imagenet2012": "validation"}
# The whole CIFAR training set; for ImageNet about 3 GB of 224x224 float images.
_SHUFFLE_BUFFERS = {"cifar10": 50_000, "cifar100": 50_000, "imagenet2012": 5_000}
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_CIFAR_PADDING = 4
_IMAGENET_RESIZE = 256
_AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """Unbatched (image, label) splits of one dataset and their sizes.

    Images are float32 in [0, 1], labels int32 in [0, num_classes).
    `validation` is held out from the training images. ImageNet training
    images keep their own size (`train_batches` crops them to `image_shape`);
    all other splits already have `image_shape`.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    image_shape: tuple
    num_train: int
    num_validation: int
    num_test: int
    class_names: tuple
    skipped_files: tuple = ()  # image files left out because they cannot be decoded (`skip_bad_images`)


@dataclasses.dataclass(frozen=True)
class _EncodedSplits:
    """Splits of (encoded image bytes, int32 label), not decoded yet."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    num_train: int
    num_validation: int
    num_test: int
    class_names: tuple
    skipped_files: tuple = ()


def load_splits(
    dataset: str,
    data_dir: str | None = None,
    *,
    validation_examples: int | None = None,
    train_examples: int | None = None,
    test_examples: int | None = None,
    class_subset: Sequence[int] | None = None,
    seed: int = 0,
    skip_bad_images: bool = False,
) -> DataSplits:
    """Loads `dataset` from `data_dir` (see the module docstring) as DataSplits.

    `validation_examples` training images (default 1000 for CIFAR, 10000 for
    ImageNet) are held out for validation. `train_examples` / `test_examples`
    keep only that many of the remaining training / the test images.
    `class_subset` keeps only those classes, relabelled 0..n-1 in the given
    order. For class folders the held-out, kept and test images (all of
    them too) come in an order permuted by `seed`, so the first N test
    images are the N-image test subset; a tensorflow-datasets copy is
    already stored in mixed order, and its first training examples are
    held out.

    Every chosen file of a class-folder copy is decoded once here: one that cannot be decoded (or has the wrong
    shape) raises ValueError naming it, or with `skip_bad_images` is left out of its split (the split is that much
    smaller) and listed in `skipped_files`.
    """
    _check_dataset(dataset)
    if validation_examples is None:
        validation_examples = _DEFAULT_VALIDATION_EXAMPLES[dataset]
    sizes = (validation_examples, train_examples, test_examples)
    if data_dir is not None and _is_class_folder_copy(data_dir, dataset):
        encoded = _class_folder_splits(data_dir, dataset, sizes, class_subset, seed, skip_bad_images)
    else:
        encoded = _tfds_splits(dataset, data_dir, sizes, class_subset)
    cache = dataset != "imagenet2012"
    return DataSplits(
        train=_decode_split(encoded.train, dataset, for_training=True, cache=cache),
        validation=_decode_split(encoded.validation, dataset, for_training=False, cache=cache),
        test=_decode_split(encoded.test, dataset, for_training=False, cache=cache),
        num_classes=len(encoded.class_names),
        image_shape=_IMAGE_SHAPES[dataset],
        num_train=encoded.num_train,
        num_validation=encoded.num_validation,
        num_test=encoded.num_test,
        class_names=encoded.class_names,
        skipped_files=encoded.skipped_files,
    )


def train_batches(
    splits_or_train_ds: DataSplits | tf.data.Dataset,
    *,
    dataset: str,
    batch_size: int,
    epoch: int,
    seed: int,
    augment: bool = True,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """One training epoch of (images, labels) batches, shuffled and augmented.

    `dataset` picks the augmentation: CIFAR pads 4 zero pixels, crops 32x32
    and flips; ImageNet takes a random resized 224x224 crop and flips (with
    `augment=False` it gets the evaluation resize and centre crop instead).
    The order and the augmentation depend only on (seed, epoch) and the
    training examples, so a run resumed at `epoch` sees the same batches as
    an uninterrupted one. The shuffle also depends on TensorFlow's global
    seed, which must be the same (or unset) in both runs.
    """
    _check_dataset(dataset)
    train_ds = splits_or_train_ds.train if isinstance(splits_or_train_ds, DataSplits) else splits_or_train_ds
    epoch_seed = tf.constant([seed, epoch], tf.int64)

    def prepare(index, example):
        image, label = example
        if augment:
            image = _augment(image, tf.random.experimental.stateless_fold_in(epoch_seed, index), dataset)
        elif dataset == "imagenet2012":
            image = _resize_and_center_crop(image)
        return image, label

    shuffle_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    return (
        train_ds.enumerate()
        .map(prepare, num_parallel_calls=_AUTOTUNE, deterministic=True)
        .shuffle(_shuffle_buffer_size(train_ds, dataset), seed=shuffle_seed, reshuffle_each_iteration=False)
        .batch(batch_size, drop_remainder=drop_remainder)
        .prefetch(_AUTOTUNE)
    )


def eval_batches(ds: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Batches `ds` in its stored order, without augmentation."""
    return ds.batch(batch_size).prefetch(_AUTOTUNE)


def _check_dataset(dataset):
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; expected one of: {', '.join(DATASETS)}")


def _is_class_folder_copy(data_dir, dataset):
    """True for a folder of train/ and test/ class folders, False for a tensorflow-datasets folder."""
    if not tf.io.gfile.isdir(data_dir):
        raise ValueError(f"Data folder {data_dir} does not exist (or is not a folder)")
    has_split = {split: tf.io.gfile.isdir(os.path.join(data_dir, split)) for split in ("train", "test")}
    if all(has_split.values()):
        return True
    if any(has_split.values()):
        missing = "train" if not has_split["train"] else "test"
        raise ValueError(f"Data folder {data_dir} has no {missing}/ folder of class folders")
    if not tf.io.gfile.isdir(os.path.join(data_dir, dataset)):
        raise ValueError(
            f"Data folder {data_dir} has neither train/ and test/ class folders "
            f"nor a prepared tensorflow-datasets copy ({dataset}/)"
        )
    return False


def _class_folder_splits(data_dir, dataset, sizes, class_subset, seed, skip_bad_images):
    """Splits of a folder of train/ and test/ class folders, chosen before any decoding."""
    train_dir, test_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "test")
    train_files, train_labels, class_names = _list_class_folders(train_dir)
    test_files, test_labels, test_class_names = _list_class_folders(test_dir)
    if test_class_names != class_names:
        raise ValueError(f"Class folders in {test_dir} differ from those in {train_dir}")
    kept_classes = _kept_classes(class_subset, len(class_names))
    train_files, train_labels = _keep_classes(train_files, train_labels, kept_classes, len(class_names))
    test_files, test_labels = _keep_classes(test_files, test_labels, kept_classes, len(class_names))
    num_validation, num_train, num_test = _subset_sizes(len(train_files), len(test_files), *sizes)

    train_order = np.random.default_rng(seed).permutation(len(train_files))
    validation_indices = train_order[:num_validation]
    train_indices = train_order[num_validation : num_validation + num_train]
    # The test images in an order seeded like the training images (a folder lists them class by class), so that
    # the first N of them, of the whole test set too, are the N-image test subset and hold every class.
    test_indices = np.random.default_rng(seed).permutation(len(test_files))[:num_test]
    chosen = [(train_files[train_indices], train_labels[train_indices]),
              (train_files[validation_indices], train_labels[validation_indices]),
              (test_files[test_indices], test_labels[test_indices])]
    shape = None if dataset == "imagenet2012" else _IMAGE_SHAPES[dataset]
    bad = image_files.check_decodable(np.concatenate([paths for paths, _ in chosen]), shape, skip_bad_images)
    train, validation, test = [(paths[~np.isin(paths, bad)], labels[~np.isin(paths, bad)])
                               for paths, labels in chosen]
    return _EncodedSplits(
        train=_read_files(*train), validation=_read_files(*validation), test=_read_files(*test),
        num_train=len(train[0]), num_validation=len(validation[0]), num_test=len(test[0]),
        class_names=tuple(class_names[c] for c in kept_classes), skipped_files=tuple(bad),
    )


def _list_class_folders(split_dir):
    """(image paths, int32 labels, class names) of `split_dir`, sorted by class then file name."""
    class_names = sorted(
        name.rstrip("/") for name in tf.io.gfile.listdir(split_dir) if tf.io.gfile.isdir(os.path.join(split_dir, name))
    )
    if not class_names:
        raise ValueError(f"Data folder {split_dir} has no class folders")
    paths, labels = [], []
    for label, class_name in enumerate(class_names):
        class_dir = os.path.join(split_dir, class_name)
        file_names = sorted(name for name in tf.io.gfile.listdir(class_dir) if name.lower().endswith(_IMAGE_EXTENSIONS))
        paths += [os.path.join(class_dir, name) for name in file_names]
        labels += [label] * len(file_names)
    return np.array(paths, dtype=str), np.array(labels, dtype=np.int32), class_names


def _read_files(paths, labels):
    """Dataset of (file bytes, label); the files are read lazily."""
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    return ds.map(lambda path, label: (tf.io.read_file(path), label), num_parallel_calls=_AUTOTUNE, deterministic=True)


def _tfds_splits(dataset, data_dir, sizes, class_subset):
    """Splits of a tensorflow-datasets copy in `data_dir`, or downloaded when `data_dir` is None."""
    builder = tfds.builder(dataset, data_dir=data_dir)
    if data_dir is None:
        builder.download_and_prepare()
    elif not builder.is_prepared():
        raise ValueError(
            f"Data folder {data_dir} holds no prepared tensorflow-datasets copy of {dataset} ({builder.data_dir})"
        )
    class_names = builder.info.features["label"].names
    kept_classes = _kept_classes(class_subset, len(class_names))
    train_all, num_train_all = _read_tfds_split(builder, "train", kept_classes)
    test_all, num_test_all = _read_tfds_split(builder, _TFDS_TEST_SPLITS[dataset], kept_classes)
    num_validation, num_train, num_test = _subset_sizes(num_train_all, num_test_all, *sizes)
    cardinality = tf.data.experimental.assert_cardinality
    return _EncodedSplits(
        train=train_all.skip(num_validation).take(num_train).apply(cardinality(num_train)),
        validation=train_all.take(num_validation).apply(cardinality(num_validation)),
        test=test_all.take(num_test).apply(cardinality(num_test)),
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
        class_names=tuple(class_names[c] for c in kept_classes),
    )


def _read_tfds_split(builder, split, kept_classes):
    """(dataset of (encoded image, relabelled int32 label) in the kept classes, its size)."""
    ds = builder.as_dataset(
        split=split, as_supervised=True, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    num_classes = builder.info.features["label"].num_classes
    if list(kept_classes) == list(range(num_classes)):
        return ds.map(lambda image, label: (image, tf.cast(label, tf.int32))), builder.info.splits[split].num_examples
    new_labels = tf.constant(_new_labels(kept_classes, num_classes))

    def relabel(image, label):
        return image, tf.gather(new_labels, label)

    def is_kept(image, label):
        return label >= 0

    ds = ds.map(relabel).filter(is_kept)
    # Counting the kept examples reads the labels of the whole split once.
    size = int(ds.map(lambda image, label: label).reduce(np.int64(0), lambda count, _: count + 1))
    return ds, size


def _kept_classes(class_subset, num_classes):
    """The class indices to keep, in output-label order."""
    if class_subset is None:
        return list(range(num_classes))
    kept = [int(c) for c in class_subset]
    if not kept or len(set(kept)) != len(kept) or not all(0 <= c < num_classes for c in kept):
        raise ValueError(f"class_subset {list(class_subset)} must list distinct classes in 0..{num_classes - 1}")
    return kept


def _new_labels(kept_classes, num_classes):
    """int32 table: old label -> position in `kept_classes`, or -1 for dropped classes."""
    table = np.full(num_classes, -1, dtype=np.int32)
    table[kept_classes] = np.arange(len(kept_classes), dtype=np.int32)
    return table


def _keep_classes(paths, labels, kept_classes, num_classes):
    """The paths in the kept classes and their new labels."""
    relabelled = _new_labels(kept_classes, num_classes)[labels]
    kept = relabelled >= 0
    return paths[kept], relabelled[kept]


def _subset_sizes(num_train_all, num_test_all, validation_examples, train_examples, test_examples):
    """(validation, train, test) sizes, checked against the examples available."""
    if validation_examples < 0 or (train_examples or 0) < 0 or (test_examples or 0) < 0:
        raise ValueError("validation_examples, train_examples and test_examples must not be negative")
    num_train = num_train_all - validation_examples if train_examples is None else train_examples
    num_test = num_test_all if test_examples is None else test_examples
    if validation_examples + num_train > num_train_all or num_train < 0:
        asked = f"validation_examples={validation_examples}"
        if train_examples is not None:
            asked += f" plus train_examples={train_examples}"
        raise ValueError(f"{asked} exceeds the {num_train_all} training examples available")
    if num_test > num_test_all:
        raise ValueError(f"test_examples={test_examples} exceeds the {num_test_all} test examples available")
    return validation_examples, num_train, num_test


def _decode_split(encoded_ds, dataset, *, for_training, cache):
    """Decodes (encoded image, label) into (float32 image in [0, 1], label)."""
    def decode(encoded, label):
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        if dataset != "imagenet2012":
            image = tf.ensure_shape(image, _IMAGE_SHAPES[dataset])
        return image, label

    def to_float(image, label):
        image = tf.image.convert_image_dtype(image, tf.float32)
        if dataset == "imagenet2012" and not for_training:
            image = _resize_and_center_crop(image)
        return image, label

    ds = encoded_ds.map(decode, num_parallel_calls=_AUTOTUNE, deterministic=True)
    if cache:  # uint8 images: 150 MB for the CIFAR training set
        ds = ds.cache()
    return ds.map(to_float, num_parallel_calls=_AUTOTUNE, deterministic=True)


def _augment(image, example_seed, dataset):
    """The paper's augmentation with stateless ops seeded by `example_seed`."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
    if dataset == "imagenet2012":
        image = _random_resized_crop(image, crop_seed)
    else:  # zero padding then a random crop, like torchvision's RandomCrop(32, padding=4)
        pad = _CIFAR_PADDING
        image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.stateless_random_crop(image, _IMAGE_SHAPES[dataset], crop_seed)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _random_resized_crop(image, seed):
    """Crop of 8%-100% of the area and aspect ratio 3/4-4/3, resized to 224x224."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    return tf.image.resize(crop, _IMAGE_SHAPES["imagenet2012"][:2], antialias=True)


def _resize_and_center_crop(image):
    """Resizes the shorter side to 256 and takes the central 224x224."""
    height_width = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = _IMAGENET_RESIZE / tf.reduce_min(height_width)
    image = tf.image.resize(image, tf.cast(tf.round(height_width * scale), tf.int32), antialias=True)
    crop_height, crop_width, _ = _IMAGE_SHAPES["imagenet2012"]
    return tf.image.resize_with_crop_or_pad(image, crop_height, crop_width)


def _shuffle_buffer_size(train_ds, dataset):
    num_examples = int(train_ds.cardinality())
    if num_examples < 0:  # unknown or infinite
        return _SHUFFLE_BUFFERS[dataset]
    return max(1, min(num_examples, _SHUFFLE_BUFFERS[dataset]))
