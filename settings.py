"""Settings: the constants at the top of grpotrainer.py < config.yaml < presets (--smoke, --eval_only, no GPU) < the
command line, resolved into TRL's GRPOConfig and ModelConfig plus this script's own settings (declared, with their
Rules, in options.py), or a run's settings.yaml for --resume.

Every mistake is an InputError, which grpotrainer.py reports as one line with exit code 2 before anything is loaded or
any folder is created. The resolved settings are printed with where each came from and saved in the run's folder.
"""

import argparse
import dataclasses
import difflib
import enum
import math
import os
import re
import tempfile
import textwrap
import types
import typing
from pathlib import Path

import yaml

from options import (  # first: it quiets a warning that bitsandbytes prints when it is imported
    LIBRARY_FIELDS, RENAMED, Layer, RunSettings, Source, names_with, rules, script_class,
)  # fmt: skip

import torch  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402
from transformers.hf_argparser import string_to_bool  # noqa: E402
from trl import GRPOConfig, ModelConfig  # noqa: E402

import rewards  # noqa: E402
import smoke  # noqa: E402
from atomic import write_atomically  # noqa: E402


class InputError(Exception):
    """Bad input (settings, data, model or adapter paths): reported as one line and exit code 2."""


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
# Resolving them


def parse_settings(argv: list[str], constants: dict, config_file: str, script_dir: Path) -> RunSettings:
    """The run's settings from the command line, the config file (script_dir/config_file unless --config names
    another) and the constants (lower-case names), with where each set value came from. With --resume they come from the run's settings.yaml instead, and the command line may change only what a
    Rule lets a resumed run change."""
    kinds = (script_class(constants, config_file), GRPOConfig, ModelConfig)
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
