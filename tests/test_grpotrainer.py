"""grpotrainer.py end to end, run as a user runs it: the offline smoke run and what it leaves (TensorBoard metrics,
sample completions, settings, checkpoints, the final adapter, accuracy before and after), Ctrl-C and --resume, two
processes, and --eval_only."""

import json
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ENV, REPO, error_line, run_script, scalars, tensorboard_log
from transformers import AutoModelForCausalLM

import doctor
import evaluation
import grpotrainer
import loading
import preemption
import rewards
import settings
import smoke

# --------------------------------------------------------------------------------------------------------------------
# The smoke run: 4-bit + LoRA + rewards + TensorBoard + checkpoints + evaluation, offline on the CPU


def test_smoke_run_logs_the_reference_metrics_to_tensorboard(smoke_run):
    out, _ = smoke_run
    logged = scalars(out)
    names = ["rewards/mean", "rewards/best", "rewards/worst", "objective/kl", "objective/entropy", "loss",
             "frac_reward_zero_std"] + [f"rewards/{f.__name__}/mean" for f, _ in rewards.REWARDS]  # fmt: skip
    for name in names:
        values = logged[f"train/{name}"]
        assert values and all(math.isfinite(v) for v in values), name
    for best, mean, worst in zip(logged["train/rewards/best"], logged["train/rewards/mean"], logged["train/rewards/worst"]):
        assert best + 1e-6 >= mean >= worst - 1e-6
    assert all(0.0 <= v <= 1.0 for v in logged["train/rewards/mean"])
    evaluated_at = [event.step for event in tensorboard_log(out).Scalars("eval/accuracy")]
    assert evaluated_at == [0, 40, 80]  # before training, every eval_steps, and after (not twice at step 80)


def test_smoke_console_is_one_short_line_per_logging_step_and_fits_a_screen(smoke_run):
    stdout = smoke_run[1]
    lines = [line for line in stdout.splitlines() if line.strip()]
    steps = [line for line in lines if line.startswith("step ") and "rewards" in line]
    assert len(steps) == 80 // smoke.preset()["logging_steps"] and all(len(line) <= 120 for line in steps)
    assert steps[0].startswith("step 2/80: rewards ") and "correct " in steps[0] and " s/step" in steps[0]
    assert "{'loss'" not in stdout and "IntervalStrategy" not in stdout and len(lines) <= 70


def test_a_bad_input_is_the_only_line_on_stderr():
    result = run_script("--max_steps", -5)
    assert result.returncode == 2
    assert result.stderr.strip() == "grpotrainer.py: error: max_steps must be a positive number of steps, or -1 to train num_train_epochs, not -5"  # fmt: skip


def first_and_last_ten_steps(run: Path, tag: str) -> tuple[float, float]:
    """A metric's mean over the first and the last 10 of the smoke run's 80 steps (5 logging steps each)."""
    values = scalars(run)[f"train/{tag}"]
    return sum(values[:5]) / 5, sum(values[-5:]) / 5


def assert_learns_to_state_its_answer_as_asked(run: Path) -> None:
    """What GRPO teaches the warm smoke model: its share of completions ending in the prompt's `#### N` line rises
    (0.43 -> 0.75 in the README's run), stated answers with it, and so the total reward (0.29 -> 0.37). It cannot
    learn arithmetic in 80 steps: correctness and reasoning are not asserted."""
    first, last = first_and_last_ten_steps(run, doctor.reward_key(rewards.format_reward))
    assert last > first + 0.15, (run, first, last)
    first, last = first_and_last_ten_steps(run, doctor.reward_key(rewards.answer_present_reward))
    assert last > first, (run, first, last)
    first, last = first_and_last_ten_steps(run, "rewards/mean")
    assert last > first + 0.03, (run, first, last)


def test_smoke_run_visibly_learns(smoke_run):
    assert_learns_to_state_its_answer_as_asked(smoke_run[0])


def test_smoke_run_with_compiled_decoding_learns_as_the_eager_one(smoke_run, tmp_path):
    out = tmp_path / "compiled"
    result = run_script("--smoke", "--compile_decoding", "true", "--output_dir", out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "compiled decoding: static KV cache of " in result.stdout
    for run in (smoke_run[0], out):
        assert_learns_to_state_its_answer_as_asked(run)
    summary = json.loads((out / "eval" / "step-80" / "eval_summary.json").read_text())
    assert summary["generation"].endswith(", compiled decoding")


def test_smoke_run_writes_sample_completions_to_the_text_tab(smoke_run):
    log = tensorboard_log(smoke_run[0])
    assert "train/completions/text_summary" in log.Tags()["tensors"]
    text = log.Tensors("train/completions/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "ground truth" in text and "correctness_reward" in text


def test_smoke_run_saves_settings_checkpoints_and_the_final_adapter(smoke_run):
    out, stdout = smoke_run
    saved = yaml.safe_load((out / "settings.yaml").read_text())
    assert saved["training"]["max_steps"] == smoke.preset()["max_steps"]
    assert "settings (grpotrainer.py < config file < --smoke < command line)" in stdout
    assert f"tensorboard --logdir {out}" in stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-40", "checkpoint-80"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json"):
        assert (out / "final" / name).is_file(), name


def test_smoke_run_measures_accuracy_before_and_after(smoke_run):
    out, stdout = smoke_run
    comparison = json.loads((out / "eval_before_after.json").read_text())
    before = [json.loads(line) for line in (out / "eval" / "step-0" / "eval_results.jsonl").open()]
    after = [json.loads(line) for line in (out / "eval" / "step-80" / "eval_results.jsonl").open()]
    assert comparison["before"] == sum(r["correct"] for r in before) / len(before)
    assert comparison["after"] == sum(r["correct"] for r in after) / len(after)
    line = f"before {comparison['before']:.1%} -> after {comparison['after']:.1%} on 16 test questions: "
    assert line in stdout and "the interval" in stdout  # the warm model may solve a question before training


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2")


def signalled_run(out: Path, signals: list[int], launcher=(sys.executable,)) -> tuple[int, str]:
    """A short --smoke run sent these signals once training is under way, each after the run said it got the one
    before (the kernel merges a signal that is still pending with a second one): its exit status and console."""
    process = subprocess.Popen(
        [*launcher, str(REPO / "grpotrainer.py"), "--smoke", "--max_steps", "6", "--save_steps", "1000",
         "--eval_strategy", "no", "--eval_before_and_after", "false", "--output_dir", str(out)],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    pending, output = list(signals), ""
    for line in process.stdout:
        output += line
        if line.startswith("step 2/6: rewards") or "stopping after this step" in line:
            process.send_signal(pending.pop(0))
            if not pending:
                break
    output += process.stdout.read()
    return process.wait(timeout=600), output


def continue_as_printed(output: str) -> subprocess.CompletedProcess:
    """The printed continue command, run verbatim (torchrun as this Python's torch.distributed.run)."""
    launcher, command = output.split("Continue with: ")[1].splitlines()[0].split(" grpotrainer.py ")
    launcher = (sys.executable,) if launcher == "python" else (sys.executable, "-m", "torch.distributed.run", *launcher.split()[1:])  # fmt: skip
    return run_script(*command.split(), launcher=launcher)


def assert_continued_to_the_last_step(out: Path, resumed: subprocess.CompletedProcess) -> None:
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "settings (settings.yaml < command line)" in resumed.stdout and "smoke=True" in resumed.stdout
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [2, 4, 6]  # each step logged once
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_ctrl_c_saves_a_checkpoint_that_the_printed_command_continues(tmp_path):
    out = tmp_path / "run"
    code, output = signalled_run(out, [signal.SIGINT])
    assert code == 130, output
    (checkpoint,) = out.glob("checkpoint-*")
    assert 0 < int(checkpoint.name.split("-")[1]) < 6
    assert f"interrupted at step {checkpoint.name.split('-')[1]}; checkpoint saved in {out} (exit code 130)" in output
    assert_continued_to_the_last_step(out, continue_as_printed(output))


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGUSR1])
def test_a_schedulers_signal_saves_a_checkpoint_and_exits_5_for_the_printed_command(tmp_path, number):
    out = tmp_path / "run"
    code, output = signalled_run(out, [number])
    assert code == preemption.EXIT_PREEMPTED == 5, output
    (checkpoint,) = out.glob("checkpoint-*")
    step = checkpoint.name.split("-")[1]
    assert f"{number.name}: stopping after this step and saving a checkpoint ({number.name} again to stop at once)" in output  # fmt: skip
    assert f"stopped by {number.name} at step {step}; checkpoint saved in {out} (exit code 5). Continue with: python grpotrainer.py --resume --output_dir {out}" in output  # fmt: skip
    assert "Traceback" not in output
    assert_continued_to_the_last_step(out, continue_as_printed(output))


def test_a_second_signal_stops_at_once_as_killed_by_it(tmp_path):
    code, output = signalled_run(tmp_path / "run", [signal.SIGTERM, signal.SIGTERM])
    assert code == -signal.SIGTERM, output  # a shell sees 128 + 15 = 143
    assert not list((tmp_path / "run").glob("checkpoint-*")) and "checkpoint saved" not in output


def test_under_torchrun_a_forwarded_signal_stops_every_process_at_one_step(tmp_path):
    out = tmp_path / "run"
    forwarding = (*TORCHRUN, "--signals_to_handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")  # as the README's sbatch
    code, output = signalled_run(out, [signal.SIGUSR1], launcher=forwarding)
    assert code == 1, output  # torchrun's own status after a signal; its workers exit 5
    assert output.count("stopped by SIGUSR1 at step") == 1 and "(exit code 5)" in output
    assert "Continue with: torchrun --nproc_per_node 2 grpotrainer.py --resume --output_dir" in output
    (checkpoint,) = out.glob("checkpoint-*")  # one step for both processes, saved once
    assert_continued_to_the_last_step(out, continue_as_printed(output))


def test_resume_auto_is_one_command_for_the_first_start_and_every_restart(tmp_path):
    out = tmp_path / "run"
    flags = ["--smoke", "--resume", "auto", "--eval_strategy", "no", "--eval_before_and_after", "false", "--output_dir", out]  # fmt: skip
    settings.report_settings(grpotrainer.read_settings(list(map(str, flags))), grpotrainer.CONSTANTS)  # an attempt
    # cut short before its first checkpoint leaves its settings.yaml: the restart starts there, not in run-2
    first = run_script(*flags, "--max_steps", 1)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"--resume auto: no complete checkpoint in {out}: starting the run there" in first.stdout
    assert (out / "checkpoint-1").is_dir() and not Path(f"{out}-2").exists()

    finished = run_script(*flags, "--max_steps", 1)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.strip() == (
        f"--resume: {out} is finished: {out / 'checkpoint-1'} reached max_steps 1 and {out}/final holds its adapter; "
        f"nothing to do (raise --max_steps to train on)"
    )

    longer = run_script(*flags, "--max_steps", 2)
    assert longer.returncode == 0, longer.stdout[-3000:] + longer.stderr[-3000:]
    assert f"--resume: continuing from {out / 'checkpoint-1'}, step 1 of 2" in longer.stdout
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert not Path(f"{out}-2").exists()


KILLED_WHILE_SAVING = """
import os, signal, sys
from transformers import Trainer
import grpotrainer

save_optimizer = Trainer._save_optimizer_and_scheduler

def killed_after_the_optimizer(self, output_dir):  # the weights and optimizer are on disk, trainer_state.json is not
    save_optimizer(self, output_dir)
    if self.state.global_step == 2:
        os.kill(os.getpid(), signal.SIGKILL)

Trainer._save_optimizer_and_scheduler = killed_after_the_optimizer
sys.exit(grpotrainer.main(sys.argv[2:]))  # argv: -c, grpotrainer.py, flags
"""


def test_resume_after_a_kill_while_saving_skips_the_incomplete_checkpoint(tmp_path):
    out = tmp_path / "run"
    killed = run_script("--smoke", "--max_steps", 3, "--save_steps", 1, "--eval_strategy", "no",
                        "--eval_before_and_after", "false", "--output_dir", out,
                        launcher=(sys.executable, "-c", KILLED_WHILE_SAVING))  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / "checkpoint-2" / "optimizer.pt").is_file() and not (out / "checkpoint-2" / "trainer_state.json").exists()

    resumed = run_script("--resume", "--output_dir", out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--resume: skipping {out / 'checkpoint-2'}, which has no trainer_state.json: its save was cut short" in resumed.stdout
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [entry["step"] for entry in state["log_history"] if "loss" in entry] == [2]


PREPARED_EVALUATIONS = """
import os, sys
from pathlib import Path
from peft import get_peft_model_state_dict
from safetensors.torch import save_file
import evaluation, grpotrainer

CORRECT = [2, 8, 8, 4]  # of 16 questions, at steps 0, 2, 4, 6: the best is step 2 (step 4 ties it later)
real = evaluation.evaluate_gsm8k
calls = []

def prepared(model, tokenizer, examples, args, decoding, compiled=None):  # the real generation, then prepared scores
    rows, summary = real(model, tokenizer, examples, args, decoding, compiled)
    weights = {name: value.contiguous() for name, value in get_peft_model_state_dict(model).items()}
    save_file(weights, Path(os.environ["WEIGHTS"]) / f"evaluation-{len(calls)}.safetensors")
    for i, row in enumerate(rows):
        row["correct"] = i < CORRECT[len(calls)]
    calls.append(len(calls))
    return rows, summary | evaluation.summarise(rows)

evaluation.evaluate_gsm8k = prepared
sys.exit(grpotrainer.main(sys.argv[2:]))  # argv: -c, grpotrainer.py, flags
"""


def test_best_keeps_the_best_evaluations_adapter_after_rotation_deleted_its_checkpoint(tmp_path):
    from safetensors.torch import load_file

    out, weights = tmp_path / "run", tmp_path / "weights"
    weights.mkdir()
    result = run_script("--smoke", "--max_steps", 6, "--eval_steps", 2, "--save_steps", 3, "--save_total_limit", 1,
                        "--output_dir", out, launcher=(sys.executable, "-c", PREPARED_EVALUATIONS),
                        env=ENV | {"WEIGHTS": str(weights)})  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]  # rotation took checkpoint-3
    at_step = {step: load_file(weights / f"evaluation-{i}.safetensors") for i, step in enumerate([0, 2, 4, 6])}
    best = load_file(out / "best" / "adapter_model.safetensors")
    assert best.keys() == at_step[2].keys() and all((best[k] == at_step[2][k]).all() for k in best)
    assert any((best[k] != at_step[4][k]).any() for k in best)  # training moved on: step 4's adapter differs
    assert json.loads((out / "best" / "trainer_state.json").read_text())["global_step"] == 2
    low, high = evaluation.wilson_interval(8, 16)
    line = f"best adapter: {out / 'best'} (step 2), accuracy 50.0% [95% CI {low:.1%}-{high:.1%}]; against final/ (step 6): +25.0% [95% CI"  # fmt: skip
    assert line in result.stdout
    summary = json.loads((out / "eval_before_after.json").read_text())["best"]
    assert summary["adapter"] == str(out / "best") and summary["step"] == 2 and summary["difference_vs_final"] == 0.25


def test_two_processes_train_with_one_writer(tmp_path):
    out = tmp_path / "run"
    result = run_script(
        "--smoke", "--max_steps", 2, "--output_dir", out,
        launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("settings (grpotrainer.py") == 1
    assert "find_unused_parameters" not in result.stderr and "FutureWarning" not in result.stderr
    tensorboard_log(out)  # exactly one event file
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert not Path(f"{out}-2").exists()  # both processes agreed on one folder


def test_under_torchrun_one_process_reports_a_bad_input(tmp_path):
    result = run_script("--smoke", "--max_steps", -5, "--output_dir", tmp_path / "run",
                        launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"))  # fmt: skip
    assert result.returncode != 0
    assert (result.stdout + result.stderr).count("grpotrainer.py: error: max_steps must be") == 1, result.stderr
    assert not (tmp_path / "run").exists()


READ_ONLY_MOUNT = ("unshare", "--map-root-user", "--mount", "sh", "-c", 'mount -t tmpfs -o ro none "$1" && shift && exec "$@"', "sh")  # fmt: skip


@pytest.mark.skipif(subprocess.run([*READ_ONLY_MOUNT, "/tmp", "true"], check=False).returncode != 0, reason="no user namespaces")
def test_an_output_dir_on_a_read_only_file_system_is_one_line_and_exit_2(tmp_path):
    result = run_script("--smoke", "--output_dir", tmp_path / "run", launcher=(*READ_ONLY_MOUNT, tmp_path, sys.executable))
    assert result.returncode == 2, result.stderr[-3000:]
    message = f"grpotrainer.py: error: output_dir {tmp_path / 'run'} cannot be created: {tmp_path} is not writable (Read-only file system)"  # fmt: skip
    assert result.stderr.strip().splitlines()[-1] == message


FULL_THEN_FREED = """mount -t tmpfs -o size=800k none "$0" && cd "$1" || exit 99
kept=$2 python=$3; shift 4
"$python" grpotrainer.py "$@" --output_dir "$0/run"; echo "exit $?"
mount -o remount,size=16m "$0" && "$python" grpotrainer.py --resume --output_dir "$0/run"; echo "exit $?"
cp -r "$0/run" "$kept"
"""  # a disk with room for about two smoke checkpoints, then more room; the run is copied off it, which ends with sh


@pytest.mark.skipif(subprocess.run([*READ_ONLY_MOUNT, "/tmp", "true"], check=False).returncode != 0, reason="no user namespaces")
def test_a_full_disk_while_saving_is_one_line_with_the_last_checkpoint_and_resume_continues_after(tmp_path):
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    result = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", FULL_THEN_FREED, disk, REPO, kept, sys.executable, "--",
         "--smoke", "--max_steps", "4", "--save_steps", "1", "--eval_strategy", "no", "--eval_before_and_after", "false"],
        env=ENV, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    full, freed = result.stdout.split("exit ")[1:3]
    assert full.startswith("6"), result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if "disk is full" in line]
    out = disk / "run"
    last = line.split("the last complete checkpoint is ")[1].split(";")[0]
    assert line.startswith(f"grpotrainer.py: error: the disk is full: saving in {out} at step ")
    assert line.endswith(f"; free space, then continue with: python grpotrainer.py --resume --output_dir {out} (exit code 6)")  # fmt: skip
    assert "Traceback" not in result.stderr and freed.startswith("0"), result.stderr[-3000:]
    assert f"--resume: continuing from {last}, step " in result.stdout and last.startswith(f"{out}/checkpoint-")
    assert loading.checkpoint_problem(kept / Path(last).name) is None  # it was complete
    assert json.loads((kept / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4


# --------------------------------------------------------------------------------------------------------------------
# Continuing an existing adapter (SFT -> GRPO): --adapter on a training run


@pytest.fixture(scope="module")
def continued_run(sft_adapter, tmp_path_factory):
    """Four GRPO steps on top of the SFT adapter, logging every step, with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("continued") / "run"
    result = run_script("--smoke", "--adapter", sft_adapter, "--max_steps", 4, "--logging_steps", 1,
                        "--eval_steps", 1000, "--save_steps", 2, "--output_dir", out)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def lora_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_a_continued_adapter_starts_as_itself_with_itself_as_the_kl_reference(continued_run, sft_adapter, tmp_path):
    out, _ = continued_run
    step_0 = [json.loads(line)["completion"] for line in (out / "eval" / "step-0" / "eval_results.jsonl").open()]
    _, rows, _ = eval_only("--adapter", sft_adapter, "--eval_samples", len(step_0), "--output_dir", tmp_path / "a")
    _, base_rows, _ = eval_only("--eval_samples", len(step_0), "--output_dir", tmp_path / "base")
    assert step_0 == [row["completion"] for row in rows]  # the first step's policy is the adapter
    assert step_0 != [row["completion"] for row in base_rows]  # and the adapter changes what the base writes
    kl = scalars(out)["train/objective/kl"]
    assert kl[0] < 1e-3 and kl[-1] > 100 * kl[0], kl  # from the adapter itself, not the base; then it drifts


def test_a_continued_adapter_keeps_its_shape_moves_and_loads_on_its_base(continued_run, sft_adapter):
    from peft import PeftModel

    out, stdout = continued_run
    start, final = lora_weights(sft_adapter), lora_weights(out / "final")
    assert start.keys() == final.keys()  # r=8 on the attention layers, as SFT left it; no second adapter stacked
    assert any(not torch.equal(start[key], final[key].to(start[key].dtype)) for key in start)
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert (config["r"], config["base_model_name_or_path"]) == (8, str(smoke.SMOKE_DIR / "model"))
    base = AutoModelForCausalLM.from_pretrained(smoke.SMOKE_DIR / "model", dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, out / "final")
    key = next(key for key in final if "lora_B" in key)
    loaded_value = loaded.get_parameter(key.replace(".weight", ".default.weight"))
    assert torch.equal(loaded_value.to(final[key].dtype), final[key])
    saved = yaml.safe_load((out / "settings.yaml").read_text())
    assert saved["script"]["adapter"] == str(sft_adapter) and saved["model"]["lora_r"] == 8
    assert "  --adapter: lora_alpha=16, " in stdout  # config.yaml's LoRA settings gave way to the adapter's


def test_resuming_a_continued_run_keeps_the_starting_adapter_as_its_reference(continued_run, tmp_path):
    run = Path(shutil.copytree(continued_run[0], tmp_path / "run"))
    shutil.rmtree(run / "checkpoint-4")  # continue from step 2: steps 3 and 4 again, against the same reference
    resumed = run_script("--resume", "--output_dir", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    kl = {entry["step"]: entry["objective/kl"] for entry in state["log_history"] if "objective/kl" in entry}
    before = json.loads((continued_run[0] / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    first_run = {entry["step"]: entry["objective/kl"] for entry in before if "objective/kl" in entry}
    assert sorted(kl) == [1, 2, 3, 4] and kl[3] > 10 * first_run[1], (kl, first_run)  # not restarted at 0 KL


def test_merging_a_continued_run_without_smoke_uses_the_base_the_adapter_records(continued_run):
    from peft import PeftModel

    out = continued_run[0]
    merged = run_script("--merge", "--adapter", out / "final")
    assert merged.returncode == 0, merged.stderr[-3000:]
    base = smoke.SMOKE_DIR / "model"
    said = f"--adapter {out / 'final'}: on its base model {base}, as its adapter_config.json records"
    assert merged.stdout.startswith(said)
    ids = torch.arange(2, 42).view(2, 20)
    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    attached = PeftModel.from_pretrained(base_model, out / "final")
    merged_model = AutoModelForCausalLM.from_pretrained(out / "final-merged")
    with torch.inference_mode():
        assert torch.allclose(merged_model(input_ids=ids).logits, attached(input_ids=ids).logits, rtol=0, atol=1e-4)


def test_two_processes_continue_an_adapter(tmp_path, sft_adapter):
    out = tmp_path / "run"
    result = run_script(
        "--smoke", "--adapter", sft_adapter, "--max_steps", 2, "--eval_before_and_after", "false",
        "--output_dir", out, launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("settings (grpotrainer.py") == 1
    assert lora_weights(out / "final").keys() == lora_weights(sft_adapter).keys()


# --------------------------------------------------------------------------------------------------------------------
# Evaluation: --eval_only


def eval_only(*args) -> tuple[subprocess.CompletedProcess, list[dict], dict]:
    result = run_script("--smoke", "--eval_only", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(args[args.index("--output_dir") + 1])
    rows = [json.loads(line) for line in (out / "eval_results.jsonl").open()]
    return result, rows, json.loads((out / "eval_summary.json").read_text())


def test_eval_only_prints_the_accuracy_of_its_rows_and_is_deterministic(tmp_path):
    first, rows, summary = eval_only("--eval_samples", 24, "--output_dir", tmp_path / "a")
    accuracy = sum(row["correct"] for row in rows) / len(rows)
    assert len(rows) == 24 and summary["accuracy"] == accuracy
    assert f"GSM8K accuracy (greedy pass@1) {accuracy:.1%}" in first.stdout
    for row in rows:
        assert row["correct"] == rewards.answers_match(row["extracted"], row["gold"])
    second, again, _ = eval_only("--eval_samples", 24, "--output_dir", tmp_path / "a")  # same folder: goes to a-2
    assert (tmp_path / "a-2" / "eval_results.jsonl").is_file() and again == rows
    assert f"{tmp_path / 'a'} holds an earlier run, kept as it is: this run writes to {tmp_path / 'a-2'}" in second.stdout


def test_eval_only_of_a_runs_adapter_writes_inside_that_run_and_says_where(smoke_run):
    result = run_script("--smoke", "--eval_only", "--adapter", smoke_run[0] / "final")
    assert result.returncode == 0, result.stderr[-3000:]
    results = smoke_run[0] / "eval-final"
    rows = [json.loads(line) for line in (results / "eval_results.jsonl").open()]
    summary = json.loads((results / "eval_summary.json").read_text())
    assert len(rows) == 64 and summary["adapter"] == str(smoke_run[0] / "final")
    assert result.stdout.strip().splitlines()[-1] == f"results: {results}/eval_results.jsonl and eval_summary.json"


def test_eval_only_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    other = Qwen3Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16)  # fmt: skip
    get_peft_model(Qwen3ForCausalLM(other), LoraConfig(target_modules="all-linear")).save_pretrained(tmp_path / "other")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "test.jsonl").write_text("")
    cases = {
        ("--dataset_name", empty): "test.jsonl is empty",
        ("--adapter", tmp_path / "other"): "does not fit the model",
        ("--adapter", tmp_path / "missing"): "holds no adapter_config.json",
        ("--eval_samples", 100000): "the test split holds only 64 questions",
        ("--eval_samples", 0): "eval_samples must be at least 1",
    }
    for args, message in cases.items():
        assert message in error_line(capsys, ["--smoke", "--eval_only", *args, "--output_dir", tmp_path / "o"])
    assert not (tmp_path / "o").exists()


def test_the_trainer_tells_the_form_rewards_which_completions_were_cut(tmp_path):
    import grpotrainer

    run = grpotrainer.read_settings(["--smoke", "--num_generations", "2", "--per_device_train_batch_size", "2",
                                     "--report_to", "none", "--output_dir", str(tmp_path / "run")])  # fmt: skip
    smoke.build_assets(grpotrainer.PROMPT)
    trainer = grpotrainer.build_trainer(run, grpotrainer.load_inputs(run))
    tokenizer = trainer.processing_class
    answer = tokenizer("#### 5", add_special_tokens=False)["input_ids"]
    inputs = [{"prompt": [{"role": "user", "content": "2+3?"}], "ground_truth": "5"}] * 2
    completions = [[{"role": "assistant", "content": "#### 5"}]] * 2
    scores = trainer._calculate_rewards(inputs, [x["prompt"] for x in inputs], completions,
                                        [answer + [tokenizer.eos_token_id], answer])  # fmt: skip
    column = [function for function, _ in rewards.REWARDS].index(rewards.format_reward)
    assert scores[:, column].tolist() == [1.0, 0.0]  # finished, then cut at the length limit
    column = [function for function, _ in rewards.REWARDS].index(rewards.answer_present_reward)
    assert scores[:, column].tolist() == [1.0, 0.0]
    assert trainer.reward_func_names == [function.__name__ for function, _ in rewards.REWARDS]  # the TensorBoard tags
    stops = grpotrainer.stop_token_ids(trainer.model, tokenizer)
    assert stops == {*trainer.eos_token_ids, tokenizer.pad_token_id}  # what TRL itself tells a cut completion by
