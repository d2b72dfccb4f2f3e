"""The compact `.rst` artifact: how to rebuild the random network (name, shape, init method, seed) plus tickets
(entropy-coded masks and BatchNorm statistics), without a single weight.

Weights are drawn again from the seed with stateless Philox, which gives the same bits on any machine; the file
holds a SHA-256 of the kernels and `read` refuses a rebuild that differs. Tasks (e.g. two datasets) share the
network and differ in their classifier head and tickets. A layer's mask that holds the mask of the task's previous
ticket (nested tickets) is coded as the positions it adds to it when that is smaller (`mask_codec.encode_added`);
such files are version 2, others version 1, and `read` takes both.

    write("bank.rst", {"cifar10": spec}, tickets)      # spec: see `network_spec`
    specs, tickets = read("bank.rst")
    network = build_network(specs["cifar10"])
"""
import hashlib
import io
import json
import os

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
    """(specs_by_task, tickets) from a `.rst` file. With `verify`, rebuild every task's network from its seed and
    raise ValueError if its weights differ from the ones the tickets were found on."""
    try:
        archive = np.load(path, allow_pickle=False)
        header = json.loads(archive["header"].tobytes().decode())
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path} is not a .rst ticket bank ({error})") from None
    if header.get("format") != FORMAT or header.get("version") not in (VERSION, NESTED_VERSION):
        raise ValueError(f"{path} is not a version-{VERSION} or -{NESTED_VERSION} .rst ticket bank")
    specs = {task: value["spec"] for task, value in header["tasks"].items()}
    if verify:
        for task, value in header["tasks"].items():
            if weights_digest(build_network(value["spec"])) != value["weights_sha256"]:
                raise ValueError(f"{path}: the weights rebuilt from task {task!r}'s seed differ from the ones its "
                                 "tickets were found on")
    blobs = {name: archive[name].tobytes() for name in ("quotients", "remainders", "statistics")}

    def piece(stream, span):
        return blobs[stream][span[0]:span[0] + span[1]]

    tickets = []
    for index, entry in enumerate(header["tickets"]):
        masks = {}
        for code in entry["masks"]:
            encoded = mask_codec.EncodedMask(
                size=code["size"], symbol=code["symbol"], count=code["count"], rice_bits=code["rice_bits"],
                quotient_bits=code["quotient_bits"], quotients=piece("quotients", code["quotients"]),
                remainders=piece("remainders", code["remainders"]))
            if "added_to" in code:
                masks[code["layer"]] = mask_codec.decode_added(encoded, _base_mask(tickets, index, code, path))
            else:
                masks[code["layer"]] = mask_codec.decode(encoded, tuple(code["shape"]))
        statistics = {}
        for record in entry["statistics"]:
            values = np.frombuffer(piece("statistics", record["bytes"]), "<f4").reshape(record["shape"])
            statistics[record["layer"]] = (values[0].astype(np.float32), values[1].astype(np.float32))
        tickets.append(Ticket(name=entry["name"], remaining_ratio=entry["remaining_ratio"], masks=masks,
                              statistics=statistics, task=entry["task"]))
    return specs, tickets


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
        raise ValueError(f"{path}: corrupt .rst ticket bank (ticket {index}, layer {code['layer']} is coded on "
                         f"ticket {base_index!r})")
    return tickets[base_index].masks[code["layer"]]
