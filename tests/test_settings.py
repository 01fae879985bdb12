"""settings.py: constants < config.yaml < presets < command line, the library's renamed names, every mistake as one
line with exit code 2, and output folders that never overwrite an earlier run."""

import dataclasses
import os
from pathlib import Path

import pytest
import yaml
from conftest import REPO, error_line

import grpotrainer
import options
import rewards
import settings
import smoke


def test_constants_feed_the_library_configs():
    run = grpotrainer.read_settings([])
    assert run.training.beta == grpotrainer.KL_COEF and run.training.num_generations == grpotrainer.NUM_GENERATIONS
    assert run.training.temperature == grpotrainer.TEMPERATURE and run.training.output_dir == grpotrainer.OUTPUT_DIR
    assert run.model.model_name_or_path == grpotrainer.MODEL_NAME and run.model.load_in_4bit
    assert run.training.chat_template_kwargs == {"enable_thinking": grpotrainer.ENABLE_THINKING}
    assert run.training.reward_weights == [weight for _, weight in rewards.REWARDS]
    assert "tensorboard" in run.training.report_to


def test_every_constant_is_a_setting_of_its_lower_case_name():
    assert set(grpotrainer.CONSTANTS) == {
        "model_name", "dataset_name", "dataset_config", "num_generations", "kl_coef", "temperature", "output_dir",
        "enable_thinking", "eval_samples", "eval_before_and_after",
    }  # fmt: skip
    run = grpotrainer.read_settings([])
    for name, value in grpotrainer.CONSTANTS.items():
        assert run.value(name) == value, name


def test_a_new_constant_is_a_setting_with_no_other_edit(tmp_path):
    (tmp_path / "c.yaml").write_text("max_steps: 3\n")
    constants = grpotrainer.CONSTANTS | {"reward_note": "first try", "max_grad_norm": 0.5}  # ours, and TRL's
    run = settings.parse_settings(["--reward_note", "second"], constants, "c.yaml", tmp_path)
    assert run.script.reward_note == "second" and run.training.max_grad_norm == 0.5
    (tmp_path / "c.yaml").write_text("reward_note: x\n")
    with pytest.raises(settings.InputError, match=r"its home is grpotrainer.py \(REWARD_NOTE\)"):
        settings.parse_settings([], constants, "c.yaml", tmp_path)


def test_config_file_is_read_and_command_line_wins(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 3.0e-4\nmax_steps: 7\nlora_r: 4\n")
    run = grpotrainer.read_settings(["--config", str(config), "--max_steps=9"])
    assert (run.training.learning_rate, run.training.max_steps, run.model.lora_r) == (3e-4, 9, 4)
    assert run.sources["learning_rate"] == "c.yaml" and run.sources["max_steps"] == "command line"


def test_smoke_is_a_preset_that_flags_override():
    run = grpotrainer.read_settings(["--smoke", "--max_steps", "2", "--kl_coef", "0.1"])
    assert run.training.max_steps == 2 and run.training.beta == 0.1
    assert run.script.model_name == str(smoke.SMOKE_DIR / "model")
    assert run.training.learning_rate == smoke.preset()["learning_rate"]


def test_eval_only_scores_the_whole_split_unless_told_and_says_so():
    run = grpotrainer.read_settings(["--smoke", "--eval_only"])
    assert run.script.eval_samples is None and run.sources["eval_samples"] == "--eval_only"
    run = grpotrainer.read_settings(["--eval_only", "--eval_samples", "5"])
    assert run.script.eval_samples == 5 and run.sources["eval_samples"] == "command line"


def test_eval_only_results_go_beside_what_they_measure(tmp_path):
    run = grpotrainer.read_settings(["--eval_only", "--model_name", "Qwen/Qwen3-0.6B"])
    assert run.training.output_dir == str(Path(grpotrainer.OUTPUT_DIR).parent / "eval-Qwen3-0.6B")
    (tmp_path / "run" / "final").mkdir(parents=True)
    run = grpotrainer.read_settings(["--eval_only", "--adapter", str(tmp_path / "run" / "final")])
    assert run.training.output_dir == str(Path(grpotrainer.OUTPUT_DIR).parent / "eval-Qwen3-8B-final")
    (tmp_path / "run" / "settings.yaml").write_text("")  # an adapter of a run: its evaluation lives in the run
    run = grpotrainer.read_settings(["--eval_only", "--adapter", str(tmp_path / "run" / "final")])
    assert run.training.output_dir == str(tmp_path / "run" / "eval-final") and run.sources["output_dir"] == "--eval_only"
    run = grpotrainer.read_settings(["--eval_only", "--output_dir", str(tmp_path / "mine")])
    assert run.training.output_dir == str(tmp_path / "mine")


def test_renamed_library_settings_are_set_from_ours():
    run = grpotrainer.read_settings(["--kl_coef", "0.2", "--model_name", "Qwen/Qwen3-0.6B"])
    assert run.training.beta == 0.2 and run.model.model_name_or_path == "Qwen/Qwen3-0.6B"
    assert run.training.resume_from_checkpoint is False and run.training.eval_on_start is True
    assert set(options.RENAMED.values()) <= {field.name for field in dataclasses.fields(run.script)}


def saved_run(folder, *argv) -> options.RunSettings:
    """The settings.yaml that a run started with these flags leaves in folder."""
    run = grpotrainer.read_settings([*map(str, argv), "--output_dir", str(folder)])
    settings.report_settings(run, grpotrainer.CONSTANTS)
    return run


def test_resume_restores_the_saved_run_and_may_extend_it(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("seed: 7\n")
    saved = saved_run(tmp_path / "run", "--smoke", "--config", config, "--lora_r", "4", "--kl_coef", "0.1")
    run = grpotrainer.read_settings(["--resume", "--output_dir", str(tmp_path / "run"), "--max_steps", "100"])
    assert run.script.smoke and run.script.model_name == saved.script.model_name == str(smoke.SMOKE_DIR / "model")
    assert (run.model.lora_r, run.training.beta, run.training.seed, run.training.num_generations) == (4, 0.1, 7, 8)
    assert run.training.max_steps == 100 and run.sources["max_steps"] == "command line"
    assert run.sources["lora_r"] == "settings.yaml" and run.training.resume_from_checkpoint is True
    assert run.training.eval_on_start is False  # a resumed run was evaluated at its step 0 already
    settings.report_settings(run, grpotrainer.CONSTANTS)
    assert "settings (settings.yaml < command line):" in capsys.readouterr().out
    again = grpotrainer.read_settings(["--resume", "--output_dir", str(tmp_path / "run")])  # resumed twice
    assert again.model.lora_r == 4 and again.training.max_steps == 100


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_generations", "4"], "--resume: num_generations is 8 in the run's settings.yaml but 4 here; a resumed run may change only "),
        (["--lora_r", "8"], "--resume: lora_r is 16 in the run's settings.yaml but 8 here"),
        (["--per_device_train_batch_size", "8"], "--resume: per_device_train_batch_size is 16 in"),
        (["--dataset_name", "x"], "--resume: dataset_name is "),
        (["--reward_weights", "1", "1", "1", "1"], "--resume: reward_weights is "),
        (["--smoke", "false"], "--resume: smoke is True in the run's settings.yaml but False here"),
        (["--config", "config.yaml"], "--config cannot be combined with --resume"),
    ],
)
def test_resume_refuses_to_change_what_the_run_is(capsys, tmp_path, argv, message):
    saved_run(tmp_path / "run", "--smoke")
    error = error_line(capsys, ["--resume", "--output_dir", tmp_path / "run", *argv])
    assert message in error, error


def test_the_worst_case_check_is_unset_on_or_off_and_a_resumed_run_may_change_it(tmp_path):
    def check(*argv):
        return grpotrainer.read_settings([*argv]).script.worst_case_check

    assert (check("--smoke"), check("--worst_case_check"), check("--worst_case_check", "false")) == (None, True, False)
    saved_run(tmp_path / "run", "--smoke", "--worst_case_check", "true")
    assert check("--resume", "--output_dir", str(tmp_path / "run")) is True
    assert check("--resume", "--output_dir", str(tmp_path / "run"), "--worst_case_check", "false") is False


def test_resume_needs_the_runs_settings(capsys, tmp_path):
    message = f"--resume: {tmp_path}/settings.yaml does not exist: name the run's folder with --output_dir"
    assert message in error_line(capsys, ["--resume", "--output_dir", tmp_path])
    (tmp_path / "settings.yaml").write_text("max_steps: 3\n")
    assert "is not the settings file of a run of this script" in error_line(capsys, ["--resume", "--output_dir", tmp_path])


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
        (["--max_steps", "-5"], "max_steps must be a positive number of steps, or -1 to train num_train_epochs, not -5"),
        (["--learning_rate", "0"], "learning_rate must be above 0, not 0.0"),
        (["--logging_steps", "0"], "logging_steps must be above 0, not 0"),
        (["--save_steps", "-10"], "save_steps must be above 0, not -10"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be at least 1, not 0"),
        (["--lora_r", "0"], "lora_r must be at least 1, not 0"),
        (["--warmup_steps", "-1"], "warmup_steps must be 0 or more, not -1"),
        (["--completion_samples_every", "-1"], "completion_samples_every must be 0 or more, not -1"),
        (["--lora_dropout", "1"], "lora_dropout must be below 1, not 1.0"),
        (["--top_p", "1.5"], "top_p must be at most 1, not 1.5"),
        (["--eval_top_p", "1.5"], "eval_top_p must be at most 1, not 1.5"),
        (["--eval_top_p", "0"], "eval_top_p must be above 0, not 0.0"),
        (["--eval_temperature", "-1"], "eval_temperature must be 0 or more, not -1.0"),
        (["--eval_samples_per_question", "0"], "eval_samples_per_question must be at least 1, not 0"),
        (["--eval_temperature", "0", "--eval_samples_per_question", "4"], "eval_temperature 0 is greedy, which gives one answer per question"),  # fmt: skip
        (["--config", str(REPO / "configs")], f"config file {REPO / 'configs'} is a folder: name a YAML file"),
        (["--use_vllm", "true"], "4-bit loading with vLLM generation is broken upstream: set load_in_4bit: false"),
        (["--adapter", "x"], "adapter folder x does not exist or holds no adapter_config.json"),
        (["--reward_weights", "0.5", "0.5"], "reward_weights needs 4 numbers, one per reward in order: format_reward"),
        (["--config", "/no/such.yaml"], "config file /no/such.yaml does not exist"),
        (["--model_name", "./no-such-model"], "model path ./no-such-model does not exist"),
        (["stray"], "unexpected argument 'stray'"),
        (["--worst_case_check", "maybe"], "--worst-case-check: Truthy value expected: got maybe"),
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
        ("max_steps: abc\n", "max_steps is 'abc' in"),
        ("max_steps: 1.5\n", "max_steps is 1.5 in"),
        ("learning_rate: fast\n", "learning_rate is 'fast' in"),
        ("bf16: maybe\n", "bf16 is 'maybe' in"),
        ("eval_strategy: sometimes\n", "which is not one of no, steps, epoch"),
        ("reward_weights: [1, x, 1, 1]\n", "reward_weights is 'x' in"),
    ],
)
def test_bad_config_file_is_one_line_and_exit_2(capsys, tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert message in error_line(capsys, ["--config", config])


def test_an_output_dir_that_cannot_be_written_fails_before_anything_loads(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    cases = {
        tmp_path / "file": "output_dir {} is a file, not a folder",
        tmp_path / "file" / "run": f"output_dir {{}} cannot be created: {tmp_path / 'file'} is a file",
        "/proc/sys/run": "output_dir {} cannot be created: /proc/sys is not writable",
    }
    for output_dir, message in cases.items():
        assert message.format(output_dir) in error_line(capsys, ["--smoke", "--output_dir", output_dir])
    assert [path.name for path in tmp_path.iterdir()] == ["file"]


def test_output_dir_is_never_reused_unless_resuming(tmp_path):
    first = tmp_path / "run"
    assert settings.claim_output_dir(str(first), resume=False) == str(first)
    first.mkdir()
    assert settings.claim_output_dir(str(first), resume=False) == str(first)  # empty: nothing to lose
    (first / "settings.yaml").write_text("x")
    assert settings.claim_output_dir(str(first), resume=False) == f"{first}-2"
    assert settings.claim_output_dir(str(first), resume=True) == str(first)


def test_report_prints_plain_values_grouped_by_source_in_layer_order_and_saves_everything(tmp_path, capsys):
    run = grpotrainer.read_settings(["--smoke", "--output_dir", str(tmp_path / "run"), "--eval_strategy", "steps"])
    settings.report_settings(run, grpotrainer.CONSTANTS)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "settings (grpotrainer.py < config file < --smoke < command line):"
    sources = [line.split(":")[0].strip() for line in lines[1:] if not line.startswith("      ")]
    assert sources[:5] == ["grpotrainer.py", "config.yaml", "--smoke", "no GPU", "command line"]
    assert f"output_dir={tmp_path / 'run'}" in out and "max_steps=80" in out and "eval_strategy=steps" in out
    assert "IntervalStrategy" not in out and "SchedulerType" not in out
    assert "(--smoke replaces grpotrainer.py's dataset_config, dataset_name, eval_samples, model_name, num_generations, temperature: edits there have no effect with it)" in out  # fmt: skip
    saved = yaml.safe_load((tmp_path / "run" / "settings.yaml").read_text())
    assert saved == yaml.safe_load(yaml.safe_dump(run.as_dict()))
    assert saved["training"]["beta"] == grpotrainer.KL_COEF and saved["script"]["smoke"] is True


def test_a_new_setting_is_one_declaration_with_its_rule_on_one_line(tmp_path, monkeypatch):
    """A made-up constant with a bound and a resume rule: the constant plus one line of options.RULES."""
    (tmp_path / "c.yaml").write_text("")
    constants = grpotrainer.CONSTANTS | {"reward_scale": 0.5}
    monkeypatch.setitem(options.RULES, "reward_scale", options.Rule(above=0, resume_may_change=True))
    with pytest.raises(settings.InputError, match=r"^reward_scale must be above 0, not -1.0$"):
        settings.parse_settings(["--reward_scale", "-1"], constants, "c.yaml", tmp_path)
    run = settings.parse_settings(["--smoke", "--output_dir", str(tmp_path / "run")], constants, "c.yaml", tmp_path)
    settings.report_settings(run, constants)
    resumed = ["--resume", "--output_dir", str(tmp_path / "run"), "--reward_scale", "2"]
    assert settings.parse_settings(resumed, constants, "c.yaml", tmp_path).script.reward_scale == 2.0
    monkeypatch.setitem(options.RULES, "reward_scale", options.Rule(above=0))  # the same setting, fixed for a run
    with pytest.raises(settings.InputError, match="--resume: reward_scale is 0.5 in the run's settings.yaml but 2.0"):
        settings.parse_settings(resumed, constants, "c.yaml", tmp_path)


def test_every_rule_names_a_setting():
    run = grpotrainer.read_settings([])
    for name in options.rules():
        run.value(name)  # raises StopIteration for a rule whose setting does not exist


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_no_float_setting_takes_nan_or_infinity(capsys, tmp_path, value):
    for key in ("temperature", "learning_rate", "kl_coef", "top_p", "max_grad_norm", "lora_dropout"):
        assert f"{key} is {float(value)}, which is not a finite number" in error_line(capsys, [f"--{key}={value}"])
    config = tmp_path / "c.yaml"
    yaml_value = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[value]
    config.write_text(f"reward_weights: [1, 1, {yaml_value}, 1]\n")
    assert f"reward_weights is {float(value)}, which is not a finite number" in error_line(capsys, ["--config", config])


def test_a_number_yaml_reads_as_text_is_a_number(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 2e-5\nmax_grad_norm: '0.5'\n")  # YAML 1.1: both are strings
    run = grpotrainer.read_settings(["--config", str(config)])
    assert (run.training.learning_rate, run.training.max_grad_norm) == (2e-5, 0.5)


def test_config_env_block_sets_environment_variables(tmp_path, monkeypatch):
    monkeypatch.delenv("GRPOTRAINER_TEST_VARIABLE", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("env:\n  GRPOTRAINER_TEST_VARIABLE: 1\nmax_steps: 3\n")  # as TRL's TrlParser reads it
    assert grpotrainer.read_settings(["--config", str(config)]).training.max_steps == 3
    assert os.environ["GRPOTRAINER_TEST_VARIABLE"] == "1"


def test_where_a_value_came_from_is_a_layer_not_a_label(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("seed: 3\n")
    run = grpotrainer.read_settings(["--smoke", "--config", str(config), "--dtype", "float16"])
    assert run.sources["seed"].layer is options.Layer.CONFIG_FILE and run.sources["seed"] == "c.yaml"
    assert run.sources["max_steps"].layer is options.Layer.SMOKE
    assert run.sources["dtype"].layer is options.Layer.COMMAND_LINE


def test_resume_auto_starts_a_new_run_in_its_folder_or_continues_the_one_there(capsys, tmp_path):
    folder = tmp_path / "run"
    new = grpotrainer.read_settings(["--smoke", "--resume", "auto", "--lora_r", "4", "--output_dir", str(folder)])
    assert new.script.resume == "auto" and new.training.resume_from_checkpoint is False and new.training.eval_on_start
    settings.report_settings(new, grpotrainer.CONSTANTS)  # an attempt that saved no checkpoint: start there again
    assert settings.claim_output_dir(str(folder), new.script.resume) == str(folder)
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    resumed = grpotrainer.read_settings(["--resume", "auto", "--output_dir", str(folder), "--max_steps", "9"])
    assert resumed.script.resume is True and resumed.training.resume_from_checkpoint is True
    assert resumed.model.lora_r == 4 and resumed.sources["lora_r"] == "settings.yaml"  # the saved settings win
    assert "--resume: lora_r is 4 in the run's settings.yaml but 8 here" in error_line(
        capsys, ["--resume", "auto", "--output_dir", folder, "--lora_r", 8]
    )
    assert "--resume is true, false or auto, not 'maybe'" in error_line(capsys, ["--resume", "maybe"])
    assert grpotrainer.read_settings(["--resume", "false"]).script.resume is False
