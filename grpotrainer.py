"""GRPO on GSM8K: train a 4-bit Qwen model's LoRA adapter with TRL's GRPOTrainer and verifiable math rewards.

    python grpotrainer.py                              # train with the settings below and config.yaml
    python grpotrainer.py --smoke                      # the whole pipeline offline on a tiny model, ~1 min on a CPU
    python grpotrainer.py --eval_only --adapter DIR    # greedy GSM8K test accuracy of MODEL_NAME (+ an adapter)
    tensorboard --logdir outputs

Where settings live: the constants just below; every other training setting (any GRPOConfig field, the LoRA and
4-bit settings of trl.ModelConfig) in config.yaml. `--name value` on the command line overrides any of them.
"""

# ---------------------------------------------------------------------------------------------------------------------
# Settings people edit (command line: their lower-case name, e.g. --model_name, --kl_coef)
MODEL_NAME = "Qwen/Qwen3-8B"  # a hub id or a local folder
DATASET_NAME = "openai/gsm8k"  # a hub id, a folder with train.jsonl/test.jsonl, or one .jsonl/.parquet file
DATASET_CONFIG = "main"  # the hub dataset's configuration
NUM_GENERATIONS = 4  # completions sampled per question: the group GRPO compares them within
KL_COEF = 0.05  # GRPOConfig.beta: pull towards the reference model (0 turns the KL term off)
TEMPERATURE = 0.7  # sampling temperature of the training completions
OUTPUT_DIR = "outputs/qwen3-gsm8k-grpo"  # an occupied folder is never overwritten: a new run gets "<dir>-2", ...
ENABLE_THINKING = False  # Qwen3's thinking mode; it would spend the whole completion budget on thinking
EVAL_SAMPLES = 200  # test questions scored greedily every eval_steps and before/after training
EVAL_BEFORE_AND_AFTER = True  # measure the base model's accuracy before training and the trained model's after
CONFIG_FILE = "config.yaml"  # read from beside this script unless --config names another file
# ---------------------------------------------------------------------------------------------------------------------

# Every constant above is the setting of the same name in lower case, except CONFIG_FILE, which says where the rest are.
CONSTANTS = {name.lower(): value for name, value in dict(globals()).items() if name.isupper() and name != "CONFIG_FILE"}

import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

# bitsandbytes warns at import that a kernel for its CPU inference repack is missing; keep_cpu_4bit_weights_trainable
# turns that repack off, so the warning is noise that would stand beside every one-line error.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# TRL 1.16 calls transformers 5's deprecated gradient_checkpointing* model methods while it runs the activation
# checkpointing that config.yaml turns on: warnings about TRL's code, not about anything a user set.
warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing\w*` is deprecated", category=FutureWarning)

import torch
from accelerate import PartialState
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.integrations import TensorBoardCallback
from trl import GRPOTrainer, get_peft_config
from trl.models import unwrap_model_for_generation

import evaluation
import loading
import rewards
import settings
import smoke
from settings import InputError, RunSettings

PROMPT = (
    "Solve the following math problem step by step, showing your arithmetic. "
    "Then give the final answer on its own last line as '#### <number>'.\n\n{question}"
)


def read_settings(argv: list[str]) -> RunSettings:
    return settings.parse_settings(argv, CONSTANTS, CONFIG_FILE, Path(__file__).resolve().parent)


# ---------------------------------------------------------------------------------------------------------------------
# The trainer: TRL's GRPOTrainer plus the reference design's metrics, sample completions, and greedy accuracy


class GSM8KGRPOTrainer(GRPOTrainer):
    """Adds rewards/mean|best|worst and objective/kl|entropy to TRL's metrics, samples of completions to
    TensorBoard's text tab, and replaces TRL's sampled evaluation by greedy GSM8K accuracy (eval/accuracy).

    Written against TRL 1.16.0, it relies on GRPOTrainer's private `_calculate_rewards`, `_metrics`, `_logs` and
    `_log_completion_extra`: check them when upgrading TRL."""

    def __init__(self, *args, completion_samples_every: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback if self.args.disable_tqdm else ProgressCallback)
        self.add_callback(StepLines)
        self.completion_samples_every = completion_samples_every
        self.evaluations = {}  # global step -> metrics, so the final evaluation does not repeat the last scheduled one

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered
        self._log_completion_extra("ground_truth", [example["ground_truth"] for example in inputs])
        weights = self.reward_weights.to(rewards_per_func.device)
        totals = (rewards_per_func * weights).nansum(dim=1).view(-1, self.num_generations)
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["rewards/mean"].append(totals.mean().item())
        metrics["rewards/best"].append(totals.max(dim=1).values.mean().item())
        metrics["rewards/worst"].append(totals.min(dim=1).values.mean().item())
        return rewards_per_func

    def log(self, logs: dict, start_time=None) -> None:
        metrics = self._metrics["train" if self.model.training else "eval"]
        for name in ("kl", "entropy"):
            if name in metrics:
                metrics[f"objective/{name}"] = list(metrics[name])
        super().log(logs, start_time)
        logging_step = self.state.global_step // max(1, int(self.args.logging_steps))
        if self.model.training and "loss" in logs and logging_step % self.completion_samples_every == 0:
            self.write_completion_samples()

    def write_completion_samples(self, count: int = 4) -> None:
        writer = next(
            (cb.tb_writer for cb in self.callback_handler.callbacks if isinstance(cb, TensorBoardCallback)), None
        )
        if writer is None or not self._logs["completion"]:
            return
        samples = []
        for i in range(min(count, len(self._logs["completion"]))):
            scores = ", ".join(f"{name} {values[i]:.2f}" for name, values in self._logs["rewards"].items())
            question = self._logs["prompt"][i][-1]["content"].split("\n\n", 1)[-1]
            completion = rewards.completion_text(self._logs["completion"][i])
            truth = self._logs["extra"]["ground_truth"][i] if self._logs["extra"]["ground_truth"] else "?"
            samples.append(
                f"**ground truth** {truth} | **rewards** {scores}\n\n**question** {question}\n\n"
                + "\n".join("    " + line for line in completion.splitlines() or [""])
            )
        writer.add_text("train/completions", "\n\n---\n\n".join(samples), self.state.global_step)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Greedy accuracy on the fixed test slice; TRL's own evaluation would sample at training temperature."""
        step = self.state.global_step
        if step in self.evaluations:
            return self.evaluations[step]
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as model:
            examples = eval_dataset if eval_dataset is not None else self.eval_dataset
            rows, summary = evaluation.evaluate_gsm8k(model, self.processing_class, examples, self.args)
        if self.accelerator.is_main_process:
            evaluation.write_eval_files(Path(self.args.output_dir) / "eval" / f"step-{step}", rows, summary)
            print(f"\nstep {step}: {evaluation.describe_accuracy(summary)}")
        metrics = {
            f"{metric_key_prefix}_{name}": summary[name] for name in ("accuracy", "format_rate", "truncated_rate")
        }
        self.model.eval()  # so that GRPOTrainer.log files these under eval/, not train/
        self.log(metrics)
        self.model.train()
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self.evaluations[step] = metrics
        return metrics


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


CORRECT, KL, ENTROPY = f"rewards/{rewards.correctness_reward.__name__}/mean", "objective/kl", "objective/entropy"


class SaveOnInterrupt(TrainerCallback):
    """Ctrl-C ends training after the current step with a checkpoint that --resume continues from; a second Ctrl-C
    stops at once. Every process stops at the same step, so a multi-process save cannot hang."""

    def __init__(self):
        self.interrupted = False

    def on_train_begin(self, args, state, control, **kwargs):
        signal.signal(signal.SIGINT, self.request_stop)

    def request_stop(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)")

    def on_step_end(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(self.interrupted)], device=PartialState().device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            self.interrupted = bool(flag.item())
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        signal.signal(signal.SIGINT, signal.default_int_handler)


# ---------------------------------------------------------------------------------------------------------------------
# The run: load what it needs, then train (or only evaluate)


class Inputs(NamedTuple):
    tokenizer: object
    model: object
    train_set: Dataset | None
    eval_set: Dataset | None
    checkpoint: str | None  # what --resume continues from


def load_inputs(run: RunSettings) -> Inputs:
    """Everything the run reads; all that can be wrong with it fails here, before an output folder exists."""
    script, training = run.script, run.training
    checkpoint = None
    if script.resume:
        checkpoint, skipped = loading.resume_checkpoint(training.output_dir)
        for line in skipped if PartialState().is_main_process else ():
            print(line)
    if script.adapter:
        loading.check_adapter(script.adapter)
    if script.smoke:
        smoke.build_assets()
    loading.work_offline_unless_the_hub_answers([script.model_name, script.dataset_name])
    tokenizer = loading.load_tokenizer(run.model, training)
    loading.check_lora_targets(run.model, training)
    data_options = (script.eval_holdout, script.drop_unparsable_answers)
    evaluates = script.eval_only or script.eval_before_and_after or training.eval_strategy != "no"
    with PartialState().main_process_first():  # the main process fills the datasets cache, the others read it
        eval_set = train_set = None
        if evaluates:
            test = loading.load_split(script.dataset_name, script.dataset_config, "test", *data_options)
            eval_set = loading.to_chat_prompts(test, PROMPT, script.eval_samples)
        if not script.eval_only:
            train = loading.load_split(script.dataset_name, script.dataset_config, "train", *data_options)
            train_set = loading.to_chat_prompts(train, PROMPT)
    model = loading.load_model(run.model, training)
    if script.adapter:
        model = loading.attach_adapter(model, script.adapter)
    return Inputs(tokenizer, model, train_set, eval_set, checkpoint)


def build_trainer(run: RunSettings, inputs: Inputs, callbacks=()) -> GSM8KGRPOTrainer:
    """The trainer of a run; benchmarks/step_time.py builds the same one."""
    return GSM8KGRPOTrainer(
        model=inputs.model,
        reward_funcs=[function for function, _ in rewards.REWARDS],
        args=run.training,
        train_dataset=inputs.train_set,
        eval_dataset=inputs.eval_set,
        processing_class=inputs.tokenizer,
        peft_config=get_peft_config(run.model),
        callbacks=list(callbacks),
        completion_samples_every=run.script.completion_samples_every,
    )


def train(run: RunSettings, inputs: Inputs) -> int:
    output_dir = run.training.output_dir
    interrupt = SaveOnInterrupt()
    trainer = build_trainer(run, inputs, [interrupt])
    main_process = trainer.accelerator.is_main_process
    if main_process:
        print(f"TensorBoard: tensorboard --logdir {output_dir}")
    trainer.train(resume_from_checkpoint=inputs.checkpoint)
    if interrupt.interrupted:
        if main_process:
            print(
                f"interrupted at step {trainer.state.global_step}; checkpoint saved in {output_dir}. "
                f"Continue with: python grpotrainer.py --resume --output_dir {output_dir}"
            )
        return 130
    final = Path(output_dir) / "final"
    trainer.save_model(str(final))
    if main_process:
        print(f"final LoRA adapter and tokenizer: {final}")
    if run.script.eval_before_and_after:
        trainer.evaluate()
        if main_process:
            evaluation.report_before_and_after(Path(output_dir), trainer.state.global_step)
    return 0


def evaluate_only(run: RunSettings, inputs: Inputs) -> int:
    rows, summary = evaluation.evaluate_gsm8k(inputs.model, inputs.tokenizer, inputs.eval_set, run.training)
    summary |= {"model": run.script.model_name, "adapter": run.script.adapter}
    if PartialState().is_main_process:
        output_dir = run.training.output_dir
        evaluation.write_eval_files(Path(output_dir), rows, summary)
        print(f"{evaluation.describe_accuracy(summary)}\nresults: {output_dir}/eval_results.jsonl and eval_summary.json")
    return 0


def main(argv: list[str]) -> int:
    try:
        run = read_settings(argv)
        settings.check_output_dir(run.training.output_dir)
        inputs = load_inputs(run)
        state = PartialState()
        requested = run.training.output_dir
        run.training.output_dir = settings.claim_output_dir(requested, run.script.resume)
        state.wait_for_everyone()  # every process chose the folder before the main process creates it
        if state.is_main_process:
            if run.training.output_dir != requested:
                print(f"{requested} holds an earlier run, kept as it is: this run writes to {run.training.output_dir}")
            settings.report_settings(run, CONSTANTS)
            if not torch.cuda.is_available() and not run.script.smoke:
                print("warning: no CUDA GPU: running on the CPU, where a full-size model is very slow")
        exit_code = evaluate_only(run, inputs) if run.script.eval_only else train(run, inputs)
        state.destroy_process_group()  # as Trainer.end() does: a live gloo/NCCL group can abort the exit
        return exit_code
    except InputError as error:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process finds the same error: one says it
            print(f"grpotrainer.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
