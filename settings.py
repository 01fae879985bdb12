"""Settings: the constants at the top of grpotrainer.py < config.yaml < presets (--smoke, --eval_only, no GPU) < the
command line, resolved into TRL's GRPOConfig and ModelConfig plus this script's own settings.

What each setting must be and how it may be set is one `Rule`: on its field for this script's own settings
(`ScriptOptions`), one line of `RULES` for a constant or a library field. Every mistake is an InputError, which
grpotrainer.py reports as one line with exit code 2 before anything is loaded or any folder is created. The resolved
settings are printed with where each came from and saved in the run's folder.
"""

import argparse
import dataclasses
import difflib
import enum
import json
import logging
import math
import os
import re
import tempfile
import textwrap
import types
import typing
import warnings
from pathlib import Path
from typing import Annotated, NamedTuple

import torch
import yaml

# bitsandbytes (which TRL's config classes import, through transformers and peft) warns at import that a kernel for
# its CPU inference repack is missing; loading.keep_cpu_4bit_weights_trainable turns that repack off, so the warning
# is noise that would stand beside every one-line error.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from transformers import HfArgumentParser  # noqa: E402
from transformers.hf_argparser import string_to_bool  # noqa: E402
from trl import GRPOConfig, ModelConfig  # noqa: E402

import rewards  # noqa: E402
import smoke  # noqa: E402
import versions  # noqa: E402
from atomic import write_atomically  # noqa: E402

# TRL 1.16 calls transformers 5's deprecated gradient_checkpointing* names while it runs the activation
# checkpointing that config.yaml turns on: warnings about TRL's code, not about anything a user set.
warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing\w*` is deprecated", category=FutureWarning)


class InputError(Exception):
    """Bad input (settings, data, model or adapter paths): reported as one line and exit code 2."""


# ---------------------------------------------------------------------------------------------------------------------
# What each setting must be


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a setting must be and how it may be set. A bound left None is not checked, and an unset value (None)
    passes; `means` replaces the bounds' wording in the error, `why` follows it."""

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    or_exactly: float | None = None  # one more value allowed outside the bounds
    means: str = ""
    why: str = ""
    resume_may_change: bool = False  # how long a run goes and how often it logs, evaluates and saves
    command_line_only: bool = False  # a mode of the command, never a config file's value
    library_name: str = ""  # the GRPOConfig/ModelConfig field set from this one, refused as input under its own name

    def problem(self, key: str, value) -> str | None:
        if value is None or value == self.or_exactly:
            return None
        for bound, fails, wording in (
            (self.at_least, lambda b: value < b, "at least {}"),
            (self.above, lambda b: value <= b, "above {}"),
            (self.at_most, lambda b: value > b, "at most {}"),
            (self.below, lambda b: value >= b, "below {}"),
        ):
            if bound is not None and fails(bound):
                wording = "{} or more" if wording == "at least {}" and bound == 0 else wording
                message = f"{key} must be {self.means or wording.format(f'{bound:g}')}, not {value}"
                return message + (f": {self.why}" if self.why else "")
        return None


@dataclasses.dataclass
class ScriptOptions:
    """The script's settings that are no constant at its top, each with its --help text and, where it has one, its
    Rule; each constant there adds one more (see script_class)."""

    completion_samples_every: Annotated[int, Rule(at_least=0, resume_may_change=True)] = dataclasses.field(
        default=0, metadata={"help": "Write sampled completions to TensorBoard's text tab every N logging steps."}
    )
    config: Annotated[str, Rule(command_line_only=True)] = dataclasses.field(
        default="", metadata={"help": "The YAML file of training settings."}
    )
    smoke: Annotated[bool, Rule(command_line_only=True)] = dataclasses.field(
        default=False, metadata={"help": "Offline run on a tiny model and synthetic data."}
    )
    eval_only: Annotated[bool, Rule(command_line_only=True)] = dataclasses.field(
        default=False, metadata={"help": "Only measure GSM8K test accuracy."}
    )
    adapter: Annotated[str | None, Rule(command_line_only=True)] = dataclasses.field(
        default=None,
        metadata={"help": "A LoRA adapter folder, on its recorded base: evaluated (--eval_only), merged (--merge), or "
                  "trained on (a run continues it: SFT -> DPO -> GRPO)."},
    )
    allow_other_base: Annotated[bool, Rule(command_line_only=True)] = dataclasses.field(
        default=False,
        metadata={"help": "Use --adapter on a --model_name other than the base it records, where its shapes fit."},
    )
    # A str with nargs "?" (HfArgumentParser passes metadata on to argparse) so that `--resume` alone still means
    # true; resume_mode() turns the text into False, True or "auto" (see there).
    resume: Annotated[str, Rule(command_line_only=True, resume_may_change=True, library_name="resume_from_checkpoint")] = dataclasses.field(  # fmt: skip
        default="false",
        metadata={
            "help": "Continue output_dir's run from its last checkpoint; 'auto': continue it if it has one, else start "
            "it there (one command for a first start and every restart).",
            "nargs": "?",
            "const": "true",
        },
    )
    doctor: bool = dataclasses.field(default=True, metadata={"help": "Report problems as they start (doctor.py)."})
    merge: Annotated[bool, Rule(command_line_only=True)] = dataclasses.field(
        default=False, metadata={"help": "Merge --adapter into its 16-bit base: RUN/final -> RUN/final-merged."}
    )
    eval_holdout: Annotated[int, Rule(at_least=0)] = dataclasses.field(
        default=0, metadata={"help": "With one dataset file: its last N rows are the test split, never trained on."}
    )
    drop_unparsable_answers: bool = dataclasses.field(
        default=False, metadata={"help": "Drop (and count) rows whose gold answer has no number, instead of failing."}
    )
    eval_samples_per_question: Annotated[int, Rule(at_least=1)] = dataclasses.field(
        default=1, metadata={"help": "Completions sampled per test question (k): over 1, also pass@k and maj@k."}
    )
    eval_temperature: Annotated[float | None, Rule(at_least=0)] = dataclasses.field(
        default=None,
        metadata={"help": "Evaluation's sampling temperature; 0 is greedy. Unset: greedy for k = 1 without thinking, "
                          "else Qwen3's model card (0.6 thinking, 0.7 not)."},
    )  # fmt: skip
    eval_top_p: Annotated[float | None, Rule(above=0, at_most=1)] = dataclasses.field(
        default=None, metadata={"help": "Evaluation's top-p when it samples. Unset: Qwen3's model card (0.95 thinking, 0.8 not)."}  # fmt: skip
    )
    compile_decoding: Annotated[bool, Rule(resume_may_change=True)] = dataclasses.field(
        default=False,
        metadata={"help": "Decode with a static KV cache and torch.compile (CUDA graphs on a GPU), for training and "
                  "evaluation completions alike (decoding.py). Off until a GPU measurement shows it faster."},
    )  # fmt: skip


# The rules of the constants at the top of grpotrainer.py and of the library's fields, one line each. Unset counts and
# rates are TRL's defaults; TRL would train num_train_epochs on a negative max_steps and fail late, or obscurely, on
# most of the others. (GRPOTrainer ignores resume_from_checkpoint in its config: the trainer is handed it.)
RULES = {
    "model_name": Rule(library_name="model_name_or_path"),
    "num_generations": Rule(at_least=2, why="GRPO compares each completion with its group"),
    "kl_coef": Rule(at_least=0, library_name="beta", why="0 turns the KL term off"),
    "temperature": Rule(above=0, why="training samples its completions"),
    "output_dir": Rule(resume_may_change=True),
    "eval_samples": Rule(at_least=1, why="leave it unset to evaluate the whole test split"),
    "eval_before_and_after": Rule(library_name="eval_on_start", resume_may_change=True),
    "max_steps": Rule(
        at_least=1, or_exactly=-1, means="a positive number of steps, or -1 to train num_train_epochs",
        resume_may_change=True,
    ),  # fmt: skip
    "num_train_epochs": Rule(above=0, resume_may_change=True),
    "learning_rate": Rule(above=0),
    "per_device_train_batch_size": Rule(at_least=1),
    "gradient_accumulation_steps": Rule(at_least=1),
    "steps_per_generation": Rule(at_least=1),
    "generation_batch_size": Rule(at_least=1),
    "num_iterations": Rule(at_least=1),
    "max_completion_length": Rule(at_least=1),
    "top_p": Rule(above=0, at_most=1),
    "warmup_steps": Rule(at_least=0),
    "weight_decay": Rule(at_least=0),
    "max_grad_norm": Rule(at_least=0),
    "logging_steps": Rule(above=0, resume_may_change=True),
    "logging_strategy": Rule(resume_may_change=True),
    "eval_steps": Rule(above=0, resume_may_change=True),
    "eval_strategy": Rule(resume_may_change=True),
    "per_device_eval_batch_size": Rule(at_least=1, resume_may_change=True),
    "num_generations_eval": Rule(at_least=1),
    "save_steps": Rule(above=0, resume_may_change=True),
    "save_strategy": Rule(resume_may_change=True),
    "save_total_limit": Rule(at_least=1, resume_may_change=True),
    "disable_tqdm": Rule(resume_may_change=True),
    "dataloader_num_workers": Rule(resume_may_change=True),
    "lora_r": Rule(at_least=1),
    "lora_alpha": Rule(at_least=1),
    "lora_dropout": Rule(at_least=0, below=1),
}

# A rule on one of ScriptOptions' fields is its `Annotated[type, Rule(...)]`, which HfArgumentParser reads as the type
# alone (get_type_hints without extras, transformers/hf_argparser.py, _add_dataclass_arguments).
SCRIPT_RULES = {
    name: hint.__metadata__[0]
    for name, hint in typing.get_type_hints(ScriptOptions, include_extras=True).items()
    if typing.get_origin(hint) is Annotated
}


def rules() -> dict[str, Rule]:
    """Every setting's rule, read in one loop by the checks below (a setting without one may be anything its type
    allows)."""
    return RULES | SCRIPT_RULES


def names_with(flag: str) -> set[str]:
    return {name for name, rule in rules().items() if getattr(rule, flag)}


# The library's name -> this script's name, so that each setting has one name; the library's is refused as input.
RENAMED = {rule.library_name: name for name, rule in rules().items() if rule.library_name}
LIBRARY_FIELDS = {field.name: field for kind in (GRPOConfig, ModelConfig) for field in dataclasses.fields(kind)}


class Layer(enum.Enum):
    """Where a value came from, in the order the layers apply (a config file and settings.yaml never meet), by the
    label people read."""

    CONSTANTS = "grpotrainer.py"
    CONFIG_FILE = "config file"  # labelled by the file's name
    SAVED = "settings.yaml"
    SMOKE = "--smoke"
    EVAL_ONLY = "--eval_only"
    NO_GPU = "no GPU"
    ADAPTER = "--adapter"  # the LoRA shape of an adapter a run continues (adapters.py)
    COMMAND_LINE = "command line"


class Source(str):
    """A value's layer, which code reads, as the label people read: a config file is named by its file name."""

    def __new__(cls, layer: Layer, label: str = ""):
        source = super().__new__(cls, label or layer.value)
        source.layer = layer
        return source


class RunSettings(NamedTuple):
    """Everything a run is told: this script's settings, TRL's two configs, and where each set value came from."""

    script: ScriptOptions  # a script_class() instance: ScriptOptions plus one field per constant
    training: GRPOConfig
    model: ModelConfig
    sources: dict[str, Source]

    def value(self, key: str):
        return getattr(next(part for part in (self.script, self.training, self.model) if hasattr(part, key)), key)

    def as_dict(self) -> dict:
        return {
            "script": dataclasses.asdict(self.script),
            "training": json.loads(self.training.to_json_string()),
            "model": dataclasses.asdict(self.model),
            "sources": {key: str(source) for key, source in self.sources.items()},  # what --resume replays
            "versions": versions.installed(),  # what the run ran on
        }


def constant_field(name: str, value, helps: dict[str, str]) -> tuple:
    """A constant at the top of grpotrainer.py as a dataclass field: its value is its default, its comment its help."""
    return name, (str if value is None else type(value)) | None, dataclasses.field(default=value, metadata={"help": helps.get(name, "")})  # fmt: skip


def script_class(constants: dict, config_file: str, helps: dict[str, str]) -> type:
    """ScriptOptions plus one field per constant that GRPOConfig and ModelConfig lack, defaulting to its value: a
    constant added at the top of grpotrainer.py is a setting with no further edit. --config defaults to config_file."""
    own = [
        constant_field(name, value, helps)
        for name, value in constants.items()
        if name not in LIBRARY_FIELDS
    ]
    config = dataclasses.field(default=config_file, metadata=ScriptOptions.__dataclass_fields__["config"].metadata)
    ScriptSettings = dataclasses.make_dataclass("ScriptSettings", [("config", str, config), *own], bases=(ScriptOptions,))  # fmt: skip
    ScriptSettings.__module__ = __name__
    return ScriptSettings


# ---------------------------------------------------------------------------------------------------------------------
# Reading the layers


def did_you_mean(key: str, valid) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML silently keeps the last of two equal keys; a setting named twice must be an error instead."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key_node, deep=deep) for key_node, _ in node.value]
        for key in keys:
            if keys.count(key) > 1:
                raise InputError(f"'{key}' is set twice in the config file (line {node.start_mark.line + 1})")
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: Path) -> dict:
    """A config file's settings; its `env:` mapping, as in TRL's TrlParser, sets environment variables."""
    if path.is_dir():
        raise InputError(f"config file {path} is a folder: name a YAML file")
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        values = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as error:
        raise InputError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise InputError(f"config file {path} must be a mapping of 'setting: value' lines")
    environment = values.pop("env", {})
    if not isinstance(environment, dict):
        raise InputError(f"env in config file {path} must be a mapping of 'VARIABLE: value' lines")
    os.environ.update({str(name): str(value) for name, value in environment.items()})
    return values


def field_types(kinds) -> dict[str, type]:
    return {name: hint for kind in kinds for name, hint in typing.get_type_hints(kind).items()}


def plain_type(annotation):
    """The type a value must have: X of `X | None`, and the item type of `list[X]` (with whether it is a list)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def typed_value(key: str, value, annotation, where: str):
    """A config file's value as its field's type, or an InputError: YAML types are stricter than argparse sees them
    (str settings take anything; TRL's own checks see their content). YAML 1.1 reads `2e-5` as a string, which every
    person reads as a number: a number setting takes it as one."""
    kind, is_list = plain_type(annotation)
    if is_list and isinstance(value, list):
        return [typed_value(key, item, kind, where) for item in value]
    if value is None or kind in (str, typing.Any):
        return value
    if isinstance(value, str) and kind is float and NUMBER.fullmatch(value.strip()):
        return float(value)
    if typing.get_origin(kind) is typing.Literal or isinstance(kind, type) and issubclass(kind, enum.Enum):
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else [choice.value for choice in kind]  # fmt: skip
        if not isinstance(value, (list, dict)) and str(value) in map(str, choices):
            return value
        raise InputError(f"{key} is {value!r} {where}, which is not one of {', '.join(map(str, choices))}")
    fits = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
    }.get(kind, True)  # a type of its own (a dict, a callable) is TRL's to check
    if not fits:
        expected = {int: "a whole number", float: "a number", bool: "true or false"}[kind]
        raise InputError(f"{key} is {value!r} {where}, which is not {expected}")
    return value


def command_line_keys(argv: list[str]) -> list[str]:
    return [arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")]


def valid_names(kinds) -> set[str]:
    """Every name the command line takes: each field, and no_<name> for a bool field that defaults to true (as
    HfArgumentParser adds it)."""
    fields = [field for kind in kinds for field in dataclasses.fields(kind)]
    return {field.name for field in fields} | {f"no_{field.name}" for field in fields if field.default is True}


def check_keys(keys, valid: set[str], where: str, forbidden: set[str] = frozenset(), constants=frozenset()) -> None:
    seen = set()
    for key in keys:
        if key in seen:
            raise InputError(f"'{key}' is given twice {where}")
        seen.add(key)
        if key in RENAMED:
            raise InputError(f"'{key}' is called '{RENAMED[key]}' here: set that instead")
        if key in forbidden:
            home = f"grpotrainer.py ({key.upper()})" if key in constants else "the command line"
            raise InputError(f"'{key}' cannot be set {where}: its home is {home}, or --{key} on the command line")
        if key not in valid:
            raise InputError(f"unknown setting '{key}' {where}{did_you_mean(key, valid)}")


def check_finite(values: dict) -> None:
    """NaN passes every comparison and infinity every lower bound: no setting here means either."""
    for key, value in values.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise InputError(f"{key} is {item}, which is not a finite number")


def check_rules(values: dict) -> None:
    check_finite(values)
    for key, rule in rules().items():
        if key in values and (problem := rule.problem(key, values[key])):
            raise InputError(problem)


def check_dataset_split(values: dict) -> None:
    """A run is never evaluated on the questions it trains on: one dataset file needs rows held out for evaluation."""
    one_file = Path(values["dataset_name"]).expanduser().is_file()
    evaluates = values["eval_before_and_after"] or values["eval_strategy"] != "no"
    if values["eval_holdout"] and not one_file:
        raise InputError("eval_holdout is for a dataset that is one file; a folder's test split is its test.jsonl")
    if one_file and evaluates and not values["eval_only"] and not values["eval_holdout"]:
        raise InputError(
            f"dataset {values['dataset_name']} is one file, and a run must not be evaluated on its own training "
            f"questions: set --eval_holdout N to evaluate on its last N rows only, or give a folder with train.jsonl "
            f"and test.jsonl"
        )


def check_values(values: dict) -> None:
    """The mistakes TRL accepts silently or reports obscurely, checked before anything is loaded."""
    check_rules(values)
    if values["eval_temperature"] == 0 and values["eval_samples_per_question"] > 1:
        raise InputError("eval_temperature 0 is greedy, which gives one answer per question: set eval_samples_per_question 1 or a temperature above 0")  # fmt: skip
    weights = values["reward_weights"]
    if weights is not None and len(weights) != len(rewards.REWARDS):
        names = ", ".join(function.__name__ for function, _ in rewards.REWARDS)
        raise InputError(f"reward_weights needs {len(rewards.REWARDS)} numbers, one per reward in order: {names}")
    check_dataset_split(values)
    if values["use_vllm"] and values["load_in_4bit"]:
        raise InputError(
            "4-bit loading with vLLM generation is broken upstream: set load_in_4bit: false to train a bf16 LoRA "
            "with vLLM, or use_vllm: false to keep 4-bit"
        )
    processes = int(os.environ.get("WORLD_SIZE", 1))
    batch, accumulation = values["per_device_train_batch_size"], values["gradient_accumulation_steps"]
    generation_batch = values["generation_batch_size"] or processes * batch * (
        values["steps_per_generation"] or accumulation
    )
    if generation_batch % values["num_generations"]:
        raise InputError(
            f"{processes} process(es) x per_device_train_batch_size {batch} x gradient_accumulation_steps "
            f"{accumulation} = {generation_batch} completions is not a multiple of num_generations "
            f"{values['num_generations']}: per_device_train_batch_size counts completions, not questions, and every "
            f"question needs its full group of num_generations completions"
        )


# ---------------------------------------------------------------------------------------------------------------------
# --help: the script's own settings first, TRL's hundreds of fields behind --help_all

USAGE = "python grpotrainer.py [--smoke | --eval_only | --merge | --resume] [--name value ...]"


def print_help(kinds, everything: bool) -> None:
    HfArgumentParser(kinds, usage=USAGE, allow_abbrev=False).print_help()
    if not everything:
        print(
            "\nThese are the script's own settings and modes, and the library settings its config file sets. Every "
            "field of TRL's GRPOConfig and ModelConfig is a setting: python grpotrainer.py --help_all lists them all."
        )


def usual_settings(constants: dict, helps: dict[str, str], config_path: Path) -> type:
    """For --help: the constants at the top of grpotrainer.py, the script's options, and the library fields the config
    file sets, each with the value it has there."""
    try:
        config = read_config_file(config_path)
    except InputError:
        config = {}
    hints = field_types([GRPOConfig, ModelConfig])
    constant_fields = [
        constant_field(name, value, helps)
        for name, value in constants.items()
    ]
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


# ---------------------------------------------------------------------------------------------------------------------
# Resolving them


def parse_settings(argv: list[str], constants: dict, config_file: str, script_dir: Path, helps=None) -> RunSettings:
    """The run's settings from the command line, the config file (script_dir/config_file unless --config names
    another) and the constants (lower-case names, with `helps` their --help texts), with where each set value came
    from. With --resume they come from the run's settings.yaml instead, and the command line may change only what a
    Rule lets a resumed run change."""
    kinds = (script_class(constants, config_file, helps or {}), GRPOConfig, ModelConfig)
    if "--help_all" in argv:
        print_help(kinds, everything=True)
        raise SystemExit(0)
    if "-h" in argv or "--help" in argv:
        print_help([usual_settings(constants, helps or {}, script_dir / config_file)], everything=False)
        raise SystemExit(0)
    valid = valid_names(kinds)
    cli_keys = command_line_keys(argv)
    check_keys(cli_keys, valid, "on the command line")
    parser = HfArgumentParser(kinds, allow_abbrev=False, exit_on_error=False)
    try:
        namespace, unparsed = parser.parse_known_args(argv)
    except argparse.ArgumentError as error:  # e.g. "argument --max_steps: invalid int value: 'abc'"
        raise InputError(str(error)) from None
    if unparsed:
        raise InputError(f"unexpected argument '{unparsed[0]}': settings are given as --name value")
    given = vars(namespace)
    on_command_line = list(dict.fromkeys(key if key in given else key.removeprefix("no_") for key in cli_keys))
    resume = resume_mode(given["resume"])
    if given["merge"] and (given["eval_only"] or resume):
        raise InputError(f"--merge cannot be combined with --{'eval_only' if given['eval_only'] else 'resume'}")

    folder = given["output_dir"] if "output_dir" in on_command_line else constants["output_dir"]
    if resume == "auto":  # the folder a new run would write to (--smoke has its own), and whether it holds one
        layers, sources = new_run_layers(given, on_command_line, kinds, constants, script_dir)
        if "output_dir" not in on_command_line:
            folder = next(values["output_dir"] for _, values in reversed(layers) if "output_dir" in values)
        import loading  # it imports this module's InputError; by the time a run parses settings, both are loaded

        resume = True if loading.holds_a_checkpoint(Path(folder)) else "auto"
    if resume is True:
        saved = read_saved_settings(Path(folder))
        layers = [(Layer.SAVED, replayed_values(saved, constants))]
        sources = {key: Source(Layer.SAVED) for key in saved["sources"].keys() - NO_GPU.keys()}
    elif resume is False:
        layers, sources = new_run_layers(given, on_command_line, kinds, constants, script_dir)
    if not torch.cuda.is_available():
        # bf16 autocast and bitsandbytes bf16 compute need a GPU; use_cpu makes torchrun's processes one CPU group
        layers.append((Layer.NO_GPU, NO_GPU))
    values = dict(given)
    for layer, layer_values in layers:
        for key, value in layer_values.items():
            if key not in on_command_line:
                values[key] = value
                if layer in PRESETS:  # the others' sources are known already, or are the constants'
                    sources[key] = Source(layer)
    values["resume"] = resume
    if values["eval_only"] and "output_dir" not in on_command_line:
        values["output_dir"] = eval_output_dir(values["output_dir"], values["model_name"], values["adapter"])
        sources["output_dir"] = Source(Layer.EVAL_ONLY)
    if resume is True:
        check_resume_changes(saved, values, on_command_line)
    check_values(values)
    sources |= {key: Source(Layer.COMMAND_LINE) for key in on_command_line}
    return RunSettings(*resolved_configs(kinds, values), sources)


def resolved_configs(kinds, values: dict) -> tuple:
    try:
        script, training, model = (
            kind(**{field.name: values[field.name] for field in dataclasses.fields(kind) if field.init})
            for kind in kinds
        )
    except ValueError as error:  # TRL's and transformers' own checks
        raise InputError(" ".join(str(error).split())) from None
    for library_name, name in RENAMED.items():
        setattr(training if hasattr(training, library_name) else model, library_name, getattr(script, name))
    training.resume_from_checkpoint = script.resume is True  # not "auto", which starts a new run
    training.eval_on_start &= script.resume is not True  # a resumed run was evaluated at its step 0 already
    training.chat_template_kwargs = {"enable_thinking": script.enable_thinking}
    if training.reward_weights is None:
        training.reward_weights = [weight for _, weight in rewards.REWARDS]
    return script, training, model


NO_GPU = {"use_cpu": True, "bf16": False, "dtype": "float32"}
PRESETS = (Layer.SMOKE, Layer.EVAL_ONLY, Layer.NO_GPU)  # layers whose values the script chose, named by the layer


def new_run_layers(given: dict, on_command_line: set, kinds, constants: dict, script_dir: Path):
    """The layers under the command line of a new run, constants < config file < presets, and the sources of the
    config file's values (a preset's are named as it applies)."""
    config_path = Path(given["config"]) if "config" in on_command_line else script_dir / given["config"]
    file_values = read_config_file(config_path)
    where = f"in {config_path}"
    check_keys(file_values, valid_names(kinds), where, names_with("command_line_only") | constants.keys(), constants.keys())  # fmt: skip
    types_ = field_types(kinds)
    file_values = {key: typed_value(key, value, types_[key], where) for key, value in file_values.items()}
    layers = [
        (Layer.CONSTANTS, {key: value for key, value in constants.items() if key in LIBRARY_FIELDS}),
        (Layer.CONFIG_FILE, file_values),
    ]
    if given["smoke"]:
        layers.append((Layer.SMOKE, smoke.preset()))
    if given["eval_only"]:  # the whole test split unless told otherwise; a run's checkpoints, the run's own questions
        compared = compared_run(given["adapter"])
        layers.append((Layer.EVAL_ONLY, {"eval_samples": compared["script"]["eval_samples"] if compared else None}))
    return layers, {key: Source(Layer.CONFIG_FILE, config_path.name) for key in file_values}


def eval_output_dir(output_dir: str, model_name: str, adapter: str | None) -> str:
    """--eval_only's results beside what they measure, never mistaken for a training run: an adapter of a run in that
    run's folder (RUN/eval-final), a run's checkpoints compared in RUN/eval-checkpoints, anything else in
    eval-<model>[-<adapter>] beside the training runs."""
    if is_run_folder(adapter):
        return str(Path(adapter) / "eval-checkpoints")
    if adapter and (Path(adapter).parent / "settings.yaml").is_file():
        return str(Path(adapter).parent / f"eval-{Path(adapter).name}")
    name = "-".join(Path(part.rstrip("/")).name for part in [model_name, adapter] if part)
    return str(Path(output_dir).parent / f"eval-{name}")


def is_run_folder(adapter: str | None) -> bool:
    """`--eval_only --adapter RUN` names a run folder, whose checkpoints it compares, when RUN holds settings.yaml."""
    return bool(adapter) and (Path(adapter) / "settings.yaml").is_file()


def compared_run(adapter: str | None) -> dict | None:
    """The saved settings of the run whose checkpoints `--eval_only --adapter RUN` compares, or None."""
    return read_saved_settings(Path(adapter)) if is_run_folder(adapter) else None


# ---------------------------------------------------------------------------------------------------------------------
# Resuming: the run's saved settings, of which the command line may change only what is safe mid-run (the Rules'
# resume_may_change). Everything else (model, data, LoRA shape, batch shape, generation, rewards, optimiser) would make
# the checkpoint continue a different run.


def resume_mode(text) -> bool | str:
    """--resume's value: False (a new run), True (continue output_dir's run), or "auto", which parse_settings turns into
    True when output_dir holds a complete checkpoint and otherwise keeps: a new run that claims output_dir itself."""
    if text in (False, True, "auto"):  # a saved or already resolved value
        return text
    if str(text).lower() == "auto":
        return "auto"
    try:
        return string_to_bool(text)
    except Exception:  # transformers raises ArgumentTypeError
        raise InputError(f"--resume is true, false or auto, not {text!r}") from None


def read_saved_settings(folder: Path) -> dict:
    path = folder / "settings.yaml"
    if not path.is_file():
        raise InputError(f"--resume: {path} does not exist: name the run's folder with --output_dir")
    try:
        saved = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        saved = None
    if not isinstance(saved, dict) or not {"script", "training", "model", "sources"} <= saved.keys():
        raise InputError(f"--resume: {path} is not the settings file of a run of this script")
    return saved


def saved_value(saved: dict, key: str):
    return next(saved[part][key] for part in ("script", "training", "model") if key in saved[part])


def replayed_values(saved: dict, constants: dict) -> dict:
    """What produced the saved run: this script's settings and every value that was set (TRL derives the rest, and
    replaying a derived value could contradict the one it derives it from), except what this machine decides."""
    keys = saved["script"].keys() | constants.keys() | saved["sources"].keys()
    return {key: saved_value(saved, key) for key in keys - NO_GPU.keys()}


def check_resume_changes(saved: dict, values: dict, on_command_line: set) -> None:
    if "config" in on_command_line:
        raise InputError("--config cannot be combined with --resume: a resumed run keeps the settings it was saved with")  # fmt: skip
    may_change = names_with("resume_may_change")
    for key in on_command_line:
        before = saved_value(saved, key)
        if key not in may_change and not same_setting(before, values[key]):
            raise InputError(
                f"--resume: {key} is {before} in the run's settings.yaml but {values[key]} here; a resumed run may "
                f"change only {', '.join(sorted(may_change - {'resume', 'output_dir'}))}"
            )


def same_setting(saved, given) -> bool:
    """The saved value (YAML of JSON) and the parsed one: enums compare as their strings, one item as a list of it."""
    return as_list(saved) == as_list(given)


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_output_dir(path: str) -> None:
    """Fail before anything loads when the run's folder could not be written: a file in its place or above it, or a
    read-only or unwritable file system. Tried by creating (and removing) a folder where the run's will be."""
    folder = Path(path).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output_dir {path} is a file, not a folder")
    existing = next(parent for parent in [folder, *folder.parents] if parent.exists())
    if not existing.is_dir():
        raise InputError(f"output_dir {path} cannot be created: {existing} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".grpotrainer-write-test-", dir=existing))
    except OSError as error:
        message = f"output_dir {path} cannot be created: {existing} is not writable ({error.strerror})"
        raise InputError(message) from None


def claim_output_dir(requested: str, resume: bool | str) -> str:
    """A run never overwrites an earlier one: an occupied folder gets the next free "-N" suffix. --resume continues
    the run there, and --resume auto starts it there (loading.check_auto_start checked it)."""
    if resume:
        return requested  # its checkpoint was checked by loading.resume_checkpoint
    candidates = [requested] + [f"{requested}-{n}" for n in range(2, 10_000)]
    return next(path for path in candidates if not Path(path).exists() or not any(Path(path).iterdir()))


# ---------------------------------------------------------------------------------------------------------------------
# What the run prints and saves


def source_line(source: str, values: list[str]) -> str:
    return textwrap.fill(
        ", ".join(values), 120, initial_indent=f"  {source}: ", subsequent_indent="      ", break_long_words=False,
        break_on_hyphens=False,  # a path like /tmp/wt-x/run stays whole
    )


def report_settings(run: RunSettings, constants: dict) -> None:
    """Print the constants and every other value that was set, as they are saved, grouped by where they came from in
    the order those layers apply; save them all in the output folder as settings.yaml. Call it on the main process."""
    saved = run.as_dict()
    plain = saved["model"] | saved["training"] | saved["script"]  # as RunSettings.value looks them up, enums as text
    groups = {}
    for key in sorted(constants.keys() | run.sources.keys()):
        groups.setdefault(run.sources.get(key, Source(Layer.CONSTANTS)), []).append(f"{key}={plain[key]}")
    lines = [source_line(source, groups[source]) for source in sorted(groups, key=lambda source: list(Layer).index(source.layer))]
    for preset in (Layer.SMOKE, Layer.EVAL_ONLY):
        if replaced := sorted(key for key in constants if getattr(run.sources.get(key), "layer", None) is preset):
            names = ", ".join(replaced)
            lines.append(f"  ({preset.value} replaces grpotrainer.py's {names}: edits there have no effect with it)")
    layers = "settings.yaml < command line" if run.script.resume is True else "grpotrainer.py < config file < --smoke < command line"  # fmt: skip
    print(f"settings ({layers}):\n" + "\n".join(lines))
    folder = Path(run.training.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "settings.yaml", yaml.safe_dump(saved, sort_keys=False))
