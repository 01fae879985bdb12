"""evaluation.py: the Wilson interval, the paired before/after difference and its report, and greedy generation that
gives the same answers whether batched or continuously batched."""

import json

import pytest
import torch

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
        "before 0.0% -> after 0.0% on 16 test questions: no change: every question scored the same before and after "
        "(0 of 16 right), so the interval is the single point 0"
    )
    mixed = [{"correct": True}, {"correct": False}] * 8
    assert "(8 of 16 right), so the interval" in evaluation.describe_comparison(evaluation.compare_before_after(mixed, mixed))
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


@pytest.fixture(scope="module")
def smoke_model():
    """The smoke model in 4-bit, its tokenizer, 8 test questions and the --eval_only settings."""
    smoke.build_assets(grpotrainer.PROMPT)
    run = grpotrainer.read_settings(["--smoke", "--eval_only", "--eval_samples", "8"])
    model = loading.load_model(run.model, run.training)
    tokenizer = loading.load_tokenizer(run.model, run.training)
    test = loading.load_split(run.script.dataset_name, None, "test")
    return model, tokenizer, loading.to_chat_prompts(test, grpotrainer.PROMPT, limit=8), run


def test_greedy_answers_are_the_same_batched_or_continuously_batched(smoke_model):
    model, tokenizer, examples, run = smoke_model
    batched_rows, batched = evaluation.evaluate_gsm8k(model, tokenizer, examples, run.training)
    run.training.use_transformers_continuous_batching = True
    continuous_rows, continuous = evaluation.evaluate_gsm8k(model, tokenizer, examples, run.training)
    assert continuous_rows == batched_rows and len(batched_rows) == 8
    assert batched["generation"] != continuous["generation"] and "continuous" in continuous["generation"]
    assert batched["accuracy"] == sum(row["correct"] for row in batched_rows) / 8
    assert evaluation.describe_accuracy(batched).startswith(f"GSM8K accuracy (greedy pass@1) {batched['accuracy']:.1%}")
    run.training.use_transformers_continuous_batching = False


def test_sampled_evaluation_keeps_every_sample_and_repeats_itself_without_touching_trainings_randomness(smoke_model):
    model, tokenizer, examples, run = smoke_model
    decoding = evaluation.Decoding(samples=3, temperature=1.0, top_p=1.0, seed=7)
    rng = torch.random.get_rng_state()
    rows, summary = evaluation.evaluate_gsm8k(model, tokenizer, examples, run.training, decoding)
    assert torch.equal(torch.random.get_rng_state(), rng)  # training's random state is as it was
    again, _ = evaluation.evaluate_gsm8k(model, tokenizer, examples, run.training, decoding)
    assert again == rows and len(rows) == 8 and all(len(row["samples"]) == 3 for row in rows)
    completions = [sample["completion"] for row in rows for sample in row["samples"]]
    assert len(set(completions)) > 8  # sampled: a question's three completions differ
    assert summary["samples_per_question"] == 3 and "sampled" in summary["generation"]
    other, _ = evaluation.evaluate_gsm8k(model, tokenizer, examples, run.training, decoding._replace(seed=8))
    assert other != rows


# --------------------------------------------------------------------------------------------------------------------
# Sampled evaluation: pass@k, maj@k and their intervals, on hand-made rows


def sampled_row(gold, *answers):
    """A question's row as evaluate_gsm8k builds it, from completions that state `answers` (None: no number)."""
    results = [{"completion": "no idea" if a is None else f"so\n#### {a}", "truncated": False} for a in answers]
    return evaluation.question_row({"question": f"q{gold}", "ground_truth": gold}, results)


def test_pass_at_k_is_the_unbiased_estimator_of_chen_et_al():
    assert evaluation.pass_at_k(5, 2, 1) == 2 / 5  # pass@1 is the share of correct samples
    assert evaluation.pass_at_k(5, 2, 2) == 1 - 3 / 10  # 1 - C(3,2)/C(5,2)
    assert evaluation.pass_at_k(10, 3, 5) == 1 - 21 / 252  # 1 - C(7,5)/C(10,5)
    assert evaluation.pass_at_k(4, 3, 2) == 1.0 and evaluation.pass_at_k(4, 0, 4) == 0.0  # n - c < k; none correct
    assert evaluation.pass_at_k(4, 1, 4) == 1.0  # k = n: at least one of the samples is right


def test_majority_vote_normalises_answers_like_rewards_and_breaks_ties_by_first_occurrence():
    assert evaluation.majority_answer(["1,000", "7", "1000.0"]) == "1,000"  # 1,000 and 1000.0 are one answer
    assert evaluation.majority_answer(["7", "1,000", "1000.0", "$7", None, None]) == "7"  # 2 against 2: first stated
    assert evaluation.majority_answer([None, None]) is None  # no answer stated: no vote
    row = sampled_row("1000", "7", "1,000", "7", "1000.0", None)
    assert row["majority"] == "7" and not row["majority_correct"]
    assert [sample["extracted"] for sample in row["samples"]] == ["7", "1000", "7", "1000", None]
    assert row["completion"] == row["samples"][0]["completion"]  # the first sample also stands at the top


def test_sampled_summary_reports_mean_pass_at_1_pass_at_k_and_maj_at_k_with_intervals():
    rows = [sampled_row("16", 16, 16, 16, 16), sampled_row("5", 5, 7, 7, 8), sampled_row("3", None, 4, 4, 4)]
    summary = evaluation.summarise(rows)
    assert summary["samples_per_question"] == 4 and summary["questions"] == 3
    assert summary["accuracy"] == (1 + 0.25 + 0) / 3  # mean pass@1 over the samples
    assert summary["pass@k"] == 2 / 3 and summary["maj@k"] == 1 / 3  # q2 has one right answer, outvoted by 7
    for name in ("accuracy", "pass@k", "maj@k"):
        low, high = summary[f"{name}_ci95"]
        assert 0 <= low < summary[name] < high <= 1, name
    assert summary["maj@k_ci95"] == evaluation.wilson_interval(1, 3)  # 0/1 per question: Wilson's interval
    assert summary["format_rate"] == 11 / 12 and summary["truncated_rate"] == 0
    assert evaluation.logged_figures(summary) == ["accuracy", "pass@k", "maj@k", "format_rate", "truncated_rate"]
    summary |= {"decoding": evaluation.Decoding(4, 0.7, 0.8)._asdict(), "generation": "test"}
    line = evaluation.describe_accuracy(summary)
    assert line.startswith("GSM8K accuracy (mean pass@1 of 4 samples at temperature 0.7, top-p 0.8) 41.7% [95% CI")
    assert "; pass@4 66.7% [95% CI" in line and "; maj@4 33.3% [95% CI" in line


def test_a_greedy_summary_has_no_pass_at_k_and_keeps_its_wilson_interval():
    rows = [{"correct": i < 3, "formatted": True, "truncated": False} for i in range(10)]
    summary = evaluation.summarise(rows)
    assert summary["accuracy"] == 0.3 and summary["accuracy_ci95"] == evaluation.wilson_interval(3, 10)
    assert "pass@k" not in summary and evaluation.logged_figures(summary) == ["accuracy", "format_rate", "truncated_rate"]  # fmt: skip


def test_paired_difference_of_sampled_rows_compares_each_questions_share_of_correct_samples():
    before = [sampled_row("1", 1, 2, 2, 2), sampled_row("2", 3, 3, 3, 3)]
    after = [sampled_row("1", 1, 1, 1, 2), sampled_row("2", 2, 3, 3, 3)]
    result = evaluation.compare_before_after(before, after)
    assert result["before"] == 0.125 and result["after"] == 0.5 and result["difference"] == 0.375


def test_decoding_is_greedy_by_default_and_follows_qwen3s_model_card_when_it_samples():
    assert evaluation.choose_decoding(1, None, None, thinking=False, seed=1).greedy
    assert evaluation.choose_decoding(1, None, None, thinking=True, seed=1) == evaluation.Decoding(1, 0.6, 0.95, 1)
    assert evaluation.choose_decoding(8, None, None, thinking=False, seed=1) == evaluation.Decoding(8, 0.7, 0.8, 1)
    assert evaluation.choose_decoding(1, 0, None, thinking=True, seed=1).greedy  # temperature 0: greedy on request
    assert evaluation.choose_decoding(4, 1.0, 0.9, thinking=True, seed=1) == evaluation.Decoding(4, 1.0, 0.9, 1)
