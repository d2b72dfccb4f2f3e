"""A finished run packed into one small file and unpacked elsewhere measures as the original: same masks, logits."""
import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from rst_tf.method import layers
from rst_tf.study import executors, run_archive
from rst_tf.training import run_dir as run_files
from tests import ticket_fixtures


def _finished_run(run_dir, config, variation=0, train_kernels=False):
    """A stand-in finished search (`ticket_fixtures.write_run`), its kernels changed as training would change them
    when `train_kernels`."""
    network = ticket_fixtures.write_run(run_dir, config, variation=variation)
    if train_kernels:
        for layer in layers.masked_layers(network):
            layer.kernel.assign(layer.kernel * 1.5 + 0.01)
        tf.train.Checkpoint(network=network).save(os.path.join(run_dir, "checkpoints", "best", "ckpt"))
    path = os.path.join(run_dir, "metrics.json")
    metrics = json.load(open(path))
    json.dump(dict(metrics, final={"best": {"epoch": 3}}), open(path, "w"))


def _logits(run_dir):
    network, _ = run_files.load_run(run_dir)
    images = tf.random.stateless_uniform([4, *ticket_fixtures.IMAGE_SHAPE], [3, 4])
    return network(images, training=False).numpy(), {layer.path: mask.numpy() for layer, mask in
                                                     layers.current_masks(network).items()}


@pytest.mark.parametrize("mode, ratio", [("rst", 0.2), ("dense_at", 0.2)])
def test_an_unpacked_run_is_finished_and_gives_the_same_masks_and_logits(tmp_path, mode, ratio):
    config = ticket_fixtures.tiny_config(ratio, seed=3, mode=mode, data_dir="/elsewhere/data")
    original = str(tmp_path / "runs" / "a")
    _finished_run(original, config, variation=5, train_kernels=mode == "dense_at")
    archive = run_archive.pack(original, str(tmp_path / "records" / "a.npz"))
    size = sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in
               os.walk(os.path.join(original, "checkpoints")) for name in names)
    if mode == "rst":  # masks as bits, the random kernels drawn again from the seed
        assert os.path.getsize(archive) < size / 5
    here = dataclasses.replace(config, data_dir="/here/data")
    assert run_archive.matches(archive, here)
    restored = str(tmp_path / "machine_b" / "a")
    run_archive.unpack(archive, restored, here)
    assert executors.is_finished(restored) and run_files.read_config(restored).data_dir == "/here/data"
    (ours, our_masks), (theirs, their_masks) = _logits(original), _logits(restored)
    np.testing.assert_array_equal(ours, theirs)
    assert our_masks.keys() == their_masks.keys() and (mode == "dense_at") == (not our_masks)
    for name, mask in our_masks.items():
        np.testing.assert_array_equal(mask, their_masks[name])
    assert sorted(os.listdir(tmp_path / "machine_b")) == ["a"]


def test_an_archive_of_another_run_or_another_random_network_is_refused_and_nothing_is_written(tmp_path):
    config = ticket_fixtures.tiny_config(0.1, seed=1)
    original = str(tmp_path / "a")
    _finished_run(original, config, variation=2)
    archive = run_archive.pack(original, str(tmp_path / "a.npz"))
    other = dataclasses.replace(config, epochs=config.epochs + 1)
    assert not run_archive.matches(archive, other)
    with pytest.raises(ValueError, match="holds another run"):
        run_archive.unpack(archive, str(tmp_path / "b"), other)
    # The random kernels as another machine would draw them differently: one layer's kernel changed in the file.
    with np.load(archive) as found:
        manifest = json.loads(bytes(found["manifest"]).decode())
        arrays = {name: found[name] for name in found.files if name != "manifest"}
    seeded = next(entry for entry in manifest["weights"] if entry["kind"] == "seeded")
    seeded["sha256"] = "0" * 64
    forged = str(tmp_path / "forged.npz")
    np.savez(forged, manifest=np.frombuffer(json.dumps(manifest).encode(), np.uint8), **arrays)
    with pytest.raises(ValueError, match=f"the random kernel {seeded['path']} drawn here"):
        run_archive.unpack(forged, str(tmp_path / "b"), config)
    with pytest.raises(ValueError, match="config.json is not a run archive"):
        run_archive.unpack(str(tmp_path / "a" / "config.json"), str(tmp_path / "b"), config)
    with pytest.raises(ValueError, match="config.json is not a run archive"):
        run_archive.matches(str(tmp_path / "a" / "config.json"), config)
    assert not os.path.exists(tmp_path / "b") and not os.path.exists(tmp_path / "b.unpacking")
    unfinished = str(tmp_path / "c")
    ticket_fixtures.write_run(unfinished, config)
    with pytest.raises(ValueError, match="holds no finished run"):
        run_archive.pack(unfinished, str(tmp_path / "c.npz"))
    assert not os.path.exists(tmp_path / "c.npz")


def test_a_study_packs_a_run_once_and_again_when_its_configuration_changed(tmp_path):
    from rst_tf.study import scaling_records

    config = ticket_fixtures.tiny_config(0.2, seed=1)
    run_dir, records, unit = str(tmp_path / "run"), str(tmp_path / "records"), (0.0625, 1)
    _finished_run(run_dir, config)
    path = scaling_records.save_run(records, unit, "rst/ratio_0.2", run_dir)
    assert path == scaling_records.archive_path(records, unit, "rst/ratio_0.2") and os.path.isfile(path)
    assert scaling_records.save_run(records, unit, "rst/ratio_0.2", run_dir) is None
    longer = dataclasses.replace(config, epochs=config.epochs + 1)
    _finished_run(run_dir, longer)
    assert scaling_records.save_run(records, unit, "rst/ratio_0.2", run_dir) == path
    assert run_archive.matches(path, longer) and not run_archive.matches(path, config)
    restored = str(tmp_path / "restored")
    assert not scaling_records.restore_run(records, unit, "rst/ratio_0.2", restored, config)
    assert not os.path.exists(restored)
    assert scaling_records.restore_run(records, unit, "rst/ratio_0.2", restored, longer)
    assert executors.is_finished(restored)
