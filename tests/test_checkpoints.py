"""checkpoints.py: `--eval_only --adapter RUN` scores every saved adapter of a run on the same questions, generates
only the evaluations that are not on disk yet, and writes the table (and the plot, with matplotlib)."""

import importlib.util
import json
import shutil

import pytest
import yaml
from conftest import error_line

import evaluation
import grpotrainer


@pytest.fixture
def generations(monkeypatch):
    """The questions' lists that evaluate_gsm8k generated completions for, call by call."""
    calls = []
    real = evaluation.evaluate_gsm8k

    def counted(model, tokenizer, examples, *args):
        calls.append([example["question"] for example in examples])
        return real(model, tokenizer, examples, *args)

    monkeypatch.setattr(evaluation, "evaluate_gsm8k", counted)
    return calls


def compare(run, capsys) -> str:
    assert grpotrainer.main(["--smoke", "--eval_only", "--adapter", str(run)]) == 0
    return capsys.readouterr().out


def test_comparison_reuses_the_evaluations_on_disk_and_generates_only_the_missing_one(three_checkpoint_run, tmp_path, capsys, generations):  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(three_checkpoint_run, run)
    out = compare(run, capsys)
    assert len(generations) == 1  # step 1 had a checkpoint but no evaluation; steps 0, 2 and 3 were on disk
    assert "reused from disk: steps 0, 2, 3; evaluated now: steps 1" in out
    table = json.loads((run / "eval-checkpoints.json").read_text())
    assert [line["step"] for line in table["steps"]] == [0, 1, 2, 3]
    assert [line["evaluation"] for line in table["steps"]] == ["eval/step-0", "eval-checkpoints/step-1", "eval/step-2", "eval/step-3"]  # fmt: skip
    assert table["steps"][3]["adapters"] == ["checkpoint-3", "final"] and "best" in sum((line["adapters"] for line in table["steps"]), [])  # fmt: skip
    for line in table["steps"]:  # every figure is that evaluation's own, and the step-0 difference is paired
        rows = evaluation.read_rows(run / line["evaluation"])
        assert line["accuracy"] == evaluation.summarise(rows)["accuracy"] and len(rows) == table["questions"] == 16
        base = evaluation.read_rows(run / "eval" / "step-0")
        assert line["difference_vs_step_0"] == evaluation.compare_before_after(base, rows)["difference"]
    best = [line for line in table["steps"] if line["best"]]
    assert len(best) == 1 and best[0]["accuracy"] == max(line["accuracy"] for line in table["steps"])
    assert all(line["accuracy"] < best[0]["accuracy"] for line in table["steps"] if line["step"] < best[0]["step"])
    markdown = (run / "eval-checkpoints.md").read_text()
    assert "| step | adapter | accuracy [95% CI] | vs step 0 [95% CI] | format | truncated | best |" in markdown
    assert markdown.count("**best**") == 1 and markdown.splitlines()[-1] in out

    again = compare(run, capsys)  # everything is on disk now: nothing is generated, nothing overwritten
    assert len(generations) == 1 and "evaluated now: steps none" in again
    assert json.loads((run / "eval-checkpoints-2.json").read_text())["steps"] == table["steps"]
    assert (run / "eval-checkpoints.md").read_text() == markdown


def test_an_evaluation_on_disk_is_what_generating_it_again_gives(three_checkpoint_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(three_checkpoint_run, run)
    assert grpotrainer.main(["--smoke", "--eval_only", "--adapter", str(run / "checkpoint-2"), "--eval_samples", "16"]) == 0  # fmt: skip
    again, on_disk = evaluation.read_rows(run / "eval-checkpoint-2"), evaluation.read_rows(run / "eval" / "step-2")
    # What the table reads is the same. The texts may not be: the random smoke model's logits are nearly uniform, and
    # one of 16 greedy completions was measured to start with another token when the adapter is reloaded from disk.
    scored = ("question", "gold", "extracted", "correct", "formatted", "truncated")
    assert [[row[key] for key in scored] for row in again] == [[row[key] for key in scored] for row in on_disk]
    assert sum(a["completion"] == b["completion"] for a, b in zip(again, on_disk, strict=True)) >= len(on_disk) - 1


def test_other_questions_or_decoding_are_evaluated_again(three_checkpoint_run, tmp_path, capsys, generations):
    run = tmp_path / "run"
    shutil.copytree(three_checkpoint_run, run)
    argv = ["--smoke", "--eval_only", "--adapter", str(run), "--eval_samples", "4", "--eval_samples_per_question", "2"]
    assert grpotrainer.main(argv) == 0
    assert len(generations) == 4 and all(len(questions) == 4 for questions in generations)
    table = json.loads((run / "eval-checkpoints.json").read_text())
    assert table["decoding"] == {"samples": 2, "temperature": 0.7, "top_p": 0.8, "seed": 42}
    assert all("pass@k" in line and "maj@k" in line for line in table["steps"])
    assert "| pass@2 | maj@2 |" in (run / "eval-checkpoints.md").read_text()


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_the_comparison_draws_its_plot_with_matplotlib(three_checkpoint_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(three_checkpoint_run, run)
    out = compare(run, capsys)
    assert (run / "eval-checkpoints.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"table: {run}/eval-checkpoints.md, {run}/eval-checkpoints.json, {run}/eval-checkpoints.png" in out


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="matplotlib is installed")
def test_without_matplotlib_the_table_is_written_and_one_line_says_how_to_get_the_plot(three_checkpoint_run, tmp_path, capsys):  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(three_checkpoint_run, run)
    out = compare(run, capsys)
    assert (run / "eval-checkpoints.md").is_file() and not (run / "eval-checkpoints.png").exists()
    assert out.count("no plot: matplotlib is not installed; pip install matplotlib") == 1


def test_a_run_of_another_model_is_one_line_and_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    script = {"model_name": "Qwen/Qwen3-0.6B", "eval_samples": 16}
    saved = {"script": script, "training": {}, "model": {}, "sources": {}}
    (run / "settings.yaml").write_text(yaml.safe_dump(saved))
    line = error_line(capsys, ["--smoke", "--eval_only", "--adapter", run])
    assert f"{run} trained adapters of Qwen/Qwen3-0.6B, not " in line and "add --model_name Qwen/Qwen3-0.6B" in line
    assert not (run / "eval-checkpoints").exists()
