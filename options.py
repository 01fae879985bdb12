"""Every setting of the script, declared once: what it is, what it must be (its `Rule`), and where a value came from.

A setting of the script's own is a field of `ScriptOptions` (or a constant at the top of grpotrainer.py); every field
of TRL's GRPOConfig and ModelConfig is a setting too. A rule sits on its field as `Annotated[type, Rule(...)]`, or is
one line of `RULES` for a constant or a library field. settings.py reads them, resolves a run's values and checks
them; nothing here reads input.
"""

import dataclasses
import enum
import json
import logging
import typing
import warnings
from typing import Annotated, NamedTuple

# bitsandbytes (which TRL's config classes import, through transformers and peft) warns at import that a kernel for
# its CPU inference repack is missing; loading.keep_cpu_4bit_weights_trainable turns that repack off, so the warning
# is noise that would stand beside every one-line error.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from trl import GRPOConfig, ModelConfig  # noqa: E402

import versions  # noqa: E402

# TRL 1.16 calls transformers 5's deprecated gradient_checkpointing* names while it runs the activation
# checkpointing that config.yaml turns on: warnings about TRL's code, not about anything a user set.
warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing\w*` is deprecated", category=FutureWarning)



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
    worst_case_check: Annotated[bool | None, Rule(resume_may_change=True)] = dataclasses.field(
        default=None,
        metadata={"help": "Before step 1, one step on the longest prompts with every completion max_completion_length "
                          "long, no optimizer step: out of memory at once, not hours in; prints its peak memory "
                          "(worstcase.py). Unset: on with a CUDA GPU, off on a CPU.", "nargs": "?", "const": True},
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


def script_class(constants: dict, config_file: str, helps: dict[str, str] | None = None) -> type:
    """ScriptOptions plus one field per constant that GRPOConfig and ModelConfig lack, defaulting to its value: a
    constant added at the top of grpotrainer.py is a setting with no further edit. --config defaults to config_file;
    `helps` are the constants' --help texts."""
    own = [
        constant_field(name, value, helps or {})
        for name, value in constants.items()
        if name not in LIBRARY_FIELDS
    ]
    config = dataclasses.field(default=config_file, metadata=ScriptOptions.__dataclass_fields__["config"].metadata)
    ScriptSettings = dataclasses.make_dataclass("ScriptSettings", [("config", str, config), *own], bases=(ScriptOptions,))  # fmt: skip
    ScriptSettings.__module__ = __name__
    return ScriptSettings
