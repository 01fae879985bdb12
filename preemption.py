"""How a run ends early and says so: a stop signal (Ctrl-C, a scheduler's SIGTERM, SLURM's SIGUSR1) saves a
checkpoint after the current step, and a full disk while saving is one line; both print the command that continues."""

import errno
import os
import shutil
import signal
import traceback

import torch
from accelerate import PartialState
from transformers import TrainerCallback

import loading
from settings import InputError


# A stop by signal, after a step and with a checkpoint. Ctrl-C keeps the shell's 130; SIGTERM (schedulers, spot
# instances) and SIGUSR1 (SLURM's --signal) exit EXIT_PREEMPTED, which no failure and no kill uses: "resume me".
# A second signal stops at once, and the process then ends as killed by that signal (exit status 128 + its number).
EXIT_PREEMPTED = 5
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM] + [signal.SIGUSR1] * hasattr(signal, "SIGUSR1")  # no SIGUSR1 on Windows


class SaveOnInterrupt(TrainerCallback):
    """Ctrl-C, SIGTERM or SIGUSR1 ends training after the current step with a checkpoint that --resume continues from;
    a second one stops at once. Every process stops at the same step, so a multi-process save cannot hang."""

    def __init__(self):
        self.signal = 0  # the number of the first stop signal, 0 while none came
        self.previous_handlers = {}

    @property
    def interrupted(self) -> bool:
        return self.signal != 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.previous_handlers = {number: signal.signal(number, self.request_stop) for number in STOP_SIGNALS}

    def request_stop(self, signum, frame):
        if self.interrupted:
            stop_at_once(signum)
        self.signal = signum
        if PartialState().is_main_process:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            message = f"{name}: stopping after this step and saving a checkpoint ({name} again to stop at once)"
            print(f"\n{message}", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # any process's signal stops all
            number = torch.tensor([float(self.signal)], device=PartialState().device)
            torch.distributed.all_reduce(number, op=torch.distributed.ReduceOp.MAX)
            self.signal = int(number.item())
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for number, handler in self.previous_handlers.items():
            signal.signal(number, handler)

    def exit_code(self) -> int:
        return 128 + signal.SIGINT if self.signal == signal.SIGINT else EXIT_PREEMPTED

    def stopped_line(self, step: int, output_dir: str) -> str:
        cause = "interrupted" if self.signal == signal.SIGINT else f"stopped by {signal.Signals(self.signal).name}"
        return (
            f"{cause} at step {step}; checkpoint saved in {output_dir} (exit code {self.exit_code()}). "
            f"Continue with: {launcher()} grpotrainer.py --resume --output_dir {output_dir}"
        )


def stop_at_once(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # so the exit status says what it was: killed by this signal, nothing saved


def launcher() -> str:
    """How this run was started, for the continue command: torchrun sets WORLD_SIZE and LOCAL_WORLD_SIZE."""
    processes, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if processes == 1:
        return "python"
    return f"torchrun --nnodes {processes // local} --nproc_per_node {local}" if processes > local else f"torchrun --nproc_per_node {local}"  # fmt: skip


# A full disk while a checkpoint or the final adapter is saved: one line instead of torch.save's two tracebacks. What
# was saved before is whole (loading.resume_checkpoint skips the cut checkpoint), so --resume continues once there is
# space again.
EXIT_DISK_FULL = 6
FULL_BELOW = 16 * 2**20  # bytes free after a failed save that mean the disk is full (a write fails with ~0 left)


def disk_full(error: BaseException, folder: str) -> bool:
    """Whether a save failed for want of space. An OSError says ENOSPC; torch.save's C++ writer raises a RuntimeError
    with no errno ('unexpected pos', 'iostream error'), so for an error raised while saving the free space decides."""
    causes = [error, error.__context__, error.__cause__]
    if any(isinstance(cause, OSError) and cause.errno == errno.ENOSPC for cause in causes):
        return True
    frames = traceback.extract_tb(error.__traceback__)
    saving = any(frame.name in ("_save_checkpoint", "save_model") for frame in frames)
    return saving and shutil.disk_usage(folder).free < FULL_BELOW


def disk_full_line(output_dir: str, step: int) -> str:
    try:
        last = loading.resume_checkpoint(output_dir)[0]
        then = f"free space, then continue with: {launcher()} grpotrainer.py --resume --output_dir {output_dir}"
    except InputError:
        last, then = "none", "free space, then start the run again"
    return (
        f"grpotrainer.py: error: the disk is full: saving in {output_dir} at step {step} failed; the last complete "
        f"checkpoint is {last}; {then} (exit code {EXIT_DISK_FULL})"
    )
