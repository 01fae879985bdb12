"""evaluation.py: the Wilson interval, the paired before/after difference and its report, and greedy generation that
gives the same answers whether batched or continuously batched."""

import json

import evaluation
import grpotrainer
import loading
import smoke


def test_wilson_interval_is_honest_and_stays_in_0_1():
    low, high = evaluation.wilson_interval(50, 100)
    assert low < 0.5 < high and round(high - low, 2) == 0.19
    assert evaluation.wilson_interval(0, 10)[0] == 0.0 and evaluation.wilson_interval(10, 10)[1] == 1.0


def test_paired_difference_is_significant_only_when_its_interval_excludes_zero():
    same = [{"correct": True}, {"correct": False}] * 50
    assert not evaluation.compare_before_after(same, same)["significant"]
    better = [{"correct": True}] * 100
    result = evaluation.compare_before_after(same, better)
    assert result["difference"] == 0.5 and result["significant"]
    one_more = same[:-1] + [{"correct": True}]
    assert not evaluation.compare_before_after(same, one_more)["significant"]


def test_a_comparison_where_no_answer_changed_says_so_instead_of_a_zero_width_interval():
    wrong = [{"correct": False}] * 16
    line = evaluation.describe_comparison(evaluation.compare_before_after(wrong, wrong))
    assert line == (
        "before 0.0% -> after 0.0% on 16 test questions: every question scored the same before and after "
        "(0 of 16 right): no change"
    )
    mixed = [{"correct": True}, {"correct": False}] * 8
    assert "(8 of 16 right): no change" in evaluation.describe_comparison(evaluation.compare_before_after(mixed, mixed))
    assert "[95% CI" in evaluation.describe_comparison(evaluation.compare_before_after(wrong, mixed))


def write_results(folder, rows):
    folder.mkdir(parents=True)
    (folder / "eval_results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_before_and_after_are_compared_from_their_files_only_on_the_same_questions(tmp_path, capsys):
    before = [{"question": f"q{i}", "correct": i < 2} for i in range(10)]
    after = [{"question": f"q{i}", "correct": i < 7} for i in range(10)]
    write_results(tmp_path / "eval" / "step-0", before)
    write_results(tmp_path / "eval" / "step-5", after)
    evaluation.report_before_and_after(tmp_path, 5)
    assert "before 20.0% -> after 70.0% on 10 test questions: +50.0%" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval_before_after.json").read_text())["difference"] == 0.5

    write_results(tmp_path / "eval" / "step-6", [{**row, "question": "other"} for row in after])
    evaluation.report_before_and_after(tmp_path, 6)
    assert "scored different questions: not compared" in capsys.readouterr().out


def test_greedy_answers_are_the_same_batched_or_continuously_batched():
    smoke.build_assets()
    run = grpotrainer.read_settings(["--smoke", "--eval_only", "--eval_samples", "8"])
    model = loading.load_model(run.model, run.training)
    tokenizer = loading.load_tokenizer(run.model, run.training)
    test = loading.load_split(run.script.dataset_name, None, "test")
    examples = loading.to_chat_prompts(test, grpotrainer.PROMPT, limit=8)
    batched_rows, batched = evaluation.evaluate_gsm8k(model, tokenizer, examples, run.training)
    run.training.use_transformers_continuous_batching = True
    continuous_rows, continuous = evaluation.evaluate_gsm8k(model, tokenizer, examples, run.training)
    assert continuous_rows == batched_rows and len(batched_rows) == 8
    assert batched["generation"] != continuous["generation"] and "continuous" in continuous["generation"]
    assert batched["accuracy"] == sum(row["correct"] for row in batched_rows) / 8
    assert evaluation.describe_accuracy(batched).startswith(f"GSM8K accuracy (greedy pass@1) {batched['accuracy']:.1%}")
