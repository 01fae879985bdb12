"""doctor.py: each condition on synthetic metric streams (it starts after its window, not on one noisy point, clears,
and is reported once per change), the callback without a trainer, and real smoke runs that provoke a condition."""

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState

import doctor
import evaluation
import grpotrainer
import rewards
from conftest import ENV, REPO, tensorboard_log

NAN = math.nan
FORMAT, ANSWER_PRESENT = doctor.reward_key(rewards.format_reward), doctor.reward_key(rewards.answer_present_reward)


@pytest.fixture(scope="module")
def settings():
    """The --smoke run's GRPOConfig and ModelConfig: the advice quotes their values."""
    run = grpotrainer.read_settings(["--smoke"])
    return run.training, run.model


@pytest.fixture
def args(settings, tmp_path):
    args = copy.copy(settings[0])
    args.output_dir = str(tmp_path)
    return args


def feed(args, stream: list[dict], first_step: int = 1) -> tuple[doctor.Doctor, list[tuple[int, str, str]]]:
    """Run a Doctor over one metrics dict per logging step; return it and its events as (step, condition, state)."""
    run = doctor.Doctor(args)
    events = [run.observe(step, metrics) for step, metrics in enumerate(stream, first_step)]
    return run, [(event.step, event.condition, event.state) for step_events in events for event in step_events]


def series(key: str, values: list[float]) -> list[dict]:
    return [{key: value} for value in values]


# --------------------------------------------------------------------------------------------------------------------
# Conditions on synthetic streams


def test_kl_warning_waits_for_its_window_ignores_a_spike_and_reports_each_change_once(args):
    kl = [1, 25, 1, 1, 12, 13, 14, 15, 15, 15, 3, 2, 1, 1]
    run, events = feed(args, series("objective/kl", kl))
    assert events == [(7, "kl_warning", "started"), (13, "kl_warning", "cleared")]
    started = run.events[0]
    assert started.message == (
        "doctor: step 7: kl_warning: objective/kl 14 > 10 for 3 logging steps: the policy is drifting from the base "
        "model -> raise kl_coef 0.05 -> 0.1 or lower learning_rate 0.001 -> 0.0005"
    )
    assert (started.value, started.threshold, started.window) == (14, 10, 3)


def test_kl_above_its_limit_is_a_warning_and_a_limit(args):
    run, events = feed(args, series("objective/kl", [21, 22, 23]))
    assert events == [(3, "kl_limit", "started"), (3, "kl_warning", "started")]
    assert "raise kl_coef 0.05 -> 0.1 and lower learning_rate" in run.events[0].message


def test_a_step_without_the_metric_neither_counts_nor_resets(args):
    stream = [{"objective/kl": 15}, {"objective/kl": 15}, {"eval_accuracy": 0.5}, {"objective/kl": 15}]
    assert feed(args, stream)[1] == [(4, "kl_warning", "started")]


def zero_std(fractions: list[float], rewards: list[float]) -> list[dict]:
    return [{"frac_reward_zero_std": f, "rewards/mean": r} for f, r in zip(fractions, rewards, strict=True)]


def test_no_learning_signal_needs_five_steps_of_alike_scores_and_a_flat_reward(args):
    run, events = feed(args, zero_std([1.0] * 6, [0.1] * 6))
    assert events == [(5, "no_learning_signal", "started")]
    message = run.events[0].message
    assert "frac_reward_zero_std 1 > 0.8 for 5 logging steps, while rewards/mean 0.1 is not more than 0.1" in message
    assert "raise num_generations 8 -> 16" in message  # the smoke preset samples at temperature 1.0
    interrupted = zero_std([1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0], [0.1] * 9)
    assert feed(args, interrupted)[1] == []  # 4 in a row at most
    rising = zero_std([0.5] * 5 + [1.0] * 6, [0.05 * step for step in range(11)])
    assert feed(args, rising)[1] == []  # the reward still climbs: something is being learned


def test_clipped_completions_advice_depends_on_thinking(args):
    run, events = feed(args, series("completions/clipped_ratio", [0.1, 0.5, 0.6, 0.7, 0.1, 0.0, 0.0]))
    assert events == [(4, "clipped_completions", "started"), (7, "clipped_completions", "cleared")]
    assert run.events[0].advice == "raise max_completion_length 48 -> 96 (thinking is off)"
    args.chat_template_kwargs = {"enable_thinking": True}
    run, _ = feed(args, series("completions/clipped_ratio", [0.5] * 3))
    assert run.events[0].advice.startswith("turn thinking off (enable_thinking true -> false")


def test_repeated_answer_line_is_truncation_while_the_format_reward_rises(args):
    format_rising = [{"completions/clipped_ratio": 0.9, FORMAT: 0.2 * step} for step in range(6)]
    run, events = feed(args, format_rising)
    assert events == [(3, "clipped_completions", "started"), (6, "repeated_answer_line", "started")]  # rise from 4
    assert "mask_truncated_completions false -> true" in run.events[-1].message
    format_flat = [{"completions/clipped_ratio": 0.9, FORMAT: 0.0} for _ in range(6)]
    assert feed(args, format_flat)[1] == [(3, "clipped_completions", "started")]


def test_entropy_collapse_is_a_sustained_fall_below_a_quarter_of_its_start(args):
    one_dip = [4.0] * 5 + [0.5] + [4.0] * 5
    assert feed(args, series("objective/entropy", one_dip))[1] == []
    run, events = feed(args, series("objective/entropy", [4.0] * 5 + [0.5] * 5 + [3.0] * 5))
    assert events == [(10, "entropy_collapse", "started"), (15, "entropy_collapse", "cleared")]
    assert "objective/entropy 0.5 / its start 4 = 0.125 < 0.25 for 5 logging steps" in run.events[0].message


def hacking(correctness: list[float], form: list[float]) -> list[dict]:
    return [
        {"rewards/correctness_reward/mean": c, FORMAT: f, ANSWER_PRESENT: 0.5}
        for c, f in zip(correctness, form, strict=True)
    ]


def test_reward_hacking_is_format_up_while_correctness_falls(args):
    correctness = [0.5] * 6 + [0.2] * 10
    form = [0.1] * 6 + [0.8] * 10
    run, events = feed(args, hacking(correctness, form))
    assert events == [(12, "reward_hacking", "started")]  # the mean of 5 falls by > 0.1 from step 8, 5 steps in a row
    message = run.events[0].message
    assert "rewards/correctness_reward/mean fell from its best 0.5 to 0.2 (means of 5), by 0.3 > 0.1" in message
    assert "rewards/format_reward/mean rose from 0.1 to 0.8" in message
    assert feed(args, hacking(correctness, [0.1] * 16))[1] == []  # a fall without a format gain is something else


def test_reward_hacking_reads_the_reward_names_from_rewards(args, monkeypatch):
    """A reward renamed in rewards.py is logged by TRL under its new name; the rule follows it."""
    monkeypatch.setattr(rewards.format_reward, "__name__", "final_line_reward")
    monkeypatch.setattr(rewards.correctness_reward, "__name__", "right_answer_reward")
    stream = [
        {"rewards/right_answer_reward/mean": c, "rewards/final_line_reward/mean": f}
        for c, f in zip([0.5] * 6 + [0.2] * 10, [0.1] * 6 + [0.8] * 10, strict=True)
    ]
    run, events = feed(args, stream)
    assert events == [(12, "reward_hacking", "started")]
    assert "rewards/right_answer_reward/mean fell from its best 0.5 to 0.2" in run.events[0].message
    assert "while rewards/final_line_reward/mean rose from 0.1 to 0.8" in run.events[0].message


def reward_steps(name: str, means: list[float], stds: list[float], clipped: float = 0.0) -> list[dict]:
    return [
        {f"rewards/{name}/mean": m, f"rewards/{name}/std": s, "completions/clipped_ratio": clipped}
        for m, s in zip(means, stds, strict=True)
    ]


def test_a_reward_at_one_for_every_completion_is_dead_and_its_weight_goes_to_correctness(args):
    run, events = feed(args, reward_steps("answer_present_reward", [1.0] * 7, [0.0] * 7))
    assert events == [(5, "dead_answer_present_reward", "started")]
    assert run.events[0].message == (
        "doctor: step 5: dead_answer_present_reward: rewards/answer_present_reward/std 0 for 5 logging steps, while "
        "every completion scored 1: the reward is the same for every completion, so it adds nothing to the advantages "
        "-> it is saturated, so its weight is wasted: move it to correctness, reward_weights 0.2 0.2 0.2 0.4 -> "
        "0.2 0.2 0 0.6 (in rewards.REWARDS' order)"
    )
    assert (run.events[0].value, run.events[0].threshold) == (0.0, 0.0)


def test_a_reward_at_zero_because_completions_are_cut_points_at_the_length_fix(args):
    run, events = feed(args, reward_steps("format_reward", [0.0] * 5, [0.0] * 5, clipped=0.94))
    assert events[-1] == (5, "dead_format_reward", "started")
    assert run.events[-1].advice == (
        "94% of the completions are cut at max_completion_length, too short to earn it: raise max_completion_length "
        "48 -> 96 (thinking is off)"
    )
    run, _ = feed(args, reward_steps("format_reward", [0.0] * 5, [0.0] * 5, clipped=0.1))
    assert run.events[-1].advice == (
        "no completion earns it: read the text tab for what the model writes instead; raise num_generations 8 -> 16"
    )


def test_a_reward_that_varies_now_and_then_is_alive_and_a_dead_one_clears(args):
    stds = [0.0, 0.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0]
    assert feed(args, reward_steps("correctness_reward", [0.0] * 9, stds))[1] == []  # 4 in a row at most
    revived = reward_steps("reasoning_reward", [0.5] * 5 + [0.4] * 5, [0.0] * 5 + [0.2] * 5)
    assert feed(args, revived)[1] == [(5, "dead_reasoning_reward", "started"), (10, "dead_reasoning_reward", "cleared")]
    unscored = [{"rewards/reasoning_reward/std": 0.0, "rewards/reasoning_reward/mean": None}] * 6  # all NaN
    assert "dead_reasoning_reward" not in [event[1] for event in feed(args, unscored)[1]]


def test_the_dead_reward_rule_watches_every_reward_of_rewards_rewards(args, monkeypatch):
    def length_reward(completions, **kwargs):
        return [1.0] * len(completions)

    monkeypatch.setattr(rewards, "REWARDS", rewards.REWARDS + ((length_reward, 0.0),))
    args.reward_weights = [weight for _, weight in rewards.REWARDS]  # as settings.py makes them
    names = [condition.name for condition in doctor.Doctor(args).conditions if condition.name.startswith("dead_")]
    assert names == [f"dead_{function.__name__}" for function, _ in rewards.REWARDS]
    run, events = feed(args, reward_steps("length_reward", [1.0] * 5, [0.0] * 5))
    assert events == [(5, "dead_length_reward", "started")]
    assert run.events[0].advice == "it is saturated, and its weight is 0 already: it costs nothing"


def test_eval_accuracy_drop_needs_the_paired_interval_below_zero(args):
    drop = {"eval_accuracy": 0.3, doctor.EVAL_CHANGE: -0.2, doctor.EVAL_CHANGE_HIGH: -0.05}
    noise = {"eval_accuracy": 0.45, doctor.EVAL_CHANGE: -0.05, doctor.EVAL_CHANGE_HIGH: 0.04}
    run, events = feed(args, [noise, drop, noise], first_step=40)
    assert events == [(41, "eval_accuracy_drop", "started"), (42, "eval_accuracy_drop", "cleared")]
    message = run.events[0].message
    assert "eval_accuracy 30.0%, -20.0% since step 0: upper end of its paired 95% interval -0.05 < 0:" in message


@pytest.mark.parametrize(
    "metrics, condition, shown",
    [
        ({"loss": 0.1, "grad_norm": NAN}, "non_finite_loss", "grad_norm nan, not finite"),
        ({"loss": math.inf, "grad_norm": 1.0}, "non_finite_loss", "loss inf, not finite"),
        ({"reward": 0.2, "rewards/format_reward/mean": None}, "non_finite_reward", "rewards/format_reward/mean nan"),
    ],
)
def test_non_finite_loss_gradient_or_reward_stops_the_run_at_once(args, metrics, condition, shown):
    run, events = feed(args, [{"loss": 0.1, "grad_norm": 1.0, "reward": 0.2}, metrics])
    assert events == [(2, condition, "started")]
    assert run.events[0].stops_run and shown in run.events[0].message
    assert run.events[0].message.endswith("stopping the run with checkpoint-2 (exit code 3)")


def test_summary_names_what_fired_and_what_is_still_active(args):
    assert feed(args, series("objective/kl", [1, 2]))[0].summary() == "doctor: summary: no condition fired"
    stream = series("objective/kl", [15] * 3 + [1] * 3) + series("completions/clipped_ratio", [1.0] * 3)
    assert feed(args, stream)[0].summary() == (
        "doctor: summary: kl_warning started at step 3, cleared; clipped_completions started at step 9, still active"
    )


def test_out_of_memory_message_lists_the_remedies_cheapest_first_with_the_run_values(settings):
    training_args, model_args = copy.copy(settings[0]), copy.copy(settings[1])
    training_args.gradient_checkpointing, model_args.load_in_4bit = False, True
    assert doctor.out_of_memory_message(training_args, model_args, step=0) == (
        "doctor: out of GPU memory at step 0; remedies, cheapest first: num_generations 8 -> 4; "
        "per_device_train_batch_size 16 -> 8 with gradient_accumulation_steps 1 -> 2 (the same batch); "
        "gradient_checkpointing false -> true; load_in_4bit true (on already); max_completion_length 48 -> 24; "
        "if it ran out while evaluating: per_device_eval_batch_size 16 -> 8"
    )


def test_out_of_memory_in_the_worst_case_step_names_it_with_the_same_remedies(settings):
    training_args, model_args = settings
    message = doctor.out_of_memory_message(training_args, model_args, step=0, worst_case=True)
    assert message.startswith(
        "doctor: out of GPU memory in the worst-case step before step 1 (the longest prompts, every completion 48 "
        "tokens long); remedies, cheapest first: num_generations 8 -> 4; "
    )
    in_training = doctor.out_of_memory_message(training_args, model_args, step=0).split("; remedies")[1]
    assert in_training.startswith(message.split("; remedies")[1])  # the same, less evaluation's: the step trains
    assert message.endswith("max_completion_length 48 -> 24")


# --------------------------------------------------------------------------------------------------------------------
# The callback, without a trainer


def on_log(callback, args, step: int, logs: dict) -> TrainerControl:
    control = TrainerControl()
    callback.on_log(args, TrainerState(global_step=step), control, logs=logs)
    return control


def report(args) -> dict:
    return json.loads((Path(args.output_dir) / doctor.REPORT_FILE).read_text())


def test_callback_stops_the_run_on_a_nan_with_a_checkpoint_and_writes_the_report(args, capsys):
    callback = doctor.DoctorCallback(args)
    assert not on_log(callback, args, 1, {"loss": 0.1, "grad_norm": 1.0}).should_training_stop
    control = on_log(callback, args, 2, {"loss": 0.1, "grad_norm": NAN})
    assert control.should_save and control.should_training_stop and not control.should_evaluate
    assert callback.exit_code == doctor.EXIT_NON_FINITE == 3
    assert capsys.readouterr().out.startswith("doctor: step 2: non_finite_loss: grad_norm nan, not finite:")
    (event,) = report(args)["events"]
    assert (event["step"], event["condition"], event["state"]) == (2, "non_finite_loss", "started")
    assert event["value"] == "nan" and event["stops_run"]  # JSON has no NaN
    assert report(args)["active"] == ["non_finite_loss"]
    assert [path.name for path in Path(args.output_dir).iterdir()] == ["doctor.json"]  # no temporary file left
    callback.on_train_end(args, TrainerState(), TrainerControl())
    assert capsys.readouterr().out == "doctor: summary: non_finite_loss started at step 2, still active\n"


def write_rows(args, step: int, correct: list[bool]) -> None:
    rows = [{"question": f"q{i}", "correct": c} for i, c in enumerate(correct)]
    evaluation.write_eval_files(Path(args.output_dir) / "eval" / f"step-{step}", rows, {})


@pytest.mark.parametrize("correct_after, conditions", [(8, ["eval_accuracy_drop"]), (18, [])])
def test_callback_compares_an_evaluation_with_step_0_question_by_question(args, correct_after, conditions):
    """20 of 20 questions right at step 0; 18 of 20 at step 40 is within the paired interval, 8 of 20 is not."""
    write_rows(args, 0, [True] * 20)
    write_rows(args, 40, [True] * correct_after + [False] * (20 - correct_after))
    callback = doctor.DoctorCallback(args)
    on_log(callback, args, 40, {"eval_accuracy": correct_after / 20})
    assert [event.condition for event in callback.doctor.events] == conditions


def test_callback_keeps_the_report_of_the_run_it_resumes(args):
    earlier = {"step": 9, "condition": "kl_warning", "state": "started"}
    (Path(args.output_dir) / doctor.REPORT_FILE).write_text(json.dumps({"events": [earlier], "active": []}))
    callback = doctor.DoctorCallback(args)
    callback.on_train_begin(args, TrainerState(global_step=10), TrainerControl())
    on_log(callback, args, 11, {"loss": NAN})
    assert [event["step"] for event in report(args)["events"]] == [9, 11]


# --------------------------------------------------------------------------------------------------------------------
# Real runs on the smoke model that provoke a condition

QUIET = ["--eval_strategy", "no", "--eval_before_and_after", "false", "--save_steps", 1000, "--logging_steps", 1]
# Runs grpotrainer.main with one more reward function, named by the first argument, after the four of rewards.py.
DRIVER = """
import sys, torch, grpotrainer, rewards
def nan_reward(completions, **kwargs):
    return [float("nan")] * len(completions)
def out_of_memory_reward(completions, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")
rewards.REWARDS = rewards.REWARDS + ((globals()[sys.argv[1]], 0.0),)
sys.exit(grpotrainer.main(sys.argv[2:]))
"""


def run(*args, extra_reward: str | None = None) -> subprocess.CompletedProcess:
    command = (
        [sys.executable, "grpotrainer.py"] if extra_reward is None else [sys.executable, "-c", DRIVER, extra_reward]
    )
    return subprocess.run(
        [*command, "--smoke", *map(str, args)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=1800,  # only catches a hang
        check=False,
    )


def doctor_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("doctor: ")]


def test_tiny_max_completion_length_is_reported_in_the_console_report_and_tensorboard(tmp_path):
    result = run("--max_completion_length", 2, "--max_steps", 4, *QUIET, "--output_dir", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    started, summary = doctor_lines(result)
    assert started.startswith("doctor: step 3: clipped_completions: completions/clipped_ratio ")
    assert started.endswith("-> raise max_completion_length 2 -> 4 (thinking is off)")
    assert summary == "doctor: summary: clipped_completions started at step 3, still active"
    (event,) = json.loads((tmp_path / "doctor.json").read_text())["events"]
    assert (event["step"], event["condition"], event["state"]) == (3, "clipped_completions", "started")
    assert event["message"] == started
    (text,) = tensorboard_log(tmp_path).Tensors("doctor/text_summary")
    assert text.step == 3 and text.tensor_proto.string_val[0].decode() == started


def test_completions_too_short_to_state_an_answer_are_reported_as_dead_form_rewards(tmp_path):
    """At 8 tokens the warm smoke model is cut before any answer line: the form rewards are 0 on every completion,
    and the doctor says it is the length."""
    result = run("--max_completion_length", 8, "--max_steps", 5, *QUIET, "--output_dir", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dead = {line.split(": ")[2]: line for line in doctor_lines(result) if ": dead_" in line and "summary" not in line}
    for function in (rewards.format_reward, rewards.answer_present_reward):
        line = dead[f"dead_{function.__name__}"]
        assert line.startswith(f"doctor: step 5: dead_{function.__name__}: {doctor.reward_key(function, 'std')} 0 ")
        assert "while every completion scored 0" in line
        assert line.endswith("of the completions are cut at max_completion_length, too short to earn it: raise "
                             "max_completion_length 8 -> 16 (thinking is off)")  # fmt: skip


def test_near_greedy_sampling_is_reported_as_no_learning_signal(tmp_path):
    """Two completions for each of 16 questions a step: the tiny model's near-tied tokens still split a question's
    pair now and then, and 16 questions keep a split or two from pulling a step's share down to 0.8."""
    near_greedy = ["--temperature", 0.01, "--num_generations", 2, "--per_device_train_batch_size", 32]
    result = run(*near_greedy, "--max_steps", 5, *QUIET, "--output_dir", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = doctor_lines(result)
    (no_signal,) = [line for line in lines if "no_learning_signal" in line and "summary" not in line]
    assert no_signal.startswith("doctor: step 5: no_learning_signal: frac_reward_zero_std ")
    assert "-> raise temperature 0.01 -> 1.0 or raise num_generations 2 -> 4" in no_signal
    events = json.loads((tmp_path / "doctor.json").read_text())["events"]
    no_signal_events = [event for event in events if event["condition"] == "no_learning_signal"]  # dead_<reward> too
    assert {"step": 5, "condition": "no_learning_signal", "state": "started"}.items() <= no_signal_events[-1].items()


def test_a_nan_reward_stops_the_run_with_a_checkpoint_and_exit_code_3(tmp_path):
    result = run("--max_steps", 6, *QUIET, "--output_dir", tmp_path, extra_reward="nan_reward")
    assert result.returncode == doctor.EXIT_NON_FINITE == 3, result.stderr[-3000:]
    stopped = (
        "doctor: step 1: non_finite_reward: rewards/nan_reward/mean nan, not finite: a reward function returned NaN "
        "or inf for every completion of the logging step -> make every reward function return a finite number for "
        "every completion (0.0 for one it cannot score), then --resume; stopping the run with checkpoint-1 (exit "
        "code 3)"
    )
    assert doctor_lines(result) == [stopped, "doctor: summary: non_finite_reward started at step 1, still active"]
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (tmp_path / "final").exists()  # no final adapter, no evaluation after a stop
    (event,) = json.loads((tmp_path / "doctor.json").read_text())["events"]
    assert event["value"] == "nan" and event["stops_run"]


def test_doctor_false_turns_it_off(tmp_path):
    result = run("--max_steps", 2, *QUIET, "--doctor", "false", "--output_dir", tmp_path, extra_reward="nan_reward")
    assert result.returncode == 0, result.stderr[-3000:]
    assert doctor_lines(result) == [] and not (tmp_path / "doctor.json").exists()
    assert (tmp_path / "final").is_dir()


def test_out_of_memory_in_training_prints_the_remedies_and_exit_code_4(tmp_path):
    result = run("--max_steps", 2, *QUIET, "--output_dir", tmp_path, extra_reward="out_of_memory_reward")
    assert result.returncode == doctor.EXIT_OUT_OF_MEMORY == 4, result.stderr[-3000:]
    (message,) = [line for line in result.stderr.splitlines() if line.startswith("doctor: ")]
    assert message.startswith("doctor: out of GPU memory at step 0; remedies, cheapest first: num_generations 8 -> 4;")
    assert "Traceback" not in result.stderr


def test_out_of_memory_in_the_worst_case_step_stops_the_run_before_step_1_with_the_remedies(tmp_path):
    result = run("--max_steps", 2, *QUIET, "--worst_case_check", "true", "--output_dir", tmp_path,
                 extra_reward="out_of_memory_reward")  # fmt: skip
    assert result.returncode == doctor.EXIT_OUT_OF_MEMORY == 4, result.stderr[-3000:]
    (message,) = [line for line in result.stderr.splitlines() if line.startswith("doctor: ")]
    assert message.startswith("doctor: out of GPU memory in the worst-case step before step 1 (the longest prompts, ")
    assert "step 1/2:" not in result.stdout and "Traceback" not in result.stderr


def test_a_normal_smoke_run_raises_no_alarm(smoke_run):
    """The warm smoke model finishes its completions within the preset's 48 tokens, and each reward differs between
    them: nothing is wrong with the run, and the doctor says so, no dead reward included."""
    out, stdout = smoke_run
    assert [line for line in stdout.splitlines() if line.startswith("doctor: ")] == [
        "doctor: summary: no condition fired"
    ]
    report = json.loads((out / "doctor.json").read_text())
    assert report["events"] == [] and report["active"] == []
