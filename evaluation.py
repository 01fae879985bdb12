"""Evaluation: greedy pass@1 on GSM8K test questions, scored by rewards.py like the training completions, with a Wilson
interval; the paired before/after difference of a run; the eval files and the lines printed about them."""

import json
import math
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import GenerationConfig
from trl import GRPOConfig

import rewards
from atomic import write_atomically


def generation_path(args: GRPOConfig, decoding: dict | None = None) -> str:
    if args.use_transformers_continuous_batching:
        return "transformers continuous batching (generate_batch), greedy"
    compiled = ", compiled decoding" if decoding else ""
    return f"transformers generate: batched, greedy, left-padded{compiled}"


def generate_greedy(model, tokenizer, prompts, args: GRPOConfig, decoding: dict | None = None) -> list[dict]:
    """Greedy completions in the input order, as long as the run's training completions may be: continuous batching
    when the run uses it for training (faster on a GPU when answer lengths vary), else batched `generate` with the
    shortest prompts first so each batch pads little. `decoding`: GenerationConfig fields of compiled decoding
    (decoding.generation_options), or None."""
    chat_template_kwargs = args.chat_template_kwargs or {}
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True, **chat_template_kwargs) for p in prompts]  # fmt: skip
    eos_ids = model.generation_config.eos_token_id
    eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids or tokenizer.eos_token_id])
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=args.max_completion_length,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=list(eos_ids),
        **(decoding or {}),
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


def evaluate_gsm8k(
    model, tokenizer, examples: Dataset, args: GRPOConfig, decoding: dict | None = None
) -> tuple[list[dict], dict]:
    """Rows (one per question) and a summary; each process generates a share, every process gets all rows."""
    state = PartialState()
    was_training = model.training
    model.eval()
    with state.split_between_processes(list(range(len(examples)))) as shard:
        generated = generate_greedy(model, tokenizer, [examples[i]["prompt"] for i in shard], args, decoding)
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
    return rows, summarise_accuracy(rows) | {"generation": generation_path(args, decoding)}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval for a proportion that stays inside [0, 1] and is honest near 0% and 100%."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise_accuracy(rows: list[dict]) -> dict:
    n = len(rows)
    correct = sum(row["correct"] for row in rows)
    return {
        "questions": n,
        "accuracy": correct / n,
        "accuracy_ci95": wilson_interval(correct, n),
        "format_rate": sum(row["formatted"] for row in rows) / n,
        "truncated_rate": sum(row["truncated"] for row in rows) / n,
    }


def describe_accuracy(summary: dict) -> str:
    low, high = summary["accuracy_ci95"]
    return (
        f"GSM8K accuracy (greedy pass@1) {summary['accuracy']:.1%} [95% CI {low:.1%}-{high:.1%}] on "
        f"{summary['questions']} questions; in '#### <number>' format {summary['format_rate']:.1%}; "
        f"truncated at max_completion_length {summary['truncated_rate']:.1%}; generated by {summary['generation']}"
    )


def write_eval_files(folder: Path, rows: list[dict], summary: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "eval_results.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    write_atomically(folder / "eval_summary.json", json.dumps(summary, indent=2) + "\n")


def compare_before_after(before: list[dict], after: list[dict]) -> dict:
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
        "changed": gained + lost,  # questions answered right on one side only
    }


def describe_comparison(result: dict) -> str:
    if result["changed"] == 0:  # the interval is then a point, and "+0.0% [+0.0% to +0.0%]" says nothing
        right = round(result["before"] * result["questions"])
        return (
            f"before {result['before']:.1%} -> after {result['after']:.1%} on {result['questions']} test questions: "
            f"every question scored the same before and after ({right} of {result['questions']} right): no change"
        )
    low, high = result["difference_ci95"]
    verdict = "a real change (the interval excludes 0)" if result["significant"] else "within noise (the interval includes 0)"  # fmt: skip
    return (
        f"before {result['before']:.1%} -> after {result['after']:.1%} on {result['questions']} test questions: "
        f"{result['difference']:+.1%} [95% CI {low:+.1%} to {high:+.1%}], {verdict}"
    )


def paired_comparison(output_dir: Path, step: int) -> dict | str:
    """The paired comparison of the evaluations at step 0 and `step`, read from their files (step 0 may predate a
    --resume), or why there is none."""
    results = [output_dir / "eval" / f"step-{n}" / "eval_results.jsonl" for n in (0, step)]
    if not results[0].is_file():
        return f"no evaluation before training in {results[0].parent}: nothing to compare with"
    if not results[1].is_file():
        return f"no evaluation at step {step} in {results[1].parent}: nothing to compare"
    before, after = ([json.loads(line) for line in path.open()] for path in results)
    if [row["question"] for row in before] != [row["question"] for row in after]:
        return "the evaluations before and after training scored different questions: not compared"
    return compare_before_after(before, after)


def report_before_and_after(output_dir: Path, last_step: int) -> None:
    result = paired_comparison(output_dir, last_step)
    if isinstance(result, str):
        print(result)
        return
    write_atomically(output_dir / "eval_before_after.json", json.dumps(result, indent=2) + "\n")
    print(describe_comparison(result))
