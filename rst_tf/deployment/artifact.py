"""The compact `.rst` artifact: how to rebuild the random network (name, shape, init method, seed) plus tickets
(entropy-coded masks and BatchNorm statistics), without a single weight.

Weights are drawn again from the seed with stateless Philox, which gives the same bits on any machine; the file
holds a SHA-256 of the kernels and `read` refuses a rebuild that differs. Tasks (e.g. two datasets) share the
network and differ in their classifier head and tickets. A layer's mask that holds the mask of the task's previous
ticket (nested tickets) is coded as the positions it adds to it when that is smaller (`mask_codec.encode_added`);
such files are version 2, others version 1, and `read` takes both.

`read` trusts nothing in a file: every declared length, count and shape is checked against the file's size, the
other fields and the rebuilt network's layers before anything is allocated, so a damaged or forged file gives one
`BankFileError` (a ValueError naming the file and the field) and never a crash, a hang or an unbounded allocation.

    write("bank.rst", {"cifar10": spec}, tickets)      # spec: see `network_spec`
    specs, tickets = read("bank.rst")
    network = build_network(specs["cifar10"])
"""
import hashlib
import io
import json
import math
import os
import struct
import zipfile
import zlib

import numpy as np

from rst_tf import networks
from rst_tf.deployment import mask_codec
from rst_tf.method import layers
from rst_tf.method.ticket import Ticket

FORMAT = "rst-tf ticket bank"
VERSION = 1
NESTED_VERSION = 2  # some mask is coded as the positions it adds to a previous ticket's ("added_to")
_SPEC_FIELDS = ("network", "num_classes", "input_shape", "dataset", "remaining_ratio", "sparsity", "weight_init",
                "seed", "scale_fan", "width_multiplier", "dense_first_conv", "dense_classifier")
_OPTIONAL_SPEC_FIELDS = ("class_subset",)  # recorded, so that an evaluation loads the task's classes
_STREAMS = ("quotients", "remainders", "statistics")
# The largest network a file may describe (it is rebuilt before its masks are checked against it) and, when `read`
# rebuilds none (verify=False), the most mask entries a file may declare in all.
SPEC_LIMITS = {"num_classes": 100_000, "image_side": 1024, "channels": 16, "width_multiplier": 4.0}
MAX_MASK_ENTRIES = 1 << 30


class BankFileError(ValueError):
    """A file that is not a readable `.rst` ticket bank; the message names the file and what is wrong in it."""


def network_spec(config, num_classes, input_shape):
    """What rebuilds a search run's random network: `config` is a dict of search-config fields."""
    spec = {field: config[field] for field in _SPEC_FIELDS + _OPTIONAL_SPEC_FIELDS if field in config}
    if "class_subset" in spec:
        spec["class_subset"] = [int(label) for label in spec["class_subset"]]
    spec.update(num_classes=int(num_classes), input_shape=[int(d) for d in input_shape])
    missing = [field for field in _SPEC_FIELDS if field not in spec]
    if missing:
        raise ValueError(f"network config lacks {missing}")
    return spec


def build_network(spec):
    """The random network of `spec` (weights from its seed), built."""
    network = networks.build(
        spec["network"], num_classes=spec["num_classes"], input_shape=tuple(spec["input_shape"]),
        dataset=spec["dataset"], remaining_ratio=spec["remaining_ratio"], sparsity=spec["sparsity"],
        weight_init=spec["weight_init"], seed=spec["seed"], scale_fan=spec["scale_fan"],
        width_multiplier=spec["width_multiplier"], dense_first_conv=spec["dense_first_conv"],
        dense_classifier=spec["dense_classifier"])
    return network


def weights_digest(network):
    """SHA-256 over every masked layer's kernel bits, in layer order."""
    digest = hashlib.sha256()
    for layer in layers.masked_layers(network):
        digest.update(layer.name.encode())
        digest.update(np.ascontiguousarray(layer.kernel.numpy(), np.float32).tobytes())
    return digest.hexdigest()


def write(path, specs_by_task, tickets, networks_by_task=None, nested_coding=True):
    """Write tickets and the specs of their tasks' networks to `path` (atomically).

    Each task's network is rebuilt from its spec and a digest of its weights stored; `networks_by_task`
    (optional) are the networks the tickets were found on, which must have exactly those weights. With
    `nested_coding`, a mask holding the same layer's mask of the task's previous ticket is coded as the positions it
    adds when that is smaller.
    """
    missing = sorted({ticket.task for ticket in tickets} - set(specs_by_task))
    if missing:
        raise ValueError(f"tickets of task(s) {missing} have no network spec")
    header = {"format": FORMAT, "version": VERSION, "tasks": {}, "tickets": []}
    arrays = {}
    for task, spec in specs_by_task.items():
        digest = weights_digest(build_network(spec))
        found_on = (networks_by_task or {}).get(task)
        if found_on is not None and weights_digest(found_on) != digest:
            raise ValueError(f"task {task!r}: its tickets were found on weights that its seed does not rebuild "
                             "(trained weights, as in an RTT); a .rst file can only hold tickets of random weights")
        header["tasks"][task] = {"spec": spec, "weights_sha256": digest}
    streams = {"quotients": [], "remainders": [], "statistics": []}  # one blob each: no per-array zip overhead
    offsets = {name: 0 for name in streams}

    def append(stream, data):
        streams[stream].append(data)
        start, offsets[stream] = offsets[stream], offsets[stream] + len(data)
        return [start, len(data)]

    previous_by_task = {}  # task -> (index in the file, masks) of its latest ticket
    for index, ticket in enumerate(tickets):
        entry = {"name": ticket.name, "task": ticket.task, "remaining_ratio": ticket.remaining_ratio,
                 "masks": [], "statistics": []}
        previous_index, previous_masks = previous_by_task.get(ticket.task, (None, {}))
        for layer_name, mask in ticket.masks.items():
            encoded, record = mask_codec.encode(mask), {"layer": layer_name, "shape": list(mask.shape)}
            base = previous_masks.get(layer_name)
            if nested_coding and base is not None and _inside(base, mask):
                added = mask_codec.encode_added(mask, base)
                if added.num_bytes < encoded.num_bytes:
                    encoded, record["added_to"] = added, previous_index
                    header["version"] = NESTED_VERSION
            record.update(size=encoded.size, symbol=encoded.symbol, count=encoded.count,
                          rice_bits=encoded.rice_bits, quotient_bits=encoded.quotient_bits,
                          quotients=append("quotients", encoded.quotients),
                          remainders=append("remainders", encoded.remainders))
            entry["masks"].append(record)
        previous_by_task[ticket.task] = (index, ticket.masks)
        for layer_name, (mean, variance) in ticket.statistics.items():
            values = np.stack([mean, variance]).astype("<f4")
            entry["statistics"].append({"layer": layer_name, "shape": list(values.shape),
                                        "bytes": append("statistics", values.tobytes())})
        header["tickets"].append(entry)
    arrays.update({name: np.frombuffer(b"".join(parts), np.uint8) for name, parts in streams.items()})
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(buffer.getvalue())
    os.replace(temporary, path)


def read(path, verify=True):
    """(specs_by_task, tickets) from a `.rst` file. With `verify`, rebuild every task's network from its seed, raise
    if its weights differ from the ones the tickets were found on, and check every mask and statistics record
    against its layers. Raises `BankFileError` for anything else wrong in the file."""
    header, blobs = _read_archive(path)
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get(
            "version") not in (VERSION, NESTED_VERSION):
        raise BankFileError(f"{path} is not a version-{VERSION} or -{NESTED_VERSION} .rst ticket bank")
    check = _Checker(path)
    tasks = check.of(header, "tasks", dict, "header")
    specs = {}
    for task, value in tasks.items():
        specs[task] = check.spec(check.of(value, "spec", dict, f"tasks[{task!r}]"), f"tasks[{task!r}].spec")
        check.of(value, "weights_sha256", str, f"tasks[{task!r}]")
    entries = check.of(header, "tickets", list, "header")
    for index, entry in enumerate(entries):
        check.ticket(entry, index, tasks, blobs)
    shapes_by_task = {}
    if verify:
        for task, value in tasks.items():
            network = check.rebuilt(task, specs[task])
            if weights_digest(network) != value["weights_sha256"]:
                raise BankFileError(f"{path}: the weights rebuilt from task {task!r}'s seed differ from the ones "
                                    "its tickets were found on")
            shapes_by_task[task] = _layer_shapes(network)
        for index, entry in enumerate(entries):
            check.against_network(entry, index, *shapes_by_task[entry["task"]])
    else:
        entries_declared = sum(math.prod(code["shape"]) for entry in entries for code in entry["masks"])
        if entries_declared > MAX_MASK_ENTRIES:
            raise BankFileError(f"{path}: corrupt .rst ticket bank (masks of {entries_declared} entries in all, more "
                                f"than the {MAX_MASK_ENTRIES} a file may hold)")

    def piece(stream, span):
        return blobs[stream][span[0]:span[0] + span[1]]

    tickets = []
    for index, entry in enumerate(entries):
        masks = {}
        for number, code in enumerate(entry["masks"]):
            encoded = mask_codec.EncodedMask(
                size=code["size"], symbol=code["symbol"], count=code["count"], rice_bits=code["rice_bits"],
                quotient_bits=code["quotient_bits"], quotients=piece("quotients", code["quotients"]),
                remainders=piece("remainders", code["remainders"]))
            try:
                if "added_to" in code:
                    masks[code["layer"]] = mask_codec.decode_added(encoded, _base_mask(tickets, index, code, path))
                else:
                    masks[code["layer"]] = mask_codec.decode(encoded, tuple(code["shape"]))
            except BankFileError:
                raise
            except ValueError as error:
                raise BankFileError(f"{path}: corrupt .rst ticket bank (tickets[{index}].masks[{number}], layer "
                                    f"{code['layer']!r}: {error})") from None
        statistics = {}
        for record in entry["statistics"]:
            values = np.frombuffer(piece("statistics", record["bytes"]), "<f4").reshape(record["shape"])
            statistics[record["layer"]] = (values[0].astype(np.float32), values[1].astype(np.float32))
        tickets.append(Ticket(name=entry["name"], remaining_ratio=entry["remaining_ratio"], masks=masks,
                              statistics=statistics, task=entry["task"]))
    return specs, tickets


def _read_archive(path):
    """(header, blobs by stream) from the file's zip of .npy arrays, each checked against the file's size before it
    is read."""
    try:
        file_size = os.path.getsize(path)
        with zipfile.ZipFile(path) as archive:
            arrays = {}
            for name in ("header",) + _STREAMS:
                try:
                    info = archive.getinfo(f"{name}.npy")
                except KeyError:
                    raise BankFileError(f"{path} is not a .rst ticket bank (it has no {name} array)") from None
                if max(info.file_size, info.compress_size) > file_size:
                    raise BankFileError(f"{path}: corrupt .rst ticket bank (its {name} array declares "
                                        f"{info.file_size} bytes in a file of {file_size})")
                arrays[name] = _bytes_array(path, name, archive.read(info))
        header = json.loads(arrays.pop("header").decode())
    except BankFileError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
            ValueError, struct.error, zlib.error, OverflowError, RecursionError) as error:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise BankFileError(f"{path} is not a .rst ticket bank ({reason})") from None
    return header, arrays


def _bytes_array(path, name, data):
    """The bytes of a one-dimensional uint8 .npy array, whose declared length must be what `data` holds."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise BankFileError(f"{path}: corrupt .rst ticket bank (its {name} array has .npy version {version})")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    offset = stream.tell()
    if dtype != np.uint8 or len(shape) != 1 or shape[0] != len(data) - offset:
        raise BankFileError(f"{path}: corrupt .rst ticket bank (its {name} array declares {dtype} {shape}; the "
                            f"file holds {len(data) - offset} bytes of it)")
    return data[offset:]


def _layer_shapes(network):
    """({masked layer: score shape}, {BatchNorm layer: [2, channels]}) of `network`."""
    masked = {layer.name: list(layer.scores.shape) for layer in layers.masked_layers(network)}
    norms = {layer.name: [2, int(layer.moving_mean.shape[0])] for layer in layers.batch_norm_layers(network)}
    return masked, norms


class _Checker:
    """Checks a `.rst` header's fields; each failure is one BankFileError naming the file and the field."""

    def __init__(self, path):
        self.path = path

    def fail(self, where, what):
        raise BankFileError(f"{self.path}: corrupt .rst ticket bank ({where} {what})")

    def of(self, record, key, kind, where):
        """record[key], which must be of `kind` (int: not bool; float: int or float, finite)."""
        if not isinstance(record, dict) or key not in record:
            self.fail(where, f"lacks {key!r}")
        value = record[key]
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            self.fail(f"{where}.{key}", f"is {type(value).__name__} {_short(value)}, not {kind.__name__}")
        return value

    def count(self, record, key, where, low=0, high=None):
        value = self.of(record, key, int, where)
        if value < low or (high is not None and value > high):
            self.fail(f"{where}.{key}", f"is {value}, outside [{low}, {high if high is not None else 'inf'}]")
        return value

    def shape(self, record, key, where, rank=None):
        shape = self.of(record, key, list, where)
        if not (0 < len(shape) <= 8) or (rank is not None and len(shape) != rank) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            self.fail(f"{where}.{key}", f"{_short(shape)} is not a shape")
        return shape

    def span(self, record, key, where, blob):
        span = self.of(record, key, list, where)
        if len(span) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in span) or (
                span[0] + span[1] > len(blob)):
            self.fail(f"{where}.{key}", f"{_short(span)} is not a [start, length] within the {len(blob)} bytes")
        return span

    def spec(self, spec, where):
        """The spec, its fields of the right kind and within SPEC_LIMITS (it says how large a network to build)."""
        for key in ("network", "dataset", "sparsity", "weight_init"):
            self.of(spec, key, str, where)
        for key in ("scale_fan", "dense_first_conv", "dense_classifier"):
            self.of(spec, key, bool, where)
        self.count(spec, "num_classes", where, 1, SPEC_LIMITS["num_classes"])
        self.of(spec, "seed", int, where)
        shape = self.shape(spec, "input_shape", where, rank=3)
        if not (all(1 <= side <= SPEC_LIMITS["image_side"] for side in shape[:2])
                and 1 <= shape[2] <= SPEC_LIMITS["channels"]):
            self.fail(f"{where}.input_shape", f"{shape} is outside the limits {SPEC_LIMITS}")
        for key, high in (("remaining_ratio", 1.0), ("width_multiplier", SPEC_LIMITS["width_multiplier"])):
            value = self.of(spec, key, float, where)
            if not 0 < value <= high:
                self.fail(f"{where}.{key}", f"is {value}, outside (0, {high}]")
        if "class_subset" in spec:
            subset = self.of(spec, "class_subset", list, where)
            if not all(isinstance(label, int) and not isinstance(label, bool) for label in subset):
                self.fail(f"{where}.class_subset", "holds a value that is not a class index")
        return spec

    def ticket(self, entry, index, tasks, blobs):
        where = f"tickets[{index}]"
        self.of(entry, "name", str, where)
        if self.of(entry, "task", str, where) not in tasks:
            self.fail(f"{where}.task", f"{entry['task']!r} is not one of the file's tasks")
        ratio = self.of(entry, "remaining_ratio", float, where)
        if not 0 < ratio <= 1:
            self.fail(f"{where}.remaining_ratio", f"is {ratio}, outside (0, 1]")
        for kind, records in (("masks", self.of(entry, "masks", list, where)),
                              ("statistics", self.of(entry, "statistics", list, where))):
            names = [self.of(record, "layer", str, f"{where}.{kind}[{number}]")
                     for number, record in enumerate(records)]
            if len(set(names)) != len(names):
                self.fail(f"{where}.{kind}", "names a layer twice")
        for number, code in enumerate(entry["masks"]):
            self.mask(code, f"{where}.masks[{number}]", blobs)
        for number, record in enumerate(entry["statistics"]):
            at = f"{where}.statistics[{number}]"
            shape = self.shape(record, "shape", at, rank=2)
            span = self.span(record, "bytes", at, blobs["statistics"])
            if shape[0] != 2 or span[1] != 4 * shape[0] * shape[1]:
                self.fail(at, f"shape {shape} does not match its {span[1]} bytes")

    def mask(self, code, where, blobs):
        shape = self.shape(code, "shape", where)
        entries = math.prod(shape)
        size = self.count(code, "size", where, 0, entries)
        if "added_to" in code:
            self.of(code, "added_to", int, where)
        elif size != entries:
            self.fail(f"{where}.size", f"is {size}; shape {shape} has {entries} entries")
        self.count(code, "symbol", where, 0, 1)
        count = self.count(code, "count", where, 0, size)
        rice_bits = self.count(code, "rice_bits", where, 0, mask_codec.MAX_RICE_BITS - 1)
        quotients = self.span(code, "quotients", where, blobs["quotients"])
        remainders = self.span(code, "remainders", where, blobs["remainders"])
        self.count(code, "quotient_bits", where, count, 8 * quotients[1])
        if count * rice_bits > 8 * remainders[1]:
            self.fail(where, f"codes {count} remainders of {rice_bits} bits in {remainders[1]} bytes")

    def rebuilt(self, task, spec):
        try:
            return build_network(spec)
        except (ValueError, TypeError, KeyError) as error:
            raise BankFileError(f"{self.path}: task {task!r}'s network spec cannot be built ({error})") from None

    def against_network(self, entry, index, masked, norms):
        """Every mask and statistics record of ticket `index` names a layer of its task's network, in its shape, and
        every BatchNorm layer has statistics."""
        for kind, records, layer_shapes in (("masks", entry["masks"], masked),
                                            ("statistics", entry["statistics"], norms)):
            for number, record in enumerate(records):
                expected = layer_shapes.get(record["layer"])
                if expected != record["shape"]:
                    self.fail(f"tickets[{index}].{kind}[{number}]",
                              f"gives layer {record['layer']!r} shape {record['shape']}; the network's is {expected}")
        missing = sorted(set(norms) - {record["layer"] for record in entry["statistics"]})
        if missing:
            self.fail(f"tickets[{index}].statistics", f"lacks BatchNorm layer(s) {missing[:3]}")


def _short(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _inside(base, mask):
    """Whether boolean `base` is inside `mask` (same shape, no entry of `base` outside `mask`)."""
    base, mask = np.asarray(base, bool), np.asarray(mask, bool)
    return base.shape == mask.shape and not np.any(base & ~mask)


def _base_mask(tickets, index, code, path):
    """The already decoded mask that `code` (of ticket `index`) adds positions to."""
    base_index = code["added_to"]
    if not (isinstance(base_index, int) and 0 <= base_index < index
            and code["layer"] in tickets[base_index].masks
            and list(tickets[base_index].masks[code["layer"]].shape) == list(code["shape"])):
        raise BankFileError(f"{path}: corrupt .rst ticket bank (ticket {index}, layer {code['layer']} is coded on "
                         f"ticket {base_index!r})")
    return tickets[base_index].masks[code["layer"]]
