"""The worst-case step (--worst_case_check): before step 1, one training step on the longest prompts of the training
split with every completion max_completion_length long. GRPO's memory peaks when a long prompt meets completions that
run to the limit; a run that cannot hold that batch then runs out of memory in its first minutes, with the doctor's
remedies, instead of hours in, when such a batch first comes.

The step is TRL's own (GRPOTrainer.training_step: generation, rewards, the reference and policy log-prob passes, the
loss and its backward), with no optimizer or scheduler step, and it leaves nothing behind: the gradients are dropped,
it draws from a fork of the random generators, it reads the dataset directly rather than through the train
dataloader, and the trainer members that record a step are put back. Step 1 is what it would have been without it.
It prints one line: the peak GPU memory and the GPU's size.
"""

import contextlib
import copy
import math
import time
from typing import NamedTuple

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

import decoding

# What GRPOTrainer.training_step changes besides the gradients, in TRL 1.16.0 (trl/trainer/grpo_trainer.py): its step
# counter and step time (1513-1518), the generation buffer (1539-1546), the logged metrics and the completions table
# (1080-1098, filled at 2293-2310 and 2823-2854), the mark of vLLM's last weight sync (1769-1772) and the adaptive
# entropy controller (3216-3240); and transformers sets current_gradient_accumulation_steps, which the loss reads, only
# inside its epoch loop (trainer.py:1877). TRL has no public way to run a step off the record, so these private members
# are saved before the step and put back after it.
KEPT = (
    "_step", "_current_train_step_time", "_buffered_inputs", "_metrics", "_logs", "_pending_extra_logs",
    "_pending_metrics", "_last_loaded_step", "entropy_coef", "_entropy_window_stats", "_last_world_entropy",
    "current_gradient_accumulation_steps",
)  # fmt: skip
GIB = 2**30
# accelerate's backward under DeepSpeed also steps the optimizer and the scheduler at the end of an accumulation window
# (accelerate/utils/deepspeed.py:264-281), which this step must never do
UNDER_DEEPSPEED = "worst-case step: skipped under DeepSpeed, where a backward pass also steps the optimizer"


def wanted(setting: bool | None) -> bool:
    """Unset, it is on where memory can run out mid-run, on a CUDA GPU."""
    return torch.cuda.is_available() if setting is None else setting


class Measurement(NamedTuple):
    completions: int  # this process's
    shortest: int  # completion tokens, over every process
    longest: int
    prompt_tokens: int  # the longest prompt's
    processes: int
    peak: int | None  # bytes the CUDA caching allocator held at the peak, on the fullest GPU; None on a CPU
    total: int | None  # that GPU's memory
    seconds: float


class WorstCaseCheck(TrainerCallback):
    """Runs the worst-case step when training begins: after accelerate prepared the model and --resume loaded its
    weights, before the evaluation at step 0 and step 1 (transformers trainer.py:1614-1655)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.running = False  # stays True if the step raised: the entry script tells the doctor where memory ran out

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer.is_deepspeed_enabled:
            line = UNDER_DEEPSPEED
        else:
            self.running = True
            line = describe(worst_case_step(self.trainer))
            self.running = False
        if state.is_world_process_zero:
            tqdm.write(line)


def attach(trainer) -> WorstCaseCheck:
    check = WorstCaseCheck(trainer)
    trainer.add_callback(check)
    return check


def worst_case_step(trainer) -> Measurement:
    """TRL's training step on this process's share of the worst batch, then the gradients dropped; the peak memory
    of it all. Under torchrun every process runs it at once (its gathers and gradient all-reduce need them all)."""
    rows, prompt_tokens = longest_rows(trainer)
    device = trainer.accelerator.device
    cuda = device.type == "cuda"
    start = time.perf_counter()
    with off_the_record(trainer), torch.random.fork_rng(devices=[device] if cuda else []), forced_length(trainer):
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        trainer.training_step(trainer.model_wrapped, rows, num_items_in_batch=None)  # GRPO counts its own
        trainer.model_wrapped.zero_grad(set_to_none=True)
        metrics = trainer._metrics["train"]  # TRL's gathered completion lengths (grpo_trainer.py:2296-2298)
        shortest, longest = int(min(metrics["completions/min_length"])), int(max(metrics["completions/max_length"]))
    peak = total = None
    if cuda:
        # reserved, not allocated: what the caching allocator holds (fragments and cache included) is what runs out
        held = torch.tensor([torch.cuda.max_memory_reserved(device)], device=device)
        peak = int(trainer.accelerator.gather(held).max())
        total = torch.cuda.get_device_properties(device).total_memory
    seconds = time.perf_counter() - start
    processes = trainer.accelerator.num_processes
    return Measurement(len(rows), shortest, longest, prompt_tokens, processes, peak, total, seconds)


def longest_rows(trainer) -> tuple[list[dict], int]:
    """This process's generation batch as the train dataloader hands it (each prompt num_generations times in a row:
    trl's RepeatSampler, grpo_trainer.py:1272-1316), made of the training split's longest prompts by their tokens as
    TRL tokenizes them. Every process takes the same longest ones, the worst case for each; the dataloader is not
    touched, so step 1 draws the batch it would have drawn. Returns the rows and the longest prompt's tokens."""
    args, dataset, group = trainer.args, trainer.train_dataset, trainer.num_generations
    size = args.per_device_train_batch_size * args.steps_per_generation  # grpo_trainer.py:1275
    lengths = decoding.prompt_lengths(trainer.processing_class, dataset, args.chat_template_kwargs)
    count = min(len(dataset), math.ceil(size / group))
    longest = sorted(range(len(dataset)), key=lengths.__getitem__, reverse=True)[:count]
    return [dataset[longest[i // group % count]] for i in range(size)], lengths[longest[0]]


@contextlib.contextmanager
def off_the_record(trainer):
    """The step's records (KEPT, the tokens seen, the model's train/eval mode) as they were before it."""
    saved = {name: copy.deepcopy(getattr(trainer, name)) for name in KEPT if hasattr(trainer, name)}
    tokens_seen, training = trainer.state.num_input_tokens_seen, trainer.model.training
    # the loss divides by the window's micro-steps as the epoch loop sets them for a full window (trainer.py:1877)
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    try:
        yield
    finally:
        for name in KEPT:
            if name in saved:
                setattr(trainer, name, saved[name])
            elif hasattr(trainer, name):
                delattr(trainer, name)
        trainer.state.num_input_tokens_seen = tokens_seen
        trainer.model.train(training)


def forced_length(trainer):
    """Every completion max_completion_length tokens long: the end-of-sequence tokens are held back until then, by
    transformers' min_new_tokens in the GenerationConfig TRL generates with (grpo_trainer.py:1173, 1805, 1874), or
    with use_vllm by vLLM's min_tokens in the generation_kwargs that TRL's vLLM generation sends with its sampling
    parameters (trl/generation/vllm_generation.py:627, 672; not run here: this repository's tests have no vLLM)."""
    if trainer.use_vllm:
        return held(trainer.vllm_generation.generation_kwargs, "min_tokens", trainer.args.max_completion_length)
    # a GenerationConfig keeps its fields as plain attributes
    return held(vars(trainer.generation_config), "min_new_tokens", trainer.args.max_completion_length)


@contextlib.contextmanager
def held(options: dict, key: str, value):
    """options[key] is value for the duration, then as it was (absent again if it was absent)."""
    had, before = key in options, options.get(key)
    options[key] = value
    try:
        yield
    finally:
        if had:
            options[key] = before
        else:
            del options[key]


def describe(measured: Measurement) -> str:
    """The line the check prints: the peak against the GPU's size, then what the step held."""
    if measured.peak is None:
        memory = "ran on the CPU, where no GPU memory is measured"
    else:
        memory = f"{measured.peak / GIB:.1f} of {measured.total / GIB:.1f} GiB"
    tokens = measured.longest if measured.shortest == measured.longest else f"{measured.shortest}-{measured.longest}"
    each = " per process" if measured.processes > 1 else ""
    return (
        f"worst-case step: {memory}; {measured.completions} completions{each} of {tokens} tokens on the longest "
        f"prompts ({measured.prompt_tokens} tokens), with backward, {measured.seconds:.0f} s"
    )
