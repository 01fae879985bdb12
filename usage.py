"""--help: the constants at the top of grpotrainer.py with their comments, the script's own settings and modes, and
the library settings its config file sets, each with its value; --help_all lists every field of TRL's GRPOConfig and
ModelConfig as well."""

import dataclasses
import os
import re
import sys
from pathlib import Path

from transformers import HfArgumentParser
from trl import GRPOConfig, ModelConfig

from options import LIBRARY_FIELDS, ScriptOptions, constant_field, script_class
from settings import InputError, field_types, read_config_file

USAGE = "python grpotrainer.py [--smoke | --eval_only | --merge | --resume] [--name value ...]"


def wants_help(argv: list[str]) -> bool:
    return any(arg in argv for arg in ("-h", "--help", "--help_all"))


def print_help(argv: list[str], constants: dict, config_file: str, script: Path) -> None:
    """The help page that argv asks for; the constants' --help texts are their comments in `script`."""
    helps = constant_comments(script)
    if "--help_all" in argv:
        kinds = [script_class(constants, config_file, helps), GRPOConfig, ModelConfig]
    else:
        kinds = [usual_settings(constants, helps, script.parent / config_file)]
    try:
        HfArgumentParser(kinds, usage=USAGE, allow_abbrev=False).print_help()
        if "--help_all" not in argv:
            print(
                "\nThese are the script's own settings and modes, and the library settings its config file sets. "
                "Every field of TRL's GRPOConfig and ModelConfig is a setting: python grpotrainer.py --help_all lists "
                "them all."
            )
        sys.stdout.flush()
    except BrokenPipeError:  # `--help | head` stopped reading: it has what it wanted, and the exit must not flush again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def usual_settings(constants: dict, helps: dict[str, str], config_path: Path) -> type:
    """The constants at the top of grpotrainer.py, the script's options, and the library fields the config file sets,
    each with the value it has there."""
    try:
        config = read_config_file(config_path)
    except InputError:
        config = {}
    hints = field_types([GRPOConfig, ModelConfig])
    constant_fields = [constant_field(name, value, helps) for name, value in constants.items()]
    defaults = {field.name: field.default for field in dataclasses.fields(ScriptOptions)} | {"config": config_path.name}
    options = [
        (field.name, field.type, dataclasses.field(default=config.get(field.name, defaults[field.name]), metadata=field.metadata))  # fmt: skip
        for field in dataclasses.fields(ScriptOptions)
    ]
    library = [
        (key, hints[key], dataclasses.field(default=config[key], metadata={"help": LIBRARY_FIELDS[key].metadata.get("help", "")}))  # fmt: skip
        for key in sorted(config.keys() & LIBRARY_FIELDS.keys())
    ]
    return dataclasses.make_dataclass("UsualSettings", constant_fields + options + library)


def constant_comments(script: Path) -> dict[str, str]:
    """The comment beside each constant at the top of the script (`NAME = value  # comment`): its --help text."""
    line = re.compile(r"^([A-Z][A-Z0-9_]*) = .*?  # (.*)$")
    return {match[1].lower(): match[2] for match in map(line.match, script.read_text().splitlines()) if match}
