"""What a training run shows as it goes: one short console line per logging step (TensorBoard and trainer_state.json
keep every metric), and sampled completions with their rewards for TensorBoard's text tab."""

from tqdm.auto import tqdm
from transformers import ProgressCallback
from transformers.integrations import TensorBoardCallback

import rewards

CORRECT, KL, ENTROPY = f"rewards/{rewards.correctness_reward.__name__}/mean", "objective/kl", "objective/entropy"


class StepLines(ProgressCallback):
    """transformers' progress bar (unless disable_tqdm), with one short line per logging step instead of its 1.8 kB
    dict of every metric; TensorBoard and trainer_state.json keep them all."""

    def on_train_begin(self, args, state, control, **kwargs):
        if not args.disable_tqdm:
            super().on_train_begin(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and (line := step_line(state, logs)):
            tqdm.write(line)


def step_line(state, logs: dict) -> str | None:
    """The console line of a logging step, e.g.
    step 10/80: rewards 0.31 (best 0.62, worst 0.05), correct 12%, kl 0.0031, entropy 2.41, clipped 97%, 1.9 s/step"""
    if "train_runtime" in logs:
        return f"trained to step {state.global_step} in {logs['train_runtime']:.0f} s"
    if "rewards/mean" not in logs:  # an evaluation, which prints its own line
        return None
    parts = [
        f"rewards {logs['rewards/mean']:.2f} (best {logs['rewards/best']:.2f}, worst {logs['rewards/worst']:.2f})",
        f"correct {logs.get(CORRECT, 0):.0%}",
        *(f"{name} {logs[key]:.3g}" for name, key in (("kl", KL), ("entropy", ENTROPY)) if key in logs),
        f"clipped {logs.get('completions/clipped_ratio', 0):.0%}",
        f"{logs.get('step_time', 0):.1f} s/step",
    ]  # fmt: skip
    return f"step {state.global_step}/{state.max_steps}: " + ", ".join(parts)


def tensorboard_writer(callbacks):
    """The SummaryWriter of the trainer's TensorBoardCallback (it exists once training has begun), or None."""
    return next((callback.tb_writer for callback in callbacks if isinstance(callback, TensorBoardCallback)), None)


def completion_samples(logs: dict, count: int = 4) -> str:
    """Markdown for the text tab: the first `count` completions GRPOTrainer kept in its `_logs`, each with its
    question, ground truth and rewards."""
    samples = []
    for i in range(min(count, len(logs["completion"]))):
        scores = ", ".join(f"{name} {values[i]:.2f}" for name, values in logs["rewards"].items())
        question = logs["prompt"][i][-1]["content"].split("\n\n", 1)[-1]
        completion = rewards.completion_text(logs["completion"][i])
        truth = logs["extra"]["ground_truth"][i] if logs["extra"]["ground_truth"] else "?"
        samples.append(
            f"**ground truth** {truth} | **rewards** {scores}\n\n**question** {question}\n\n"
            + "\n".join("    " + line for line in completion.splitlines() or [""])
        )
    return "\n\n---\n\n".join(samples)
