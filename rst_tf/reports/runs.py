"""Search runs and the test images an evaluation needs: networks from run folders, and one seeded test subset."""
import os

from rst_tf import data
from rst_tf.training import run_dir as run_folder


def run_names(run_dirs):
    """A short unique name per run folder: its base name, with _2, _3 ... for repeats."""
    names = []
    for run_dir in run_dirs:
        base = os.path.basename(os.path.normpath(run_dir)) or run_dir
        name, index = base, 2
        while name in names:
            name, index = f"{base}_{index}", index + 1
        names.append(name)
    return names


def load_runs(run_dirs, checkpoint="best"):
    """[(run_dir, network, config)] of every run folder; ValueError unless they share dataset and class subset."""
    runs = []
    for run_dir in run_dirs:
        network, config = run_folder.load_run(run_dir, checkpoint)
        runs.append((run_dir, network, config))
    datasets = {(config.dataset, tuple(config.class_subset)) for _, _, config in runs}
    if len(datasets) > 1:
        raise ValueError(f"the runs use different datasets or class subsets: {sorted(datasets)}")
    return runs


def test_batches(dataset, data_dir="", num_examples=0, batch_size=200, seed=0, class_subset=()):
    """Batches of (images, labels) of the test split, or of a seeded subset of `num_examples` (0: all).

    An empty `data_dir` lets tensorflow-datasets find or download the dataset; a missing folder is a ValueError.
    """
    if data_dir and not os.path.isdir(data_dir):
        raise ValueError(f"data_dir {data_dir} is not a folder")
    # No training images: the test subset does not depend on them, and a class-folder copy decodes what it loads.
    splits = data.load_splits(dataset, data_dir or None, validation_examples=0, train_examples=0,
                              test_examples=num_examples or None,
                              class_subset=tuple(class_subset or ()) or None, seed=seed)
    return list(data.eval_batches(splits.test, batch_size))
