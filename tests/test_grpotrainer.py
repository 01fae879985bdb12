"""grpotrainer.py: settings, bad input, data, the offline smoke run and what it leaves, resume, two processes, and
GSM8K evaluation. The end-to-end tests run the script as a user does, in a subprocess, on the smoke model."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import grpotrainer
import rewards

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
needs_gsm8k = pytest.mark.skipif(not GSM8K.is_dir(), reason=f"real GSM8K not found at {GSM8K}")
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def run_script(*args, launcher=(sys.executable,), timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*launcher, str(REPO / "grpotrainer.py"), *map(str, args)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout,
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


# --------------------------------------------------------------------------------------------------------------------
# Settings: constants < config.yaml < --smoke < command line, and every mistake is one line with exit code 2


def test_settings_constants_feed_the_library_configs():
    settings, training, model, _ = grpotrainer.parse_settings([])
    assert training.beta == grpotrainer.KL_COEF and training.num_generations == grpotrainer.NUM_GENERATIONS
    assert training.temperature == grpotrainer.TEMPERATURE and training.output_dir == grpotrainer.OUTPUT_DIR
    assert model.model_name_or_path == grpotrainer.MODEL_NAME and model.load_in_4bit
    assert training.chat_template_kwargs == {"enable_thinking": grpotrainer.ENABLE_THINKING}
    assert training.reward_weights == [weight for _, weight in rewards.REWARDS]
    assert "tensorboard" in training.report_to


def test_settings_config_file_is_read_and_command_line_wins(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 3.0e-4\nmax_steps: 7\nlora_r: 4\n")
    _, training, model, sources = grpotrainer.parse_settings(["--config", str(config), "--max_steps=9"])
    assert (training.learning_rate, training.max_steps, model.lora_r) == (3e-4, 9, 4)
    assert sources["learning_rate"] == "c.yaml" and sources["max_steps"] == "command line"


def test_settings_smoke_is_a_preset_that_flags_override():
    settings, training, _, _ = grpotrainer.parse_settings(["--smoke", "--max_steps", "2", "--kl_coef", "0.1"])
    assert training.max_steps == 2 and training.beta == 0.1
    assert settings.model_name == str(grpotrainer.SMOKE_DIR / "model")
    assert training.learning_rate == grpotrainer.smoke_preset()["learning_rate"]


def test_settings_eval_only_scores_the_whole_split_unless_told():
    assert grpotrainer.parse_settings(["--eval_only"])[0].eval_samples is None
    assert grpotrainer.parse_settings(["--eval_only", "--eval_samples", "5"])[0].eval_samples == 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learnig_rate", "1e-5"], "unknown setting 'learnig_rate' on the command line (did you mean 'learning_rate'?)"),
        (["--max_steps", "1", "--max_steps", "2"], "'max_steps' is given twice"),
        (["--beta", "0.1"], "'beta' is called 'kl_coef'"),
        (["--max_steps", "abc"], "invalid int value: 'abc'"),
        (["--num_generations", "1"], "num_generations must be at least 2"),
        (["--temperature", "0"], "temperature must be above 0"),
        (["--kl_coef", "-0.1"], "kl_coef must be 0"),
        (["--eval_samples", "0"], "eval_samples must be at least 1"),
        (["--use_vllm", "true"], "4-bit loading with vLLM generation is broken upstream: set load_in_4bit: false"),
        (["--adapter", "x"], "--adapter is for --eval_only"),
        (["--reward_weights", "0.5", "0.5"], "reward_weights needs 4 numbers, one per reward in order: format_reward"),
        (["--config", "/no/such.yaml"], "config file /no/such.yaml does not exist"),
        (["--model_name", "./no-such-model"], "model path ./no-such-model does not exist"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(capsys, argv, message):
    assert message in error_line(capsys, argv)


def test_batch_not_divisible_by_generations_explains_trls_rule(capsys):
    err = error_line(capsys, ["--per_device_train_batch_size", "6", "--gradient_accumulation_steps", "1"])
    assert "= 6 completions is not a multiple of num_generations 4" in err
    assert "per_device_train_batch_size counts completions, not questions" in err


@pytest.mark.parametrize(
    "text, message",
    [
        ("learnig_rate: 1.0e-5\n", "unknown setting 'learnig_rate' in"),
        ("max_steps: 3\nmax_steps: 4\n", "'max_steps' is set twice in the config file (line 1)"),
        ("num_generations: 8\n", "'num_generations' cannot be set in"),
        ("smoke: true\n", "'smoke' cannot be set in"),
        ("resume_from_checkpoint: true\n", "'resume_from_checkpoint' is called 'resume' here"),
        ("max_steps: [1, 2\n", "is not valid YAML"),
        ("- max_steps\n", "must be a mapping"),
    ],
)
def test_bad_config_file_is_one_line_and_exit_2(capsys, tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert message in error_line(capsys, ["--config", config])


def test_bad_dataset_is_one_line_and_exit_2_and_leaves_no_output_folder(capsys, tmp_path):
    no_column = tmp_path / "no_column"
    no_column.mkdir()
    (no_column / "train.jsonl").write_text('{"query": "1+1?", "answer": "#### 2"}\n')
    (no_column / "test.jsonl").write_text('{"query": "1+1?", "answer": "#### 2"}\n')
    no_test = tmp_path / "no_test"
    no_test.mkdir()
    (no_test / "train.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    out = tmp_path / "out"
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path / "missing.jsonl": "does not exist",
        no_column: "has no 'question' column",
        no_test: "has no test.jsonl",
    }
    for dataset, message in cases.items():
        assert message in error_line(capsys, ["--smoke", "--dataset_name", dataset, "--output_dir", out])
    assert not out.exists()


def test_output_dir_is_never_reused_unless_resuming(tmp_path):
    first = tmp_path / "run"
    assert grpotrainer.claim_output_dir(str(first), resume=False) == str(first)
    first.mkdir()
    assert grpotrainer.claim_output_dir(str(first), resume=False) == str(first)  # empty: nothing to lose
    (first / "settings.yaml").write_text("x")
    assert grpotrainer.claim_output_dir(str(first), resume=False) == f"{first}-2"
    with pytest.raises(grpotrainer.SettingsError, match="no checkpoint"):
        grpotrainer.claim_output_dir(str(first), resume=True)


# --------------------------------------------------------------------------------------------------------------------
# Data


@needs_gsm8k
def test_real_gsm8k_loads_from_a_local_folder_as_chat_prompts_with_ground_truth():
    settings = grpotrainer.ScriptSettings(dataset_name=str(GSM8K))
    train = grpotrainer.load_split(settings, "train")
    test = grpotrainer.prepare(grpotrainer.load_split(settings, "test"), limit=3)
    assert len(train) == 7473 and len(test) == 3
    first = test[0]
    assert first["prompt"][0]["role"] == "user" and first["question"] in first["prompt"][0]["content"]
    assert "####" in first["prompt"][0]["content"] and first["ground_truth"] == "18"


@needs_gsm8k
def test_a_single_jsonl_file_is_a_dataset_too():
    settings = grpotrainer.ScriptSettings(dataset_name=str(GSM8K / "test.jsonl"))
    assert len(grpotrainer.load_split(settings, "train")) == 1319


# --------------------------------------------------------------------------------------------------------------------
# Model


def lora_gradients(model_args, training_args, evaluate_first: bool):
    import torch
    from trl import get_peft_config
    from peft import get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(grpotrainer.load_model(model_args, training_args), get_peft_config(model_args))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)  # non-zero, so gradients flow back through every layer
    ids = torch.arange(2, 34).view(2, 16)
    if evaluate_first:
        model.eval()
        model.generate(ids, max_new_tokens=2, do_sample=False)
        model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "layers.0." in n and p.grad is not None])


def test_cpu_4bit_lora_gradients_are_the_same_after_an_evaluation():
    """bitsandbytes 0.50 would repack CPU 4-bit weights into a layout without backward after an eval-mode pass."""
    import torch

    grpotrainer.build_smoke_assets()
    _, training_args, model_args, _ = grpotrainer.parse_settings(["--smoke"])
    before = lora_gradients(model_args, training_args, evaluate_first=False)
    after = lora_gradients(model_args, training_args, evaluate_first=True)
    assert torch.allclose(before, after, atol=1e-3), (before - after).abs().max()


# --------------------------------------------------------------------------------------------------------------------
# The smoke run: 4-bit + LoRA + rewards + TensorBoard + checkpoints + evaluation, offline on the CPU


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    result = run_script("--smoke", "--output_dir", out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


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


def test_smoke_run_visibly_learns(smoke_run):
    mean = scalars(smoke_run[0])["train/rewards/mean"]
    first, last = sum(mean[:5]) / 5, sum(mean[-5:]) / 5  # the first and last 10 of 80 steps
    assert last > first + 0.05, mean


def test_smoke_run_writes_sample_completions_to_the_text_tab(smoke_run):
    log = tensorboard_log(smoke_run[0])
    assert "train/completions/text_summary" in log.Tags()["tensors"]
    text = log.Tensors("train/completions/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "ground truth" in text and "correctness_reward" in text


def test_smoke_run_saves_settings_checkpoints_and_the_final_adapter(smoke_run):
    out, stdout = smoke_run
    saved = yaml.safe_load((out / "settings.yaml").read_text())
    assert saved["training"]["max_steps"] == grpotrainer.smoke_preset()["max_steps"]
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
    assert "before 0.0% -> after" in stdout and "the interval" in stdout


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(tmp_path):
    out = tmp_path / "run"
    common = ["--smoke", "--save_steps", 1000, "--eval_strategy", "no", "--eval_before_and_after", "false",
              "--output_dir", out]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(REPO / "grpotrainer.py"), *map(str, common), "--max_steps", "300"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for line in process.stdout:
        if "'loss'" in line:  # training is under way
            process.send_signal(signal.SIGINT)
            break
    output = process.stdout.read()
    assert process.wait(timeout=300) == 130, output
    (checkpoint,) = out.glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert "Continue with: python grpotrainer.py --resume" in output and 0 < step < 300

    resumed = run_script(*common, "--resume", "--max_steps", step + 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((out / f"checkpoint-{step + 2}" / "trainer_state.json").read_text())
    assert state["global_step"] == step + 2 and (out / "final" / "adapter_model.safetensors").is_file()


def test_two_processes_train_with_one_writer(tmp_path):
    out = tmp_path / "run"
    result = run_script(
        "--smoke", "--max_steps", 2, "--output_dir", out,
        launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("settings (grpotrainer.py") == 1
    tensorboard_log(out)  # exactly one event file
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert not Path(f"{out}-2").exists()  # both processes agreed on one folder


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


def test_eval_with_continuous_batching_gives_the_same_answers(tmp_path):
    _, batched, summary = eval_only("--eval_samples", 8, "--output_dir", tmp_path / "a")
    _, continuous, cb_summary = eval_only(
        "--eval_samples", 8, "--use_transformers_continuous_batching", "true", "--output_dir", tmp_path / "b"
    )
    assert continuous == batched
    assert summary["generation"] != cb_summary["generation"] and "continuous" in cb_summary["generation"]


def test_eval_only_with_the_adapter_of_a_smoke_run(smoke_run, tmp_path):
    result, rows, summary = eval_only("--adapter", smoke_run[0] / "final", "--output_dir", tmp_path / "e")
    assert len(rows) == 64 and summary["adapter"] == str(smoke_run[0] / "final")


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


def test_confidence_intervals():
    low, high = grpotrainer.wilson_interval(50, 100)
    assert low < 0.5 < high and round(high - low, 2) == 0.19
    assert grpotrainer.wilson_interval(0, 10)[0] == 0.0
    same = [{"correct": True}, {"correct": False}] * 50
    assert not grpotrainer.compare(same, same)["significant"]
    better = [{"correct": True}] * 100
    result = grpotrainer.compare(same, better)
    assert result["difference"] == 0.5 and result["significant"]
