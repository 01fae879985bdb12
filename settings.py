"""Settings: the constants at the top of grpotrainer.py < config.yaml < presets (--smoke, --eval_only, no GPU) < the
command line, resolved into TRL's GRPOConfig and ModelConfig plus this script's own settings.

Every mistake is an InputError, which grpotrainer.py reports as one line with exit code 2 before anything is loaded or
any folder is created. The resolved settings are printed with where each came from and saved in the run's folder.
"""

import dataclasses
import difflib
import json
import os
import warnings
import tempfile
import textwrap
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool
from trl import GRPOConfig, ModelConfig

import rewards
import smoke
import versions
from atomic import write_atomically


# TRL 1.16 calls transformers 5's deprecated gradient_checkpointing* names while it runs the activation
# checkpointing that config.yaml turns on: warnings about TRL's code, not about anything a user set.
warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing\w*` is deprecated", category=FutureWarning)

class InputError(Exception):
    """Bad input (settings, data, model or adapter paths): reported as one line and exit code 2."""


@dataclasses.dataclass
class ScriptOptions:
    """The script's settings that are no constant at its top; each constant there adds one more (see script_class)."""

    completion_samples_every: int = dataclasses.field(
        default=0, metadata={"help": "Write sampled completions to TensorBoard's text tab every N logging steps."}
    )
    config: str = dataclasses.field(default="", metadata={"help": "The YAML file of training settings."})
    smoke: bool = dataclasses.field(default=False, metadata={"help": "Offline run on a tiny model and synthetic data."})
    eval_only: bool = dataclasses.field(default=False, metadata={"help": "Only measure GSM8K test accuracy."})
    adapter: str | None = dataclasses.field(default=None, metadata={"help": "A LoRA adapter folder to evaluate."})
    # A str with nargs "?" (HfArgumentParser passes metadata on to argparse) so that `--resume` alone still means
    # true; resume_mode() turns the text into False, True or "auto" (see there).
    resume: str = dataclasses.field(
        default="false",
        metadata={
            "help": "Continue output_dir's run from its last checkpoint; 'auto': continue it if it has one, else start "
            "it there (one command for a first start and every restart).",
            "nargs": "?",
            "const": "true",
        },
    )
    doctor: bool = dataclasses.field(default=True, metadata={"help": "Report problems as they start (doctor.py)."})
    merge: bool = dataclasses.field(
        default=False, metadata={"help": "Merge --adapter into its 16-bit base: RUN/final -> RUN/final-merged."}
    )
    eval_holdout: int = dataclasses.field(
        default=0, metadata={"help": "With one dataset file: its last N rows are the test split, never trained on."}
    )
    drop_unparsable_answers: bool = dataclasses.field(
        default=False, metadata={"help": "Drop (and count) rows whose gold answer has no number, instead of failing."}
    )


COMMAND_LINE_ONLY = {"config", "smoke", "eval_only", "adapter", "resume", "merge"}
# The library's name -> this script's name, so that each setting has one name. The library's name is refused as
# input and set from ours. (GRPOTrainer ignores resume_from_checkpoint in its config: the trainer is handed it.)
RENAMED = {
    "beta": "kl_coef",
    "model_name_or_path": "model_name",
    "eval_on_start": "eval_before_and_after",
    "resume_from_checkpoint": "resume",
}
LIBRARY_FIELDS = {field.name for kind in (GRPOConfig, ModelConfig) for field in dataclasses.fields(kind)}


class RunSettings(NamedTuple):
    """Everything a run is told: this script's settings, TRL's two configs, and where each set value came from."""

    script: object  # a script_class() instance
    training: GRPOConfig
    model: ModelConfig
    sources: dict[str, str]

    def value(self, key: str):
        return getattr(next(part for part in (self.script, self.training, self.model) if hasattr(part, key)), key)

    def as_dict(self) -> dict:
        return {
            "script": dataclasses.asdict(self.script),
            "training": json.loads(self.training.to_json_string()),
            "model": dataclasses.asdict(self.model),
            "sources": dict(self.sources),  # what was set, so that --resume replays exactly that
            "versions": versions.installed(),  # what the run ran on
        }


def script_class(constants: dict, config_file: str) -> type:
    """One field per constant that GRPOConfig and ModelConfig lack, defaulting to its value (a constant added at the
    top of grpotrainer.py is a setting with no further edit), then ScriptOptions' fields, --config defaulting to
    config_file."""
    own = [
        (name, (str if value is None else type(value)) | None, dataclasses.field(default=value))
        for name, value in constants.items()
        if name not in LIBRARY_FIELDS
    ]
    options = [
        (field.name, field.type, dataclasses.field(default=default, metadata=field.metadata))
        for field in dataclasses.fields(ScriptOptions)
        for default in [config_file if field.name == "config" else field.default]
    ]
    ScriptSettings = dataclasses.make_dataclass("ScriptSettings", own + options)
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
    return values


def check_value_types(values: dict, parser: HfArgumentParser, where: str) -> None:
    """A config file's values arrive as YAML types that argparse never sees: check them as it checks the command line
    (str settings take anything; TRL's own checks see their content)."""
    actions = {action.dest: action for action in parser._actions}
    for key, value in values.items():
        action = actions.get(key)
        items = value if isinstance(value, list) and action is not None and action.nargs == "+" else [value]
        for item in items if action is not None else ():
            if item is not None and not fits_type(action, item):
                raise InputError(f"{key} is {item!r} {where}, which is not {expected_type(action)}")


def fits_type(action, item) -> bool:
    if action.choices:
        return not isinstance(item, (list, dict)) and action.type(str(item)) in action.choices
    if action.type is int:
        return isinstance(item, int) and not isinstance(item, bool)
    if action.type is float:
        return isinstance(item, (int, float)) and not isinstance(item, bool)
    if action.type is string_to_bool:
        return isinstance(item, bool)
    return True


def expected_type(action) -> str:
    if action.choices:
        return "one of " + ", ".join(str(action.type(str(choice))) for choice in action.choices)
    return {int: "a whole number", float: "a number", string_to_bool: "true or false"}[action.type]


def command_line_keys(argv: list[str]) -> list[str]:
    return [arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")]


def raise_input_error(message: str):
    raise InputError(message)  # instead of argparse's usage text and exit


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


# The counts, rates and intervals a user sets, by what each must be (unset, None, means TRL's default). TRL would train
# num_train_epochs on a negative max_steps and fail late, or obscurely, on most of the others.
AT_LEAST_1 = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",
    "max_completion_length", "num_generations_eval", "num_iterations", "steps_per_generation", "generation_batch_size",
    "save_total_limit", "lora_r", "lora_alpha",
)  # fmt: skip
ABOVE_0 = ("learning_rate", "logging_steps", "eval_steps", "save_steps", "num_train_epochs", "top_p")
AT_LEAST_0 = ("warmup_steps", "weight_decay", "max_grad_norm", "completion_samples_every", "lora_dropout")


def check_numbers(values: dict) -> None:
    if values["max_steps"] != -1 and values["max_steps"] < 1:
        raise InputError(f"max_steps must be a positive number of steps, or -1 to train num_train_epochs, not {values['max_steps']}")  # fmt: skip
    for keys, ok, rule in (
        (AT_LEAST_1, lambda value: value >= 1, "at least 1"),
        (ABOVE_0, lambda value: value > 0, "above 0"),
        (AT_LEAST_0, lambda value: value >= 0, "0 or more"),
    ):
        for key in keys:
            if values[key] is not None and not ok(values[key]):
                raise InputError(f"{key} must be {rule}, not {values[key]}")
    if values["top_p"] > 1:
        raise InputError(f"top_p must be at most 1, not {values['top_p']}")
    if values["lora_dropout"] >= 1:
        raise InputError(f"lora_dropout must be below 1, not {values['lora_dropout']}")


def check_dataset_split(values: dict) -> None:
    """A run is never evaluated on the questions it trains on: one dataset file needs rows held out for evaluation."""
    one_file = Path(values["dataset_name"]).expanduser().is_file()
    evaluates = values["eval_before_and_after"] or values["eval_strategy"] != "no"
    if values["eval_holdout"] < 0:
        raise InputError(f"eval_holdout must be 0 or more, not {values['eval_holdout']}")
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
    check_numbers(values)
    if values["num_generations"] < 2:
        raise InputError("num_generations must be at least 2: GRPO compares each completion with its group")
    if values["temperature"] <= 0:
        raise InputError("temperature must be above 0: training samples its completions")
    if values["kl_coef"] < 0:
        raise InputError("kl_coef must be 0 (no KL term) or positive")
    if values["eval_samples"] is not None and values["eval_samples"] < 1:
        raise InputError("eval_samples must be at least 1 (leave it unset to evaluate the whole test split)")
    weights = values["reward_weights"]
    if weights is not None and len(weights) != len(rewards.REWARDS):
        names = ", ".join(function.__name__ for function, _ in rewards.REWARDS)
        raise InputError(f"reward_weights needs {len(rewards.REWARDS)} numbers, one per reward in order: {names}")
    check_dataset_split(values)
    if values["adapter"] and not values["eval_only"] and not values["merge"]:
        raise InputError("--adapter is for --eval_only and --merge: training always starts a new adapter (or --resume)")
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
    another) and the constants (lower-case names), with where each set value came from. With --resume they come from
    the run's settings.yaml instead, and the command line may change only RESUME_MAY_CHANGE."""
    ScriptSettings = script_class(constants, config_file)
    parser = HfArgumentParser((ScriptSettings, GRPOConfig, ModelConfig), allow_abbrev=False)
    parser.error = raise_input_error
    valid = {action.dest for action in parser._actions} - {"help"}
    valid |= {option[2:] for action in parser._actions for option in action.option_strings if option[:5] == "--no_"}

    if "-h" in argv or "--help" in argv:
        parser.print_help()  # every setting with its help text, as TRL's own scripts print it
        raise SystemExit(0)
    cli_keys = command_line_keys(argv)
    check_keys(cli_keys, valid, "on the command line")
    modes = parser.parse_known_args(argv)[0]  # --config, --smoke, --eval_only and --resume decide the layers below
    resume = resume_mode(modes.resume)
    if modes.merge and (modes.eval_only or resume):
        raise InputError(f"--merge cannot be combined with --{'eval_only' if modes.eval_only else 'resume'}")
    folder = modes.output_dir if "output_dir" in cli_keys else constants["output_dir"]
    if resume == "auto":  # the folder a new run would write to (--smoke has its own), and whether it holds one
        layers, sources = new_run_layers(modes, cli_keys, parser, valid, constants, script_dir)
        if "output_dir" not in cli_keys:
            folder = next(layer["output_dir"] for layer in reversed(layers) if "output_dir" in layer)
        import loading  # it imports this module's InputError; by the time a run parses settings, both are loaded

        resume = True if loading.holds_a_checkpoint(Path(folder)) else "auto"
    if resume is True:
        saved = read_saved_settings(Path(folder))
        layers = [replayed_values(saved, constants)]
        sources = {key: "settings.yaml" for key in saved["sources"].keys() - NO_GPU.keys()}
    elif resume is False:
        layers, sources = new_run_layers(modes, cli_keys, parser, valid, constants, script_dir)
    if not torch.cuda.is_available():
        # bf16 autocast and bitsandbytes bf16 compute need a GPU; use_cpu makes torchrun's processes one CPU group
        layers.append({key: value for key, value in NO_GPU.items() if key not in cli_keys})
        sources |= {key: "no GPU" for key in layers[-1]}
    for layer in layers:
        parser.set_defaults(**layer)

    namespace, unparsed = parser.parse_known_args(argv)
    if unparsed:
        raise InputError(f"unexpected argument '{unparsed[0]}': settings are given as --name value")
    values = vars(namespace) | {"resume": resume}
    if values["eval_only"] and "output_dir" not in cli_keys:
        values["output_dir"] = eval_output_dir(values["output_dir"], values["model_name"], values["adapter"])
        sources["output_dir"] = "--eval_only"
    if resume is True:
        check_resume_changes(saved, values, cli_keys)
    check_values(values)
    sources |= {key: "command line" for key in cli_keys}
    try:
        script, training, model = (
            kind(**{field.name: values[field.name] for field in dataclasses.fields(kind) if field.init})
            for kind in (ScriptSettings, GRPOConfig, ModelConfig)
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
    return RunSettings(script, training, model, sources)


NO_GPU = {"use_cpu": True, "bf16": False, "dtype": "float32"}


def new_run_layers(modes, cli_keys, parser, valid, constants: dict, script_dir: Path) -> tuple[list[dict], dict]:
    """The layers under the command line of a new run: constants < config file < presets, and their sources."""
    config_path = Path(modes.config) if "config" in cli_keys else script_dir / modes.config
    file_values = read_config_file(config_path)
    check_keys(file_values, valid, f"in {config_path}", COMMAND_LINE_ONLY | constants.keys(), constants.keys())
    check_value_types(file_values, parser, f"in {config_path}")
    sources = {key: config_path.name for key in file_values}
    layers = [{key: value for key, value in constants.items() if key in LIBRARY_FIELDS}, file_values]
    if modes.smoke:
        layers.append(smoke.preset())
        sources |= {key: "--smoke" for key in layers[-1]}
    if modes.eval_only and "eval_samples" not in cli_keys:
        layers.append({"eval_samples": None})  # --eval_only scores the whole test split unless told otherwise
        sources["eval_samples"] = "--eval_only"
    return layers, sources


def eval_output_dir(output_dir: str, model_name: str, adapter: str | None) -> str:
    """--eval_only's results beside what they measure, never mistaken for a training run: an adapter of a run in that
    run's folder (RUN/eval-final), anything else in eval-<model>[-<adapter>] beside the training runs."""
    if adapter and (Path(adapter).parent / "settings.yaml").is_file():
        return str(Path(adapter).parent / f"eval-{Path(adapter).name}")
    name = "-".join(Path(part.rstrip("/")).name for part in [model_name, adapter] if part)
    return str(Path(output_dir).parent / f"eval-{name}")


# ---------------------------------------------------------------------------------------------------------------------
# Resuming: the run's saved settings, of which the command line may change only what is safe mid-run

# What a resumed run may change: how long it runs and how often it logs, evaluates and saves. Everything else (model,
# data, LoRA shape, batch shape, generation, rewards, optimiser) would make the checkpoint continue a different run.
RESUME_MAY_CHANGE = {
    "resume", "output_dir", "max_steps", "num_train_epochs", "logging_steps", "logging_strategy", "eval_steps",
    "eval_strategy", "eval_before_and_after", "per_device_eval_batch_size", "save_steps", "save_strategy",
    "save_total_limit", "completion_samples_every", "disable_tqdm", "dataloader_num_workers",
}  # fmt: skip


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


def check_resume_changes(saved: dict, values: dict, cli_keys: list[str]) -> None:
    if "config" in cli_keys:
        raise InputError("--config cannot be combined with --resume: a resumed run keeps the settings it was saved with")  # fmt: skip
    for key in cli_keys:
        key = key if key in values else key.removeprefix("no_")
        before = saved_value(saved, key)
        if key not in RESUME_MAY_CHANGE and not same_setting(before, values[key]):
            raise InputError(
                f"--resume: {key} is {before} in the run's settings.yaml but {values[key]} here; a resumed run may "
                f"change only {', '.join(sorted(RESUME_MAY_CHANGE - {'resume', 'output_dir'}))}"
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


# The layers in the order they apply, for the printed settings; the config file comes second.
LAYER_ORDER = ["grpotrainer.py", "settings.yaml", "--smoke", "--eval_only", "no GPU", "command line"]


def layer_rank(source: str) -> float:
    return LAYER_ORDER.index(source) if source in LAYER_ORDER else 0.5  # the config file, named as it is


def source_line(source: str, values: list[str]) -> str:
    return textwrap.fill(
        ", ".join(values), 120, initial_indent=f"  {source}: ", subsequent_indent="      ", break_long_words=False
    )


def report_settings(run: RunSettings, constants: dict) -> None:
    """Print the constants and every other value that was set, as they are saved, grouped by where they came from in
    the order those layers apply; save them all in the output folder as settings.yaml. Call it on the main process."""
    saved = run.as_dict()
    plain = saved["model"] | saved["training"] | saved["script"]  # as RunSettings.value looks them up, enums as text
    groups = {}
    for key in sorted(constants.keys() | run.sources.keys()):
        groups.setdefault(run.sources.get(key, "grpotrainer.py"), []).append(f"{key}={plain[key]}")
    lines = [source_line(source, groups[source]) for source in sorted(groups, key=layer_rank)]
    for preset in ("--smoke", "--eval_only"):
        if replaced := sorted(key for key in constants if run.sources.get(key) == preset):
            names = ", ".join(replaced)
            lines.append(f"  ({preset} replaces grpotrainer.py's {names}: edits there have no effect with it)")
    layers = "settings.yaml < command line" if run.script.resume is True else "grpotrainer.py < config file < --smoke < command line"  # fmt: skip
    print(f"settings ({layers}):\n" + "\n".join(lines))
    folder = Path(run.training.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "settings.yaml", yaml.safe_dump(saved, sort_keys=False))
