"""Input pipelines, checked against the CIFAR-10 copy named by RST_TF_DATA_DIR."""
import functools
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import cifar

from rst_tf import data

DOG_TO_TRUCK = ("dog", "frog", "horse", "ship", "truck")


def image_keys(images):
    """Exact identity of [0, 1] float images: their uint8 pixel bytes."""
    pixels = np.round(np.asarray(images) * 255).astype(np.uint8)
    return [image.tobytes() for image in pixels]


def split_contents(ds):
    """(image keys, labels) of an unbatched split, in order."""
    keys, labels = [], []
    for images, batch_labels in ds.batch(500):
        keys += image_keys(images)
        labels += batch_labels.numpy().tolist()
    return keys, labels


@functools.lru_cache(maxsize=None)
def folder_keys(folder):
    """Image keys of every JPEG in `folder`, decoded independently of rst_tf.data."""
    paths = sorted(tf.io.gfile.glob(os.path.join(folder, "*.jpg")))
    images = tf.data.Dataset.from_tensor_slices(paths).map(lambda path: tf.io.decode_jpeg(tf.io.read_file(path)))
    return {image.tobytes() for batch in images.batch(1000).as_numpy_iterator() for image in batch}


def batches_as_arrays(ds):
    return [(images.numpy(), labels.numpy()) for images, labels in ds]


@pytest.fixture
def small_splits(cifar10_path):
    return data.load_splits("cifar10", cifar10_path, validation_examples=50, train_examples=200, test_examples=100)


def test_small_subsets_have_requested_sizes_shapes_and_range(small_splits):
    assert (small_splits.num_train, small_splits.num_validation, small_splits.num_test) == (200, 50, 100)
    assert small_splits.num_classes == 10
    assert small_splits.image_shape == (32, 32, 3)
    assert small_splits.class_names[:3] == ("airplane", "automobile", "bird")
    for ds, size in ((small_splits.train, 200), (small_splits.validation, 50), (small_splits.test, 100)):
        assert ds.element_spec[0].shape == (32, 32, 3)
        assert ds.element_spec[0].dtype == tf.float32
        assert ds.element_spec[1].dtype == tf.int32
        images, labels = next(iter(ds.batch(1000)))
        assert images.shape == (size, 32, 32, 3)
        assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
        assert float(tf.reduce_max(images)) > 0.5  # scaled to [0, 1], not [0, 1/255]
        assert len(set(labels.numpy().tolist())) >= 5  # classes are mixed, not one class folder's tail
        assert set(labels.numpy().tolist()) <= set(range(10))


def test_default_sizes_hold_out_1000_training_images(cifar10_path):
    splits = data.load_splits("cifar10", cifar10_path)
    assert (splits.num_train, splits.num_validation, splits.num_test) == (49_000, 1000, 10_000)
    assert [int(ds.cardinality()) for ds in (splits.train, splits.validation, splits.test)] == [49_000, 1000, 10_000]
    empty = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=10, test_examples=10)
    assert empty.num_validation == 0 and int(empty.validation.cardinality()) == 0


def test_validation_is_carved_from_training_folder(cifar10_path):
    splits = data.load_splits("cifar10", cifar10_path, validation_examples=50, test_examples=200, class_subset=[0])
    train, validation, test = (split_contents(ds)[0] for ds in (splits.train, splits.validation, splits.test))
    assert len(train) == 4950 and len(validation) == 50 and len(test) == 200
    assert not set(train) & set(validation)
    assert set(train) | set(validation) == folder_keys(os.path.join(cifar10_path, "train", "airplane"))
    assert set(test) <= folder_keys(os.path.join(cifar10_path, "test", "airplane"))


def test_subsets_are_deterministic_for_a_seed(cifar10_path):
    def load(seed):
        splits = data.load_splits("cifar10", cifar10_path, validation_examples=50, train_examples=200,
                                  test_examples=100, seed=seed)
        return [split_contents(ds) for ds in (splits.train, splits.validation, splits.test)]

    first = load(seed=3)
    assert load(seed=3) == first
    other_seed = load(seed=4)
    assert all(set(other[0]) != set(split[0]) for other, split in zip(other_seed, first))
    train_keys, validation_keys = first[0][0], first[1][0]
    assert not set(train_keys) & set(validation_keys)


def test_test_split_comes_from_test_folder(small_splits, cifar10_path):
    test_keys, test_labels = split_contents(small_splits.test)
    for key, label in zip(test_keys[:20], test_labels[:20]):
        class_name = small_splits.class_names[label]
        assert key in folder_keys(os.path.join(cifar10_path, "test", class_name))
    train_keys, _ = split_contents(small_splits.train)
    assert not set(test_keys) & set(train_keys)


def test_class_subset_relabels_in_given_order(cifar10_path):
    splits = data.load_splits("cifar10", cifar10_path, validation_examples=20, train_examples=100,
                              test_examples=100, class_subset=[5, 6, 7, 8, 9])
    assert splits.num_classes == 5
    assert splits.class_names == DOG_TO_TRUCK
    for ds in (splits.train, splits.validation, splits.test):
        _, labels = split_contents(ds)
        assert set(labels) <= set(range(5)) and len(set(labels)) >= 3
    test_keys, test_labels = split_contents(splits.test)
    class_keys = {name: folder_keys(os.path.join(cifar10_path, "test", name)) for name in DOG_TO_TRUCK}
    assert all(key in class_keys[DOG_TO_TRUCK[label]] for key, label in zip(test_keys, test_labels))

    reversed_order = data.load_splits("cifar10", cifar10_path, validation_examples=0, train_examples=10,
                                      test_examples=0, class_subset=[9, 5])
    assert reversed_order.class_names == ("truck", "dog")


def test_train_batches_repeat_for_same_seed_and_epoch(small_splits):
    def epoch_batches(epoch, seed=0):
        return batches_as_arrays(data.train_batches(small_splits, dataset="cifar10", batch_size=64,
                                                    epoch=epoch, seed=seed))

    first = epoch_batches(epoch=2)
    assert len(first) == 3  # 200 // 64, remainder dropped
    epoch_batches(epoch=0)  # other epochs and unrelated random ops in between do not matter
    tf.random.uniform([3])
    again = epoch_batches(epoch=2)
    for (images, labels), (images_again, labels_again) in zip(first, again):
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(labels, labels_again)
    other_epoch = epoch_batches(epoch=3)
    assert not np.array_equal(first[0][1], other_epoch[0][1])
    assert not np.array_equal(first[0][1], epoch_batches(epoch=2, seed=1)[0][1])


def test_train_batches_cover_each_example_once(small_splits):
    batches = data.train_batches(small_splits.train, dataset="cifar10", batch_size=64, epoch=0, seed=0,
                                 augment=False, drop_remainder=False)
    arrays = batches_as_arrays(batches)
    assert [len(labels) for _, labels in arrays] == [64, 64, 64, 8]
    keys = [key for images, _ in arrays for key in image_keys(images)]
    train_keys, _ = split_contents(small_splits.train)
    assert sorted(keys) == sorted(train_keys)
    assert keys != train_keys  # shuffled


def test_augmentation_is_padded_crop_and_flip(small_splits):
    def first_batch(augment):
        ds = data.train_batches(small_splits, dataset="cifar10", batch_size=64, epoch=1, seed=0, augment=augment)
        return batches_as_arrays(ds.take(1))[0]

    originals, labels = first_batch(augment=False)
    augmented, augmented_labels = first_batch(augment=True)
    np.testing.assert_array_equal(labels, augmented_labels)  # same order with and without augmentation
    assert augmented.shape == (64, 32, 32, 3) and augmented.dtype == np.float32
    assert augmented.min() >= 0.0 and augmented.max() <= 1.0
    assert sum(not np.array_equal(a, o) for a, o in zip(augmented, originals)) > 32

    def is_crop_or_flipped_crop(image, original):
        padded = np.pad(original, ((4, 4), (4, 4), (0, 0)))
        crops = [padded[y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        return any(np.array_equal(image, c) or np.array_equal(image, c[:, ::-1]) for c in crops)

    assert all(is_crop_or_flipped_crop(a, o) for a, o in zip(augmented, originals))


def test_eval_batches_keep_order(small_splits):
    batches = batches_as_arrays(data.eval_batches(small_splits.test, 32))
    assert [len(labels) for _, labels in batches] == [32, 32, 32, 4]
    keys = [key for images, _ in batches for key in image_keys(images)]
    assert keys == split_contents(small_splits.test)[0]


def copy_class_folders(cifar10_path, destination, per_class):
    """Copies the first `per_class` images of the first three classes of each split to `destination`."""
    for split in ("train", "test"):
        for class_name in ("airplane", "automobile", "bird"):
            (destination / split / class_name).mkdir(parents=True)
            for file_name in sorted(os.listdir(os.path.join(cifar10_path, split, class_name)))[:per_class]:
                tf.io.gfile.copy(os.path.join(cifar10_path, split, class_name, file_name),
                                 str(destination / split / class_name / file_name))


def test_cifar_images_are_decoded_once_and_kept_in_memory(cifar10_path, tmp_path):
    copy_class_folders(cifar10_path, tmp_path, per_class=4)
    splits = data.load_splits("cifar10", str(tmp_path), validation_examples=3)
    first_pass = [split_contents(ds) for ds in (splits.train, splits.validation, splits.test)]
    tf.io.gfile.rmtree(str(tmp_path / "train"))
    tf.io.gfile.rmtree(str(tmp_path / "test"))
    assert [split_contents(ds) for ds in (splits.train, splits.validation, splits.test)] == first_pass
    batches = batches_as_arrays(data.train_batches(splits, dataset="cifar10", batch_size=3, epoch=1, seed=0))
    assert len(batches) == 3


def test_bad_inputs_name_the_problem(cifar10_path, tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(ValueError, match=missing):
        data.load_splits("cifar10", missing)
    only_test = tmp_path / "only_test"
    (only_test / "test" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"{only_test}.*train/"):
        data.load_splits("cifar10", str(only_test))
    class_folders = tmp_path / "class_folders"
    (class_folders / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match=str(class_folders)):
        data.load_splits("cifar10", str(class_folders))
    unprepared = tmp_path / "unprepared"
    (unprepared / "cifar10").mkdir(parents=True)
    with pytest.raises(ValueError, match=str(unprepared)):
        data.load_splits("cifar10", str(unprepared))
    with pytest.raises(ValueError, match="'mnist'.*cifar10, cifar100, imagenet2012"):
        data.load_splits("mnist", cifar10_path)
    with pytest.raises(ValueError, match="mnist"):
        data.train_batches(tf.data.Dataset.range(1), dataset="mnist", batch_size=1, epoch=0, seed=0)
    with pytest.raises(ValueError, match="train_examples=50000 exceeds the 50000"):
        data.load_splits("cifar10", cifar10_path, train_examples=50_000)
    with pytest.raises(ValueError, match="validation_examples=50001 exceeds"):
        data.load_splits("cifar10", cifar10_path, validation_examples=50_001)
    with pytest.raises(ValueError, match="class_subset"):
        data.load_splits("cifar10", cifar10_path, class_subset=[3, 10])


class _LocalCifar10(cifar.Cifar10, skip_registration=True):
    """tensorflow-datasets' own CIFAR-10 builder, filled from the local class folders instead of the web."""

    name = "cifar10"
    source_dir = ""
    per_class = {"train": 4, "test": 2}

    def _split_generators(self, dl_manager):
        self.info.features["label"].names = sorted(os.listdir(os.path.join(self.source_dir, "train")))
        return {split: self._generate_examples(split) for split in self.per_class}

    def _generate_examples(self, split):
        for label, class_name in enumerate(self.info.features["label"].names):
            class_dir = os.path.join(self.source_dir, split, class_name)
            for file_name in sorted(os.listdir(class_dir))[: self.per_class[split]]:
                image = tf.io.decode_jpeg(tf.io.read_file(os.path.join(class_dir, file_name))).numpy()
                key = f"{split}_{class_name}_{file_name}"
                yield key, {"id": key, "image": image, "label": label}


def copied_keys(cifar10_path, split):
    """Image keys of the files `_LocalCifar10` copies from `split`."""
    keys = set()
    for class_name in sorted(os.listdir(os.path.join(cifar10_path, split))):
        class_dir = os.path.join(cifar10_path, split, class_name)
        for file_name in sorted(os.listdir(class_dir))[: _LocalCifar10.per_class[split]]:
            keys.add(tf.io.decode_jpeg(tf.io.read_file(os.path.join(class_dir, file_name))).numpy().tobytes())
    return keys


@pytest.fixture
def prepared_tfds_dir(cifar10_path, tmp_path):
    """A real prepared tensorflow-datasets copy of 40 training and 20 test CIFAR-10 images."""
    _LocalCifar10.source_dir = cifar10_path
    builder = _LocalCifar10(data_dir=str(tmp_path))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return str(tmp_path)


def test_prepared_tfds_copy_is_read_without_download(prepared_tfds_dir, cifar10_path):
    splits = data.load_splits("cifar10", prepared_tfds_dir, validation_examples=10)
    assert (splits.num_train, splits.num_validation, splits.num_test) == (30, 10, 20)
    assert splits.class_names[0] == "airplane" and splits.num_classes == 10
    (train_keys, train_labels), (validation_keys, _), (test_keys, test_labels) = (
        split_contents(ds) for ds in (splits.train, splits.validation, splits.test))
    assert len(train_keys) == 30 and len(validation_keys) == 10 and len(test_keys) == 20
    assert not set(train_keys) & set(validation_keys)
    assert set(train_keys) | set(validation_keys) == copied_keys(cifar10_path, "train")
    assert set(test_keys) == copied_keys(cifar10_path, "test")
    assert sorted(np.bincount(test_labels)) == [2] * 10
    assert split_contents(data.load_splits("cifar10", prepared_tfds_dir, validation_examples=10).train)[0] == train_keys

    subset = data.load_splits("cifar10", prepared_tfds_dir, validation_examples=5, class_subset=[5, 6, 7, 8, 9])
    assert (subset.num_train, subset.num_validation, subset.num_test) == (15, 5, 10)
    assert subset.class_names == DOG_TO_TRUCK
    assert set(split_contents(subset.train)[1]) <= set(range(5))
    batches = batches_as_arrays(data.train_batches(subset, dataset="cifar10", batch_size=5, epoch=0, seed=0))
    assert len(batches) == 3 and batches[0][0].shape == (5, 32, 32, 3)


@pytest.fixture
def imagenet_style_folder(tmp_path):
    """Class folders of random PNG images of different sizes, laid out like a user's ImageNet copy."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("test", 1)):
        for class_name in ("n01", "n02", "n03"):
            class_dir = tmp_path / split / class_name
            class_dir.mkdir(parents=True)
            for i in range(count):
                height, width = rng.integers(100, 300, size=2)
                pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                (class_dir / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return str(tmp_path)


def test_imagenet_images_are_cropped_to_224(imagenet_style_folder):
    splits = data.load_splits("imagenet2012", imagenet_style_folder, validation_examples=1)
    assert (splits.num_train, splits.num_validation, splits.num_test) == (8, 1, 3)
    assert splits.image_shape == (224, 224, 3) and splits.class_names == ("n01", "n02", "n03")
    for ds in (splits.validation, splits.test):
        images, _ = next(iter(data.eval_batches(ds, 8)))
        assert images.shape[1:] == (224, 224, 3)
    train_shapes = {tuple(image.shape) for image, _ in splits.train}
    assert len(train_shapes) > 1  # training images keep their own size until train_batches crops them

    for augment in (True, False):
        ds = data.train_batches(splits, dataset="imagenet2012", batch_size=4, epoch=0, seed=0, augment=augment)
        first, again = batches_as_arrays(ds), batches_as_arrays(ds)
        assert len(first) == 2 and first[0][0].shape == (4, 224, 224, 3)
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
        assert all(0.0 <= images.min() and images.max() <= 1.0 for images, _ in first)

    tf.io.gfile.rmtree(os.path.join(imagenet_style_folder, "test"))
    with pytest.raises(tf.errors.NotFoundError):  # ImageNet-size images are read again, not kept in memory
        split_contents(splits.test)


def test_undecodable_image_is_named_or_skipped(image_folders_with_a_bad_file):
    data_dir, bad_file = image_folders_with_a_bad_file
    with pytest.raises(ValueError, match=f"image file {re.escape(bad_file)} cannot be decoded") as error:
        data.load_splits("cifar10", data_dir, validation_examples=4)
    assert "\n" not in str(error.value)
    splits = data.load_splits("cifar10", data_dir, validation_examples=4, skip_bad_images=True)
    assert splits.skipped_files == (bad_file,)
    assert (splits.num_train, splits.num_validation, splits.num_test) == (12, 4, 16)  # 17 training files, 1 bad
    for split, size in ((splits.train, 12), (splits.validation, 4), (splits.test, 16)):
        assert len(batches_as_arrays(split.batch(100))[0][1]) == size


def test_the_first_test_images_of_the_whole_set_are_the_seeded_subset_and_hold_every_class(cifar10_path, tmp_path):
    # A folder lists its test images class by class; the splits give them in a seeded order.
    copy_class_folders(cifar10_path, tmp_path, per_class=20)

    def test_labels(test_examples, seed=3):
        splits = data.load_splits("cifar10", str(tmp_path), validation_examples=3, train_examples=3,
                                  test_examples=test_examples, seed=seed)
        return split_contents(splits.test)

    whole_keys, whole_labels = test_labels(None)
    assert sorted(whole_labels) == [0] * 20 + [1] * 20 + [2] * 20
    subset_keys, subset_labels = test_labels(15)
    assert (subset_keys, subset_labels) == (whole_keys[:15], whole_labels[:15])
    assert set(whole_labels[:15]) == {0, 1, 2}
    assert test_labels(None, seed=4)[1] != whole_labels
