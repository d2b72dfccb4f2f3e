"""The `.rst` reader under seeded mutations (bench/fuzz_rst.py runs 1,000): each gives one BankFileError naming the
file, or a valid bank; never another exception, a hang or an unbounded allocation."""
import json
import tracemalloc

import numpy as np
import pytest

from bench import fuzz_rst
from rst_tf.deployment import artifact, mask_codec


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory):
    """(bytes of the tiny nested bank, its tickets)."""
    path = tmp_path_factory.mktemp("fuzz") / "bank.rst"
    found = fuzz_rst.tiny_bank_file(str(path))
    return path.read_bytes(), found


def test_the_unmutated_bank_reads_back_the_same(bank_file, tmp_path):
    data, found = bank_file
    (tmp_path / "bank.rst").write_bytes(data)
    assert fuzz_rst.outcome(str(tmp_path / "bank.rst"), found) == ("valid_same", "")


@pytest.mark.parametrize("kind", fuzz_rst.KINDS)
def test_mutations_give_one_clear_error_or_a_valid_bank(bank_file, tmp_path, kind):
    data, found = bank_file
    rng = np.random.default_rng(sorted(fuzz_rst.KINDS).index(kind))
    path = str(tmp_path / "mutated.rst")
    outcomes = []
    tracemalloc.start()
    for _ in range(3):
        mutated = fuzz_rst.mutate(data, kind, rng)
        assert mutated != data
        with open(path, "wb") as handle:
            handle.write(mutated)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result, detail = fuzz_rst.outcome(path, found, time_limit=60)
        assert tracemalloc.get_traced_memory()[1] - before < 64 << 20, (kind, detail)  # the file is ~33 kB
        assert result in ("error", "valid_same", "valid_changed"), (kind, detail)
        outcomes.append(result)
    tracemalloc.stop()
    if kind not in ("blob_bit_flips",):  # a flipped bit of a mask's code may still decode, to another mask
        assert "error" in outcomes, (kind, outcomes)


def _rewrite_header(data, tmp_path, change):
    members = fuzz_rst._members(data)
    header = json.loads(fuzz_rst._payload(members["header.npy"]).decode())
    change(header)
    members["header.npy"] = fuzz_rst._npy(json.dumps(header).encode())
    path = tmp_path / "forged.rst"
    path.write_bytes(fuzz_rst._zip(members))
    return str(path)


@pytest.mark.parametrize("field,value,message", [
    ("quotient_bits", 1 << 40, r"tickets\[0\]\.masks\[0\]\.quotient_bits is 1099511627776, outside"),
    ("count", 1 << 31, r"tickets\[0\]\.masks\[0\]\.count is 2147483648, outside"),
    ("shape", [1 << 20, 1 << 20], r"tickets\[0\]\.masks\[0\]\.size is \d+; shape"),
    ("quotients", [0, 1 << 40], r"tickets\[0\]\.masks\[0\]\.quotients \[0, 1099511627776\] is not a \[start, length\]"),
    ("rice_bits", 63, r"tickets\[0\]\.masks\[0\]\.rice_bits is 63, outside"),
    ("symbol", "1", r"tickets\[0\]\.masks\[0\]\.symbol is str '1', not int"),
])
def test_inflated_or_mistyped_mask_fields_are_refused_before_anything_is_allocated(bank_file, tmp_path, field, value,
                                                                                     message):
    data, _ = bank_file

    def change(header):
        header["tickets"][0]["masks"][0][field] = value

    path = _rewrite_header(data, tmp_path, change)
    tracemalloc.start()
    with pytest.raises(artifact.BankFileError, match=message):
        artifact.read(path, verify=False)
    assert tracemalloc.get_traced_memory()[1] < 16 << 20
    tracemalloc.stop()


def test_a_mask_shape_other_than_the_layers_is_refused_with_verification(bank_file, tmp_path):
    data, _ = bank_file

    def change(header):  # the first layer's masks flattened: consistent in the file, not the layer's shape
        layer = header["tickets"][0]["masks"][0]["layer"]
        for entry in header["tickets"]:
            for code in entry["masks"]:
                if code["layer"] == layer:
                    code["shape"] = [int(np.prod(code["shape"]))]

    path = _rewrite_header(data, tmp_path, change)
    artifact.read(path, verify=False)  # nothing in the file contradicts it
    with pytest.raises(artifact.BankFileError, match=r"tickets\[0\]\.masks\[0\] gives layer .* the network's is"):
        artifact.read(path)


def test_an_inflated_npy_length_is_refused(bank_file, tmp_path):
    data, _ = bank_file
    members = fuzz_rst._members(data)
    members["quotients.npy"] = fuzz_rst._npy(fuzz_rst._payload(members["quotients.npy"]), 1 << 62)
    path = tmp_path / "inflated.rst"
    path.write_bytes(fuzz_rst._zip(members))
    with pytest.raises(artifact.BankFileError, match=f"{path}: .*quotients array declares"):
        artifact.read(str(path), verify=False)


def test_the_codec_checks_declared_counts_against_its_bytes():
    encoded = mask_codec.encode(np.arange(64) % 7 == 0)
    for change in ({"quotient_bits": 1 << 40}, {"count": encoded.count + 1}, {"rice_bits": 40},
                   {"remainders": encoded.remainders[:-1]}):
        forged = mask_codec.EncodedMask(**{**vars(encoded), **change})
        with pytest.raises(ValueError, match="corrupt mask code"):
            mask_codec.decode(forged, (64,))
