"""GRPO on GSM8K: train a 4-bit Qwen model's LoRA adapter with TRL's GRPOTrainer and verifiable math rewards.

    python grpotrainer.py                              # train with the settings below and config.yaml
    python grpotrainer.py --smoke                      # the whole pipeline offline on a tiny model, ~1 min on a CPU
    python grpotrainer.py --eval_only --adapter DIR    # greedy GSM8K test accuracy of MODEL_NAME (+ an adapter)
    tensorboard --logdir outputs

Where settings live: the constants just below; every other training setting (any GRPOConfig field, the LoRA and
4-bit settings of trl.ModelConfig) in config.yaml. `--name value` on the command line overrides any of them.
"""

# ---------------------------------------------------------------------------------------------------------------------
# Settings people edit (command line: their lower-case name, e.g. --model_name, --kl_coef)
MODEL_NAME = "Qwen/Qwen3-8B"  # a hub id or a local folder
DATASET_NAME = "openai/gsm8k"  # a hub id, a folder with train.jsonl/test.jsonl, or one .jsonl/.parquet file
DATASET_CONFIG = "main"  # the hub dataset's configuration
NUM_GENERATIONS = 4  # completions sampled per question: the group GRPO compares them within
KL_COEF = 0.05  # GRPOConfig.beta: pull towards the reference model (0 turns the KL term off)
TEMPERATURE = 0.7  # sampling temperature of the training completions
OUTPUT_DIR = "outputs/qwen3-gsm8k-grpo"  # an occupied folder is never overwritten: a new run gets "<dir>-2", ...
ENABLE_THINKING = False  # Qwen3's thinking mode; it would spend the whole completion budget on thinking
EVAL_SAMPLES = 200  # test questions scored greedily every eval_steps and before/after training
EVAL_BEFORE_AND_AFTER = True  # measure the base model's accuracy before training and the trained model's after
CONFIG_FILE = "config.yaml"  # read from beside this script unless --config names another file
# ---------------------------------------------------------------------------------------------------------------------

import dataclasses
import difflib
import json
import importlib.util
import logging
import math
import os
import signal
import sys
import tempfile
from pathlib import Path

# bitsandbytes warns at import that a kernel for its CPU inference repack is missing; keep_cpu_4bit_weights_trainable
# turns that repack off, so the warning is noise that would stand beside every one-line error.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

import torch
import yaml
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset, load_dataset
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, HfArgumentParser, TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer, ModelConfig, get_peft_config, get_quantization_config
from trl.models import unwrap_model_for_generation

import rewards

SCRIPT_DIR = Path(__file__).resolve().parent
SMOKE_DIR = Path(tempfile.gettempdir()) / "grpotrainer-smoke"

PROMPT = (
    "Solve the following math problem step by step, showing your arithmetic. "
    "Then give the final answer on its own last line as '#### <number>'.\n\n{question}"
)


@dataclasses.dataclass
class ScriptSettings:
    """This script's own settings; GRPOConfig and trl.ModelConfig hold the rest."""

    model_name: str = MODEL_NAME
    dataset_name: str = DATASET_NAME
    dataset_config: str | None = DATASET_CONFIG
    kl_coef: float = KL_COEF
    enable_thinking: bool = ENABLE_THINKING
    eval_samples: int | None = EVAL_SAMPLES
    eval_before_and_after: bool = EVAL_BEFORE_AND_AFTER
    completion_samples_every: int = dataclasses.field(
        default=10, metadata={"help": "Write sampled completions to TensorBoard's text tab every N logging steps."}
    )
    config: str = dataclasses.field(default=CONFIG_FILE, metadata={"help": "The YAML file of training settings."})
    smoke: bool = dataclasses.field(default=False, metadata={"help": "Offline run on a tiny model and synthetic data."})
    eval_only: bool = dataclasses.field(default=False, metadata={"help": "Only measure GSM8K test accuracy."})
    adapter: str | None = dataclasses.field(default=None, metadata={"help": "A LoRA adapter folder to evaluate."})
    resume: bool = dataclasses.field(default=False, metadata={"help": "Continue from output_dir's last checkpoint."})


# Settings whose home is the top of this script (or the command line), never config.yaml.
CONSTANT_KEYS = {
    "model_name", "dataset_name", "dataset_config", "num_generations", "kl_coef", "temperature", "output_dir",
    "enable_thinking", "eval_samples", "eval_before_and_after",
}  # fmt: skip
COMMAND_LINE_ONLY = {"config", "smoke", "eval_only", "adapter", "resume"}
# Library names of settings that this script names differently, so that each setting has one name
# (GRPOTrainer ignores resume_from_checkpoint in its config: it would silently start afresh).
RENAMED = {
    "beta": "kl_coef",
    "model_name_or_path": "model_name",
    "eval_on_start": "eval_before_and_after",
    "resume_from_checkpoint": "resume",
}


def smoke_preset() -> dict:
    """`--smoke`: the whole pipeline on a tiny random Qwen3 and synthetic GSM8K, sized to visibly learn in a minute."""
    return dict(
        model_name=str(SMOKE_DIR / "model"),
        dataset_name=str(SMOKE_DIR / "gsm8k"),
        dataset_config=None,
        output_dir="outputs/smoke",
        max_steps=80,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        num_generations=8,
        temperature=1.0,
        max_completion_length=16,
        logging_steps=2,
        save_steps=40,
        eval_steps=40,
        eval_samples=16,
        per_device_eval_batch_size=16,
        completion_samples_every=5,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
    )


class SettingsError(Exception):
    """Bad input: reported as one line and exit code 2."""


# ---------------------------------------------------------------------------------------------------------------------
# Settings: constants < config.yaml < presets (--smoke, --eval_only, no GPU) < command line


def closest(key: str, valid) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML silently keeps the last of two equal keys; a setting named twice must be an error instead."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key_node, deep=deep) for key_node, _ in node.value]
        for key in keys:
            if keys.count(key) > 1:
                raise SettingsError(f"'{key}' is set twice in the config file (line {node.start_mark.line + 1})")
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: Path) -> dict:
    if not path.is_file():
        raise SettingsError(f"config file {path} does not exist")
    try:
        values = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as error:
        raise SettingsError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise SettingsError(f"config file {path} must be a mapping of 'setting: value' lines")
    return values


def command_line_keys(argv: list[str]) -> list[str]:
    return [arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")]


def raise_settings_error(message: str):
    raise SettingsError(message)  # instead of argparse's usage text and traceback-free exit


def looks_like_path(name: str) -> bool:
    """A hub id is 'name' or 'owner/name'; anything else is a local path that must exist."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix in (".jsonl", ".json", ".parquet")


def check_keys(keys, valid: set[str], where: str, forbidden: set[str] = frozenset()) -> None:
    seen = set()
    for key in keys:
        if key in seen:
            raise SettingsError(f"'{key}' is given twice {where}")
        seen.add(key)
        if key in RENAMED:
            raise SettingsError(f"'{key}' is called '{RENAMED[key]}' here: set that instead")
        if key in forbidden:
            home = f"grpotrainer.py ({key.upper()})" if key in CONSTANT_KEYS else "the command line"
            raise SettingsError(f"'{key}' cannot be set {where}: its home is {home}, or --{key} on the command line")
        if key not in valid:
            raise SettingsError(f"unknown setting '{key}' {where}{closest(key, valid)}")


def check_values(values: dict) -> None:
    """The mistakes TRL accepts silently or reports obscurely, checked before anything is loaded."""
    if values["num_generations"] < 2:
        raise SettingsError("num_generations must be at least 2: GRPO compares each completion with its group")
    if values["temperature"] <= 0:
        raise SettingsError("temperature must be above 0: training samples its completions")
    if values["kl_coef"] < 0:
        raise SettingsError("kl_coef must be 0 (no KL term) or positive")
    if values["eval_samples"] is not None and values["eval_samples"] < 1:
        raise SettingsError("eval_samples must be at least 1 (leave it unset to evaluate the whole test split)")
    weights = values["reward_weights"]
    if weights is not None and len(weights) != len(rewards.REWARDS):
        names = ", ".join(function.__name__ for function, _ in rewards.REWARDS)
        raise SettingsError(f"reward_weights needs {len(rewards.REWARDS)} numbers, one per reward in order: {names}")
    if values["adapter"] and not values["eval_only"]:
        raise SettingsError("--adapter is for --eval_only: training always starts a new adapter (or --resume)")
    if values["use_vllm"] and values["load_in_4bit"]:
        raise SettingsError(
            "4-bit loading with vLLM generation is broken upstream: set load_in_4bit: false to train a bf16 LoRA "
            "with vLLM, or use_vllm: false to keep 4-bit"
        )
    processes = int(os.environ.get("WORLD_SIZE", 1))
    batch, accumulation = values["per_device_train_batch_size"], values["gradient_accumulation_steps"]
    generation_batch = values["generation_batch_size"] or processes * batch * (
        values["steps_per_generation"] or accumulation
    )
    if generation_batch % values["num_generations"]:
        raise SettingsError(
            f"{processes} process(es) x per_device_train_batch_size {batch} x gradient_accumulation_steps "
            f"{accumulation} = {generation_batch} completions is not a multiple of num_generations "
            f"{values['num_generations']}: per_device_train_batch_size counts completions, not questions, and every "
            f"question needs its full group of num_generations completions"
        )


def parse_settings(argv: list[str]) -> tuple[ScriptSettings, GRPOConfig, ModelConfig, dict]:
    """The three settings objects, and where each setting that differs from its default came from."""
    parser = HfArgumentParser((ScriptSettings, GRPOConfig, ModelConfig), allow_abbrev=False)
    parser.error = raise_settings_error
    valid = {action.dest for action in parser._actions} - {"help"}
    valid |= {option[2:] for action in parser._actions for option in action.option_strings if option[:5] == "--no_"}

    cli_keys = command_line_keys(argv)
    check_keys(cli_keys, valid, "on the command line")
    modes = parser.parse_known_args(argv)[0]  # --config, --smoke and --eval_only decide the layers below
    config_path = Path(modes.config) if "config" in cli_keys else SCRIPT_DIR / CONFIG_FILE
    file_values = read_config_file(config_path)
    check_keys(file_values, valid, f"in {config_path}", forbidden=CONSTANT_KEYS | COMMAND_LINE_ONLY)

    sources = {key: config_path.name for key in file_values}
    constants = {"num_generations": NUM_GENERATIONS, "temperature": TEMPERATURE, "output_dir": OUTPUT_DIR}
    layers = [constants, file_values]  # the other constants are ScriptSettings' own defaults
    if modes.smoke:
        layers.append(smoke_preset())
        sources |= {key: "--smoke" for key in layers[-1]}
    if modes.eval_only and "eval_samples" not in cli_keys:
        layers.append({"eval_samples": None})  # --eval_only scores the whole test split unless told otherwise
    if not torch.cuda.is_available():
        # bf16 autocast and bitsandbytes bf16 compute need a GPU; use_cpu makes torchrun's processes one CPU group
        layers.append({"use_cpu": True, "bf16": False, "dtype": "float32"})
        sources |= {"use_cpu": "no GPU", "bf16": "no GPU", "dtype": "no GPU"}
    for layer in layers:
        parser.set_defaults(**layer)

    namespace, unparsed = parser.parse_known_args(argv)
    if unparsed:
        raise SettingsError(f"unexpected argument '{unparsed[0]}': settings are given as --name value")
    values = vars(namespace)
    check_values(values)
    sources |= {key: "command line" for key in cli_keys}
    try:
        settings, training_args, model_args = (
            kind(**{field.name: values[field.name] for field in dataclasses.fields(kind) if field.init})
            for kind in (ScriptSettings, GRPOConfig, ModelConfig)
        )
    except ValueError as error:  # TRL's and transformers' own checks
        raise SettingsError(" ".join(str(error).split())) from None
    training_args.beta = settings.kl_coef
    model_args.model_name_or_path = settings.model_name
    training_args.chat_template_kwargs = {"enable_thinking": settings.enable_thinking}
    training_args.eval_on_start = settings.eval_before_and_after and not settings.resume  # once TensorBoard is up
    if training_args.reward_weights is None:
        training_args.reward_weights = [weight for _, weight in rewards.REWARDS]
    return settings, training_args, model_args, sources


def claim_output_dir(requested: str, resume: bool) -> str:
    """A run never overwrites an earlier one: an occupied folder gets the next free "-N" suffix."""
    if resume:
        if Path(requested).is_dir() and get_last_checkpoint(requested):
            return requested
        raise SettingsError(f"--resume: no checkpoint-* folder in {requested} to continue from")
    candidates = [requested] + [f"{requested}-{n}" for n in range(2, 10_000)]
    return next(path for path in candidates if not Path(path).exists() or not any(Path(path).iterdir()))


def report_settings(settings, training_args, model_args, sources) -> None:
    """Print the resolved settings and save them all in the output folder, on the main process."""
    resolved = {}
    for key in sorted(CONSTANT_KEYS) + sorted(sources.keys() - CONSTANT_KEYS):
        resolved[key] = getattr(next(obj for obj in (settings, training_args, model_args) if hasattr(obj, key)), key)
    lines = [f"  {key}: {value}" + (f"    ({sources[key]})" if key in sources else "") for key, value in resolved.items()]
    print("settings (grpotrainer.py < config file < --smoke < command line):\n" + "\n".join(lines))
    saved = all_settings(settings, training_args, model_args)
    Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(training_args.output_dir) / "settings.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))


def all_settings(settings, training_args, model_args) -> dict:
    return {
        "script": dataclasses.asdict(settings),
        "training": json.loads(training_args.to_json_string()),
        "model": dataclasses.asdict(model_args),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Data: GSM8K from the hub or a local folder/file, as conversational prompts with a ground_truth column


def load_split(settings: ScriptSettings, split: str) -> Dataset:
    """One split of a local folder (train.jsonl/test.jsonl or parquet), a single local file, or a hub dataset."""
    name = settings.dataset_name
    path = Path(name).expanduser()
    if path.is_dir():
        files = sorted(path.glob(f"{split}.jsonl")) + sorted(path.glob(f"{split}*.parquet"))
        if not files:
            raise SettingsError(f"dataset folder {name} has no {split}.jsonl or {split}*.parquet")
        dataset = load_local(files)
    elif path.is_file():
        if path.suffix not in (".jsonl", ".json", ".parquet"):
            raise SettingsError(f"dataset file {name} must be .jsonl or .parquet")
        dataset = load_local([path])
    elif looks_like_path(name):
        raise SettingsError(f"dataset path {name} does not exist")
    else:
        try:
            dataset = load_dataset(name, settings.dataset_config, split=split)
        except Exception as error:  # the hub's many errors: offline, unknown repo, unknown config or split
            raise SettingsError(
                f"could not load dataset '{name}' split '{split}' from the hub ({type(error).__name__}); "
                f"offline, point --dataset_name at a folder with train.jsonl and test.jsonl"
            ) from None
    return check_columns(dataset, name)


def load_local(files: list[Path]) -> Dataset:
    if all(file.stat().st_size == 0 for file in files):
        raise SettingsError(f"dataset file {files[0]} is empty")
    builder = "parquet" if files[0].suffix == ".parquet" else "json"
    try:
        return load_dataset(builder, data_files=[str(file) for file in files], split="train")
    except Exception as error:  # malformed lines or columns
        raise SettingsError(f"could not read {files[0]}: {type(error).__name__}") from None


def check_columns(dataset: Dataset, name: str) -> Dataset:
    missing = [column for column in ("question", "answer") if column not in dataset.column_names]
    if missing:
        raise SettingsError(f"dataset {name} has no '{missing[0]}' column (it has: {', '.join(dataset.column_names)})")
    if len(dataset) == 0:
        raise SettingsError(f"dataset {name} is empty")
    return dataset


def to_prompt(example: dict) -> dict:
    """TRL applies the model's chat template to a conversational prompt; rewards read ground_truth."""
    return {
        "prompt": [{"role": "user", "content": PROMPT.format(question=example["question"])}],
        "ground_truth": rewards.parse_ground_truth(example["answer"]),
    }


def prepare(dataset: Dataset, limit: int | None = None) -> Dataset:
    if limit is not None:
        if limit > len(dataset):
            raise SettingsError(f"eval_samples is {limit}, but the test split holds only {len(dataset)} questions")
        dataset = dataset.select(range(limit))
    return dataset.map(to_prompt)


# ---------------------------------------------------------------------------------------------------------------------
# Model: QLoRA (4-bit NF4 base, LoRA adapter) through trl.ModelConfig's settings


def attention_implementation(model_args: ModelConfig) -> str:
    if model_args.attn_implementation:
        return model_args.attn_implementation
    # flash-attn is optional: it is built from source against the CUDA toolkit
    return "flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else "sdpa"


def check_model_path(name: str) -> None:
    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise SettingsError(f"model path {name} does not exist")


def load_tokenizer(model_args: ModelConfig, training_args: GRPOConfig):
    check_model_path(model_args.model_name_or_path)
    try:
        return AutoTokenizer.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
        )
    except (OSError, ValueError) as error:
        raise model_load_error(model_args.model_name_or_path, error) from None


def model_load_error(name: str, error: Exception) -> SettingsError:
    return SettingsError(f"could not load model '{name}': {str(error).strip().splitlines()[0]}")


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


def attach_adapter(model, adapter: str):
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise SettingsError(f"adapter folder {adapter} does not exist or holds no adapter_config.json")
    try:
        return PeftModel.from_pretrained(model, adapter)
    except (RuntimeError, ValueError, KeyError) as error:
        raise SettingsError(f"adapter {adapter} does not fit the model: {str(error).strip().splitlines()[-1]}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation: greedy pass@1 on GSM8K test questions, scored by rewards.py like the training completions


GENERATION_PATHS = {
    False: "transformers generate: batched, greedy, left-padded",
    True: "transformers continuous batching (generate_batch), greedy",
}


def generate_greedy(model, tokenizer, prompts, args: GRPOConfig) -> list[dict]:
    """Greedy completions in the input order, as long as the run's training completions may be: continuous batching
    when the run uses it for training (faster on a GPU when answer lengths vary), else batched `generate` with the
    shortest prompts first so each batch pads little."""
    chat_template_kwargs = args.chat_template_kwargs or {}
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True, **chat_template_kwargs) for p in prompts]  # fmt: skip
    eos_ids = model.generation_config.eos_token_id
    eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids or tokenizer.eos_token_id])
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=args.max_completion_length,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=list(eos_ids),
    )
    show_progress = PartialState().is_local_main_process
    if args.use_transformers_continuous_batching:
        prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        outputs = model.generate_batch(prompt_ids, generation_config=config, progress_bar=show_progress)
        generated = [output.generated_tokens for output in outputs.values()]
    else:
        generated = generate_in_batches(model, tokenizer, texts, config, args.per_device_eval_batch_size, show_progress)
    return [
        {"completion": tokenizer.decode(ids, skip_special_tokens=True), "truncated": not eos_ids.intersection(ids)}
        for ids in generated
    ]


def generate_in_batches(model, tokenizer, texts, config, batch_size, show_progress) -> list[list[int]]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    generated = [None] * len(texts)
    for start in tqdm(range(0, len(order), batch_size), desc="evaluating", disable=not show_progress, leave=False):
        indices = order[start : start + batch_size]
        inputs = tokenizer(
            [texts[i] for i in indices], return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        ).to(model.device)
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config)
        for i, ids in zip(indices, output[:, inputs["input_ids"].shape[1] :].tolist(), strict=True):
            generated[i] = ids
    return generated


def evaluate_gsm8k(model, tokenizer, examples: Dataset, args: GRPOConfig):
    """Rows (one per question) and a summary; each process generates a share, every process gets all rows."""
    state = PartialState()
    was_training = model.training
    model.eval()
    with state.split_between_processes(list(range(len(examples)))) as shard:
        generated = generate_greedy(model, tokenizer, [examples[i]["prompt"] for i in shard], args)
    model.train(was_training)
    generated = gather_object(generated)
    rows = []
    for example, result in zip(examples, generated, strict=True):
        extracted = rewards.extract_answer(result["completion"])
        rows.append({
            "question": example["question"],
            "completion": result["completion"],
            "extracted": extracted,
            "gold": example["ground_truth"],
            "correct": rewards.answers_match(extracted, example["ground_truth"]),
            "formatted": rewards.is_formatted(result["completion"]),
            "truncated": result["truncated"],
        })  # fmt: skip
    return rows, summarise(rows) | {"generation": GENERATION_PATHS[args.use_transformers_continuous_batching]}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval for a proportion that stays inside [0, 1] and is honest near 0% and 100%."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(rows: list[dict]) -> dict:
    n = len(rows)
    correct = sum(row["correct"] for row in rows)
    return {
        "questions": n,
        "accuracy": correct / n,
        "accuracy_ci95": wilson_interval(correct, n),
        "format_rate": sum(row["formatted"] for row in rows) / n,
        "truncated_rate": sum(row["truncated"] for row in rows) / n,
    }


def describe(summary: dict) -> str:
    low, high = summary["accuracy_ci95"]
    return (
        f"GSM8K accuracy (greedy pass@1) {summary['accuracy']:.1%} [95% CI {low:.1%}-{high:.1%}] on "
        f"{summary['questions']} questions; in '#### <number>' format {summary['format_rate']:.1%}; "
        f"truncated at max_completion_length {summary['truncated_rate']:.1%}; generated by {summary['generation']}"
    )


def write_eval(folder: Path, rows: list[dict], summary: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "eval_results.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    (folder / "eval_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def compare(before: list[dict], after: list[dict]) -> dict:
    """Paired difference on the same questions, with its 95% interval (the questions' discordant pairs)."""
    n = len(before)
    gained = sum(not b["correct"] and a["correct"] for b, a in zip(before, after, strict=True))
    lost = sum(b["correct"] and not a["correct"] for b, a in zip(before, after, strict=True))
    difference = (gained - lost) / n
    half = 1.96 * math.sqrt(max(gained + lost - (gained - lost) ** 2 / n, 0.0)) / n
    return {
        "questions": n,
        "before": sum(row["correct"] for row in before) / n,
        "after": sum(row["correct"] for row in after) / n,
        "difference": difference,
        "difference_ci95": (difference - half, difference + half),
        "significant": abs(difference) > half,
    }


def describe_comparison(result: dict) -> str:
    low, high = result["difference_ci95"]
    verdict = "a real change (the interval excludes 0)" if result["significant"] else "within noise (the interval includes 0)"  # fmt: skip
    return (
        f"before {result['before']:.1%} -> after {result['after']:.1%} on {result['questions']} test questions: "
        f"{result['difference']:+.1%} [95% CI {low:+.1%} to {high:+.1%}], {verdict}"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Trainer: TRL's GRPOTrainer plus the reference design's monitoring and greedy accuracy as its evaluation


class GSM8KGRPOTrainer(GRPOTrainer):
    """Adds rewards/mean|best|worst and objective/kl|entropy to TRL's metrics, samples of completions to
    TensorBoard's text tab, and replaces TRL's sampled evaluation by greedy GSM8K accuracy (eval/accuracy)."""

    def __init__(self, *args, completion_samples_every: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.completion_samples_every = completion_samples_every
        self.evaluations = {}  # global step -> metrics, so the final evaluation does not repeat the last scheduled one

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered
        self._log_completion_extra("ground_truth", [example["ground_truth"] for example in inputs])
        weights = self.reward_weights.to(rewards_per_func.device)
        totals = (rewards_per_func * weights).nansum(dim=1).view(-1, self.num_generations)
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["rewards/mean"].append(totals.mean().item())
        metrics["rewards/best"].append(totals.max(dim=1).values.mean().item())
        metrics["rewards/worst"].append(totals.min(dim=1).values.mean().item())
        return rewards_per_func

    def log(self, logs: dict, start_time=None) -> None:
        metrics = self._metrics["train" if self.model.training else "eval"]
        for name in ("kl", "entropy"):
            if name in metrics:
                metrics[f"objective/{name}"] = list(metrics[name])
        super().log(logs, start_time)
        logging_step = self.state.global_step // max(1, int(self.args.logging_steps))
        if self.model.training and "loss" in logs and logging_step % self.completion_samples_every == 0:
            self.write_completion_samples()

    def write_completion_samples(self, count: int = 4) -> None:
        writer = next(
            (cb.tb_writer for cb in self.callback_handler.callbacks if isinstance(cb, TensorBoardCallback)), None
        )
        if writer is None or not self._logs["completion"]:
            return
        samples = []
        for i in range(min(count, len(self._logs["completion"]))):
            scores = ", ".join(f"{name} {values[i]:.2f}" for name, values in self._logs["rewards"].items())
            question = self._logs["prompt"][i][-1]["content"].split("\n\n", 1)[-1]
            completion = rewards.completion_text(self._logs["completion"][i])
            truth = self._logs["extra"]["ground_truth"][i] if self._logs["extra"]["ground_truth"] else "?"
            samples.append(
                f"**ground truth** {truth} | **rewards** {scores}\n\n**question** {question}\n\n"
                + "\n".join("    " + line for line in completion.splitlines() or [""])
            )
        writer.add_text("train/completions", "\n\n---\n\n".join(samples), self.state.global_step)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Greedy accuracy on the fixed test slice; TRL's own evaluation would sample at training temperature."""
        step = self.state.global_step
        if step in self.evaluations:
            return self.evaluations[step]
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as model:
            examples = eval_dataset if eval_dataset is not None else self.eval_dataset
            rows, summary = evaluate_gsm8k(model, self.processing_class, examples, self.args)
        if self.accelerator.is_main_process:
            write_eval(Path(self.args.output_dir) / "eval" / f"step-{step}", rows, summary)
            print(f"\nstep {step}: {describe(summary)}")
        metrics = {
            f"{metric_key_prefix}_{name}": summary[name] for name in ("accuracy", "format_rate", "truncated_rate")
        }
        self.model.eval()  # so that GRPOTrainer.log files these under eval/, not train/
        self.log(metrics)
        self.model.train()
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self.evaluations[step] = metrics
        return metrics


class SaveOnInterrupt(TrainerCallback):
    """Ctrl-C ends training after the current step with a checkpoint that --resume continues from; a second Ctrl-C
    stops at once. Every process stops at the same step, so a multi-process save cannot hang."""

    def __init__(self):
        self.interrupted = False

    def on_train_begin(self, args, state, control, **kwargs):
        signal.signal(signal.SIGINT, self.request_stop)

    def request_stop(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)")

    def on_step_end(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(self.interrupted)], device=PartialState().device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            self.interrupted = bool(flag.item())
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        signal.signal(signal.SIGINT, signal.default_int_handler)


# ---------------------------------------------------------------------------------------------------------------------
# Train (or only evaluate)


def build_smoke_assets() -> None:
    import smoke

    with PartialState().main_process_first():
        smoke.build_tiny_model(SMOKE_DIR / "model")
        smoke.write_synthetic_gsm8k(SMOKE_DIR / "gsm8k")


def eval_only(settings, training_args, model, tokenizer, eval_set) -> int:
    rows, summary = evaluate_gsm8k(model, tokenizer, eval_set, training_args)
    summary |= {"model": settings.model_name, "adapter": settings.adapter}
    if PartialState().is_main_process:
        write_eval(Path(training_args.output_dir), rows, summary)
        print(f"{describe(summary)}\nresults: {training_args.output_dir}/eval_results.jsonl and eval_summary.json")
    return 0


def build_trainer(settings, training_args, model_args, model, tokenizer, train_set, eval_set, callbacks=()):
    """The trainer of a run; benchmarks/step_time.py builds the same one."""
    return GSM8KGRPOTrainer(
        model=model,
        reward_funcs=[function for function, _ in rewards.REWARDS],
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=list(callbacks),
        completion_samples_every=settings.completion_samples_every,
    )


def train(settings, training_args, model_args, model, tokenizer, train_set, eval_set) -> int:
    interrupt = SaveOnInterrupt()
    trainer = build_trainer(settings, training_args, model_args, model, tokenizer, train_set, eval_set, [interrupt])
    if trainer.accelerator.is_main_process:
        print(f"TensorBoard: tensorboard --logdir {training_args.output_dir}")
    trainer.train(resume_from_checkpoint=get_last_checkpoint(training_args.output_dir) if settings.resume else None)
    if interrupt.interrupted:
        if trainer.accelerator.is_main_process:
            print(
                f"interrupted at step {trainer.state.global_step}; checkpoint saved in {training_args.output_dir}. "
                f"Continue with: python grpotrainer.py --resume --output_dir {training_args.output_dir}"
            )
        return 130
    final = Path(training_args.output_dir) / "final"
    trainer.save_model(str(final))
    if trainer.accelerator.is_main_process:
        print(f"final LoRA adapter and tokenizer: {final}")
    if settings.eval_before_and_after:
        trainer.evaluate()
        if trainer.accelerator.is_main_process:
            report_before_and_after(Path(training_args.output_dir), trainer.state.global_step)
    return 0


def report_before_and_after(output_dir: Path, last_step: int) -> None:
    """Compare the evaluations at step 0 and the last step, from their files (step 0 may predate a --resume)."""
    results = [output_dir / "eval" / f"step-{step}" / "eval_results.jsonl" for step in (0, last_step)]
    if not results[0].is_file():
        print(f"no evaluation before training in {results[0].parent}: nothing to compare with")
        return
    before, after = ([json.loads(line) for line in path.open()] for path in results)
    if [row["question"] for row in before] != [row["question"] for row in after]:
        print("the evaluations before and after training scored different questions: not compared")
        return
    result = compare(before, after)
    (output_dir / "eval_before_after.json").write_text(json.dumps(result, indent=2) + "\n")
    print(describe_comparison(result))


def main(argv: list[str]) -> int:
    try:
        settings, training_args, model_args, sources = parse_settings(argv)
        state = PartialState()
        if settings.smoke:
            build_smoke_assets()
        # Everything that can be wrong with the input fails here, before an output folder exists.
        tokenizer = load_tokenizer(model_args, training_args)
        with state.main_process_first():  # the main process fills the datasets cache, the others read it
            eval_set = prepare(load_split(settings, "test"), settings.eval_samples)
            train_set = None if settings.eval_only else prepare(load_split(settings, "train"))
        model = load_model(model_args, training_args)
        if settings.adapter:
            model = attach_adapter(model, settings.adapter)

        requested = training_args.output_dir
        training_args.output_dir = claim_output_dir(requested, settings.resume)
        state.wait_for_everyone()  # every process chose the folder before the main process creates it
        if state.is_main_process:
            if training_args.output_dir != requested:
                print(f"{requested} holds an earlier run, kept as it is: this run writes to {training_args.output_dir}")
            report_settings(settings, training_args, model_args, sources)
            if not torch.cuda.is_available() and not settings.smoke:
                print("warning: no CUDA GPU: running on the CPU, where a full-size model is very slow")
        if settings.eval_only:
            exit_code = eval_only(settings, training_args, model, tokenizer, eval_set)
        else:
            exit_code = train(settings, training_args, model_args, model, tokenizer, train_set, eval_set)
        state.destroy_process_group()  # as Trainer.end() does: a live gloo/NCCL group can abort the exit
        return exit_code
    except SettingsError as error:
        print(f"grpotrainer.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
