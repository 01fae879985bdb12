"""adapters.py: an existing LoRA adapter's checks before anything heavy (a LoRA adapter, for the run's base, with no
LoRA setting contradicting its own), the base it records used where no model is chosen, and never training a frozen
adapter. The end-to-end continuation of an adapter is in test_grpotrainer.py."""

import json
import shutil

import pytest
import torch
import yaml
from conftest import error_line, run_script

import adapters
import grpotrainer
import loading
import smoke
from settings import InputError


def edited_copy(adapter, tmp_path, **changes):
    """A copy of the adapter whose adapter_config.json says something else."""
    copy = shutil.copytree(adapter, tmp_path / "edited")
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps(config | changes))
    return copy


def adapter_for_a_wider_model(tmp_path):
    """A real LoRA adapter whose shapes fit a model other than the smoke model, recorded under another base."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    other = Qwen3Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16)  # fmt: skip
    folder = tmp_path / "other"
    get_peft_model(Qwen3ForCausalLM(other), LoraConfig(target_modules="all-linear")).save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "someone/other-model"}))
    return folder


@pytest.fixture
def no_weights_load(monkeypatch):
    """These mistakes show in the adapter's files and the model's config: no weights may load to find them."""
    monkeypatch.setattr(loading, "load_model", lambda *args: pytest.fail("loaded the model's weights"))


def test_bad_adapters_are_one_line_and_exit_2_before_any_weights_load(capsys, tmp_path, sft_adapter, no_weights_load):
    prompt_tuning = tmp_path / "prompt-tuning"
    prompt_tuning.mkdir()
    (prompt_tuning / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    cases = {
        "not_an_adapter": (["--adapter", smoke.SMOKE_DIR / "model"], "holds no adapter_config.json"),
        "not_lora": (["--adapter", prompt_tuning], "is a PROMPT_TUNING adapter, not a LoRA adapter"),
        "another_base_that_fits": (
            ["--adapter", edited_copy(sft_adapter, tmp_path, base_model_name_or_path="Qwen/Qwen3-8B")],
            "it was trained on 'Qwen/Qwen3-8B', not on '{}' (use it with --model_name Qwen/Qwen3-8B; its shapes fit "
            "'{}', so --allow_other_base true uses it there)".format(*[smoke.SMOKE_DIR / "model"] * 2),
        ),
        "another_base_that_does_not_fit": (
            ["--adapter", adapter_for_a_wider_model(tmp_path), "--allow_other_base", "true"],
            "is an adapter for another base: it does not fit the model: model.layers.0.mlp.down_proj has "
            f"{smoke.MODEL_CONFIG['intermediate_size']} inputs, the adapter's 64",  # down_proj reads the MLP's width
        ),
        "conflicting_rank": (
            ["--adapter", sft_adapter, "--lora_r", 16],
            f"lora_r is 16 on the command line, but adapter {sft_adapter} has r 8: a continued adapter keeps its own "
            "LoRA settings (leave lora_r out)",
        ),
        "conflicting_targets": (
            ["--adapter", sft_adapter, "--lora_target_modules", "all-linear"],
            "lora_target_modules is all-linear on the command line, but adapter "
            f"{sft_adapter} has target_modules ['k_proj', 'o_proj', 'q_proj', 'v_proj']",
        ),
        "no_peft": (["--adapter", sft_adapter, "--use_peft", "false"], "use_peft is false on the command line"),
    }
    for name, (args, message) in cases.items():
        for mode in ([], ["--eval_only"], ["--merge"]):
            out = tmp_path / "out"
            argv = ["--smoke", *mode, *args] + ([] if mode == ["--merge"] else ["--output_dir", out])
            assert message in error_line(capsys, argv), (name, mode)
            assert not out.exists()


def test_lora_settings_that_agree_with_the_adapter_are_accepted_and_the_adapters_own_replace_config_yamls(sft_adapter):
    run = grpotrainer.read_settings(["--smoke", "--adapter", str(sft_adapter), "--lora_r", "8",
                                     "--lora_target_modules", "v_proj", "q_proj", "k_proj", "o_proj"])  # fmt: skip
    assert run.model.lora_dropout == 0.0 and run.sources["lora_dropout"] == "--smoke"
    adapters.check(run)
    assert (run.model.lora_r, run.model.lora_alpha, run.model.lora_dropout) == (8, 16, 0.0)
    assert sorted(run.model.lora_target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert run.sources["lora_alpha"] == "--adapter"  # config.yaml's 32 gave way, and the printed settings say why
    assert run.sources["lora_r"] == "command line"


def test_all_linear_on_the_command_line_agrees_with_an_adapter_on_every_linear_layer(tmp_path):
    from peft import LoraConfig, get_peft_model

    smoke.build_assets(grpotrainer.PROMPT)
    base = grpotrainer.loading.AutoModelForCausalLM.from_pretrained(smoke.SMOKE_DIR / "model")
    get_peft_model(base, LoraConfig(r=16, target_modules="all-linear")).save_pretrained(tmp_path / "all")
    run = grpotrainer.read_settings(["--smoke", "--adapter", str(tmp_path / "all"), "--lora_target_modules", "all-linear"])  # fmt: skip
    adapters.check(run)  # peft saved 'all-linear' as the 14 module names it selected
    assert run.model.lora_target_modules == "all-linear" and run.sources["lora_target_modules"] == "command line"


def test_another_base_whose_shapes_fit_is_used_with_allow_other_base_and_said(tmp_path, sft_adapter, capsys):
    other_name = edited_copy(sft_adapter, tmp_path, base_model_name_or_path="Qwen/Qwen3-8B")
    run = grpotrainer.read_settings(["--smoke", "--adapter", str(other_name), "--allow_other_base", "true"])
    adapters.check(run)
    assert run.model.model_name_or_path == str(smoke.SMOKE_DIR / "model")
    assert capsys.readouterr().out.strip() == (
        f"adapter {other_name}: trained on 'Qwen/Qwen3-8B', used on '{smoke.SMOKE_DIR / 'model'}' (--allow_other_base)"
    )


def test_without_a_chosen_model_an_adapter_runs_on_the_base_it_records_and_says_so(tmp_path, sft_adapter):
    """No --smoke, no --model_name: MODEL_NAME (Qwen3-8B) would be the base; the adapter's own base is used instead."""
    result = run_script("--eval_only", "--adapter", sft_adapter, "--dataset_name", smoke.SMOKE_DIR / "gsm8k",
                        "--eval_samples", 2, "--max_completion_length", 4, "--output_dir", tmp_path / "eval")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    base = smoke.SMOKE_DIR / "model"
    line = f"--adapter {sft_adapter}: on its base model {base}, as its adapter_config.json records (--model_name to choose another)"  # fmt: skip
    assert result.stdout.splitlines()[0] == line
    saved = yaml.safe_load((tmp_path / "eval" / "settings.yaml").read_text())
    assert saved["script"]["model_name"] == str(base) and saved["sources"]["model_name"] == "--adapter"
    summary = json.loads((tmp_path / "eval" / "eval_summary.json").read_text())
    assert summary["model"] == str(base) and summary["adapter"] == str(sft_adapter)


def test_an_adapter_that_loads_frozen_stops_the_run_before_any_folder(capsys, monkeypatch, tmp_path, sft_adapter):
    """peft loads an adapter for inference unless told otherwise; a run on it would train nothing (trl#6700)."""
    from peft import PeftModel

    load = PeftModel.from_pretrained.__func__

    def ignoring_is_trainable(cls, model, model_id, **kwargs):
        return load(cls, model, model_id, **(kwargs | {"is_trainable": False}))

    monkeypatch.setattr(PeftModel, "from_pretrained", classmethod(ignoring_is_trainable))
    out = tmp_path / "run"
    message = error_line(capsys, ["--smoke", "--adapter", sft_adapter, "--output_dir", out])
    assert message == f"grpotrainer.py: error: adapter {sft_adapter} loaded with no trainable parameters: training would change nothing"  # fmt: skip
    assert not out.exists()


def test_a_trainer_whose_parameters_are_frozen_stops_before_the_first_step(tmp_path, sft_adapter):
    argv = ["--smoke", "--adapter", str(sft_adapter), "--report_to", "none", "--eval_before_and_after", "false",
            "--eval_strategy", "no", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    run = grpotrainer.read_settings(argv)
    adapters.check(run)
    trainer = grpotrainer.build_trainer(run, grpotrainer.load_inputs(run))
    for parameter in trainer.model.parameters():
        parameter.requires_grad_(False)  # as an adapter loaded for inference is
    with pytest.raises(InputError, match="the model has no trainable parameters: training would change nothing"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_the_optimizer_must_hold_every_trainable_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    check = adapters.RequireTrainableParameters()
    check.on_train_begin(None, None, None, model=model, optimizer=torch.optim.AdamW(model.parameters()))
    with pytest.raises(InputError, match="the optimizer holds 2 of the model's 4 trainable parameter tensors"):
        check.on_train_begin(None, None, None, model=model, optimizer=torch.optim.AdamW(model[0].parameters()))
