"""GRPO on GSM8K: train a 4-bit Qwen model's LoRA adapter with TRL's GRPOTrainer and verifiable math rewards.

    python grpotrainer.py                              # train with the settings below and config.yaml
    python grpotrainer.py --smoke                      # the whole pipeline offline on a tiny model, ~1 min on a CPU
    python grpotrainer.py --eval_only --adapter DIR    # greedy GSM8K test accuracy of MODEL_NAME (+ an adapter)
    python grpotrainer.py --adapter DIR                # continue training a LoRA adapter (from SFT, DPO or a run)
    python grpotrainer.py --eval_only --adapter RUN    # every checkpoint of a run in one table: RUN/eval-checkpoints.md
    python grpotrainer.py --merge --adapter RUN/final  # a plain 16-bit model with the adapter in RUN/final-merged
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

import os
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import versions

if __name__ == "__main__" and (broken := versions.known_bad(versions.installed())):  # before they fail to import
    print(f"grpotrainer.py: error: {broken}", file=sys.stderr)
    sys.exit(2)

import settings  # first: it quiets a warning that bitsandbytes prints when it is imported

import torch
from accelerate import PartialState
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback
from trl import GRPOTrainer, get_peft_config
from trl.models import unwrap_model_for_generation

import adapters
import checkpoints
import console
import decoding
import doctor
import evaluation
import loading
import merge
import preemption
import rewards
import smoke
import usage
import worstcase
from atomic import replace_folder
from options import RunSettings
from settings import InputError

PROMPT = (
    "Solve the following math problem step by step, showing your arithmetic. "
    "Then give the final answer on its own last line as '#### <number>'.\n\n{question}"
)


def read_settings(argv: list[str]) -> RunSettings:
    script = Path(__file__).resolve()
    if usage.wants_help(argv):
        usage.print_help(argv, CONSTANTS, CONFIG_FILE, script)
        raise SystemExit(0)
    return settings.parse_settings(argv, CONSTANTS, CONFIG_FILE, script.parent)


# ---------------------------------------------------------------------------------------------------------------------
# The trainer: TRL's GRPOTrainer plus the monitoring metrics, sample completions, and greedy accuracy


class GSM8KGRPOTrainer(GRPOTrainer):
    """Adds rewards/mean|best|worst and objective/kl|entropy to TRL's metrics, samples of completions to
    TensorBoard's text tab, replaces TRL's sampled evaluation by GSM8K accuracy (eval/accuracy; greedy unless told to
    sample), and keeps the adapter of the best evaluation in best/.

    Written against TRL 1.16.0, it relies on GRPOTrainer's private `_calculate_rewards`, `_metrics`, `_logs` and
    `_log_completion_extra`, and on transformers' `Trainer._determine_best_metric`: check them when upgrading TRL or
    transformers. `_calculate_rewards` is overridden because it is the one place that holds every process's rewards,
    per function, for whole groups (TRL gathers them there, grpo_trainer.py:1681), which the best and worst total
    within a group need; a reward function sees only its own scores on its own process, and TRL has no public hook
    after the gather."""

    def __init__(
        self, *args, completion_samples_every: int, eval_decoding: evaluation.Decoding, eval_settings: dict,
        compile_decoding: bool = False, **kwargs,
    ):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback if self.args.disable_tqdm else ProgressCallback)
        self.add_callback(console.StepLines)
        self.completion_samples_every = completion_samples_every
        self.decoding = eval_decoding
        self.eval_settings = eval_settings  # what an evaluation's answers depend on, so that a later one can reuse it
        decoding.keep_one_input_grad_hook(self.model)  # eager decoding gains too: no hook per generation
        self.compiled = {}  # GenerationConfig fields of compiled decoding, for training and evaluation alike
        if compile_decoding:
            prompt_sets = [self.train_dataset, self.eval_dataset]
            self.compiled = decoding.generation_options(self.model, self.processing_class, prompt_sets, self.args)
            # TRL builds its GenerationConfig with disable_compile=True (grpo_trainer.py:1173); these lift it
            self.generation_config.update(**self.compiled)
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

    def write_completion_samples(self) -> None:
        writer = console.tensorboard_writer(self.callback_handler.callbacks)
        if writer is not None and self._logs["completion"]:
            writer.add_text("train/completions", console.completion_samples(self._logs), self.state.global_step)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Accuracy on the fixed test slice, greedy unless told to sample; TRL's own evaluation would sample at
        training temperature."""
        step = self.state.global_step
        if step in self.evaluations:
            return self.evaluations[step]
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as model:
            examples = eval_dataset if eval_dataset is not None else self.eval_dataset
            rows, summary = evaluation.evaluate_gsm8k(
                model, self.processing_class, examples, self.args, self.decoding, self.compiled
            )
        summary |= {"step": step, "settings": self.eval_settings}
        if self.accelerator.is_main_process:
            evaluation.write_eval_files(evaluation.step_folder(Path(self.args.output_dir), step), rows, summary)
            print(f"\nstep {step}: {evaluation.describe_accuracy(summary)}")
        metrics = {f"{metric_key_prefix}_{name}": summary[name] for name in evaluation.logged_figures(summary)}
        self.model.eval()  # so that GRPOTrainer.log files these under eval/, not train/
        self.log(metrics)
        self.model.train()
        # True while the Trainer runs an eval_steps evaluation, which it judges itself once this returns
        # (transformers trainer.py:2269-2271); on_evaluate clears it (trainer_callback.py:523)
        scheduled = self.control.should_evaluate
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self.evaluations[step] = metrics
        if not scheduled:  # the one before training (eval_on_start) and the one after it
            self._determine_best_metric(metrics, trial=None)
        return metrics

    def _determine_best_metric(self, metrics: dict, trial) -> bool:
        """The Trainer's judgement under metric_for_best_model and greater_is_better (strictly better, so a tie keeps
        the earlier step; transformers trainer.py:3424-3460). It runs between an evaluation and that step's checkpoint
        with no callback in between, so a new best's adapter is saved here, to best/, which rotation never deletes."""
        is_new_best = super()._determine_best_metric(metrics, trial)
        if is_new_best:
            self.save_best()
        return is_new_best

    def save_best(self) -> None:
        best = Path(self.args.output_dir) / "best"
        staging = best.with_name(".best.saving")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a crash mid-save left
        self.save_model(str(staging))
        if self.args.should_save:
            self.state.save_to_json(str(staging / "trainer_state.json"))  # its step, as in every checkpoint
            replace_folder(staging, best)
        self.accelerator.wait_for_everyone()


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
    if script.resume is True:
        checkpoint, skipped = loading.resume_checkpoint(training.output_dir)
        for line in [*skipped, loading.resume_line(checkpoint, training)] if PartialState().is_main_process else ():
            print(line)
    compared = settings.compared_run(script.adapter) if script.eval_only else None
    if compared:
        checkpoints.check_run(compared, Path(script.adapter), script.model_name)
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
    if script.adapter and not compared:  # a run's checkpoints are attached one at a time
        model = (
            adapters.attach(model, script.adapter)
            if script.eval_only
            else adapters.attach_for_training(model, script.adapter, script.model_name)
        )
    return Inputs(tokenizer, model, train_set, eval_set, checkpoint)


def stop_token_ids(model, tokenizer) -> set[int]:
    """The ids a completion that stopped before max_completion_length ends in, as TRL 1.16 tells: the EOS ids of the
    generation config and the tokenizer (grpo_trainer.py:409-415) and the pad token (grpo_trainer.py:2489-2490)."""
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return {*eos, tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}


def build_trainer(run: RunSettings, inputs: Inputs, callbacks=()) -> GSM8KGRPOTrainer:
    """The trainer of a run; benchmarks/step_time.py builds the same one."""
    return GSM8KGRPOTrainer(
        model=inputs.model,
        reward_funcs=rewards.reward_functions(stop_token_ids(inputs.model, inputs.tokenizer)),
        args=run.training,
        train_dataset=inputs.train_set,
        eval_dataset=inputs.eval_set,
        processing_class=inputs.tokenizer,
        # An adapter to continue comes loaded: TRL refuses a PeftModel with a peft_config, and given none copies the
        # adapter into a frozen "ref" adapter, the KL reference (trl/trainer/grpo_trainer.py lines 457 and 501)
        peft_config=None if run.script.adapter else get_peft_config(run.model),
        callbacks=[adapters.RequireTrainableParameters(), *callbacks],
        completion_samples_every=run.script.completion_samples_every,
        eval_decoding=eval_decoding(run),
        eval_settings=eval_settings(run),
        compile_decoding=run.script.compile_decoding,
    )


def eval_decoding(run: RunSettings) -> evaluation.Decoding:
    script = run.script
    return evaluation.choose_decoding(
        script.eval_samples_per_question, script.eval_temperature, script.eval_top_p, script.enable_thinking,
        run.training.seed,
    )  # fmt: skip


def eval_settings(run: RunSettings) -> dict:
    """Besides the questions and the decoding, what an evaluation's answers depend on: an evaluation on disk with the
    same ones is not generated again (checkpoints.py)."""
    return {
        "model_name": run.script.model_name,
        "load_in_4bit": run.model.load_in_4bit,
        "dtype": run.model.dtype,
        "max_completion_length": run.training.max_completion_length,
        "chat_template_kwargs": run.training.chat_template_kwargs,
    }


def train(run: RunSettings, inputs: Inputs) -> int:
    output_dir = run.training.output_dir
    interrupt = preemption.SaveOnInterrupt()
    trainer = build_trainer(run, inputs, [interrupt])
    watcher = doctor.attach(trainer) if run.script.doctor else None
    check = worstcase.attach(trainer) if worstcase.wanted(run.script.worst_case_check) else None
    main_process = trainer.accelerator.is_main_process
    if main_process:
        print(f"TensorBoard: tensorboard --logdir {output_dir}")
    final = Path(output_dir) / "final"
    try:
        trainer.train(resume_from_checkpoint=inputs.checkpoint)
        if not interrupt.interrupted and not (watcher is not None and watcher.exit_code):
            trainer.save_model(str(final))
    except torch.OutOfMemoryError:
        if watcher is None:
            raise
        in_check = check is not None and check.running
        doctor.report_out_of_memory(run.training, run.model, trainer.state.global_step, worst_case=in_check)
        return doctor.EXIT_OUT_OF_MEMORY
    except (OSError, RuntimeError) as error:  # after OutOfMemoryError, a RuntimeError too
        if not preemption.disk_full(error, output_dir):
            raise
        tqdm.write(preemption.disk_full_line(output_dir, trainer.state.global_step), file=sys.stderr)  # not after the bar
        return preemption.EXIT_DISK_FULL
    if watcher is not None and watcher.exit_code:
        return watcher.exit_code
    if interrupt.interrupted:
        if main_process:
            print(interrupt.stopped_line(trainer.state.global_step, output_dir))
        return interrupt.exit_code()
    if main_process:
        trainer.state.save_to_json(str(final / "trainer_state.json"))  # its step, as in every checkpoint
        print(f"final LoRA adapter and tokenizer: {final}")
    if run.script.eval_before_and_after:
        trainer.evaluate()
        if main_process:
            evaluation.report_before_and_after(Path(output_dir), trainer.state.global_step)
    return 0


def evaluate_only(run: RunSettings, inputs: Inputs) -> int:
    model = inputs.model  # 4-bit weights load onto the GPU; the Trainer places a 16-bit model, and here nothing else
    if torch.cuda.is_available() and model.device.type == "cpu":
        model = model.to(PartialState().device)
    how = eval_decoding(run)
    if settings.is_run_folder(run.script.adapter):
        checkpoints.compare_run(Path(run.script.adapter), model, inputs, run, how, eval_settings(run))
        return 0
    compiled = {}
    if run.script.compile_decoding:
        compiled = decoding.generation_options(model, inputs.tokenizer, [inputs.eval_set], run.training)
    rows, summary = evaluation.evaluate_gsm8k(model, inputs.tokenizer, inputs.eval_set, run.training, how, compiled)
    adapter = run.script.adapter
    step = evaluation.adapter_step(Path(adapter)) if adapter else 0
    summary |= {"model": run.script.model_name, "adapter": adapter, "step": step, "settings": eval_settings(run)}
    if PartialState().is_main_process:
        output_dir = run.training.output_dir
        evaluation.write_eval_files(Path(output_dir), rows, summary)
        print(f"{evaluation.describe_accuracy(summary)}\nresults: {output_dir}/eval_results.jsonl and eval_summary.json")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--version"]:
        print(versions.table(versions.installed(), versions.tested()))
        return 0
    try:
        run = read_settings(argv)
        if run.script.smoke:
            smoke.build_assets(PROMPT)
        if run.script.adapter and not (run.script.eval_only and settings.is_run_folder(run.script.adapter)):
            adapters.check(run)  # a run folder's checkpoints are checked by checkpoints.check_run
        if run.script.merge:
            return merge.merge_run(run)
        settings.check_output_dir(run.training.output_dir)
        if run.script.resume is True and (finished := loading.finished_line(run.training)):
            if PartialState().is_main_process:
                print(finished)
            return 0
        if run.script.resume == "auto":
            loading.check_auto_start(Path(run.training.output_dir))
        inputs = load_inputs(run)
        state = PartialState()
        requested = run.training.output_dir
        run.training.output_dir = settings.claim_output_dir(requested, run.script.resume)
        state.wait_for_everyone()  # every process chose the folder before the main process creates it
        if state.is_main_process:
            if run.script.resume == "auto":
                print(f"--resume auto: no complete checkpoint in {requested}: starting the run there")
            if run.training.output_dir != requested:
                print(f"{requested} holds an earlier run, kept as it is: this run writes to {run.training.output_dir}")
            settings.report_settings(run, CONSTANTS)
            for line in versions.mismatch_lines(versions.installed(), versions.tested()):
                print(line)
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
