"""console.py: one short line per logging step, and the sampled completions of TensorBoard's text tab."""

from transformers import TrainerState

import console

LOGS = {
    "rewards/mean": 0.31, "rewards/best": 0.62, "rewards/worst": 0.05, console.CORRECT: 0.125, "objective/kl": 0.0031,
    "objective/entropy": 2.41, "completions/clipped_ratio": 0.97, "step_time": 1.94, "loss": 0.01, "grad_norm": 0.8,
}  # fmt: skip


def test_a_logging_step_is_one_short_line_of_the_metrics_that_matter():
    line = console.step_line(TrainerState(global_step=10, max_steps=80), LOGS)
    assert line == (
        "step 10/80: rewards 0.31 (best 0.62, worst 0.05), correct 12%, kl 0.0031, entropy 2.41, clipped 97%, "
        "1.9 s/step"
    )


def test_evaluations_print_their_own_line_and_the_end_of_training_says_how_long():
    assert console.step_line(TrainerState(global_step=40), {"eval_accuracy": 0.5}) is None
    assert console.step_line(TrainerState(global_step=80), {"train_runtime": 24.6}) == "trained to step 80 in 25 s"


def test_completion_samples_show_question_truth_rewards_and_the_completion_indented():
    logs = {
        "completion": ["First line\n#### 5", "other"],
        "prompt": [[{"role": "user", "content": "Solve...\n\nTom has 2 apples."}]] * 2,
        "rewards": {"format_reward": [1.0, 0.0], "correctness_reward": [1.0, 0.0]},
        "extra": {"ground_truth": ["5", "7"]},
    }
    text = console.completion_samples(logs, count=1)
    assert text == (
        "**ground truth** 5 | **rewards** format_reward 1.00, correctness_reward 1.00\n\n"
        "**question** Tom has 2 apples.\n\n    First line\n    #### 5"
    )
    assert console.completion_samples(logs).count("---") == 1  # both samples, one separator
