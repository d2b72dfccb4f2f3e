"""Starting a run from another run's weights (`config.init_from`).

`finetune` adversarially trains the kernel of a found RST under its fixed mask (paper §5.1), starting from the RST's
own random kernel (`inherited`) or a fresh one drawn with `finetune_init` (`reinit`); `rst` over a `dense_at` /
`natural` run searches a mask in trained weights, a robust trained ticket (RTT, §5.2), whose classifier is drawn
afresh for another task or when `reinit_classifier` is set (§6.3).
"""
from rst_tf.method import layers
from rst_tf.training import build, run_dir

# The fields that fix a network's layers and masks: a fine-tune must share all of them with its RST.
_TICKET_FIELDS = ("dataset", "class_subset", "network", "width_multiplier", "remaining_ratio", "sparsity",
                  "weight_init", "scale_fan", "dense_first_conv", "dense_classifier", "topk_scope")
# An RTT may change the masking and the task, not the trained layers it searches in.
_TRAINED_NETWORK_FIELDS = ("network", "width_multiplier")
CLASSIFIER = "classifier"


def initial_network(config, num_classes, image_shape):
    """The network a run starts from: `build.build_network`, then given `config.init_from`'s weights when set.

    finetune: the RST's scores (so its mask) and, when `inherited`, every other weight of it (kernels, BatchNorm
    statistics); `reinit` keeps the fresh kernel drawn with `finetune_init` from `reinit_seed`. rst (RTT): the trained
    network's kernels and BatchNorm statistics with this run's fresh scores; the classifier keeps its fresh kernel
    when the task (dataset, class subset, number of classes) differs or `reinit_classifier` is set (a transferred
    RTT). Raises ValueError naming what does not fit.
    """
    network = build.build_network(config, num_classes, image_shape)
    if not config.init_from:
        return network
    check_init_from(config)
    try:
        source, source_config = run_dir.load_run(config.init_from, config.init_checkpoint)
    except ValueError as error:
        raise ValueError(f"init_from {error}") from error
    source_classes = int(source.output_shape[-1])
    finetune = config.mode == "finetune"
    if finetune and source_classes != num_classes:
        raise ValueError(f"init_from {config.init_from} has {source_classes} classes, this run {num_classes}")
    other_task = (source_config.dataset, source_config.class_subset) != (config.dataset, config.class_subset)
    fresh_classifier = not finetune and (config.reinit_classifier or other_task or source_classes != num_classes)
    masked = {id(layer) for layer in layers.masked_layers(network)}
    for layer, source_layer in _layer_pairs(network, source, config.init_from):
        if id(layer) not in masked:  # BatchNorm statistics
            if not finetune or config.finetune_weights == "inherited":
                _copy_weights(layer.weights, source_layer.weights, config.init_from)
        elif finetune:
            _copy_weights([layer.scores], [source_layer.scores], config.init_from)
            if config.finetune_weights == "inherited":
                _copy_weights([layer.kernel], [source_layer.kernel], config.init_from)
        elif not (layer.name == CLASSIFIER and fresh_classifier):
            _copy_weights([layer.kernel], [source_layer.kernel], config.init_from)
    return network


def check_init_from(config):
    """Raise ValueError (one line naming init_from) unless `config.init_from` holds a run this run can start from.

    A fine-tune needs an `rst` run with the same network, task and masking; an RTT (`rst`) a `dense_at` or
    `natural` run of the same network and width.
    """
    if not config.init_from:
        return
    source_config = run_dir.read_config(config.init_from, "init_from ")
    if config.mode == "finetune":
        wanted, fields = ("rst",), _TICKET_FIELDS
    else:
        wanted, fields = ("dense_at", "natural"), _TRAINED_NETWORK_FIELDS
    if source_config.nested_ratios:
        raise ValueError(f"init_from {config.init_from} is a nested search (nested_ratios "
                         f"{','.join(f'{r:g}' for r in source_config.nested_ratios)}); a run starts from a run of one "
                         "remaining ratio")
    if source_config.mode not in wanted:
        raise ValueError(f"init_from {config.init_from} is a mode {source_config.mode} run; mode {config.mode} "
                         f"starts from a run of mode {' or '.join(wanted)}")
    for field in fields:
        ours, theirs = getattr(config, field), getattr(source_config, field)
        if ours != theirs:
            raise ValueError(f"init_from {config.init_from} has {field} {theirs!r}, this run {ours!r}")
    if config.reinit_finetune() and config.weight_seed() == source_config.seed:
        raise ValueError(f"reinit_seed {config.weight_seed()} is the seed of init_from {config.init_from}: "
                         "the fresh kernel would be its kernel")


def _layer_pairs(network, source, source_dir):
    """(layer, layer of the same name in `source`) for every layer of `network` that holds weights."""
    source_layers = {layer.name: layer for layer in source.layers}
    for layer in network.layers:
        if not layer.weights:
            continue
        if layer.name not in source_layers:
            raise ValueError(f"init_from {source_dir} has no layer {layer.name}")
        yield layer, source_layers[layer.name]


def _copy_weights(variables, source_variables, source_dir):
    for variable, source_variable in zip(variables, source_variables, strict=True):
        if tuple(variable.shape) != tuple(source_variable.shape):
            raise ValueError(f"init_from {source_dir}: {source_variable.path} has shape "
                             f"{tuple(source_variable.shape)}, this run's {tuple(variable.shape)}")
        variable.assign(source_variable)
