"""Shared paths and helpers: the repository, the real GSM8K beside it, running grpotrainer.py as a user does, reading
its one-line errors and its TensorBoard log, and one smoke run shared by the tests that read what it leaves."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import grpotrainer
import smoke

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
needs_gsm8k = pytest.mark.skipif(not GSM8K.is_dir(), reason=f"real GSM8K not found at {GSM8K}")
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def run_script(*args, launcher=(sys.executable,), env=ENV, timeout=1800) -> subprocess.CompletedProcess:
    """grpotrainer.py in a subprocess; the timeout only catches a hang (a busy 2-core machine is slow, not stuck)."""
    return subprocess.run(
        [*launcher, str(REPO / "grpotrainer.py"), *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def error_line(capsys, argv) -> str:
    """Run main() in-process on bad input: it must return 2 and say why in one line on stderr."""
    assert grpotrainer.main(list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip()  # may also hold the datasets library's progress bars
    errors = [line for line in err.splitlines() if line.startswith("grpotrainer.py: error: ")]
    assert errors == [err.splitlines()[-1]] and "Traceback" not in err, err
    return errors[0]


def tensorboard_log(run_dir: Path) -> EventAccumulator:
    (events,) = run_dir.glob("runs/*/events.out.tfevents.*")  # one log, in the run's own folder
    return EventAccumulator(str(events.parent)).Reload()


def scalars(run_dir: Path) -> dict[str, list[float]]:
    log = tensorboard_log(run_dir)
    return {tag: [event.value for event in log.Scalars(tag)] for tag in log.Tags()["scalars"]}


@pytest.fixture(scope="session")
def smoke_assets() -> Path:
    """The --smoke model and data under smoke.SMOKE_DIR, built once (the model's warm-up takes about a minute) and
    reused by every test and script run after it."""
    smoke.build_assets(grpotrainer.PROMPT)
    return smoke.SMOKE_DIR


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One complete `--smoke` run: its output folder and its console output."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    result = run_script("--smoke", "--output_dir", out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


@pytest.fixture(scope="session")
def sft_adapter(tmp_path_factory) -> Path:
    """A LoRA adapter from TRL's SFTTrainer on the smoke model (examples/sft_adapter.py: r=8 on the attention layers,
    unlike a run's own r=16 on every linear layer), the start of SFT -> GRPO."""
    out = tmp_path_factory.mktemp("sft") / "adapter"
    result = subprocess.run([sys.executable, str(REPO / "examples" / "sft_adapter.py"), str(out), "--steps", "8"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def three_checkpoint_run(tmp_path_factory):
    """A `--smoke` run of 3 steps with a checkpoint at each and evaluations at steps 0, 2 and 3 (the end)."""
    out = tmp_path_factory.mktemp("three") / "run"
    result = run_script("--smoke", "--max_steps", 3, "--save_steps", 1, "--eval_steps", 2, "--output_dir", out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


# What makes a test slow: a real run of the script (a subprocess, or a trainer built in-process) or a fixture that
# makes one. `python -m pytest -m "not slow"` runs the rest in a few minutes; CI runs everything.
RUNS_THE_SCRIPT = ("run_script(", "subprocess.", "signalled_run(", "build_trainer(", "load_inputs(")
SLOW_FIXTURES = {
    "smoke_run", "sft_adapter", "three_checkpoint_run", "compiled_run", "continued_run", "merged", "with_and_without",
}


def pytest_collection_modifyitems(items):
    for item in items:
        source = inspect.getsource(item.function)
        if SLOW_FIXTURES & set(item.fixturenames) or any(call in source for call in RUNS_THE_SCRIPT):
            item.add_marker(pytest.mark.slow)
