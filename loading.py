"""Loading: GSM8K splits as chat prompts (from the hub, a folder or one file), the tokenizer, and the 4-bit model (an
existing adapter on it: adapters.py). What cannot be loaded is an InputError: one line and exit code 2."""

import importlib.util
import json
import socket
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import datasets
import huggingface_hub
import torch
from accelerate import PartialState, init_empty_weights
from datasets import Dataset, load_dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, ModelConfig, get_quantization_config

import rewards
from settings import InputError

# ---------------------------------------------------------------------------------------------------------------------
# The hub: asked only when a name is no local path, and never waited for

OFFLINE_HINT = "offline, name a local {} (HF_HUB_OFFLINE=1 uses the hub's local cache only)"


def work_offline_unless_the_hub_answers(names: list[str]) -> None:
    """Unreachable, the hub libraries retry each request for a minute; ask once, in seconds, and if the hub does not
    answer work from its local cache alone, as HF_HUB_OFFLINE=1 does."""
    if huggingface_hub.constants.HF_HUB_OFFLINE or not [name for name in names if not looks_like_path(name) and not Path(name).exists()]:  # fmt: skip
        return
    endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
    except OSError:
        huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True


def hub_error(what: str, name: str, local: str, error: Exception) -> InputError:
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        reason = "the hub cannot be reached and it is not in the local cache; " + OFFLINE_HINT.format(local)
    else:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return InputError(f"could not load {what} '{name}': {reason}")


# ---------------------------------------------------------------------------------------------------------------------
# Data: GSM8K from the hub or a local folder/file, as conversational prompts with a ground_truth column


def looks_like_path(name: str) -> bool:
    """A hub id is 'name' or 'owner/name'; anything else is a local path that must exist."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix in (".jsonl", ".json", ".parquet")


DATASET_FOLDER = "dataset folder with train.jsonl and test.jsonl with --dataset_name"


def load_split(name: str, config: str | None, split: str, holdout: int = 0, drop_unparsable: bool = False) -> Dataset:
    """One split of a local folder (train.jsonl/test.jsonl or parquet), a single local file (its last `holdout` rows
    the test split, the others train, or all of it for both when 0), or a hub dataset; each row's gold answer parsed."""
    path = Path(name).expanduser()
    if path.is_dir():
        files = sorted(path.glob(f"{split}.jsonl")) + sorted(path.glob(f"{split}*.parquet"))
        if not files:
            raise InputError(f"dataset folder {name} has no {split}.jsonl or {split}*.parquet")
        dataset = load_local(files)
    elif path.is_file():
        if path.suffix not in (".jsonl", ".json", ".parquet"):
            raise InputError(f"dataset file {name} must be .jsonl or .parquet")
        dataset = held_out(load_local([path]), split, holdout, name)
    elif looks_like_path(name):
        raise InputError(f"dataset path {name} does not exist")
    else:
        try:
            dataset = load_dataset(name, config, split=split)
        except Exception as error:  # the hub's many errors: offline, unknown repo, unknown config or split
            raise hub_error(f"the {split} split of dataset", name, DATASET_FOLDER, error) from None
    return parse_gold_answers(check_columns(dataset, name), f"{name} ({split})", drop_unparsable)


def held_out(dataset: Dataset, split: str, holdout: int, name: str) -> Dataset:
    if holdout >= len(dataset):
        raise InputError(f"eval_holdout is {holdout}, but dataset {name} holds only {len(dataset)} rows")
    cut = len(dataset) - holdout
    return dataset.select(range(cut, len(dataset)) if split == "test" and holdout else range(cut))


def parse_gold_answers(dataset: Dataset, name: str, drop_unparsable: bool) -> Dataset:
    """Adds the ground_truth column the rewards read. A gold answer with no number would score every completion 0:
    an error, unless the run asks to drop such rows, which it then counts."""
    check_answer_types(dataset, name)
    dataset = dataset.map(lambda example: {"ground_truth": rewards.parse_ground_truth(answer_text(example["answer"]))})
    bad = [i for i, truth in enumerate(dataset["ground_truth"]) if not truth]
    if bad and not drop_unparsable:
        raise InputError(
            f"{len(bad)} of {len(dataset)} rows of dataset {name} have a gold answer with no number, the first "
            f"(row {bad[0] + 1}): {answer_text(dataset[bad[0]]['answer'])[-80:]!r}; fix them, or set "
            f"--drop_unparsable_answers true"
        )
    if bad and PartialState().is_main_process:
        print(f"dataset {name}: dropped {len(bad)} of {len(dataset)} rows whose gold answer has no number")
    return dataset.select(sorted(set(range(len(dataset))) - set(bad))) if bad else dataset


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def answer_text(answer) -> str:
    """A gold answer as GSM8K's text: a JSON number (people's own data often has one) is the answer itself."""
    return str(answer) if is_number(answer) else answer


def check_answer_types(dataset: Dataset, name: str) -> None:
    """A gold answer is text or a number; anything else (null, a list, true) is an error that names its row. The
    datasets library keeps a column of mixed JSON types as they are (its Json feature), so each row is checked."""
    for row, answer in enumerate(dataset["answer"], 1):
        if not isinstance(answer, str) and not is_number(answer):
            raise InputError(
                f"dataset {name} row {row}: the gold answer is {json.dumps(answer)[:80]}, a {type(answer).__name__}: "
                f"it must be text ending in '#### <number>' or a number"
            )


def load_local(files: list[Path]) -> Dataset:
    if all(file.stat().st_size == 0 for file in files):
        raise InputError(f"dataset file {files[0]} is empty")
    builder = "parquet" if files[0].suffix == ".parquet" else "json"
    try:
        return load_dataset(builder, data_files=[str(file) for file in files], split="train")
    except Exception as error:  # malformed lines or columns
        raise InputError(bad_json_line(files) or f"could not read {files[0]}: {type(error).__name__}") from None


def bad_json_line(files: list[Path]) -> str | None:
    """Where a .jsonl file breaks, which the datasets library does not say."""
    for file in (file for file in files if file.suffix == ".jsonl"):
        with open(file) as lines:
            for number, line in enumerate(lines, 1):
                try:
                    line.strip() and json.loads(line)
                except ValueError as error:
                    return f"dataset file {file} line {number} is not valid JSON ({error.args[0].split(':')[0]})"
    return None


def check_columns(dataset: Dataset, name: str) -> Dataset:
    missing = [column for column in ("question", "answer") if column not in dataset.column_names]
    if missing:
        raise InputError(f"dataset {name} has no '{missing[0]}' column (it has: {', '.join(dataset.column_names)})")
    if len(dataset) == 0:
        raise InputError(f"dataset {name} is empty")
    return dataset


def to_chat_prompts(dataset: Dataset, prompt: str, limit: int | None = None) -> Dataset:
    """The first `limit` rows (all if None) with a conversational `prompt` (TRL applies the model's chat template)
    built from `prompt`'s {question}."""
    if limit is not None:
        if limit > len(dataset):
            raise InputError(f"eval_samples is {limit}, but the test split holds only {len(dataset)} questions")
        dataset = dataset.select(range(limit))
    return dataset.map(
        lambda example: {"prompt": [{"role": "user", "content": prompt.format(question=example["question"])}]}
    )


# ---------------------------------------------------------------------------------------------------------------------
# Model: QLoRA (4-bit NF4 base, LoRA adapter) through trl.ModelConfig's settings


def attention_implementation(model_args: ModelConfig) -> str:
    if model_args.attn_implementation:
        return model_args.attn_implementation
    # flash-attn is optional: it is built from source against the CUDA toolkit
    return "flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else "sdpa"


def model_load_error(name: str, error: Exception) -> InputError:
    return hub_error("model", name, "model folder with --model_name", error)


def load_tokenizer(model_args: ModelConfig, training_args: GRPOConfig):
    name = model_args.model_name_or_path
    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise InputError(f"model path {name} does not exist")
    try:
        return AutoTokenizer.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise model_load_error(name, error) from None


def meta_model(model_args: ModelConfig, training_args: GRPOConfig):
    """The model built from its config on the meta device: its modules and shapes, without memory or time."""
    name = model_args.model_name_or_path
    try:
        config = AutoConfig.from_pretrained(name, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code)  # fmt: skip
    except (OSError, ValueError) as error:
        raise model_load_error(name, error) from None
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=training_args.trust_remote_code)


def check_lora_targets(model_args: ModelConfig, training_args: GRPOConfig) -> None:
    """LoRA targets that name no module would fail only once the weights have loaded: check them against the model
    built from its config on the meta device."""
    targets = model_args.lora_target_modules
    targets = [targets] if isinstance(targets, str) else targets or []
    if not model_args.use_peft or targets in ([], ["all-linear"]):
        return
    name = model_args.model_name_or_path
    modules = dict(meta_model(model_args, training_args).named_modules())
    linear = sorted({module_name.rsplit(".", 1)[-1] for module_name, module in modules.items() if isinstance(module, torch.nn.Linear)})  # fmt: skip
    for target in targets:
        if not any(module_name == target or module_name.endswith("." + target) for module_name in modules):
            raise InputError(f"lora_target_modules: {name} has no module '{target}' (its linear layers: {', '.join(linear)})")  # fmt: skip


def load_model(model_args: ModelConfig, training_args: GRPOConfig):
    quantization_config = get_quantization_config(model_args)
    device_map = None
    if quantization_config is not None and torch.cuda.is_available():
        device_map = {"": PartialState().local_process_index}  # 4-bit weights load straight onto this process's GPU
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            dtype=model_args.dtype,
            attn_implementation=attention_implementation(model_args),
            quantization_config=quantization_config,
            device_map=device_map,
            trust_remote_code=training_args.trust_remote_code,
        )
    except (OSError, ValueError) as error:
        raise model_load_error(model_args.model_name_or_path, error) from None
    keep_cpu_4bit_weights_trainable(model)
    return model


def keep_cpu_4bit_weights_trainable(model) -> None:
    """bitsandbytes 0.50 repacks a CPU 4-bit weight for inference the first time its layer runs in eval mode, and the
    repacked kernel has no backward: training after an evaluation would silently lose the gradient through every
    frozen base layer. Keep the trainable layout (GPUs never repack)."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints: --resume continues from the newest one that was saved completely


def resume_checkpoint(output_dir: str) -> tuple[str, list[str]]:
    """The newest complete checkpoint-<step> folder of output_dir, and a line for each newer one it skips."""
    folders = [path for path in Path(output_dir).glob("checkpoint-*") if path.is_dir() and path.name[11:].isdigit()]
    skipped = []
    for folder in sorted(folders, key=lambda path: int(path.name[11:]), reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder), skipped
        skipped.append(f"--resume: skipping {folder}, {problem}")
    newest = f"; the newest, {skipped[0].removeprefix('--resume: skipping ')}" if skipped else ""
    raise InputError(f"--resume: no complete checkpoint-<step> folder in {output_dir} to continue from{newest}")


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or None. Trainer._save_checkpoint writes trainer_state.json last,
    after the weights, optimizer, scheduler and RNG state, so a folder without it is a save that was cut short; a
    truncated file beside it (a full disk, a failing machine) is found by reading each file's own length record."""
    try:
        json.loads((folder / "trainer_state.json").read_text())["global_step"]
    except FileNotFoundError:
        return "which has no trainer_state.json: its save was cut short"
    except (ValueError, KeyError):
        return "whose trainer_state.json is truncated"
    for file in sorted(folder.iterdir()):
        if file.suffix == ".safetensors" and not safetensors_is_whole(file):
            return f"whose {file.name} is truncated"
        if file.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(file):  # torch.save writes a zip
            return f"whose {file.name} is truncated"
    return None


def safetensors_is_whole(file: Path) -> bool:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors up to the header's last offset."""
    try:
        with open(file, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length))
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError):
        return False
    return file.stat().st_size == 8 + length + end


def trainer_state(checkpoint: str) -> dict:
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())


def resume_line(checkpoint: str, training_args: GRPOConfig) -> str:
    step = trainer_state(checkpoint)["global_step"]
    goal = f"of {training_args.max_steps}" if training_args.max_steps > 0 else f"of {training_args.num_train_epochs:g} epochs"  # fmt: skip
    return f"--resume: continuing from {checkpoint}, step {step} {goal}"


def holds_a_checkpoint(folder: Path) -> bool:
    """Whether --resume auto continues the run in folder: its settings.yaml and a complete checkpoint are there."""
    if not (folder / "settings.yaml").is_file():
        return False
    try:
        resume_checkpoint(str(folder))
    except InputError:
        return False
    return True


def check_auto_start(folder: Path) -> None:
    """--resume auto starts the run in a folder without a complete checkpoint: one that is empty or holds an attempt
    of it cut short before its first checkpoint (its settings.yaml, logs), never another run's results or files."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not (folder / "settings.yaml").is_file():
        raise InputError(f"--resume auto: {folder} holds files but no run of this script (no settings.yaml): name another --output_dir")  # fmt: skip
    if (folder / "final").exists():
        raise InputError(f"--resume auto: {folder} holds a finished run (final/) but no checkpoint to continue from: name another --output_dir")  # fmt: skip


def finished_line(training_args: GRPOConfig) -> str | None:
    """What --resume says, instead of training no step and overwriting final/, when the run has nothing left to do:
    its newest complete checkpoint reached max_steps (or num_train_epochs) and its final adapter is saved."""
    output_dir = training_args.output_dir
    checkpoint = resume_checkpoint(output_dir)[0]
    state = trainer_state(checkpoint)
    if training_args.max_steps > 0:
        done, goal = state["global_step"] >= training_args.max_steps, f"max_steps {training_args.max_steps}"
    else:
        done, goal = state["epoch"] >= training_args.num_train_epochs, f"num_train_epochs {training_args.num_train_epochs:g}"  # fmt: skip
    if not done or not (Path(output_dir) / "final" / "adapter_config.json").is_file():
        return None
    return (
        f"--resume: {output_dir} is finished: {checkpoint} reached {goal} and {output_dir}/final holds its adapter; "
        f"nothing to do (raise --max_steps to train on)"
    )
