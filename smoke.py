"""`grpotrainer.py --smoke`: its settings preset and its offline assets, a tiny Qwen3 model and a synthetic GSM8K.

The smoke run exercises the whole training pipeline without network or GPU, so it needs a model
and a dataset that are built locally, once (the model's warm-up takes about a minute on two CPU cores):

- `preset()` is the settings layer `--smoke` applies; `build_assets(prompt)` builds both assets under `SMOKE_DIR`.
- `build_tiny_model(path, prompt)` writes a tiny `Qwen3ForCausalLM` with a small byte-level BPE tokenizer
  trained on GSM8K-style text and a Qwen-style ChatML chat template. Like a real base model it has had a little
  pretraining (`warm_up`): enough to write worked solutions that sometimes end in `#### N`, sometimes in another
  form, sometimes with wrong arithmetic, so that GRPO's rewards differ within a group and have something to raise.
- `write_synthetic_gsm8k(folder)` writes `train.jsonl` and `test.jsonl` in GSM8K's schema.

Both are deterministic and idempotent: a folder that already holds a complete build of the same
spec is reused as is.
"""

import contextlib
import hashlib
import json
import random
import re
import tempfile
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, PrinterCallback, Qwen3Config, Qwen3ForCausalLM
from trl import SFTConfig, SFTTrainer

from atomic import write_atomically

SMOKE_DIR = Path(tempfile.gettempdir()) / "grpotrainer-smoke"


def preset() -> dict:
    """`--smoke`: the whole pipeline on a tiny warmed-up Qwen3 and synthetic GSM8K, sized to visibly learn in minutes.

    48 tokens let nearly every completion finish (the warm-up's solutions need 20 for half, 50 at most); at a
    learning rate of 1e-3 GRPO raises the share that ends in `#### N` while the model keeps its worked solutions (at
    5e-3 it learned to drop them and guess a bare `#### N`)."""
    return dict(
        model_name=str(SMOKE_DIR / "model"),
        dataset_name=str(SMOKE_DIR / "gsm8k"),
        dataset_config=None,
        output_dir="outputs/smoke",
        max_steps=80,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        num_generations=8,
        temperature=1.0,
        max_completion_length=48,
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


def build_assets(prompt: str) -> None:
    """The smoke model, warmed up on questions asked with `prompt` (the script's, with a `{question}` field), and the
    data under SMOKE_DIR; under several processes the main one builds, the others reuse."""
    with PartialState().main_process_first():
        build_tiny_model(SMOKE_DIR / "model", prompt)
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

# Qwen3Config fields, with Qwen's 0.02 init; the warm-up then trains all of it.
MODEL_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 1024,
    "initializer_range": 0.02,
}
MAX_VOCAB_SIZE = 512  # upper bound: the BPE stops earlier when the corpus offers no more merges
SEED = 0
# The warm-up: SFTTrainer on synthetic chats of their own seed (neither the train/test splits' 0 and 1 nor the
# tokenizer's 1000). How each solution ends, by share: GSM8K's answer line, an answer phrase, or no stated answer.
WARM_UP = {
    "rows": 2000,
    "seed": 2000,
    "steps": 250,
    "batch_size": 16,
    "learning_rate": 3e-3,
    "endings": {"hash_line": 0.4, "phrase": 0.3, "none": 0.3},
    "wrong_share": 0.1,  # solutions whose last result is off by a little, so reasoning and correctness vary too
}
RECIPE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # an edit here redoes old builds
MODEL_SPEC = {
    "recipe": RECIPE, "config": MODEL_CONFIG, "max_vocab_size": MAX_VOCAB_SIZE, "seed": SEED, "warm_up": WARM_UP
}  # fmt: skip
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


# One-digit numbers (and hundreds): few enough arithmetic facts for the warm-up to teach a tiny model some of them.


def _add_problem(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    question = f"{name} has {a} {item}. {name} buys {b} more. How many {item} does {name} have now?"
    return question, [f"{name} has {_step(a, '+', b, a + b)} {item} now."], a + b


def _subtract_problem(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    b = rng.randint(1, 9)
    a = b + rng.randint(1, 9)
    question = f"{name} had {a} {item} and gave {b} to a friend. How many {item} does {name} have left?"
    return question, [f"{name} has {_step(a, '-', b, a - b)} {item} left."], a - b


def _multiply_problem(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    boxes = rng.randint(2, 9)
    per_box = rng.choice([rng.randint(2, 9), rng.randint(1, 9) * 100])
    total = boxes * per_box
    question = f"{name} buys {boxes} boxes with {_number(per_box)} {item} in each box. How many {item} does {name} buy?"
    return question, [f"{name} buys {_step(boxes, '*', per_box, total)} {item}."], total


def _divide_problem(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    friends, each = rng.randint(2, 9), rng.randint(2, 9)
    total = friends * each
    question = f"{name} shares {total} {item} equally among {friends} friends. How many {item} does each friend get?"
    return question, [f"Each friend gets {_step(total, '/', friends, each)} {item}."], each


def _two_step_problem(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
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


CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")


def _warm_up_solution(answer: str, rng: random.Random) -> str:
    """A GSM8K solution as the warm-up teaches it: without calculator notes (shorter, so that a completion finishes
    within the preset's max_completion_length), its last result sometimes off by a little, and its final line
    `#### N`, an answer phrase or nothing, by WARM_UP's shares."""
    *steps, final_line = CALCULATOR_NOTE.sub("", answer).split("\n")
    result = int(final_line.removeprefix("#### "))
    if rng.random() < WARM_UP["wrong_share"]:
        wrong = result + rng.choice([-2, -1, 1, 2])
        steps[-1] = steps[-1].replace(f"= {_number(result)} ", f"= {_number(wrong)} ")
        result = wrong
    endings, shares = zip(*WARM_UP["endings"].items())
    ending = rng.choices(endings, weights=shares)[0]
    last = {"hash_line": [f"#### {result}"], "phrase": [f"The answer is {result}."], "none": []}[ending]
    return "\n".join([*steps, *last])


def warm_up_chats(tokenizer: PreTrainedTokenizerFast, prompt: str) -> Dataset:
    """Prompt-completion pairs as GRPO samples them: the question asked with `prompt`, rendered with the generation
    prompt and thinking off, then the solution. SFTTrainer adds the end of turn to a plain-text completion
    (trl/trainer/sft_trainer.py:1292) and trains on the completion only (sft_trainer.py:961-962)."""
    rng = random.Random(WARM_UP["seed"])
    pairs = [
        {
            "prompt": tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt.format(question=row["question"])}],
                tokenize=False, add_generation_prompt=True, enable_thinking=False,
            ),
            "completion": _warm_up_solution(row["answer"], rng),
        }
        for row in synthetic_gsm8k_rows(WARM_UP["rows"], seed=WARM_UP["seed"])
    ]  # fmt: skip
    return Dataset.from_list(pairs)


@contextlib.contextmanager
def _one_quiet_thread():
    """One torch thread and no dataset progress bars for the warm-up; the process's own settings after it.

    One thread: a model this small gains nothing from more, and on a busy two-core machine two threads made a step
    4-9x slower (0.68-1.66 s against 0.18 s, batch 32 x 100 tokens), and the thread count no longer enters the
    float sums."""
    threads, bars_were_off = torch.get_num_threads(), are_progress_bars_disabled()
    torch.set_num_threads(1)
    disable_progress_bars()  # SFTTrainer's dataset preparation; the console says once that it builds
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if not bars_were_off:
            enable_progress_bars()


def warm_up(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, prompt: str) -> None:
    """A short pretraining of the random model with TRL's SFTTrainer, seeded, on the CPU."""
    with tempfile.TemporaryDirectory() as scratch, _one_quiet_thread():
        config = SFTConfig(
            output_dir=scratch,
            max_steps=WARM_UP["steps"],
            per_device_train_batch_size=WARM_UP["batch_size"],
            learning_rate=WARM_UP["learning_rate"],
            lr_scheduler_type="cosine",
            warmup_steps=0.1,
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            bf16=False,  # SFTConfig's defaults (trl/trainer/sft_config.py:132-133) only slow a tiny fp32 model
            gradient_checkpointing=False,
            seed=SEED,
            data_seed=SEED,
            dataloader_num_workers=0,
        )
        chats = warm_up_chats(tokenizer, prompt)
        trainer = SFTTrainer(model=model, args=config, train_dataset=chats, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # disable_tqdm's line per log (transformers/trainer.py:599)
        trainer.train()


def build_tiny_model(path, prompt: str) -> Path:
    """Write a tiny Qwen3ForCausalLM, randomly initialised and then warmed up on questions asked with `prompt`, and
    its tokenizer to `path`, loadable offline with Auto*. A new prompt is a new build."""
    path = Path(path)
    spec = {**MODEL_SPEC, "prompt": prompt}
    if _is_built(path, spec):
        return path
    print(f"--smoke: building the tiny model in {path}: a one-time warm-up of about a minute")
    tokenizer = build_tokenizer(MAX_VOCAB_SIZE, seed=SEED)
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM(_qwen3_config(tokenizer))
    warm_up(model, tokenizer, prompt)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _mark_built(path, spec)
    return path
