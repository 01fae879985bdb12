"""Tests for rewards.py: answer extraction, exact matching and the GRPO reward functions."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rewards
from rewards import (
    REWARDS,
    answer_present_reward,
    answers_match,
    completion_text,
    correctness_reward,
    extract_answer,
    format_reward,
    is_formatted,
    parse_ground_truth,
    reasoning_reward,
    reward_functions,
    stated_answer,
)

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared/data/gsm8k"
REWARD_FUNCS = [f for f, _ in REWARDS]


def score(reward_func, text, gold="0"):
    """The reward of one plain-text completion."""
    return reward_func([text], ground_truth=[gold])[0]


# ---------------------------------------------------------------------------------------------
# parse_ground_truth


def test_parse_ground_truth_takes_text_after_last_hash_marker_without_commas():
    assert parse_ground_truth("She has 1,000 + 234 = <<1000+234=1234>>1,234.\n#### 1,234") == "1234"


def test_parse_ground_truth_uses_the_last_marker_when_there_are_several():
    assert parse_ground_truth("#### 5\n#### 7") == "7"


@pytest.mark.parametrize(
    "answer, expected", [("72", "72"), ("-5", "-5"), ("1,000", "1000"), (" 2.50 ", "2.5")]
)
def test_parse_ground_truth_passes_already_parsed_answers_through(answer, expected):
    assert parse_ground_truth(answer) == expected


@pytest.mark.parametrize(
    "answer", [None, "", "#### ", "#### seventy", 72, ["#### 72"], "#### " + "9" * 10_000]
)
def test_parse_ground_truth_gives_empty_string_when_there_is_no_usable_number(answer):
    assert parse_ground_truth(answer) == ""


# ---------------------------------------------------------------------------------------------
# extract_answer: where to look


def test_extract_reads_the_number_after_the_hash_marker():
    assert extract_answer("48 / 2 = 24 clips\n#### 72") == "72"


def test_extract_prefers_the_last_hash_marker_over_earlier_ones():
    assert extract_answer("#### 5\nOops, recount.\n#### 7") == "7"


def test_extract_prefers_last_hash_marker_over_earlier_boxed():
    assert extract_answer("\\boxed{5}\nActually:\n#### 7") == "7"


def test_extract_hash_marker_outranks_a_later_boxed_answer():
    assert extract_answer("#### 7\nSo \\boxed{5}") == "7"


def test_extract_hash_marker_reads_only_its_own_line():
    # "####" with no number on its line states nothing; the last number is used instead.
    assert extract_answer("Total: 7 apples\n####\n") == "7"


def test_extract_reads_the_last_boxed_answer():
    assert extract_answer("First \\boxed{5}, but then \\boxed{7} instead, with 9 left over") == "7"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{\\dfrac{3}{4}}", "0.75"),
        ("\\boxed{{18}}", "18"),
        ("\\boxed{\\$18}", "18"),
        ("\\boxed{18 \\text{ dollars}}", "18"),
        ("\\boxed{1{,}000}", "1000"),
        ("\\boxed{1\\,000}", "1000"),
        ("\\boxed{50\\%}", "50"),
        ("\\boxed{-5}", "-5"),
    ],
)
def test_extract_boxed_balances_nested_braces_and_strips_latex(text, expected):
    assert extract_answer(text) == expected


def test_extract_unbalanced_boxed_falls_back_to_later_rules():
    assert extract_answer("The answer is 12. \\boxed{12") == "12"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the answer is 42.", "42"),
        ("The final answer is: $1,234.50", "1234.5"),
        ("Answer: -5", "-5"),
        ("ANSWER: **18**", "18"),
        ("The answer is −3 degrees", "-3"),
        ("The Answer Is 42, not 7", "42"),
    ],
)
def test_extract_reads_answer_phrases_in_lower_title_or_upper_case(text, expected):
    assert extract_answer(text) == expected


def test_extract_takes_the_last_answer_phrase_when_the_model_corrects_itself():
    text = "The answer is 5. Wait, 3 + 4 = 7, so the answer is 7. Check: 7 - 4 = 3"
    assert extract_answer(text) == "7"


def test_extract_skips_mentions_of_answer_that_state_no_number():
    assert extract_answer("The answer is 42. I double-checked this answer, and 6 * 7 = 42.") == "42"


def test_extract_does_not_read_answers_or_answered_as_an_answer_phrase():
    assert extract_answer("She answered 5 questions; in total 8 were asked") == "8"


def test_extract_falls_back_to_the_last_number():
    assert extract_answer("She sold 48 clips in April and 24 in May, 72 in all.") == "72"


def test_extract_reads_after_the_think_block_first():
    assert extract_answer("<think>#### 3\nthe answer is 3</think>\nSo the total is 4.") == "4"


def test_extract_reads_the_think_block_when_nothing_follows_it():
    assert extract_answer("<think>2 + 2 = 4, so #### 4</think>\n") == "4"


# ---------------------------------------------------------------------------------------------
# extract_answer: number spellings


@pytest.mark.parametrize(
    "text, expected",
    [
        ("#### -5", "-5"),
        ("#### −5", "-5"),
        ("#### $18.00", "18"),
        ("#### 18.", "18"),
        ("#### 1,000,000", "1000000"),
        ("#### 2.5", "2.5"),
        ("#### .5", "0.5"),
        ("#### 1/3", "1/3"),
        ("#### 50%", "50"),
        ("#### -$7", "-7"),
        ("#### **42**", "42"),
        ("#### 18 dollars", "18"),
    ],
)
def test_extract_normalises_negatives_decimals_dollars_commas_fractions(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected", [("16-3", "3"), ("20 - 5", "5"), ("(2)-1", "1"), ("x2 is 7", "7")]
)
def test_extract_does_not_read_a_binary_minus_or_a_word_as_part_of_a_number(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text", [None, "", "no numbers here", 42, b"#### 42", ["#### 42"], "####", "\\boxed{}"]
)
def test_extract_returns_none_when_no_answer_is_stated(text):
    assert extract_answer(text) is None


def test_extract_rejects_numbers_too_long_to_be_answers():
    assert extract_answer("#### " + "9" * 10_000) is None
    assert extract_answer("The answer is " + "1" * 41) is None


# ---------------------------------------------------------------------------------------------
# answers_match


@pytest.mark.parametrize(
    "predicted, gold",
    [
        ("18", "18"),
        ("18.00", "18"),
        ("18.", "18"),
        ("$18", "18"),
        ("18 dollars", "18"),
        ("-5", "−5"),
        ("−5", "-5"),
        ("1,000,000", "1000000"),
        ("1/2", "0.5"),
        ("50%", "50"),
        ("0.50", ".5"),
        (" 7 ", "7"),
        ("-0", "0"),
    ],
)
def test_answers_match_equal_values_in_any_accepted_spelling(predicted, gold):
    assert answers_match(predicted, gold)


@pytest.mark.parametrize(
    "predicted, gold",
    [
        ("25", "2.5"), ("-5", "5"), ("5", "-5"), ("180", "18"), ("1,000", "1"), ("0.333", "1/3"),
        ("12", "12.01"),
    ],
)
def test_answers_match_rejects_different_values_and_signs(predicted, gold):
    assert not answers_match(predicted, gold)


def test_answers_match_is_exact_not_float_fuzz():
    assert not answers_match("0.30000000000000004", "0.3")
    assert not answers_match("0.3333333333333333", "1/3")
    assert answers_match("0.1", "1/10")


@pytest.mark.parametrize(
    "predicted", ["2+2", "__import__('os').system('true')", "4 or 5", "four", "1e1", "10**1"]
)
def test_answers_match_never_evaluates_model_text(predicted):
    assert not answers_match(predicted, "4") and not answers_match(predicted, "10")


@pytest.mark.parametrize(
    "predicted, gold", [(None, "5"), ("5", None), (5, "5"), ("", ""), ("5", ""), ("1/0", "1/0")]
)
def test_answers_match_is_false_for_missing_or_non_string_answers(predicted, gold):
    assert not answers_match(predicted, gold)


# ---------------------------------------------------------------------------------------------
# is_formatted / format_reward


@pytest.mark.parametrize(
    "text",
    [
        "3 + 4 = 7\n#### 7",
        "3 + 4 = 7\n####7",
        "3 + 4 = 7\n  ####  -5  \n\n",
        "#### $1,234",
        "#### 2.50",
        "#### −5",
        "reasoning\r\n#### 12\r\n",
    ],
)
def test_is_formatted_accepts_a_final_hash_line_with_any_number_spelling(text):
    assert is_formatted(text)


@pytest.mark.parametrize(
    "text",
    [
        "#### 42 apples",
        "#### **42**",
        "#### 42\nDone.",
        "The answer is #### 42",
        "#### ",
        "42",
        "#### 1/0",
        "#### " + "9" * 100,
        None,
    ],
)
def test_is_formatted_rejects_words_markdown_or_a_marker_that_is_not_the_last_line(text):
    assert not is_formatted(text)


def test_format_reward_scores_each_completion_by_its_final_line():
    assert format_reward(["a\n#### 7", "#### 7\nbye", None]) == [1.0, 0.0, 0.0]


# Issue 13: a policy learned to write its working, then its answer line again and again until the token budget ran out.
WORKING = "She sold 48 clips in April and 48 / 2 = 24 in May, 72 in all.\n"


def test_format_reward_pays_in_full_for_one_final_answer_line():
    assert format_reward([WORKING + "#### 72", WORKING + "#### 72\n"]) == [1.0, 1.0]


@pytest.mark.parametrize("repeats", [2, 9, 50])
def test_is_formatted_rejects_a_repeated_final_answer_line(repeats):
    assert not is_formatted(WORKING + "#### 72\n" * repeats)


@pytest.mark.parametrize("cut", [1, 2])
def test_is_formatted_rejects_repeated_answer_lines_cut_mid_line(cut):
    assert not is_formatted((WORKING + "#### 72\n" * 9)[:-cut])


@pytest.mark.parametrize(
    "text",
    [
        "####\n#### 72",
        "#### 72\n####\n#### 72",
        "#### seventy-two\n#### 72",
        "#### 70\n#### 72",
        "#### 70\nNo: 48 + 24 = 72.\n#### 72",
        "I will end with '#### <number>'.\n#### 72",
    ],
)
def test_is_formatted_rejects_any_hash_marker_before_the_final_line(text):
    assert not is_formatted(text)


EOS, PAD = 2, 0  # stop-token ids, as a trainer binds them
FINISHED, CUT = [5, 6, EOS], [5, 6, 7]  # a completion's token ids (TRL's completion_ids), and one cut at the limit


@pytest.mark.parametrize("reward_func", [format_reward, answer_present_reward], ids=lambda f: f.__name__)
def test_form_rewards_score_a_completion_cut_at_the_length_limit_zero(reward_func):
    text = WORKING + "#### 72"
    ids = [CUT, FINISHED, FINISHED[:-1] + [PAD]]  # the last one ends in padding: it finished
    assert reward_func([text] * 3, completion_ids=ids, stop_token_ids=frozenset({EOS, PAD})) == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("reward_func", [format_reward, answer_present_reward], ids=lambda f: f.__name__)
def test_form_rewards_read_missing_ids_or_stop_tokens_as_not_cut(reward_func):
    text = WORKING + "#### 72"
    stops = frozenset({EOS})
    assert reward_func([text, text], completion_ids=[CUT], stop_token_ids=stops) == [0.0, 1.0]
    assert reward_func([text], completion_ids=[CUT]) == reward_func([text]) == [1.0]  # no stop ids: the text alone


def test_reward_functions_bind_the_stop_tokens_so_a_cut_completion_earns_no_form_reward():
    bound = reward_functions([EOS, PAD])
    assert [f.func for f in bound] == REWARD_FUNCS  # the same functions, in REWARDS' order
    text = "16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars.\n#### 18"
    scores = {f.func.__name__: f(completions=[text, text], completion_ids=[FINISHED, CUT], ground_truth=["18"] * 2)
              for f in bound}  # fmt: skip
    assert scores == {
        "format_reward": [1.0, 0.0], "reasoning_reward": [1.0, 1.0],
        "answer_present_reward": [1.0, 0.0], "correctness_reward": [1.0, 1.0],
    }  # fmt: skip


REPETITIONS = {
    "answer line x2": WORKING + "#### 72\n" * 2,
    "answer line x9": WORKING + "#### 72\n" * 9,
    "answer line x50": WORKING + "#### 72\n" * 50,
    "answer line x9 cut mid-line": (WORKING + "#### 72\n" * 9)[:-2],
    "whole solution x9": (WORKING + "#### 72\n") * 9,
}


@pytest.mark.parametrize("text", REPETITIONS.values(), ids=REPETITIONS.keys())
@pytest.mark.parametrize(
    "reward_func", [reasoning_reward, answer_present_reward, correctness_reward], ids=lambda f: f.__name__
)
def test_other_rewards_do_not_grow_when_the_answer_repeats(reward_func, text):
    assert score(reward_func, text, gold="72") <= score(reward_func, WORKING + "#### 72", gold="72")


# ---------------------------------------------------------------------------------------------
# reasoning_reward


def test_reasoning_gives_full_reward_to_two_true_equations():
    text = "She has 16 - 3 - 4 = 9 eggs and earns 9 * 2 = 18 dollars."
    assert score(reasoning_reward, text) == 1.0


def test_reasoning_reads_gsm8k_calculator_notes():
    assert score(reasoning_reward, "48/2 = <<48/2=24>>24 clips, then 48+24 = <<48+24=72>>72") == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "", "No arithmetic here.", "a - b = c", "-", "=", "- = - = -", "x = 5", "5 = 5",
        "-5 = -5", "Let t = 3 - 1",
    ],
)
def test_reasoning_scores_zero_without_stated_equations(text):
    assert score(reasoning_reward, text) == 0.0


def test_reasoning_ignores_an_expression_whose_left_operand_is_a_word():
    assert score(reasoning_reward, "16 eggs - 3 - 4 = 9") == 0.0


def test_reasoning_scores_zero_for_false_arithmetic():
    assert score(reasoning_reward, "2 + 2 = 5 and 3 * 3 = 10") == 0.0


def test_reasoning_is_the_share_of_true_equations():
    assert score(reasoning_reward, "2 + 2 = 4, 3 * 3 = 9, 5 - 1 = 3, 8 / 2 = 5") == 0.5


def test_reasoning_saturates_at_two_distinct_equations():
    assert score(reasoning_reward, "2 + 2 = 4") == 0.5
    assert score(reasoning_reward, "2 + 2 = 4, 3 * 3 = 9") == 1.0
    assert score(reasoning_reward, "2 + 2 = 4, 3 * 3 = 9, 5 - 1 = 4, 8 / 2 = 4") == 1.0


def test_reasoning_counts_a_repeated_equation_once():
    assert score(reasoning_reward, "1 + 1 = 2\n" * 50) == 0.5


def test_reasoning_respects_precedence_and_parentheses():
    assert score(reasoning_reward, "2 + 3 * 4 = 14 and (2 + 3) * 4 = 20") == 1.0
    assert score(reasoning_reward, "2 + 3 * 4 = 20") == 0.0


def test_reasoning_accepts_decimals_rounded_to_the_places_shown():
    assert score(reasoning_reward, "10 / 3 = 3.33 and 2 / 3 = 0.67") == 1.0


def test_reasoning_rejects_an_inexact_integer_result():
    assert score(reasoning_reward, "10 / 3 = 3") == 0.0


def test_reasoning_checks_both_links_of_a_chain():
    assert score(reasoning_reward, "8 * 2 + 4 * 5 = 16 + 20 = 36") == 1.0
    assert score(reasoning_reward, "3 × 4 = 12 + 2 = 14") == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "$1,200 ÷ 4 = $300 and 16 − 3 = 13",
        "0.2 x 50 = $10 and 50 × 20% = 10",
        "\\( 3 \\times 4 = 12 \\) and \\[ 12 \\div 4 = 3 \\]",
        "\\frac{48}{2} = 24 and 2(3 + 4) = 14",
        "Step 1. 3 + 4 = 7\nStep 2. 7 * 2 = 14",
    ],
)
def test_reasoning_understands_common_spellings_of_arithmetic(text):
    assert score(reasoning_reward, text) == 1.0


@pytest.mark.parametrize(
    "text", ["5 / 0 = 1", "(3 + 4)) = 7", "1 + (2 * 3 = 7", "3 + + 4 = 7", "2 ** 3 = 8"]
)
def test_reasoning_scores_zero_for_arithmetic_it_cannot_parse(text):
    assert score(reasoning_reward, text) == 0.0


# ---------------------------------------------------------------------------------------------
# completion_text and the reward functions


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("plain", "plain"),
        ([{"role": "assistant", "content": "hi"}], "hi"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"},
          {"role": "assistant", "content": "a2"}, {"role": "tool", "content": "t"}], "a2"),
        ([{"role": "user", "content": "q"}], ""),
        ([{"role": "assistant"}], ""),
        ([{"content": "no role"}], ""),
        ([{"role": "assistant", "content": None}], ""),
        ([{"role": "assistant", "content": [{"type": "text", "text": "x"}]}], ""),
        ([], ""),
        ([None, 3, "x"], ""),
        ({"role": "assistant", "content": "not in a list"}, ""),
        (None, ""),
        (42, ""),
    ],
)
def test_completion_text_is_the_last_assistant_message_or_empty(completion, expected):
    assert completion_text(completion) == expected


@pytest.mark.parametrize("reward_func", REWARD_FUNCS, ids=lambda f: f.__name__)
def test_rewards_score_plain_and_conversational_completions_alike(reward_func):
    text = "16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars.\n#### 18"
    plain = reward_func([text], ground_truth=["18"])
    chat = reward_func([[{"role": "assistant", "content": text}]], ground_truth=["18"])
    assert plain == chat == [1.0]


@pytest.mark.parametrize("reward_func", REWARD_FUNCS, ids=lambda f: f.__name__)
def test_rewards_accept_the_extra_keyword_arguments_trl_passes(reward_func):
    out = reward_func(
        prompts=["Q?"], completions=["2 + 2 = 4, 3 * 3 = 9\n#### 9"], completion_ids=[[1, 2]],
        ground_truth=["9"], question=["Q?"], trainer_state=object(), log_extra=print,
        log_metric=print,
    )
    assert out == [1.0]


def test_correctness_reward_compares_with_the_ground_truth_column():
    completions = ["#### 72", "#### 72", "The answer is $1,234.", "#### -5"]
    gold = ["72", "... #### 72", "1,234", "5"]
    assert correctness_reward(completions, ground_truth=gold) == [1.0, 1.0, 1.0, 0.0]


def test_correctness_reward_scores_missing_or_malformed_ground_truth_zero():
    assert correctness_reward(["#### 1", "#### 2"], ground_truth=["1"]) == [1.0, 0.0]
    assert correctness_reward(["#### 1"], ground_truth=[None]) == [0.0]
    assert correctness_reward(["#### 1"], ground_truth=None) == [0.0]
    assert correctness_reward(["#### 1"], ground_truth=["1", "2"]) == [1.0]


def test_answer_present_reward_is_one_when_an_answer_is_stated():
    stated = ["#### 7", "so \\boxed{7}", "The answer is 7.", "Answer: $7", "<think>7?</think>\nANSWER: 7"]
    assert answer_present_reward(stated) == [1.0] * len(stated)
    assert answer_present_reward(["\\boxed{x}", "no digits", None, "####\nthe answer is clear"]) == [0.0] * 4


NUMBERS_ONLY = [
    "so 7",
    "She sold 48 clips in April and 24 in May",
    "48 / 2 = 24, 48 + 24 = 72",
    "She has 3 apples and buys 4 more, so she has 7",
    "Step 1: 16 - 3 = 13. Step 2: 13 - 4 = 9 eggs, at $2 each",
    "The answers: 3, 4 and 7",  # "answers" is no answer phrase
    "####\nshe has 7",  # a marker without a number on its line
]


@pytest.mark.parametrize("text", NUMBERS_ONLY)
def test_answer_present_reward_pays_nothing_for_a_completion_that_only_mentions_numbers(text):
    assert score(answer_present_reward, text) == 0.0
    assert extract_answer(text) is not None  # correctness still reads the last number: it may be right


def test_stated_answer_reads_the_forms_extract_answer_tries_before_the_last_number():
    assert stated_answer("48 / 2 = 24\n#### 72") == extract_answer("48 / 2 = 24\n#### 72") == "72"
    assert stated_answer("so $\\boxed{\\frac{1}{2}}$ cups") == "0.5"
    assert stated_answer("The answer is 1,234. Then 5 more.") == "1234"
    assert stated_answer("she has 18 eggs") is None and extract_answer("she has 18 eggs") == "18"
    assert stated_answer(None) is None


def test_rewards_define_names_order_and_weights_in_one_place():
    assert [f.__name__ for f, _ in REWARDS] == [
        "format_reward", "reasoning_reward", "answer_present_reward", "correctness_reward",
    ]
    assert [w for _, w in REWARDS] == [0.2, 0.2, 0.2, 0.4]
    assert math.fsum(w for _, w in REWARDS) == 1.0  # so the weighted total lies in [0, 1]


def test_import_is_cheap_and_pulls_in_no_ml_libraries():
    code = (
        "import sys, time; t = time.perf_counter(); import rewards; t = time.perf_counter() - t; "
        "print(t, [m for m in ('torch', 'trl', 'transformers', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    seconds, heavy = out.stdout.split(maxsplit=1)
    assert heavy.strip() == "[]"
    assert float(seconds) < 0.5


# ---------------------------------------------------------------------------------------------
# Bad input: never raise, never hang


BAD_ITEMS = [
    None, "", 0, 1.5, b"#### 1", {"role": "assistant", "content": "#### 1"}, [{}], [None],
    [{"role": "assistant", "content": 7}], [{"role": None, "content": "#### 1"}],
    [[{"role": "assistant"}]],
]
# Pathological inputs (a megabyte of one character, runaway repetitions): they state no answer, so every reward is 0.0.
PATHOLOGICAL = {
    "commas": "1," * 500_000,
    "hash markers": "####" * 100_000,
    "open boxes": "\\boxed{" * 100_000,
    "open fractions": "\\frac{" * 150_000,
    "10,000 digits": "9" * 10_000,
    "10,000 digits after marker": "#### " + "9" * 10_000,
    "10,000 digits after phrase": "The answer is " + "9" * 10_000,
    "equals signs": "=" * 1_000_000,
    "dashes": "- " * 500_000,
    "brackets": "(" * 1_000_000,
    "answer words": "answer " * 150_000,
}
# Other inputs that would be slow for a careless scanner: they may legitimately score.
STRESS = {
    "long expression": "1+" * 500_000 + "1=3",
    "equations": "1+1=2 " * 170_000,
    "answer phrases": "the answer is 5. " * 60_000,
    "markers": "#### 5\n" * 140_000,
    "minus signs": "−" * 1_000_000,
    "think block": "<think>" + "2+2=4 " * 150_000 + "</think>",
}


@pytest.mark.parametrize("reward_func", REWARD_FUNCS, ids=lambda f: f.__name__)
def test_malformed_items_score_zero_without_raising(reward_func):
    assert reward_func(BAD_ITEMS, ground_truth=["1"] * len(BAD_ITEMS)) == [0.0] * len(BAD_ITEMS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_pathological_completions_score_zero_quickly(text):
    for reward_func in REWARD_FUNCS:
        start = time.perf_counter()
        assert score(reward_func, text, gold="9") == 0.0
        assert time.perf_counter() - start < 0.5, reward_func.__name__  # about 10 ms measured


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", STRESS.values(), ids=STRESS.keys())
def test_long_repetitive_completions_score_within_unit_interval_quickly(text):
    for reward_func in REWARD_FUNCS:
        start = time.perf_counter()
        assert 0.0 <= score(reward_func, text, gold="5") <= 1.0
        assert time.perf_counter() - start < 0.5, reward_func.__name__


# Issue 9: "#### " then a megabyte of digits or spaces and a letter made the final-line regex backtrack for 90-180 ms;
# lowering a megabyte of non-ASCII text to find "answer", twice when it follows a think block, took 50 ms, and reading
# the answer phrase's spaces or number without a bound took 30-100 ms.
MEGABYTE = {
    "digits after marker, then a letter": "#### " + "9" * 1_000_000 + "a",
    "spaces after marker, then a letter": "#### " + " " * 1_000_000 + "a",
    "tabs after marker, then a letter": "####" + "\t" * 1_000_000 + "a",
    "decimals after marker, then a letter": "#### 1." + "0" * 1_000_000 + "a",
    "grouped digits after marker, then a letter": "#### " + "1,000" * 200_000 + "a",
    "spaces after marker, then a number": "#### " + " " * 1_000_000 + "5",
    "non-ASCII after a think block": "</think>" + "−" * 1_000_000,
    "emoji after a think block": "</think>" + "😀" * 1_000_000,
    "dotted capital I after a think block": "</think>" + "İ" * 1_000_000,  # slowest to lower
    "non-ASCII words after a think block": "</think>" + "é answer " * 110_000,
    "spaces after answer": "Answer" + " " * 1_000_000 + "x",
    "digits after answer phrase": "The answer is " + "9" * 1_000_000,
    "decimals after answer phrase": "The answer is 1." + "0" * 1_000_000,
}
UP_TO_A_MEGABYTE = PATHOLOGICAL | STRESS | MEGABYTE


@pytest.mark.timeout(120)
@pytest.mark.parametrize("text", UP_TO_A_MEGABYTE.values(), ids=UP_TO_A_MEGABYTE.keys())
def test_any_completion_up_to_a_megabyte_is_scored_in_well_under_50_ms(text):
    for reward_func in REWARD_FUNCS:
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            score(reward_func, text)
            seconds.append(time.perf_counter() - start)
        assert statistics.median(seconds) < 0.05, reward_func.__name__  # a few ms measured


@pytest.mark.timeout(60)
def test_a_one_megabyte_completion_is_scored_quickly():
    text = ("She has 16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars. " * 25_000)[:1_000_000] + "\n#### 18"
    for reward_func in REWARD_FUNCS:
        start = time.perf_counter()
        assert score(reward_func, text, gold="18") == 1.0
        assert time.perf_counter() - start < 0.5, reward_func.__name__


# ---------------------------------------------------------------------------------------------
# Properties

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# Text built from the pieces the extractors and the parser react to, plus arbitrary characters.
PIECES = [
    "####", "\\boxed{", "{", "}", "</think>", "<think>", "answer", "Answer: ", " is ", "=",
    "-", "−", "+", "*", "×", "/", "÷", "(", ")", ".", ",", "$", "%", "\n", " ", "<<", ">>",
    "\\frac{", "\\times",
]
texts = st.lists(
    st.sampled_from(PIECES) | st.integers(-10**6, 10**6).map(str) | st.text(max_size=4),
    max_size=40,
).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["role", "content", "name"]) | st.text(max_size=3), children, max_size=3
    ),
    max_leaves=10,
)
messages = st.fixed_dictionaries(
    {}, optional={"role": st.sampled_from(["assistant", "user", "system"]) | json_values,
                  "content": texts | json_values},
)
completions = texts | st.lists(messages | json_values, max_size=4) | json_values


@PROPERTY_SETTINGS
@given(st.lists(completions, min_size=1, max_size=4), st.lists(texts | json_values, max_size=4))
def test_any_completion_scores_within_unit_interval_without_raising(items, gold):
    for reward_func in REWARD_FUNCS:
        values = reward_func(items, ground_truth=gold)
        assert len(values) == len(items)
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)


@PROPERTY_SETTINGS
@given(texts)
def test_extracted_answers_are_canonical_and_match_themselves(text):
    answer = extract_answer(text)
    if answer is not None:
        assert parse_ground_truth(answer) == answer
        assert answers_match(answer, answer)


# A completion in the prompt's format: text without "####", then one final answer line.
final_lines = st.builds(
    "{}####{}{}{}".format,
    st.sampled_from(["", "  "]),
    st.sampled_from(["", " "]),
    st.integers(-10**9, 10**9).map(str) | st.sampled_from(["$1,234", "−5", "2.50", "1/2", "50%", ".5", "18."]),
    st.sampled_from(["", " ", "\n"]),
)
formatted = st.tuples(texts.map(lambda text: text.replace("#", "")), final_lines)


@PROPERTY_SETTINGS
@given(formatted)
def test_appending_another_copy_of_the_final_line_never_raises_a_reward(body_and_line):
    body, line = body_and_line
    text = body + "\n" + line
    repeated = text + "\n" + line
    assert score(format_reward, text) == 1.0 and score(format_reward, repeated) == 0.0
    for reward_func in (answer_present_reward, reasoning_reward):
        assert score(reward_func, repeated) <= score(reward_func, text), reward_func.__name__


@st.composite
def gold_and_spelling(draw):
    """A GSM8K-style gold answer and another accepted spelling of the same value."""
    value = Decimal(draw(st.integers(-10**9, 10**9))).scaleb(-draw(st.sampled_from([0, 2])))
    gold = format(value, "," if draw(st.booleans()) else "")
    whole, _, decimals = format(abs(value), "f").partition(".")
    decimals = decimals.rstrip("0") if draw(st.booleans()) else decimals
    point = "." + decimals if decimals else draw(st.sampled_from(["", ".", ".0", ".00"]))
    whole = f"{int(whole):,}" if draw(st.booleans()) else whole
    if whole == "0" and decimals and draw(st.booleans()):
        whole = ""  # ".5"
    sign = draw(st.sampled_from(["-", "−"])) if value < 0 else ""
    unit = draw(st.sampled_from(["", "%", " dollars"]))
    return gold, sign + draw(st.sampled_from(["", "$"])) + whole + point + unit


STATEMENTS = [
    "Adding up: 3 + 4 = 7.\n#### {}",
    "So the answer is {}.",
    "The final answer is $\\boxed{{{}}}$.",
    "<think>maybe 3</think>\nAnswer: {}",
    "After all of that, the total comes to {}",
]


@PROPERTY_SETTINGS
@given(gold_and_spelling(), st.sampled_from(STATEMENTS), st.booleans())
def test_any_accepted_spelling_of_the_gold_value_scores_full_correctness(
    gold_spelling, statement, chat
):
    gold, spelling = gold_spelling
    text = statement.format(spelling)
    completion = [{"role": "assistant", "content": text}] if chat else text
    assert answers_match(spelling, gold)
    assert correctness_reward([completion], ground_truth=[gold]) == [1.0], text
    reference = f"Reasoning.\n#### {gold}"
    assert correctness_reward([completion], ground_truth=[reference]) == [1.0], text


@PROPERTY_SETTINGS
@given(st.fractions(max_denominator=10**6).filter(lambda f: abs(f) < 10**12))
def test_canonical_answers_round_trip_exactly(value):
    canonical = parse_ground_truth(f"{value.numerator}/{value.denominator}")
    assert canonical and Fraction(canonical) == value


# ---------------------------------------------------------------------------------------------
# Real data: the GSM8K train and test sets


@pytest.fixture(scope="module")
def gsm8k_rows():
    rows = []
    for split in ("train", "test"):
        with (GSM8K / f"{split}.jsonl").open(encoding="utf-8") as lines:
            rows += [json.loads(line) for line in lines]
    return rows


needs_gsm8k = pytest.mark.skipif(not GSM8K.is_dir(), reason=f"GSM8K data not found at {GSM8K}")


@needs_gsm8k
def test_parse_ground_truth_parses_all_8792_gsm8k_reference_answers(gsm8k_rows):
    answers = [parse_ground_truth(row["answer"]) for row in gsm8k_rows]
    assert len(answers) == 8792
    assert all(answer and Fraction(answer).denominator == 1 for answer in answers)


@needs_gsm8k
def test_correctness_reward_gives_every_reference_solution_full_marks(gsm8k_rows):
    solutions = [row["answer"] for row in gsm8k_rows]
    golds = [parse_ground_truth(solution) for solution in solutions]
    assert correctness_reward(solutions, ground_truth=golds) == [1.0] * len(solutions)


@needs_gsm8k
def test_format_reward_accepts_every_reference_solution(gsm8k_rows):
    assert all(is_formatted(row["answer"]) for row in gsm8k_rows)


@needs_gsm8k
def test_answer_present_reward_pays_every_reference_solution(gsm8k_rows):
    assert answer_present_reward([row["answer"] for row in gsm8k_rows]) == [1.0] * 8792


@needs_gsm8k
def test_reasoning_reward_credits_nearly_all_reference_solutions(gsm8k_rows):
    # The few exceptions hold real slips in GSM8K ("192*100=$1920") or mixed numbers ("1 1/2").
    scores = reasoning_reward([row["answer"] for row in gsm8k_rows])
    assert sum(s == 1.0 for s in scores) / len(scores) > 0.9


def test_module_exposes_the_interface_the_trainer_uses():
    for name in (
        "REWARDS", "completion_text", "parse_ground_truth", "extract_answer", "answers_match",
        "is_formatted", "format_reward", "reasoning_reward", "answer_present_reward",
        "correctness_reward", "stated_answer", "reward_functions",
    ):
        assert hasattr(rewards, name), name
