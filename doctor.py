"""The training doctor: watches a GRPO run's logged metrics and says, at the step it happens, what is wrong and what
to change, with this run's values.

CONDITIONS is the one table of what it watches, and `dead_reward_conditions()` adds one condition per reward function
of `rewards.REWARDS`. A condition is read at every logging step that logs its metrics; it
starts once it has held for `window` such steps in a row (one noisy point is not a problem) and clears once it has
not held for `window` steps in a row, and each start and each clearing is reported once.

`Doctor` is the logic, fed one metrics dict per logging step, so it runs without a trainer. `DoctorCallback` feeds it
from a Trainer and speaks: a console line per event, TensorBoard's text tab (tag `doctor`), `<output_dir>/doctor.json`,
and a summary when training ends. A NaN or infinite loss, gradient norm or reward stops the run with a checkpoint; the
entry script then returns the callback's `exit_code` (EXIT_NON_FINITE). For torch.OutOfMemoryError it prints
`out_of_memory_message()` and returns EXIT_OUT_OF_MEMORY.
"""

import dataclasses
import fnmatch
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm
from transformers import TrainerCallback

import console
import evaluation
import rewards
from atomic import write_atomically

EXIT_NON_FINITE = 3  # the doctor stopped the run: a NaN or infinite loss, gradient norm or reward
EXIT_OUT_OF_MEMORY = 4  # torch.OutOfMemoryError in training
REPORT_FILE = "doctor.json"
NOT_FINITE = "not finite"  # a Condition.compare, beside ">", "<" and "=" (within ZERO of the threshold)
ZERO = 1e-6  # a reward's std below this is 0: a float32 mean of equal scores can be off by a rounding error
# The paired change of greedy accuracy since step 0 and the upper end of its 95% interval, which DoctorCallback adds
# to an evaluation's metrics.
EVAL_CHANGE = "eval_accuracy_change"
EVAL_CHANGE_HIGH = "eval_accuracy_change_ci95_high"


# ---------------------------------------------------------------------------------------------------------------------
# What the conditions read


def reward_key(function, statistic: str = "mean") -> str:
    """The metric TRL logs a reward function's within-step mean or std as (grpo_trainer.py:2821-2825), from its name
    now: a reward renamed in rewards.py is watched under its new name."""
    return f"rewards/{function.__name__}/{statistic}"


class History:
    """Every value each metric was logged with, in order, and the metrics of the latest logging step."""

    def __init__(self):
        self.series: dict[str, list[float]] = defaultdict(list)
        self.latest: dict[str, float] = {}

    def add(self, metrics: dict) -> None:
        # TRL logs None for a metric whose every value in the logging window was NaN: keep it as the NaN it was
        self.latest = {
            key: math.nan if value is None else float(value)
            for key, value in metrics.items()
            if value is None or isinstance(value, (int, float))
        }
        for key, value in self.latest.items():
            self.series[key].append(value)

    def start(self, key: str, n: int) -> float:
        """Where the metric began: the mean of its first n values."""
        return statistics.fmean(self.series[key][:n])

    def recent(self, key: str, n: int) -> float:
        return statistics.fmean(self.series[key][-n:])

    def best(self, key: str, n: int) -> float:
        """The highest mean of n values in a row so far."""
        values = self.series[key]
        return max(statistics.fmean(values[i : i + n]) for i in range(max(1, len(values) - n + 1)))


class Reading(NamedTuple):
    label: str  # what was measured, in words that precede the value
    value: float

    def __str__(self) -> str:
        return f"{self.label} {self.value:.3g}"


# Measures: (history, window) -> the condition's Reading at this logging step, or None when this step did not log
# its metrics (an evaluation's step, say), which counts neither for nor against it.


def level(key: str, history: History, window: int) -> Reading | None:
    return Reading(key, history.latest[key]) if key in history.latest else None


def share_of_start(key: str, history: History, window: int) -> Reading | None:
    """The value as a share of where the metric began (the mean of its first `window` values)."""
    if key not in history.latest:
        return None
    start = history.start(key, window)
    if not start > 0:
        return None  # nothing to fall from
    return Reading(f"{key} {history.latest[key]:.3g} / its start {start:.3g} =", history.latest[key] / start)


def fall_from_best(function, history: History, window: int) -> Reading | None:
    """How far the reward's mean of the last `window` values lies below the best such mean so far."""
    key = reward_key(function)
    if key not in history.latest:
        return None
    best, recent = history.best(key, window), history.recent(key, window)
    return Reading(f"{key} fell from its best {best:.3g} to {recent:.3g} (means of {window}), by", best - recent)


def first_non_finite(patterns: tuple[str, ...], history: History, window: int) -> Reading | None:
    """The first logged metric matching the patterns whose value is NaN or infinite (else the first that matches)."""
    keys = [key for key in history.latest if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)]
    if not keys:
        return None
    key = next((key for key in keys if not math.isfinite(history.latest[key])), keys[0])
    return Reading(key, history.latest[key])


def paired_accuracy_change(history: History, window: int) -> Reading | None:
    """The upper end of the paired 95% interval of the accuracy change since step 0: below 0, accuracy really fell."""
    if EVAL_CHANGE_HIGH not in history.latest:
        return None
    accuracy, change = history.latest["eval_accuracy"], history.latest[EVAL_CHANGE]
    return Reading(
        f"eval_accuracy {accuracy:.1%}, {change:+.1%} since step 0: upper end of its paired 95% interval",
        history.latest[EVAL_CHANGE_HIGH],
    )


# Guards: (history, window) -> a second fact that must hold too, in words, or None when it does not.


def rose(functions: tuple, by: float, history: History, window: int) -> str | None:
    """One of the rewards' mean of the last `window` values is more than `by` above its start."""
    for key in map(reward_key, functions):
        if key in history.latest:
            start, recent = history.start(key, window), history.recent(key, window)
            if recent - start > by:
                return f"{key} rose from {start:.3g} to {recent:.3g} (means of {window}; more than {by:g})"
    return None


def scored(function, history: History, window: int) -> str | None:
    """The reward scored the step's completions (its mean is a number), in words with its value."""
    value = history.latest.get(reward_key(function), math.nan)
    return f"every completion scored {value:.3g}" if math.isfinite(value) else None


def not_rising(key: str, by: float, history: History, window: int) -> str | None:
    """The metric's mean of the last `window` values is at most `by` above its start."""
    if key not in history.latest:
        return None
    start, recent = history.start(key, window), history.recent(key, window)
    if recent - start > by:
        return None
    return f"{key} {recent:.3g} is not more than {by:g} above its start {start:.3g} (means of {window})"


# ---------------------------------------------------------------------------------------------------------------------
# What to change, with the run's current values (args: the run's GRPOConfig; kl_coef is its beta)


def lower_learning_rate(args) -> str:
    return f"lower learning_rate {args.learning_rate:g} -> {args.learning_rate / 2:g}"


def raise_kl_coef(args) -> str:
    return f"raise kl_coef {args.beta:g} -> {2 * args.beta:g}"


def raise_temperature(args) -> str | None:
    # GRPO runs commonly sample at 1.0; above it completions turn to noise
    return f"raise temperature {args.temperature:g} -> 1.0" if args.temperature < 1.0 else None


def either(*options: str | None) -> str:
    return " or ".join(option for option in options if option)


def flag(value: bool) -> str:
    return str(value).lower()  # as the command line and config.yaml spell it


def kl_warning_advice(args) -> str:
    return either(raise_kl_coef(args), lower_learning_rate(args))


def kl_limit_advice(args) -> str:
    return f"{raise_kl_coef(args)} and {lower_learning_rate(args)}; look for reward hacking in the text tab"


def more_generations(args) -> str:
    return f"raise num_generations {args.num_generations} -> {2 * args.num_generations}"


def no_signal_advice(args) -> str:
    return (
        f"{either(raise_temperature(args), more_generations(args))}; if rewards/mean stays near 0 the questions are "
        f"too hard for this model, near 1 too easy"
    )


def clipped_advice(args) -> str:
    longer = f"max_completion_length {args.max_completion_length} -> {2 * args.max_completion_length}"
    if (args.chat_template_kwargs or {}).get("enable_thinking"):
        return f"turn thinking off (enable_thinking true -> false: it spends the budget thinking) or raise {longer}"
    return f"raise {longer} (thinking is off)"


def repeated_line_advice(args) -> str:
    return (
        f"read the text tab: a model that repeats '#### N' until cut off scores format points; set "
        f"mask_truncated_completions {flag(args.mask_truncated_completions)} -> true (cut completions then teach "
        f"nothing) or repetition_penalty {args.repetition_penalty:g} -> 1.1"
    )


def entropy_advice(args) -> str:
    return either(lower_learning_rate(args), raise_kl_coef(args), raise_temperature(args))


def hacking_advice(args) -> str:
    weights = " ".join(f"{weight:g}" for weight in args.reward_weights or [])
    return (
        f"read the text tab for answers in the right form but wrong; move weight from the format and answer-present "
        f"rewards to correctness (reward_weights now {weights}, in rewards.REWARDS' order) or {raise_kl_coef(args)}"
    )


def saturated_advice(function, args) -> str:
    """Move the weight of a reward every completion earns to correctness, quoting reward_weights now and then."""
    functions = [reward for reward, _ in rewards.REWARDS]
    weights = list(args.reward_weights or [weight for _, weight in rewards.REWARDS])
    wasted = weights[functions.index(function)]
    if wasted == 0:
        return "it is saturated, and its weight is 0 already: it costs nothing"
    now = " ".join(f"{weight:g}" for weight in weights)
    weights[functions.index(rewards.correctness_reward)] += wasted
    weights[functions.index(function)] = 0.0
    then = " ".join(f"{weight:g}" for weight in weights)
    return (
        f"it is saturated, so its weight is wasted: move it to correctness, reward_weights {now} -> {then} "
        f"(in rewards.REWARDS' order)"
    )


def dead_reward_advice(function, history: History, args) -> str:
    """What to change for a reward stuck at one value: completions too short to earn it, none earning it, or every
    one earning it (saturated)."""
    value = history.latest[reward_key(function)]
    cut = history.latest.get("completions/clipped_ratio", 0.0)
    if value == 0 and cut > MOST:
        too_short = f"{cut:.0%} of the completions are cut at max_completion_length, too short to earn it"
        return f"{too_short}: {clipped_advice(args)}"
    if value == 0:
        sample_wider = either(raise_temperature(args), more_generations(args))
        return f"no completion earns it: read the text tab for what the model writes instead; {sample_wider}"
    if function is rewards.correctness_reward:
        return "every completion is right: the questions are too easy for this model, so GRPO learns nothing from them"
    return saturated_advice(function, args)


def accuracy_drop_advice(args) -> str:
    return (
        f"training makes the model worse: keep an earlier checkpoint (eval/step-N scores each), "
        f"{lower_learning_rate(args)} or {raise_kl_coef(args)}"
    )


def non_finite_loss_advice(args) -> str:
    return (
        f"{lower_learning_rate(args)} and max_grad_norm {args.max_grad_norm:g} -> {args.max_grad_norm / 2:g}; "
        f"the checkpoint saved now may hold NaN weights: delete it before --resume"
    )


def non_finite_reward_advice(args) -> str:
    return (
        "make every reward function return a finite number for every completion (0.0 for one it cannot score), "
        "then --resume"
    )


# ---------------------------------------------------------------------------------------------------------------------
# The table


@dataclasses.dataclass(frozen=True)
class Condition:
    name: str
    measure: Callable[[History, int], Reading | None]  # its metrics, read at one logging step
    compare: str  # ">", "<", "=" or NOT_FINITE
    threshold: float | None
    window: int  # logging steps in a row it must hold to start, and not hold to clear
    diagnosis: str  # what it means, in one clause
    advice: Callable[..., str]  # what to change: (the run's GRPOConfig) -> words with current and new values
    guard: Callable[[History, int], str | None] | None = None  # a second fact that must hold too, in words
    stops_run: bool = False  # stop the run with a checkpoint rather than waste more steps

    def holds(self, value: float) -> bool:
        if self.compare == NOT_FINITE:
            return not math.isfinite(value)
        if self.compare == "=":
            return abs(value - self.threshold) < ZERO
        return value > self.threshold if self.compare == ">" else value < self.threshold

    def describe(self, reading: Reading) -> str:
        if self.compare == NOT_FINITE:
            return f"{reading}, not finite"
        if self.compare == "=":
            return str(reading)  # the value is the threshold
        return f"{reading} {self.compare} {self.threshold:g}"


MOST = 0.5  # "most completions": a share above this
CONDITIONS = (
    Condition(
        name="non_finite_loss",
        # Trainer's logging_nan_inf_filter replaces a NaN loss by the window's average; the gradient norm still shows it
        measure=partial(first_non_finite, ("loss", "grad_norm")),
        compare=NOT_FINITE, threshold=None, window=1, stops_run=True,
        diagnosis="the loss or the gradient is NaN or infinite, so every later step is wasted",
        advice=non_finite_loss_advice,
    ),
    Condition(
        name="non_finite_reward",
        measure=partial(first_non_finite, ("reward", "rewards/*/mean")),
        compare=NOT_FINITE, threshold=None, window=1, stops_run=True,
        # every reward here scores every completion, so an average of only NaNs (which TRL logs as None) is a bug
        diagnosis="a reward function returned NaN or inf for every completion of the logging step",
        advice=non_finite_reward_advice,
    ),
    Condition(
        name="kl_limit",
        measure=partial(level, "objective/kl"),
        compare=">", threshold=20.0, window=3,
        diagnosis="the policy has drifted far from the base model, often by reward hacking",
        advice=kl_limit_advice,
    ),
    Condition(
        name="kl_warning",
        measure=partial(level, "objective/kl"),
        compare=">", threshold=10.0, window=3,
        diagnosis="the policy is drifting from the base model",
        advice=kl_warning_advice,
    ),
    Condition(
        name="no_learning_signal",
        measure=partial(level, "frac_reward_zero_std"),
        compare=">", threshold=0.8, window=5,
        guard=partial(not_rising, "rewards/mean", 0.1),
        diagnosis="on most questions every completion scores alike, so their advantages are 0 and GRPO learns nothing",
        advice=no_signal_advice,
    ),
    Condition(
        name="clipped_completions",
        measure=partial(level, "completions/clipped_ratio"),
        compare=">", threshold=0.2, window=3,
        diagnosis="completions are cut at max_completion_length before their final answer line",
        advice=clipped_advice,
    ),
    Condition(
        name="repeated_answer_line",
        measure=partial(level, "completions/clipped_ratio"),
        compare=">", threshold=MOST, window=3,
        guard=partial(rose, (rewards.format_reward,), 0.1),
        diagnosis="most completions run to the length limit while the format reward rises",
        advice=repeated_line_advice,
    ),
    Condition(
        name="entropy_collapse",
        measure=partial(share_of_start, "objective/entropy"),
        compare="<", threshold=0.25, window=5,
        diagnosis="the policy has stopped exploring: its completions are nearly deterministic",
        advice=entropy_advice,
    ),
    Condition(
        name="reward_hacking",
        measure=partial(fall_from_best, rewards.correctness_reward),
        compare=">", threshold=0.1, window=5,
        guard=partial(rose, (rewards.format_reward, rewards.answer_present_reward), 0.1),
        diagnosis="the model earns the format and answer-present rewards while getting fewer answers right",
        advice=hacking_advice,
    ),
    Condition(
        name="eval_accuracy_drop",
        measure=paired_accuracy_change,
        # one evaluation is enough: the paired 95% interval already tells a real drop from noise
        compare="<", threshold=0.0, window=1,
        diagnosis="greedy test accuracy is lower than before training, by more than noise",
        advice=accuracy_drop_advice,
    ),
)  # fmt: skip


def dead_reward_conditions(history: History) -> tuple[Condition, ...]:
    """`dead_<reward>` for each reward function of rewards.REWARDS as it is now (a run may add one): its within-step
    std is 0 for 5 logging steps while it scores completions. A reward that is the same for every completion of a
    group adds nothing to GRPO's advantages; TRL logs every reward's std (grpo_trainer.py:2824-2825). The advice
    reads the doctor's history, for the reward's value and the share of cut completions."""
    return tuple(
        Condition(
            name=f"dead_{function.__name__}",
            measure=partial(level, reward_key(function, "std")),
            compare="=", threshold=0.0, window=5,
            guard=partial(scored, function),
            diagnosis="the reward is the same for every completion, so it adds nothing to the advantages",
            advice=partial(dead_reward_advice, function, history),
        )
        for function, _ in rewards.REWARDS
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# The logic: a stream of metric dicts in, events out


@dataclasses.dataclass(frozen=True)
class Event:
    step: int
    condition: str
    state: str  # "started" or "cleared"
    value: float
    threshold: float | None
    window: int
    advice: str  # "" when cleared
    stops_run: bool
    message: str  # the console line

    def to_json(self) -> dict:
        # JSON has no NaN or infinity: such a value is written as the string "nan", "inf" or "-inf"
        value = self.value if math.isfinite(self.value) else str(self.value)
        return dataclasses.asdict(self) | {"value": value}


class Doctor:
    """The conditions' states over a stream of logged metrics: observe() takes one logging step, returns its events."""

    def __init__(self, args, conditions: tuple[Condition, ...] | None = None):
        self.args = args
        self.history = History()
        self.conditions = CONDITIONS + dead_reward_conditions(self.history) if conditions is None else conditions
        self.streak = dict.fromkeys((condition.name for condition in self.conditions), 0)  # readings against the state
        self.active: dict[str, Event] = {}  # condition name -> the event that started it
        self.events: list[Event] = []

    def observe(self, step: int, metrics: dict) -> list[Event]:
        self.history.add(metrics)
        events = [event for condition in self.conditions if (event := self.examine(condition, step))]
        self.events += events
        return events

    def examine(self, condition: Condition, step: int) -> Event | None:
        reading = condition.measure(self.history, condition.window)
        if reading is None:
            return None
        because = condition.guard(self.history, condition.window) if condition.guard else ""
        holds = condition.holds(reading.value) and because is not None
        if holds == (condition.name in self.active):
            self.streak[condition.name] = 0
            return None
        self.streak[condition.name] += 1
        if self.streak[condition.name] < condition.window:
            return None
        self.streak[condition.name] = 0
        if holds:
            self.active[condition.name] = event = self.started(condition, step, reading, because)
        else:
            del self.active[condition.name]
            event = self.cleared(condition, step, reading)
        return event

    def started(self, condition: Condition, step: int, reading: Reading, because: str) -> Event:
        advice = condition.advice(self.args)
        message = f"doctor: step {step}: {condition.name}: {condition.describe(reading)}"
        message += f" for {condition.window} logging steps" if condition.window > 1 else ""
        message += f", while {because}" if because else ""
        message += f": {condition.diagnosis} -> {advice}"
        if condition.stops_run:
            message += f"; stopping the run with checkpoint-{step} (exit code {EXIT_NON_FINITE})"
        return self.event(condition, step, reading, "started", advice, message)

    def cleared(self, condition: Condition, step: int, reading: Reading) -> Event:
        message = (
            f"doctor: step {step}: {condition.name} cleared ({condition.window} logging steps without it): {reading}"
        )
        return self.event(condition, step, reading, "cleared", "", message)

    def event(self, condition: Condition, step: int, reading: Reading, state: str, advice: str, message: str) -> Event:
        return Event(
            step=step, condition=condition.name, state=state, value=reading.value, threshold=condition.threshold,
            window=condition.window, advice=advice, stops_run=condition.stops_run and state == "started",
            message=message,
        )  # fmt: skip

    def summary(self) -> str:
        starts = defaultdict(list)
        for event in self.events:
            if event.state == "started":
                starts[event.condition].append(str(event.step))
        if not starts:
            return "doctor: summary: no condition fired"
        return "doctor: summary: " + "; ".join(
            f"{name} started at step {', '.join(steps)}, {'still active' if name in self.active else 'cleared'}"
            for name, steps in starts.items()
        )


# ---------------------------------------------------------------------------------------------------------------------
# The callback: feeds the doctor from a Trainer and speaks


class DoctorCallback(TrainerCallback):
    """Runs the Doctor on every log of a Trainer. Every process runs it on the same gathered metrics, so all of them
    stop at the same step (a save that only some processes reach would hang); only the main process speaks."""

    def __init__(self, args, callbacks=()):
        self.doctor = Doctor(args)
        self.callbacks = callbacks  # the trainer's: TensorBoardCallback's writer exists once training begins
        self.earlier_events: list[dict] = []  # doctor.json's events from before a --resume
        self.exit_code = 0

    def on_train_begin(self, args, state, control, **kwargs):
        report = Path(args.output_dir) / REPORT_FILE
        if state.is_world_process_zero and report.is_file():  # only --resume trains in a folder that holds one
            self.earlier_events = json.loads(report.read_text())["events"]

    def on_log(self, args, state, control, logs=None, **kwargs):
        events = self.doctor.observe(state.global_step, logs | self.accuracy_change(args, state, logs))
        if any(event.stops_run for event in events):
            control.should_save = control.should_training_stop = True
            control.should_evaluate = False
            self.exit_code = EXIT_NON_FINITE
        if events and state.is_world_process_zero:
            self.speak(args, events)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            tqdm.write(self.doctor.summary())
            self.write_report(args)

    def accuracy_change(self, args, state, logs: dict) -> dict:
        """An evaluation's paired accuracy change since step 0, from both evaluations' per-question rows. Only the
        main process reads them: it wrote them, and the other processes may get there first."""
        if "eval_accuracy" not in logs or state.global_step == 0 or not state.is_world_process_zero:
            return {}
        result = evaluation.paired_comparison(Path(args.output_dir), state.global_step)
        if isinstance(result, str):  # nothing to compare
            return {}
        return {EVAL_CHANGE: result["difference"], EVAL_CHANGE_HIGH: result["difference_ci95"][1]}

    def speak(self, args, events: list[Event]) -> None:
        writer = console.tensorboard_writer(self.callbacks)
        for event in events:
            tqdm.write(event.message)  # above the progress bar, not glued to its end
            if writer is not None:
                writer.add_text("doctor", event.message, event.step)
        if writer is not None:
            writer.flush()  # a run the doctor stops may end before TensorBoardCallback's next flush
        self.write_report(args)

    def write_report(self, args) -> None:
        """doctor.json, replaced whole (a reader never sees half a file): every event, and what is active now."""
        report = {
            "events": self.earlier_events + [event.to_json() for event in self.doctor.events],
            "active": list(self.doctor.active),
        }
        write_atomically(Path(args.output_dir) / REPORT_FILE, json.dumps(report, indent=2, allow_nan=False))


def attach(trainer) -> DoctorCallback:
    """Add a DoctorCallback to the trainer and return it; after trainer.train() return its exit_code when not 0."""
    callback = DoctorCallback(trainer.args, trainer.callback_handler.callbacks)
    trainer.add_callback(callback)
    return callback


# ---------------------------------------------------------------------------------------------------------------------
# Out of GPU memory


def halved(value: int, least: int) -> str:
    return f"{value} -> {max(least, value // 2)}" if value > least else f"{value} (the least)"


def switched_on(name: str, on: bool) -> str:
    return f"{name} true (on already)" if on else f"{name} false -> true"


def report_out_of_memory(args, model_args, step: int, worst_case: bool = False) -> None:
    line = out_of_memory_message(args, model_args, step, worst_case)
    tqdm.write(line, file=sys.stderr)  # on a line of its own, not the bar's


def out_of_memory_message(args, model_args, step: int, worst_case: bool = False) -> str:
    """One line for torch.OutOfMemoryError in training, or in the worst-case step before it (worstcase.py): the
    remedies, cheapest first, with this run's values."""
    accumulation = args.gradient_accumulation_steps
    remedies = [
        f"num_generations {halved(args.num_generations, 2)}",
        (
            f"per_device_train_batch_size {halved(args.per_device_train_batch_size, 1)} with "
            f"gradient_accumulation_steps {accumulation} -> {2 * accumulation} (the same batch)"
        ),
        switched_on("gradient_checkpointing", args.gradient_checkpointing),
        switched_on("load_in_4bit", model_args.load_in_4bit),
        f"max_completion_length {halved(args.max_completion_length, 1)}",
    ]
    if worst_case:  # a training step, never an evaluation
        where = (
            f"in the worst-case step before step {step + 1} (the longest prompts, every completion "
            f"{args.max_completion_length} tokens long)"
        )
    else:
        where = f"at step {step}"
        evaluating = f"per_device_eval_batch_size {halved(args.per_device_eval_batch_size, 1)}"
        remedies.append(f"if it ran out while evaluating: {evaluating}")
    return f"doctor: out of GPU memory {where}; remedies, cheapest first: {'; '.join(remedies)}"
