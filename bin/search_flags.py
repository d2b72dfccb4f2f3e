"""The flags that make a SearchConfig, shared by bin/search and bin/sweep (defined on import).

One flag per SearchConfig field, of the field's type, with its default and help text (`metadata["help"]`); only
--data_dir defaults to $RST_TF_DATA_DIR. Choices are checked by `SearchConfig.validate`, which names the bad one.
"""
import dataclasses
import os
import typing

from absl import flags

from rst_tf.training.config import SearchConfig

FLAGS = flags.FLAGS
_DEFAULT_OVERRIDES = {"data_dir": os.environ.get("RST_TF_DATA_DIR", "")}
_HELP_SUFFIXES = {"data_dir": " Default: $RST_TF_DATA_DIR."}
_DEFINE = {str: flags.DEFINE_string, bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float}


def _parses_as(element_type):
    def check(values):
        try:
            return all(element_type(value.strip()) >= 0 for value in values)
        except ValueError:
            return False
    return check


def _define(field):
    default = _DEFAULT_OVERRIDES.get(field.name, field.default)
    help_text = field.metadata["help"] + _HELP_SUFFIXES.get(field.name, "")
    if typing.get_origin(field.type) is tuple:  # tuple[int, ...] or tuple[float, ...]: a comma-separated list
        element_type = typing.get_args(field.type)[0]
        flags.DEFINE_list(field.name, [str(value) for value in default], help_text)
        example = "0,1,2,3,4" if element_type is int else "0.5,0.75"
        kind = "class indices" if element_type is int else "numbers"
        flags.register_validator(field.name, _parses_as(element_type),
                                 f"--{field.name} must list {kind}, e.g. {example}")
    else:
        _DEFINE[field.type](field.name, default, help_text)


def _convert(field, value):
    if typing.get_origin(field.type) is tuple:
        return tuple(typing.get_args(field.type)[0](item) for item in value)
    return value


for _config_field in dataclasses.fields(SearchConfig):
    _define(_config_field)


def config_from_flags():
    """The SearchConfig the flags describe."""
    return SearchConfig(**{field.name: _convert(field, FLAGS[field.name].value)
                           for field in dataclasses.fields(SearchConfig)})
