"""Mask banks from search runs or from a `.rst` file: tickets grouped by task, each task's network built once.

A task is a dataset (plus its class subset): tickets of one task can replace one another (R2S); tasks share the
random network and differ in their classifier head.
"""
import dataclasses

from rst_tf.deployment import artifact, r2s
from rst_tf.method.ticket import ticket_of
from rst_tf.search import nested
from rst_tf.training import run_dir as run_files


def task_name(config):
    """The task a run's tickets serve: its dataset, and its class subset if it has one."""
    subset = getattr(config, "class_subset", None)
    if subset:
        return f"{config.dataset}_classes_" + "_".join(str(label) for label in subset)
    return config.dataset


def from_runs(run_dirs, checkpoint="best"):
    """(banks_by_task, specs_by_task) of the runs' tickets, in order of remaining ratio within a task. A nested search
    (`nested_ratios`) gives one ticket per ratio, with that ratio's BatchNorm statistics.

    Raises ValueError naming the run and the field when the runs do not share one random network.
    """
    if not run_dirs:
        raise ValueError("no run folders given")
    loaded = []
    for run_dir in run_dirs:
        network, config = run_files.load_run(run_dir, checkpoint)
        if config.mode != "rst":
            raise ValueError(f"{run_dir} is a {config.mode!r} run; a mask bank takes mask searches (mode 'rst')")
        loaded.append((run_dir, network, config))
    r2s.check_shared_network({run_dir: dataclasses.asdict(config) for run_dir, _, config in loaded})
    reference = loaded[0][1]
    by_task, specs = {}, {}
    for run_dir, network, config in loaded:
        r2s.check_same_weights(reference, network, run_dir)
        task = task_name(config)
        if config.nested_ratios:
            found = nested.tickets_of(network, config.ticket_ratios(), task=task)
        else:
            found = [ticket_of(network, nested.ticket_name(config.remaining_ratio), task=task)]
        if task not in by_task:
            by_task[task] = (network, [])
            specs[task] = artifact.network_spec(dataclasses.asdict(config), network.output_shape[-1],
                                                network.input_shape[1:])
        for ticket in found:
            if ticket.name in [existing.name for existing in by_task[task][1]]:
                raise ValueError(f"{run_dir}: task {task!r} already has a ticket at remaining ratio "
                                 f"{ticket.remaining_ratio:g}")
            by_task[task][1].append(ticket)
    banks = {task: r2s.MaskBank(network, sorted(found, key=lambda t: t.remaining_ratio))
             for task, (network, found) in by_task.items()}
    return banks, specs


def from_artifact(path):
    """(banks_by_task, specs_by_task) from a `.rst` file; each task's network is rebuilt from its seed."""
    specs, found = artifact.read(path)
    banks = {}
    for task, spec in specs.items():
        task_tickets = [ticket for ticket in found if ticket.task == task]
        if task_tickets:
            banks[task] = r2s.MaskBank(artifact.build_network(spec), task_tickets)
    return banks, specs


def write_artifact(path, banks, specs):
    """Write every bank's tickets to a `.rst` file."""
    every = [ticket for bank in banks.values() for ticket in bank.tickets]
    artifact.write(path, specs, every, {task: bank.network for task, bank in banks.items()})
