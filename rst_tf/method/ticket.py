"""A ticket: what a search adds to the random network, a binary mask per masked layer and the BatchNorm statistics
the masked network collected. Searches make tickets (`rst_tf.search.nested`), R2S banks and `.rst` artifacts hold
them (`rst_tf.deployment`)."""
import dataclasses

from rst_tf.method import layers


@dataclasses.dataclass(frozen=True, eq=False)
class Ticket:
    """The masks (layer name -> boolean array in the layer's score shape) and BatchNorm statistics
    (layer name -> (mean, variance)) of one searched subnetwork."""
    name: str
    remaining_ratio: float
    masks: dict
    statistics: dict
    task: str = "default"


def ticket_of(network, name, task="default"):
    """The ticket `network` holds now: its current masks and BatchNorm moving statistics."""
    masked = [layer for layer in layers.masked_layers(network) if layer.remaining_ratio < 1.0]
    if not masked:
        raise ValueError(f"ticket {name!r}: the network has no masked layer (remaining ratio 1 everywhere)")
    ratios = sorted({layer.remaining_ratio for layer in masked})
    if len(ratios) != 1:
        raise ValueError(f"ticket {name!r}: masked layers keep different ratios {ratios}")
    masks = {layer.name: mask.numpy().astype(bool) for layer, mask in layers.current_masks(network).items()}
    statistics = {layer.name: (layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy())
                  for layer in layers.batch_norm_layers(network)}
    return Ticket(name=name, remaining_ratio=ratios[0], masks=masks, statistics=statistics, task=task)
