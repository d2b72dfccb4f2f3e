"""Fuzzing the `.rst` reader: seeded mutations of a small nested ticket bank, each of which must give one clear error
(`artifact.BankFileError`, naming the file) or a valid bank, and never a crash, a hang or an unbounded allocation.

    python bench/fuzz_rst.py [--mutations 1000] [--seed 0] [--time_limit 60]

The bank holds three nested tickets (ratios 0.1, 0.2, 0.3; the larger two coded as the positions they add, so the
file is version 2) over a CIFAR ResNet18 at width 1/16. Mutations, in equal shares: bit flips anywhere in the file,
truncations, inflated zip header fields (sizes, offsets, counts), and, in a re-packed file with valid checksums,
inflated or negated header numbers, header fields of the wrong type or missing, bit flips in the header text, bit
flips in and truncations of the coded masks and statistics, and inflated .npy lengths. Each mutated file goes
through `tickets.from_artifact` (read with verification, then a `MaskBank` per task). Results: docs/fuzz_rst.json
(the count of each outcome, overall and by mutation, the slowest read and the largest allocation that Python's
tracemalloc sees: NumPy arrays and Python objects, not TensorFlow's own).
"""
import argparse
import collections
import copy
import dataclasses
import io
import json
import os
import re
import signal
import sys
import tempfile
import time
import tracemalloc
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from rst_tf.deployment import artifact, tickets  # noqa: E402

RATIOS = (0.1, 0.2, 0.3)
KINDS = ("bit_flips", "truncation", "zip_field", "header_number", "header_type", "header_key", "header_text",
         "blob_bit_flips", "blob_truncation", "npy_length")
_INFLATED = (2 ** 31, 2 ** 40, 2 ** 62, -1)
_ZIP_FIELDS = {b"PK\x03\x04": (18, 22, 26, 28), b"PK\x01\x02": (20, 24, 28, 30, 42), b"PK\x05\x06": (8, 10, 12, 16)}


def tiny_bank_file(path):
    """Write the nested bank (see the module's docstring) to `path`; returns its tickets."""
    from rst_tf.search import nested
    from rst_tf.training import build
    from rst_tf.training.config import SearchConfig

    config = SearchConfig(network="resnet18", width_multiplier=1 / 16, nested_ratios=RATIOS, seed=0).resolved()
    network = build.build_network(config, 10, (32, 32, 3))
    found = nested.tickets_of(network, config.ticket_ratios(), task=config.dataset)
    spec = artifact.network_spec(dataclasses.asdict(config), 10, (32, 32, 3))
    artifact.write(path, {config.dataset: spec}, found, {config.dataset: network})
    return found


def _members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _npy(payload, declared=None):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (len(payload) if declared is None else declared,)})
    return buffer.getvalue() + payload


def _payload(member):
    stream = io.BytesIO(member)
    np.lib.format.read_magic(stream)
    np.lib.format.read_array_header_1_0(stream)
    return member[stream.tell():]


def _zip(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, member in members.items():
            archive.writestr(name, member)
    return buffer.getvalue()


def _leaves(value, where=()):
    """(path, value) of every number, string, bool or null in a JSON value, and of every list and dict too."""
    yield where, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, where + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, where + (index,))


def _set(root, where, value):
    target = root
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value


def _flip_bits(data, rng, at_most=8):
    data = bytearray(data)
    for _ in range(int(rng.integers(1, at_most + 1))):
        if data:
            data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    return bytes(data)


def mutate(data, kind, rng):
    """The bytes of `data` (a `.rst` file) after one mutation of `kind`, drawn from `rng`."""
    if kind == "bit_flips":
        return _flip_bits(data, rng)
    if kind == "truncation":
        return data[:int(rng.integers(len(data)))]
    if kind == "zip_field":
        starts = [(offset, signature) for signature in _ZIP_FIELDS for offset in range(len(data))
                  if data.startswith(signature, offset)]
        offset, signature = starts[int(rng.integers(len(starts)))]
        field = offset + _ZIP_FIELDS[signature][int(rng.integers(len(_ZIP_FIELDS[signature])))]
        width = 2 if signature == b"PK\x05\x06" and field - offset in (8, 10) or field - offset in (26, 28, 30) else 4
        value = min(int(rng.choice([2 ** (8 * width) - 1, 2 ** (8 * width - 1), len(data) * 7, 0])),
                    2 ** (8 * width) - 1)
        return data[:field] + value.to_bytes(width, "little") + data[field + width:]
    members = _members(data)
    if kind == "npy_length":
        name = sorted(members)[int(rng.integers(len(members)))]
        payload = _payload(members[name])
        members[name] = _npy(payload, int(rng.choice([len(payload) * 1000 + 1, 2 ** 40, 2 ** 62])))
        return _zip(members)
    if kind in ("blob_bit_flips", "blob_truncation"):
        name = ("quotients.npy", "remainders.npy", "statistics.npy")[int(rng.integers(3))]
        payload = _payload(members[name])
        payload = _flip_bits(payload, rng) if kind == "blob_bit_flips" else payload[:int(rng.integers(len(payload)))]
        members[name] = _npy(payload)
        return _zip(members)
    text = _payload(members["header.npy"])
    if kind == "header_text":
        members["header.npy"] = _npy(_flip_bits(text, rng))
        return _zip(members)
    header = json.loads(text.decode())
    mutated = copy.deepcopy(header)
    leaves = [(where, value) for where, value in _leaves(header) if where]
    if kind == "header_number":
        numbers = [(where, value) for where, value in leaves
                   if isinstance(value, (int, float)) and not isinstance(value, bool)]
        where, value = numbers[int(rng.integers(len(numbers)))]
        choices = [value * 1000 + 7, -value - 1, value + 1, value - 1, *_INFLATED]
        _set(mutated, where, choices[int(rng.integers(len(choices)))])
    elif kind == "header_type":
        where, value = leaves[int(rng.integers(len(leaves)))]
        choices = [None, "x", [], {}, True, 1.5, [value], {"value": value}]
        _set(mutated, where, choices[int(rng.integers(len(choices)))])
    elif kind == "header_key":
        keyed = [(where, value) for where, value in leaves if isinstance(where[-1], str)]
        where, _ = keyed[int(rng.integers(len(keyed)))]
        target = mutated
        for key in where[:-1]:
            target = target[key]
        del target[where[-1]]
    else:
        raise ValueError(f"unknown mutation {kind!r}")
    members["header.npy"] = _npy(json.dumps(mutated).encode())
    return _zip(members)


class _TooLong(Exception):
    pass


def _same(found, expected):
    if [(t.name, t.task, t.remaining_ratio) for t in found] != [(t.name, t.task, t.remaining_ratio) for t in expected]:
        return False
    for ours, theirs in zip(found, expected):
        if set(ours.masks) != set(theirs.masks) or set(ours.statistics) != set(theirs.statistics):
            return False
        if not all(np.array_equal(ours.masks[name], theirs.masks[name]) for name in theirs.masks):
            return False
        if not all(np.array_equal(a, b, equal_nan=True) for name in theirs.statistics
                   for a, b in zip(ours.statistics[name], theirs.statistics[name])):
            return False
    return True


def outcome(path, expected, time_limit=60.0):
    """(outcome, detail) of reading `path` as the deployment does: "error" (a BankFileError naming the file),
    "valid_same" or "valid_changed" (banks built; tickets equal to `expected` or not), "crash" (any other
    exception) or "hang" (longer than `time_limit` seconds)."""
    def too_long(*_):
        raise _TooLong()

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        banks, _ = tickets.from_artifact(path)
        found = [ticket for bank in banks.values() for ticket in bank.tickets]
        return ("valid_same" if _same(found, expected) else "valid_changed"), ""
    except artifact.BankFileError as error:
        message = str(error)
        return ("error" if message.startswith(path) and "\n" not in message else "crash"), message
    except _TooLong:
        return "hang", f"over {time_limit} s"
    except Exception as error:  # noqa: BLE001 (what the fuzzer looks for)
        return "crash", f"{type(error).__name__}: {error}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run(mutations, seed, time_limit, folder):
    """Mutate the tiny bank `mutations` times (kinds in turn) and read each; the outcomes and their costs."""
    original = os.path.join(folder, "bank.rst")
    expected = tiny_bank_file(original)
    with open(original, "rb") as handle:
        data = handle.read()
    rng = np.random.default_rng(seed)
    path = os.path.join(folder, "mutated.rst")
    rows = []
    tracemalloc.start()
    for index in range(mutations):
        kind = KINDS[index % len(KINDS)]
        with open(path, "wb") as handle:
            handle.write(mutate(data, kind, rng))
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        began = time.perf_counter()
        result, detail = outcome(path, expected, time_limit)
        rows.append({"kind": kind, "outcome": result, "detail": detail.replace(path, "FILE")[:300],
                     "seconds": time.perf_counter() - began,
                     "peak_python_bytes": tracemalloc.get_traced_memory()[1] - before})
        if (index + 1) % 100 == 0 or index + 1 == mutations:
            counts = collections.Counter(row["outcome"] for row in rows)
            print(f"{index + 1}/{mutations} mutations: {dict(counts)}", file=sys.stderr, flush=True)
    tracemalloc.stop()
    return len(data), rows


def error_kind(message):
    """What an error names, without indices: "container: BadZipFile", "tickets[].masks[].count", ..."""
    reason = message.partition("(")[2]
    if message.startswith("FILE is not a .rst ticket bank ("):
        return "container: " + reason.split(":")[0].split(" (")[0].rstrip(")")
    if " is not a version-" in message:
        return "header format or version"
    if "the weights rebuilt" in message:
        return "weights digest"
    if "network spec cannot be built" in message:
        return "network spec"
    if reason.startswith("its "):
        return f"{reason.split()[1]} array length"
    if "is coded on ticket" in message:
        return "tickets[].masks[].added_to"
    field = re.sub(r"\[\d+\]", "[]", reason.split(" ")[0].rstrip(","))
    return field + (": mask code" if "corrupt mask code" in message else "")


def summary(file_bytes, rows):
    by_kind = collections.defaultdict(collections.Counter)
    for row in rows:
        by_kind[row["kind"]][row["outcome"]] += 1
    errors = collections.Counter(error_kind(row["detail"]) for row in rows if row["outcome"] == "error")
    return {
        "file_bytes": file_bytes, "mutations": len(rows),
        "outcomes": dict(collections.Counter(row["outcome"] for row in rows)),
        "outcomes_by_mutation": {kind: dict(counts) for kind, counts in by_kind.items()},
        "error_fields": dict(errors.most_common()),
        "slowest_read_seconds": max(row["seconds"] for row in rows),
        "median_read_seconds": float(np.median([row["seconds"] for row in rows])),
        "largest_python_allocation_bytes": max(row["peak_python_bytes"] for row in rows),
        "failures": [row for row in rows if row["outcome"] in ("crash", "hang")],
        "error_examples": sorted({row["detail"] for row in rows if row["outcome"] == "error"})[:25],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mutations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time_limit", type=float, default=60.0, help="seconds a read may take before it counts "
                        "as a hang")
    args = parser.parse_args()
    from bench import common

    began = time.time()
    with tempfile.TemporaryDirectory() as folder:
        file_bytes, rows = run(args.mutations, args.seed, args.time_limit, folder)
    results = {"what": "seeded mutations of a nested .rst bank (3 tickets, CIFAR ResNet18 at width 1/16), each read "
                       "by tickets.from_artifact", "seed": args.seed, "kinds": list(KINDS),
               **summary(file_bytes, rows), "wall_seconds": time.time() - began}
    print(common.write_results("fuzz_rst", results))
    print(json.dumps({key: results[key] for key in ("outcomes", "outcomes_by_mutation", "slowest_read_seconds",
                                                    "largest_python_allocation_bytes")}, indent=1))
    if results["failures"]:
        print(f"{len(results['failures'])} crashes or hangs: see docs/fuzz_rst.json", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
