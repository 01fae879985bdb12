"""Evaluation: GSM8K test accuracy, scored by rewards.py like the training completions: greedy pass@1 by default, or k
sampled completions per question with mean pass@1, unbiased pass@k and majority vote (maj@k), each with a 95% interval;
paired differences between two evaluations of the same questions; the eval files and the lines printed about them."""

import json
import math
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import GenerationConfig
from trl import GRPOConfig

import rewards
from atomic import write_atomically

# Qwen3's model card: sample, do not decode greedily, in thinking mode (greedy repeats itself); its values per mode.
QWEN3_SAMPLING = {True: (0.6, 0.95), False: (0.7, 0.8)}  # enable_thinking -> (temperature, top_p)


class Decoding(NamedTuple):
    """How evaluation decodes: greedy (temperature None) or `samples` completions per question, seeded so that the
    same weights give the same samples and training's random state is left as it was."""

    samples: int = 1
    temperature: float | None = None
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature is None


def choose_decoding(
    samples: int, temperature: float | None, top_p: float | None, thinking: bool, seed: int
) -> Decoding:
    """Greedy unless sampling is asked for (k > 1, or a temperature above 0) or thinking is on; what is not given
    follows Qwen3's model card for the mode. Temperature 0 is greedy even in thinking mode."""
    if temperature == 0 or (temperature is None and samples == 1 and not thinking):
        return Decoding()
    card_temperature, card_top_p = QWEN3_SAMPLING[thinking]
    chosen = card_temperature if temperature is None else temperature
    return Decoding(samples, chosen, card_top_p if top_p is None else top_p, seed)


def generation_path(args: GRPOConfig, decoding: Decoding = Decoding(), compiled: dict | None = None) -> str:
    how = "greedy" if decoding.greedy else "sampled"
    if args.use_transformers_continuous_batching:
        return f"transformers continuous batching (generate_batch), {how}"
    return f"transformers generate: batched, {how}, left-padded{', compiled decoding' if compiled else ''}"


def generate_completions(
    model, tokenizer, prompts, args: GRPOConfig, decoding: Decoding = Decoding(), compiled: dict | None = None
) -> list[dict]:
    """`decoding.samples` completions per prompt, in the input order (a prompt's samples together), as long as the
    run's training completions may be: continuous batching when the run uses it for training (faster on a GPU when
    answer lengths vary), else batched `generate` with the shortest prompts first so each batch pads little.
    `compiled`: the GenerationConfig fields of compiled decoding (decoding.generation_options), or None."""
    chat_template_kwargs = args.chat_template_kwargs or {}
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True, **chat_template_kwargs) for p in prompts]  # fmt: skip
    texts = [text for text in texts for _ in range(decoding.samples)]
    eos_ids = model.generation_config.eos_token_id
    eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids or tokenizer.eos_token_id])
    sampling = {} if decoding.greedy else {"temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": 0}
    config = GenerationConfig(
        do_sample=not decoding.greedy,
        **sampling,
        max_new_tokens=args.max_completion_length,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=list(eos_ids),
        **(compiled or {}),
    )
    show_progress = PartialState().is_local_main_process
    cuda = [model.device] if model.device.type == "cuda" else []
    # Seeded inside a fork of the generator, so that the same weights give the same completions (greedy ones too: a
    # greedy evaluation measured to differ with the generator's state) and training's random state is left as it was
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(decoding.seed)
        if args.use_transformers_continuous_batching:
            prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
            outputs = model.generate_batch(prompt_ids, generation_config=config, progress_bar=show_progress)
            generated = [output.generated_tokens for output in outputs.values()]
        else:
            batch_size = args.per_device_eval_batch_size * decoding.samples
            generated = generate_in_batches(model, tokenizer, texts, config, batch_size, show_progress)
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
    model, tokenizer, examples: Dataset, args: GRPOConfig, decoding: Decoding = Decoding(), compiled: dict | None = None
):
    """Rows (one per question) and a summary; each process generates a share, every process gets all rows."""
    state = PartialState()
    was_training = model.training
    model.eval()
    with state.split_between_processes(list(range(len(examples)))) as shard:
        prompts = [examples[i]["prompt"] for i in shard]
        generated = generate_completions(model, tokenizer, prompts, args, decoding, compiled)
    model.train(was_training)
    generated = gather_object(generated)
    k = decoding.samples
    rows = [question_row(example, generated[i * k : (i + 1) * k]) for i, example in enumerate(examples)]
    return rows, summarise(rows) | {"generation": generation_path(args, decoding, compiled), "decoding": decoding._asdict()}


def score_sample(completion: str, truncated: bool, gold: str) -> dict:
    extracted = rewards.extract_answer(completion)
    return {
        "completion": completion,
        "extracted": extracted,
        "correct": rewards.answers_match(extracted, gold),
        "formatted": rewards.is_formatted(completion),
        "truncated": truncated,
    }


def question_row(example: dict, results: list[dict]) -> dict:
    """One question's row: its first completion's fields at the top (a greedy row is exactly that), and with several
    samples every one of them under "samples" and their majority answer."""
    gold = example["ground_truth"]
    samples = [score_sample(result["completion"], result["truncated"], gold) for result in results]
    row = {"question": example["question"], **samples[0], "gold": gold}
    if len(samples) > 1:
        vote = majority_answer([sample["extracted"] for sample in samples])
        row |= {"samples": samples, "majority": vote, "majority_correct": rewards.answers_match(vote, gold)}
    return row


def samples_of(row: dict) -> list[dict]:
    return row.get("samples", [row])  # a greedy row is its own one sample


def majority_answer(answers: list[str | None]) -> str | None:
    """The answer most samples state, compared as rewards.answers_match compares them ("1,000" is "1000.0"); a tie
    goes to the answer stated first, and a sample that states no answer does not vote."""
    votes: dict[str, int] = {}
    for answer in answers:
        if answer is None:
            continue
        same = next((seen for seen in votes if rewards.answers_match(answer, seen)), answer)
        votes[same] = votes.get(same, 0) + 1
    return max(votes, key=votes.get, default=None)  # max keeps the first of equal counts, in insertion order


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. 2021's unbiased estimate of the chance that at least one of k samples is correct, from n samples
    of which c are: 1 - C(n-c, k) / C(n, k), exact in integers."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval for a proportion that stays inside [0, 1] and is honest near 0% and 100%."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def score_interval(scores: list[float]) -> tuple[float, float]:
    """95% interval of a mean over questions: Wilson's when each question scores 0 or 1, else the normal one of the
    questions' scores (the question is what was drawn), kept inside [0, 1]."""
    n = len(scores)
    if all(score in (0, 1) for score in scores):
        return wilson_interval(int(sum(scores)), n)
    mean = sum(scores) / n
    half = 1.96 * math.sqrt(sum((score - mean) ** 2 for score in scores) / (n - 1) / n)
    return max(0.0, mean - half), min(1.0, mean + half)


def question_score(row: dict) -> float:
    """Its share of correct samples: 0 or 1 for a greedy row, its pass@1 estimate for k samples."""
    samples = samples_of(row)
    return sum(sample["correct"] for sample in samples) / len(samples)


def summarise(rows: list[dict]) -> dict:
    """Accuracy (mean pass@1) with its interval, and with k samples per question pass@k and maj@k with theirs."""
    samples = [sample for row in rows for sample in samples_of(row)]
    k = len(samples_of(rows[0]))
    figures = {"accuracy": [question_score(row) for row in rows]}
    if k > 1:
        figures["pass@k"] = [pass_at_k(k, sum(s["correct"] for s in samples_of(row)), k) for row in rows]
        figures["maj@k"] = [float(row["majority_correct"]) for row in rows]
    summary = {"questions": len(rows), "samples_per_question": k}
    for name, scores in figures.items():
        summary |= {name: sum(scores) / len(rows), f"{name}_ci95": score_interval(scores)}
    return summary | {
        "format_rate": sum(sample["formatted"] for sample in samples) / len(samples),
        "truncated_rate": sum(sample["truncated"] for sample in samples) / len(samples),
    }


def logged_figures(summary: dict) -> list[str]:
    """What TensorBoard gets under eval/: pass@k and maj@k only where there were several samples."""
    return [name for name in ("accuracy", "pass@k", "maj@k", "format_rate", "truncated_rate") if name in summary]


def percent_with_interval(summary: dict, name: str) -> str:
    low, high = summary[f"{name}_ci95"]
    return f"{summary[name]:.1%} [95% CI {low:.1%}-{high:.1%}]"


def accuracy_name(summary: dict) -> str:
    decoding = Decoding(**summary.get("decoding", {}))
    if decoding.greedy:
        return "greedy pass@1"
    sampled = f"at temperature {decoding.temperature:g}, top-p {decoding.top_p:g}"
    if decoding.samples > 1:
        return f"mean pass@1 of {decoding.samples} samples {sampled}"
    return f"sampled pass@1 {sampled}"


def describe_accuracy(summary: dict) -> str:
    k = summary.get("samples_per_question", 1)
    votes = "".join(f"; {name.replace('k', str(k))} {percent_with_interval(summary, name)}" for name in ("pass@k", "maj@k") if name in summary)  # fmt: skip
    return (
        f"GSM8K accuracy ({accuracy_name(summary)}) {percent_with_interval(summary, 'accuracy')} on "
        f"{summary['questions']} questions{votes}; in '#### <number>' format {summary['format_rate']:.1%}; "
        f"truncated at max_completion_length {summary['truncated_rate']:.1%}; generated by {summary['generation']}"
    )


def write_eval_files(folder: Path, rows: list[dict], summary: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "eval_results.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    write_atomically(folder / "eval_summary.json", json.dumps(summary, indent=2) + "\n")


def compare_before_after(before: list[dict], after: list[dict]) -> dict:
    """Paired difference on the same questions, with its 95% interval from the questions' differences (for greedy
    rows, the discordant pairs)."""
    n = len(before)
    differences = [question_score(a) - question_score(b) for b, a in zip(before, after, strict=True)]
    difference = sum(differences) / n
    half = 1.96 * math.sqrt(max(sum(d * d for d in differences) - sum(differences) ** 2 / n, 0.0)) / n
    return {
        "questions": n,
        "before": sum(map(question_score, before)) / n,
        "after": sum(map(question_score, after)) / n,
        "difference": difference,
        "difference_ci95": (difference - half, difference + half),
        "significant": abs(difference) > half,
        "changed": sum(d != 0 for d in differences),  # questions that scored differently
    }


def describe_comparison(result: dict) -> str:
    if result["changed"] == 0:  # the interval is then a point, and "+0.0% [+0.0% to +0.0%]" says nothing
        right = round(result["before"] * result["questions"])
        return (
            f"before {result['before']:.1%} -> after {result['after']:.1%} on {result['questions']} test questions: "
            f"no change: every question scored the same before and after ({right} of {result['questions']} right), "
            f"so the interval is the single point 0"
        )
    low, high = result["difference_ci95"]
    verdict = "a real change (the interval excludes 0)" if result["significant"] else "within noise (the interval includes 0)"  # fmt: skip
    return (
        f"before {result['before']:.1%} -> after {result['after']:.1%} on {result['questions']} test questions: "
        f"{result['difference']:+.1%} [95% CI {low:+.1%} to {high:+.1%}], {verdict}"
    )


def read_rows(folder: Path) -> list[dict]:
    with (folder / "eval_results.jsonl").open() as lines:
        return [json.loads(line) for line in lines]


def step_folder(output_dir: Path, step: int) -> Path:
    return output_dir / "eval" / f"step-{step}"


def paired_comparison(output_dir: Path, step: int, baseline: int = 0) -> dict | str:
    """The paired comparison of the evaluations at `baseline` (step 0: before training) and `step`, read from their
    files (step 0 may predate a --resume), or why there is none."""
    folders = [step_folder(output_dir, n) for n in (baseline, step)]
    if not (folders[0] / "eval_results.jsonl").is_file():
        return f"no evaluation at step {baseline} in {folders[0]}: nothing to compare with"
    if not (folders[1] / "eval_results.jsonl").is_file():
        return f"no evaluation at step {step} in {folders[1]}: nothing to compare"
    before, after = map(read_rows, folders)
    if [row["question"] for row in before] != [row["question"] for row in after]:
        return f"the evaluations at steps {baseline} and {step} scored different questions: not compared"
    return compare_before_after(before, after)


def adapter_step(folder: Path) -> int | None:
    """The training step of a run's adapter folder, from the trainer_state.json saved with it."""
    state = folder / "trainer_state.json"
    return json.loads(state.read_text())["global_step"] if state.is_file() else None


def best_adapter(output_dir: Path, final_step: int) -> dict | str:
    """Which adapter best/ holds, its accuracy, and its paired difference against final/ (the adapter at
    final_step), from the eval files; or why there is none."""
    step = adapter_step(output_dir / "best")
    if step is None:
        return f"no best adapter in {output_dir / 'best'}"
    summary = json.loads((step_folder(output_dir, step) / "eval_summary.json").read_text())
    against_final = paired_comparison(output_dir, step, final_step)
    if isinstance(against_final, str):
        return against_final
    return {
        "adapter": str(output_dir / "best"),
        "step": step,
        "accuracy": summary["accuracy"],
        "accuracy_ci95": summary["accuracy_ci95"],
        "final_step": final_step,
        "difference_vs_final": against_final["difference"],
        "difference_vs_final_ci95": against_final["difference_ci95"],
    }


def describe_best(best: dict) -> str:
    low, high = best["difference_vs_final_ci95"]
    return (
        f"best adapter: {best['adapter']} (step {best['step']}), accuracy {percent_with_interval(best, 'accuracy')}; "
        f"against final/ (step {best['final_step']}): {best['difference_vs_final']:+.1%} [95% CI {low:+.1%} to "
        f"{high:+.1%}]"
    )


def report_before_and_after(output_dir: Path, last_step: int) -> None:
    """The line and eval_before_after.json of a finished run: before against after, and which adapter is best."""
    result = paired_comparison(output_dir, last_step)
    best = best_adapter(output_dir, last_step)
    print(result if isinstance(result, str) else describe_comparison(result))
    print(best if isinstance(best, str) else describe_best(best))
    if not isinstance(result, str):
        result["best"] = None if isinstance(best, str) else best
        write_atomically(output_dir / "eval_before_after.json", json.dumps(result, indent=2) + "\n")
