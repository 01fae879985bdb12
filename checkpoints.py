"""`--eval_only --adapter RUN`: every saved adapter of a finished run scored on the same test questions, reusing each
evaluation already on disk for those questions and generation settings; one table of them (RUN/eval-checkpoints.md
and .json) with the best marked, and its plot (.png) where matplotlib is installed."""

import json
from pathlib import Path

from accelerate import PartialState

import evaluation
from adapters import attach
from atomic import write_atomically
from settings import InputError

PLOT_HINT = "pip install matplotlib, then run the same command again: it reuses every evaluation and draws the plot"


def check_run(saved: dict, run_dir: Path, model_name: str) -> None:
    """Before anything loads: the run's checkpoints are adapters of the model it trained."""
    trained = saved["script"]["model_name"]
    if trained != model_name:
        raise InputError(f"{run_dir} trained adapters of {trained}, not {model_name}: add --model_name {trained}")


def run_adapters(run_dir: Path) -> dict[int, list[Path]]:
    """step -> the run's adapter folders of that step (checkpoint-N, best, final), each with the trainer_state.json
    saved beside it; step 0 is the base model, with no adapter."""
    adapters = {0: []}
    for folder in sorted(run_dir.glob("checkpoint-*")) + [run_dir / "best", run_dir / "final"]:
        step = evaluation.adapter_step(folder)
        if step is not None and (folder / "adapter_config.json").is_file():
            adapters.setdefault(step, []).append(folder)
    return adapters


def evaluations_on_disk(run_dir: Path, questions: list[str], wanted: dict) -> dict[int, Path]:
    """step -> an evaluation folder of the run that scored these questions with these settings and decoding: the
    training's eval/step-N, an --eval_only of one adapter (eval-checkpoint-N), or an earlier comparison's."""
    found = {}
    patterns = ("eval/step-*/eval_summary.json", "eval-*/eval_summary.json", "eval-checkpoints*/step-*/eval_summary.json")  # fmt: skip
    for path in sorted(file for pattern in patterns for file in run_dir.glob(pattern)):
        summary = json.loads(path.read_text())
        same = {key: summary.get(key) for key in wanted} == wanted and summary.get("step") is not None
        if same and summary["step"] not in found and question_list(path.parent) == questions:
            found[summary["step"]] = path.parent
    return found


def question_list(folder: Path) -> list[str]:
    return [row["question"] for row in evaluation.read_rows(folder)]


def compare_run(run_dir: Path, model, inputs, run, decoding: evaluation.Decoding, settings: dict) -> None:
    """Evaluate what is missing, then print and write the table (and the plot) into the run's folder."""
    out = Path(run.training.output_dir)  # RUN/eval-checkpoints, or -2, ... beside an earlier comparison
    questions = [example["question"] for example in inputs.eval_set]
    wanted = json.loads(json.dumps({"settings": settings, "decoding": decoding._asdict()}))  # as read back from disk
    adapters = run_adapters(run_dir)
    found = evaluations_on_disk(run_dir, questions, wanted)
    main = PartialState().is_main_process
    results = {}
    for step in sorted(adapters.keys() | found.keys()):
        if step in found:
            results[step] = (evaluation.read_rows(found[step]), found[step])
            continue
        adapter = adapters[step][0] if adapters[step] else None
        rows, summary = evaluate_adapter(model, adapter, inputs, run, decoding)
        results[step] = (rows, out / f"step-{step}")
        if main:
            summary |= {"step": step, "adapter": adapter and str(adapter), **wanted}
            evaluation.write_eval_files(out / f"step-{step}", rows, summary)
            print(f"step {step}: {evaluation.describe_accuracy(summary)}")
    if main:
        table = checkpoint_table(results, adapters, run_dir, decoding)
        if not decoding.greedy:  # the headline figure beside the sampled ones, where it was measured
            add_greedy(table, evaluations_on_disk(run_dir, questions, wanted | {"decoding": evaluation.Decoding()._asdict()}))  # fmt: skip
        generated = results.keys() - found.keys()
        print(f"reused from disk: steps {steps_list(found)}; evaluated now: steps {steps_list(generated)}")
        report_table(out, table)


def steps_list(steps) -> str:
    return ", ".join(map(str, sorted(steps))) or "none"


def evaluate_adapter(model, adapter: Path | None, inputs, run, decoding: evaluation.Decoding):
    """One evaluation of the base model with `adapter` (None: the base itself), leaving the base as it was."""
    if adapter:
        model = attach(model, str(adapter))
    rows, summary = evaluation.evaluate_gsm8k(model, inputs.tokenizer, inputs.eval_set, run.training, decoding)
    if adapter:
        model.unload()  # peft: the LoRA layers removed, unmerged, so the next adapter attaches to the plain base
    return rows, summary


def checkpoint_table(results: dict, adapters: dict, run_dir: Path, decoding: evaluation.Decoding) -> dict:
    """One line per step: accuracy, its paired difference against step 0, format and truncation rates (pass@k and
    maj@k with several samples); the best is the highest accuracy, the earlier step on a tie."""
    base = results[0][0]
    lines = []
    for step, (rows, source) in sorted(results.items()):
        summary = evaluation.summarise(rows)
        against_base = evaluation.compare_before_after(base, rows)
        lines.append(summary | {
            "step": step,
            "adapters": [folder.name for folder in adapters.get(step, [])],
            "evaluation": str(source.relative_to(run_dir)),
            "difference_vs_step_0": against_base["difference"],
            "difference_vs_step_0_ci95": against_base["difference_ci95"],
        })  # fmt: skip
    best = max(lines, key=lambda line: line["accuracy"])  # max keeps the first, earliest, of equal ones
    for line in lines:
        line["best"] = line is best
    return {"run": str(run_dir), "questions": len(base), "decoding": decoding._asdict(), "steps": lines}


def add_greedy(table: dict, greedy: dict[int, Path]) -> None:
    for line in table["steps"]:
        if line["step"] in greedy:
            summary = evaluation.summarise(evaluation.read_rows(greedy[line["step"]]))
            line |= {"greedy": summary["accuracy"], "greedy_ci95": summary["accuracy_ci95"]}


def interval_cell(line: dict, name: str, signed: bool = False) -> str:
    low, high = line[f"{name}_ci95"]
    spell = "{:+.1%}" if signed else "{:.1%}"
    return f"{spell.format(line[name])} [{spell.format(low)}, {spell.format(high)}]"


def markdown_table(table: dict) -> str:
    k = table["decoding"]["samples"]
    votes = [name for name in ("pass@k", "maj@k") if name in table["steps"][0]]
    header = ["step", "adapter", "accuracy [95% CI]", "vs step 0 [95% CI]", *(v.replace("k", str(k)) for v in votes),
              "format", "truncated", "best"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in table["steps"]:
        cells = [
            str(line["step"]),
            ", ".join((["base model"] if line["step"] == 0 else []) + line["adapters"]) or "(deleted)",
            interval_cell(line, "accuracy"),
            interval_cell(line, "difference_vs_step_0", signed=True),
            *(interval_cell(line, name) for name in votes),
            f"{line['format_rate']:.1%}",
            f"{line['truncated_rate']:.1%}",
            "**best**" if line["best"] else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_table(out: Path, table: dict) -> None:
    """The table on the console and as out.md / out.json beside the run's checkpoints, and the plot as out.png."""
    text = markdown_table(table)
    accuracy = evaluation.accuracy_name({"decoding": table["decoding"]})
    print(f"{table['run']}: GSM8K accuracy ({accuracy}) on {table['questions']} questions\n{text}", end="")
    write_atomically(out.with_suffix(".md"), f"# {table['run']}: GSM8K accuracy ({accuracy}) on {table['questions']} questions\n\n{text}")  # fmt: skip
    write_atomically(out.with_suffix(".json"), json.dumps(table, indent=2) + "\n")
    written = [out.with_suffix(".md"), out.with_suffix(".json")]
    try:
        plot_table(table, out.with_suffix(".png"))
        written.append(out.with_suffix(".png"))
    except ImportError:
        print(f"no plot: matplotlib is not installed; {PLOT_HINT}")
    print("table: " + ", ".join(map(str, written)))


def plot_table(table: dict, path: Path) -> None:
    """Accuracy against step with its 95% interval as bars; pass@k and maj@k beside it where they were measured."""
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    from matplotlib import pyplot

    k = table["decoding"]["samples"]
    figure, axes = pyplot.subplots(figsize=(7, 4), dpi=120)
    labels = {"greedy": "greedy pass@1", "accuracy": evaluation.accuracy_name({"decoding": table["decoding"]}),
              "pass@k": f"pass@{k}", "maj@k": f"maj@{k}"}  # fmt: skip
    shown = [name for name in labels if any(name in line for line in table["steps"])]
    shift = max(line["step"] for line in table["steps"]) / 100 or 0.1  # side by side, so equal values stay visible
    for i, name in enumerate(shown):
        lines = [line for line in table["steps"] if name in line]
        values = [line[name] * 100 for line in lines]
        errors = [[value - line[f"{name}_ci95"][0] * 100 for value, line in zip(values, lines, strict=True)],
                  [line[f"{name}_ci95"][1] * 100 - value for value, line in zip(values, lines, strict=True)]]  # fmt: skip
        steps = [line["step"] + (i - (len(shown) - 1) / 2) * shift for line in lines]
        axes.errorbar(steps, values, yerr=errors, marker="o", capsize=4, label=labels[name])
    best = next(line for line in table["steps"] if line["best"])
    axes.annotate("best", (best["step"], best["accuracy"] * 100), xytext=(0, 10), textcoords="offset points", ha="center")  # fmt: skip
    axes.set(xlabel="training step", ylabel="GSM8K accuracy, % (95% CI)", title=f"{table['run']}: {table['questions']} test questions")  # fmt: skip
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
