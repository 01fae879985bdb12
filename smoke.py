"""`grpotrainer.py --smoke`: its settings preset and its offline assets, a tiny random Qwen3 model and a synthetic GSM8K.

The smoke run exercises the whole training pipeline without network or GPU, so it needs a model
and a dataset that are built locally in seconds:

- `preset()` is the settings layer `--smoke` applies; `build_assets()` builds both assets under `SMOKE_DIR`.
- `build_tiny_model(path)` writes a random `Qwen3ForCausalLM` with a small byte-level BPE tokenizer
  trained on GSM8K-style text and a Qwen-style ChatML chat template.
- `write_synthetic_gsm8k(folder)` writes `train.jsonl` and `test.jsonl` in GSM8K's schema.

Both are deterministic and idempotent: a folder that already holds a complete build of the same
spec is reused as is.
"""

import hashlib
import json
import random
import tempfile
from pathlib import Path

import torch
from accelerate import PartialState
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from atomic import write_atomically

SMOKE_DIR = Path(tempfile.gettempdir()) / "grpotrainer-smoke"


def preset() -> dict:
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


def build_assets() -> None:
    """The smoke model and data under SMOKE_DIR; under several processes the main one builds, the others reuse."""
    with PartialState().main_process_first():
        build_tiny_model(SMOKE_DIR / "model")
        write_synthetic_gsm8k(SMOKE_DIR / "gsm8k")


PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]
THINK_TOKENS = ["<think>", "</think>"]

# Qwen-style ChatML; like Qwen3, `enable_thinking=False` pre-fills an empty think block.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Qwen3Config fields. With Qwen's 0.02 init a model this narrow has near-uniform logits that LoRA
# barely moves; a 0.2 init lets GRPO reshape them within a few dozen steps, so the smoke run learns.
MODEL_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "initializer_range": 0.2,
}
MAX_VOCAB_SIZE = 512  # upper bound: the BPE stops earlier when the corpus offers no more merges
SEED = 0
RECIPE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # an edit here redoes old builds
MODEL_SPEC = {"recipe": RECIPE, "config": MODEL_CONFIG, "max_vocab_size": MAX_VOCAB_SIZE, "seed": SEED}
BUILD_MARKER = "smoke_build.json"

NAMES = ["Tom", "Mia", "Sam", "Ana", "Leo", "Ivy", "Max", "Zoe"]
ITEMS = ["apples", "pens", "books", "cards", "eggs", "cookies", "stickers", "marbles"]


def _is_built(folder: Path, spec: dict) -> bool:
    marker = folder / BUILD_MARKER
    return marker.is_file() and json.loads(marker.read_text()) == spec


def _mark_built(folder: Path, spec: dict) -> None:
    """Written last, so its presence means every other file of the build is complete."""
    write_atomically(folder / BUILD_MARKER, json.dumps(spec, sort_keys=True))


# --- synthetic GSM8K -------------------------------------------------------------------------


def _number(n: int) -> str:
    """GSM8K writes large amounts with thousands separators in the prose."""
    return f"{n:,}"


def _step(a: int, op: str, b: int, c: int) -> str:
    """One worked step with GSM8K's calculator note, e.g. `3 + 4 = <<3+4=7>>7`."""
    return f"{_number(a)} {op} {_number(b)} = <<{a}{op}{b}={c}>>{_number(c)}"


def _add_problem(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    question = f"{name} has {a} {item}. {name} buys {b} more. How many {item} does {name} have now?"
    return question, [f"{name} has {_step(a, '+', b, a + b)} {item} now."], a + b


def _subtract_problem(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    b = rng.randint(1, 20)
    a = b + rng.randint(1, 30)
    question = f"{name} had {a} {item} and gave {b} to a friend. How many {item} does {name} have left?"
    return question, [f"{name} has {_step(a, '-', b, a - b)} {item} left."], a - b


def _multiply_problem(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    boxes = rng.randint(2, 12)
    per_box = rng.choice([rng.randint(2, 12), rng.randint(1, 9) * 100])
    total = boxes * per_box
    question = f"{name} buys {boxes} boxes with {_number(per_box)} {item} in each box. How many {item} does {name} buy?"
    return question, [f"{name} buys {_step(boxes, '*', per_box, total)} {item}."], total


def _divide_problem(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    friends, each = rng.randint(2, 8), rng.randint(2, 12)
    total = friends * each
    question = f"{name} shares {total} {item} equally among {friends} friends. How many {item} does each friend get?"
    return question, [f"Each friend gets {_step(total, '/', friends, each)} {item}."], each


def _two_step_problem(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(5, 40), rng.randint(2, 20)
    c = rng.randint(1, a + b - 1)
    question = (
        f"{name} has {a} {item}, buys {b} more and then gives away {c}. How many {item} does {name} have at the end?"
    )
    steps = [
        f"After buying, {name} has {_step(a, '+', b, a + b)} {item}.",
        f"At the end {name} has {_step(a + b, '-', c, a + b - c)} {item}.",
    ]
    return question, steps, a + b - c


PROBLEM_TEMPLATES = [_add_problem, _subtract_problem, _multiply_problem, _divide_problem, _two_step_problem]


def synthetic_gsm8k_rows(n: int, seed: int) -> list[dict]:
    """`n` GSM8K-schema rows: the worked solution ends with the line `#### <answer>`."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, steps, answer = rng.choice(PROBLEM_TEMPLATES)(rng)
        rows.append({"question": question, "answer": "\n".join([*steps, f"#### {answer}"])})
    return rows


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def write_synthetic_gsm8k(folder, n_train: int = 256, n_test: int = 64, seed: int = 0) -> Path:
    """Write `folder/train.jsonl` and `folder/test.jsonl`; the two splits use different seeds."""
    folder = Path(folder)
    spec = {"recipe": RECIPE, "n_train": n_train, "n_test": n_test, "seed": seed}
    if _is_built(folder, spec):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "train.jsonl", _jsonl(synthetic_gsm8k_rows(n_train, seed=2 * seed)))
    write_atomically(folder / "test.jsonl", _jsonl(synthetic_gsm8k_rows(n_test, seed=2 * seed + 1)))
    _mark_built(folder, spec)
    return folder


# --- tiny model and tokenizer ----------------------------------------------------------------


def _tokenizer_corpus(seed: int) -> list[str]:
    """GSM8K-style chats, so `####`, `<<`, operators and common words get their own tokens."""
    texts = []
    for row in synthetic_gsm8k_rows(2000, seed=seed + 1000):
        texts.append(f"{IM_START}user\n{row['question']}{IM_END}\n{IM_START}assistant\n{row['answer']}{IM_END}\n")
    return texts


def build_tokenizer(max_vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    """A Qwen-style byte-level BPE with ChatML special tokens, trained in well under a second."""
    bpe = Tokenizer(models.BPE())
    # Like Qwen, every digit is its own token.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max_vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_tokenizer_corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
    )
    tokenizer.add_tokens(THINK_TOKENS)  # like Qwen3: plain added tokens, kept when decoding
    return tokenizer


def _qwen3_config(tokenizer: PreTrainedTokenizerFast) -> Qwen3Config:
    return Qwen3Config(
        **MODEL_CONFIG,
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,  # None, as in Qwen3's tokenizer
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(path) -> Path:
    """Write a random tiny Qwen3ForCausalLM and its tokenizer to `path`, loadable offline with Auto*."""
    path = Path(path)
    if _is_built(path, MODEL_SPEC):
        return path
    tokenizer = build_tokenizer(MAX_VOCAB_SIZE, seed=SEED)
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM(_qwen3_config(tokenizer))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _mark_built(path, MODEL_SPEC)
    return path
