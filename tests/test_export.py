"""SavedModels serve the in-memory tickets' logits without project code, R2S draws every ticket, the .rst artifact
rebuilds the same weights and masks, and TF Serving's config names every model."""
import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import ticket_fixtures
from rst_tf.deployment import artifact, export, r2s

# Loads SavedModels with TensorFlow alone (no project import) and writes each one's logits.
_FRESH_PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    assert not any(name.startswith("rst_tf") for name in sys.modules)
    images = np.load(sys.argv[1])
    for index, path in enumerate(sys.argv[3:]):
        serve = tf.saved_model.load(path).signatures["serving_default"]
        np.save(f"{sys.argv[2]}_{index}.npy", serve(images=tf.constant(images))["logits"].numpy())
""")


@pytest.fixture(scope="module")
def exported(tiny_bank, tmp_path_factory):
    bank, _ = tiny_bank
    folder = tmp_path_factory.mktemp("export")
    singles = [export.save(str(folder / f"ticket_{index}"), {"cifar10": r2s.MaskBank(bank.network, [ticket])})
               for index, ticket in enumerate(bank.tickets)]
    both = export.save(str(folder / "r2s"), {"cifar10": bank})
    per_sample = export.save(str(folder / "r2s_per_sample"), {"cifar10": bank}, per_sample=True)
    return folder, singles, both, per_sample


def _images(count=5):
    return tf.random.stateless_uniform([count, *ticket_fixtures.IMAGE_SHAPE], [11, 0])


def test_fresh_process_gets_the_in_memory_logits(tiny_bank, exported, tmp_path):
    bank, _ = tiny_bank
    _, singles, _, _ = exported
    images = _images()
    np.save(tmp_path / "images.npy", images.numpy())
    result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(tmp_path / "images.npy"),
                             str(tmp_path / "logits"), *singles], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=""), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for index in range(len(bank)):
        np.testing.assert_allclose(np.load(tmp_path / f"logits_{index}.npy"), bank.logits(images, index), atol=1e-5)


def test_signatures_take_floats_and_uint8_and_reject_bad_input(exported, tiny_bank):
    bank, _ = tiny_bank
    _, singles, _, _ = exported
    loaded = tf.saved_model.load(singles[0])
    pixels = tf.cast(tf.round(_images() * 255), tf.uint8)
    from_uint8 = loaded.signatures["serving_uint8"](images=pixels)
    from_float = loaded.signatures["serving_default"](images=tf.cast(pixels, tf.float32) / 255)
    np.testing.assert_allclose(from_uint8["logits"], from_float["logits"], atol=1e-5)
    np.testing.assert_allclose(tf.reduce_sum(from_float["probabilities"], -1), 1.0, atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"float images must lie in \[0, 1\]"):
        loaded.signatures["serving_default"](images=_images() * 255)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected shape \[\?,32,32,3\]"):
        loaded.signatures["serving_default"](images=tf.zeros([2, 16, 16, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor but is a uint8"):
        loaded.signatures["serving_default"](images=pixels)


@pytest.mark.parametrize("which", ["single", "r2s", "r2s_per_sample"])
def test_empty_batch_gives_empty_outputs_and_bad_input_is_still_refused(exported, which):
    _, singles, both, per_sample = exported
    loaded = tf.saved_model.load({"single": singles[0], "r2s": both, "r2s_per_sample": per_sample}[which])
    for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8)):
        outputs = loaded.signatures[name](images=tf.zeros([0, *ticket_fixtures.IMAGE_SHAPE], dtype))
        assert outputs["logits"].shape == (0, 10) and outputs["probabilities"].shape == (0, 10)
        assert outputs["logits"].dtype == tf.float32
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected shape \[\?,32,32,3\]"):
            loaded.signatures[name](images=tf.zeros([0, 16, 16, 3], dtype))
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected shape \[\?,32,32,3\]"):
            loaded.signatures[name](images=tf.zeros([2, 32, 32, 1], dtype))
    with pytest.raises(tf.errors.InvalidArgumentError, match="images must be finite"):
        loaded.signatures["serving_default"](images=tf.fill([1, *ticket_fixtures.IMAGE_SHAPE], float("nan")))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"float images must lie in \[0, 1\]"):
        loaded.signatures["serving_default"](images=-_images(1))


def test_saved_model_cli_lists_the_signatures(exported):
    _, _, both, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([cli, "show", "--all", "--dir", both], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for expected in ("signature_def['serving_default']", "signature_def['serving_uint8']", "DT_UINT8",
                     "shape: (-1, 32, 32, 3)", "outputs['logits']", "outputs['probabilities']"):
        assert expected in result.stdout


def _which_ticket(logits, every):
    distances = np.abs(every - logits[None]).max(axis=-1)  # [tickets, batch]
    assert distances.min(axis=0).max() < 1e-4
    return distances.argmin(axis=0)


def test_r2s_model_draws_every_ticket_uniformly(tiny_bank, exported):
    bank, _ = tiny_bank
    _, _, both, per_sample = exported
    images = _images(4)
    every = bank.all_logits(images).numpy()
    serve = tf.saved_model.load(both).signatures["serving_default"]
    draws = []
    for _ in range(90):
        picked = _which_ticket(serve(images=images)["logits"].numpy(), every)
        assert len(set(picked)) == 1  # one ticket per request
        draws.append(picked[0])
    counts = np.bincount(draws, minlength=3)
    assert ((counts - 30) ** 2 / 30).sum() < 13.8, counts  # chi-square, p > 0.001
    serve = tf.saved_model.load(per_sample).signatures["serving_default"]
    many = _images(60)
    picked = _which_ticket(serve(images=many)["logits"].numpy(), bank.all_logits(many).numpy())
    assert set(picked) == {0, 1, 2}


def test_r2s_model_holds_the_weights_once(exported):
    folder, singles, both, _ = exported
    reader = tf.train.load_checkpoint(os.path.join(both, "variables", "variables"))
    shapes = reader.get_variable_to_shape_map()
    kernels = [name for name in shapes if "kernels" in name]
    masks = [name for name in shapes if "masks" in name]
    dtypes = reader.get_variable_to_dtype_map()
    assert len(masks) == len(kernels)  # one boolean stack of the three tickets' masks per kernel
    assert all(dtypes[name] == tf.bool and shapes[name][0] == 3 for name in masks)


def test_artifact_round_trips_weights_masks_and_statistics(tiny_bank, tmp_path):
    bank, sources = tiny_bank
    spec = artifact.network_spec(dict(vars(ticket_fixtures.tiny_config(0.1))), 10, ticket_fixtures.IMAGE_SHAPE)
    path = str(tmp_path / "bank.rst")
    artifact.write(path, {"default": spec}, bank.tickets, {"default": bank.network})
    specs, tickets = artifact.read(path)
    rebuilt = artifact.build_network(specs["default"])
    assert artifact.weights_digest(rebuilt) == artifact.weights_digest(bank.network)
    for original, loaded in zip(bank.tickets, tickets):
        assert (loaded.name, loaded.remaining_ratio) == (original.name, original.remaining_ratio)
        for name, mask in original.masks.items():
            assert np.array_equal(loaded.masks[name], mask)
        for name, (mean, variance) in original.statistics.items():
            assert np.array_equal(loaded.statistics[name][0], mean)
            assert np.array_equal(loaded.statistics[name][1], variance)
    np.testing.assert_array_equal(r2s.MaskBank(rebuilt, tickets).logits(_images(), 2), bank.logits(_images(), 2))
    packed_bytes = sum((mask.size + 7) // 8 for ticket in bank.tickets for mask in ticket.masks.values())
    assert os.path.getsize(path) < packed_bytes + 60_000  # coded masks plus statistics and the zip's own headers


def test_artifact_refuses_trained_weights_and_foreign_files(tiny_bank, tmp_path):
    bank, sources = tiny_bank
    spec = artifact.network_spec(dict(vars(ticket_fixtures.tiny_config(0.1))), 10, ticket_fixtures.IMAGE_SHAPE)
    trained = ticket_fixtures.searched_network(ticket_fixtures.tiny_config(0.1))
    trained.get_layer("classifier").kernel.assign_add(tf.ones_like(trained.get_layer("classifier").kernel))
    with pytest.raises(ValueError, match="seed does not rebuild"):
        artifact.write(str(tmp_path / "bank.rst"), {"default": spec}, bank.tickets, {"default": trained})
    assert not os.path.exists(tmp_path / "bank.rst")
    (tmp_path / "other.rst").write_bytes(b"not a bank")
    with pytest.raises(ValueError, match="is not a .rst ticket bank"):
        artifact.read(str(tmp_path / "other.rst"))


def test_models_config_lists_every_model():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = export.models_config([("cifar10_r2s", "/models/cifar10_r2s"), ("cifar10_ratio_0_1", "/models/x")])
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    entries = parsed.model_config_list.config
    assert [(e.name, e.base_path, e.model_platform) for e in entries] == [
        ("cifar10_r2s", "/models/cifar10_r2s", "tensorflow"), ("cifar10_ratio_0_1", "/models/x", "tensorflow")]


def test_one_model_serves_two_tasks_with_the_weights_once(tiny_bank, tmp_path):
    bank, sources = tiny_bank
    first = r2s.MaskBank(sources[0], bank.tickets[:2])
    second = r2s.MaskBank(sources[2], [dataclasses.replace(bank.tickets[2], task="other")])
    path = export.save(str(tmp_path / "tasks"), {"cifar10": first, "other": second})
    loaded = tf.saved_model.load(path)
    assert {"serving_default", "serving_uint8", "cifar10", "cifar10_uint8", "other", "other_uint8"} <= set(
        loaded.signatures)
    images = _images()
    np.testing.assert_allclose(loaded.signatures["other"](images=images)["logits"], bank.logits(images, 2), atol=1e-5)
    _which_ticket(loaded.signatures["cifar10"](images=images)["logits"].numpy(), first.all_logits(images).numpy())
    shapes = tf.train.load_checkpoint(os.path.join(path, "variables", "variables")).get_variable_to_shape_map()
    kernels = [name for name in shapes if "kernels" in name]
    assert len(kernels) == len([layer for layer in sources[0].layers if hasattr(layer, "scores")])
