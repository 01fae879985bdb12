"""An existing LoRA adapter (--adapter): a run's final/ or checkpoint, or one from TRL's SFTTrainer or DPOTrainer.
`--eval_only` evaluates it, `--merge` folds it into its base, and a training run continues it (SFT -> DPO -> GRPO).

Everything its adapter_config.json says is checked against the run before any weights load: that it is a LoRA
adapter, that it was trained on the run's base (by name; by shapes where the names differ), that no LoRA setting on
the command line contradicts its own. Its LoRA settings then become the run's, so settings.yaml records the truth.
"""

import json
import re
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import TrainerCallback

import loading
import settings
from options import Layer, RunSettings, Source
from settings import InputError

# trl.ModelConfig's LoRA settings -> the peft.LoraConfig field that adapter_config.json records them in
LORA_SETTINGS = {
    "lora_r": "r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "lora_target_modules": "target_modules",
    "lora_target_parameters": "target_parameters",
    "lora_modules_to_save": "modules_to_save",
    "lora_task_type": "task_type",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
}


def on_command_line(run: RunSettings, key: str) -> bool:
    return getattr(run.sources.get(key), "layer", None) is Layer.COMMAND_LINE


def read_config(adapter: str) -> dict:
    """The adapter's adapter_config.json, which must describe a LoRA adapter."""
    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        raise InputError(f"adapter folder {adapter} does not exist or holds no adapter_config.json")
    try:
        config = json.loads(path.read_text())
    except ValueError:
        raise InputError(f"adapter {adapter}: its adapter_config.json is not valid JSON") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise InputError(f"adapter {adapter} is a {kind or 'untyped'} adapter, not a LoRA adapter (peft_type LORA)")
    return config


def same_model(recorded: str, given: str) -> bool:
    """A local folder may be named by different paths; a hub id only by itself."""
    paths = [Path(name).expanduser() for name in (recorded, given)]
    if all(path.exists() for path in paths):
        return paths[0].resolve() == paths[1].resolve()
    return recorded == given


# ---------------------------------------------------------------------------------------------------------------------
# The checks before anything heavy


def check(run: RunSettings) -> None:
    """All that can be wrong with --adapter for this run, before any weights load; then the adapter's LoRA settings
    replace the run's (config.yaml's and the presets'), so that what is printed and saved is what trains."""
    adapter = run.script.adapter
    config = read_config(adapter)
    use_recorded_base(adapter, config, run)
    check_base(adapter, config, run)
    check_lora_settings(adapter, config, run)
    for key, field in LORA_SETTINGS.items():
        if field in config and not on_command_line(run, key):  # one on the command line agrees with it
            setattr(run.model, key, as_setting(config[field]))
            run.sources[key] = Source(Layer.ADAPTER)
    run.model.use_peft = True


def use_recorded_base(adapter: str, config: dict, run: RunSettings) -> None:
    """An adapter knows its base: where no model was chosen (MODEL_NAME, the default, applies; --model_name and
    --smoke choose one), the run uses the base the adapter was trained on, and says so."""
    trained_on = config.get("base_model_name_or_path")
    if not trained_on or "model_name" in run.sources:
        return
    run.script.model_name = run.model.model_name_or_path = trained_on
    run.sources["model_name"] = Source(Layer.ADAPTER)
    if getattr(run.sources.get("output_dir"), "layer", None) is Layer.EVAL_ONLY:  # named for the model it evaluates
        run.training.output_dir = settings.eval_output_dir(run.training.output_dir, trained_on, adapter)
    if PartialState().is_main_process:
        print(f"--adapter {adapter}: on its base model {trained_on}, as its adapter_config.json records "
              "(--model_name to choose another)")  # fmt: skip


def check_base(adapter: str, config: dict, run: RunSettings) -> None:
    """The adapter's recorded base must be the run's model; where the names differ, the shapes decide whether
    --allow_other_base may override it."""
    trained_on, model_name = config.get("base_model_name_or_path"), run.model.model_name_or_path
    if not trained_on or same_model(trained_on, model_name):
        return
    misfit = shape_mismatch(adapter, run)
    if misfit:
        raise InputError(f"adapter {adapter} is an adapter for another base: it does not fit the model: {misfit}")
    if not run.script.allow_other_base:
        raise InputError(
            f"adapter {adapter} is an adapter for another base: it was trained on '{trained_on}', not on "
            f"'{model_name}' (use it with --model_name {trained_on}; its shapes fit '{model_name}', so "
            f"--allow_other_base true uses it there)"
        )
    if PartialState().is_main_process:
        print(f"adapter {adapter}: trained on '{trained_on}', used on '{model_name}' (--allow_other_base)")


def shape_mismatch(adapter: str, run: RunSettings) -> str | None:
    """Where the adapter's LoRA weights do not fit the run's model, read from the safetensors header and the model
    built on the meta device (no weights load); None if they fit, or if the adapter is no safetensors file."""
    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    with open(weights, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    modules = dict(loading.meta_model(run.model, run.training).named_modules())
    for key, entry in header.items():
        name, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
        if key == "__metadata__" or kind not in ("A.weight", "B.weight"):
            continue
        module = modules.get(name)
        if module is None:
            return f"the model has no module {name}"
        expected = module.in_features if kind == "A.weight" else module.out_features
        got = entry["shape"][1] if kind == "A.weight" else entry["shape"][0]
        if expected != got:
            return f"{name} has {expected} {'inputs' if kind == 'A.weight' else 'outputs'}, the adapter's {got}"
    return None


def as_setting(value):
    """adapter_config.json's value as trl.ModelConfig holds it: module names as a sorted list."""
    return sorted(value) if isinstance(value, list) else value


def check_lora_settings(adapter: str, config: dict, run: RunSettings) -> None:
    """A continued adapter keeps its own LoRA shape: a LoRA setting on the command line that says otherwise is an
    error naming both values."""
    if on_command_line(run, "use_peft") and not run.model.use_peft:
        raise InputError(f"use_peft is false on the command line, but --adapter {adapter} is a LoRA adapter")
    for key, field in LORA_SETTINGS.items():
        if not on_command_line(run, key) or field not in config:
            continue
        given, own = getattr(run.model, key), as_setting(config[field])
        if key == "lora_target_modules":
            model = loading.meta_model(run.model, run.training)
            agree = selected_modules(given, model) == selected_modules(own, model)
        else:
            agree = settings.same_setting(own, given)
        if not agree:
            raise InputError(
                f"{key} is {given} on the command line, but adapter {adapter} has {field} {own}: "
                f"a continued adapter keeps its own LoRA settings (leave {key} out)"
            )


def selected_modules(targets, model) -> set[str]:
    """The modules that LoRA target_modules select on the model, by peft's rules: 'all-linear' is every linear
    layer but the output layer (peft/tuners/tuners_utils.py, _maybe_include_all_linear_layers), a string a regular
    expression, a list names or name endings; peft saves 'all-linear' as the list of what it selected."""
    names = [name for name, _ in model.named_modules()]
    if targets == "all-linear" or targets == ["all-linear"]:
        output = model.get_output_embeddings()
        return {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and module is not output}  # fmt: skip
    if isinstance(targets, str):
        return {name for name in names if re.fullmatch(targets, name)}
    return {name for name in names if any(name == target or name.endswith(f".{target}") for target in targets)}


# ---------------------------------------------------------------------------------------------------------------------
# Loading it


def attach(model, adapter: str, trainable: bool = False):
    """The adapter on the loaded base (peft loads it frozen, for inference, unless told it is trainable)."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as error:  # size mismatches, target modules the base lacks
        message = " ".join(str(error).strip().splitlines()[-1].split())  # torch indents it with a tab
        raise InputError(f"adapter {adapter} is an adapter for another base: it does not fit the model: {message}") from None  # fmt: skip


def attach_for_training(model, adapter: str, base_name: str):
    """The adapter on the loaded base, trainable (loaded frozen it would train nothing, silently: trl#6700), and
    recording the base it now trains on: peft keeps the name it was loaded with, and its save_pretrained fills the
    name in only where it is missing (peft/peft_model.py line 376)."""
    model = attach(model, adapter, trainable=True)
    model.peft_config["default"].base_model_name_or_path = base_name
    require_trainable(model, adapter)
    return model


def require_trainable(model, adapter: str) -> None:
    if not any(parameter.requires_grad for parameter in model.parameters()):
        raise InputError(f"adapter {adapter} loaded with no trainable parameters: training would change nothing")


class RequireTrainableParameters(TrainerCallback):
    """Before the first step: the model has trainable parameters and the optimizer holds every one of them. A frozen
    adapter trains nothing while the loss and rewards look normal (trl#6700, trl#3031); stop instead. on_train_begin
    comes after the optimizer is built and a checkpoint loaded (transformers Trainer._inner_training_loop)."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        held = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
        if not trainable:
            raise InputError("the model has no trainable parameters: training would change nothing")
        missing = sum(id(parameter) not in held for parameter in trainable)
        if missing:
            raise InputError(
                f"the optimizer holds {len(trainable) - missing} of the model's {len(trainable)} trainable parameter "
                "tensors: training would leave the others as they are"
            )
