"""--merge (merge.py): a LoRA adapter folded into its unquantized base, saved as a plain model folder. Most tests use an
adapter built with peft in a second; one runs the whole path as a user does: train, merge, evaluate the merged model."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import grpotrainer
import merge
import smoke
from conftest import error_line, run_script
from options import Layer, Source

IDS = torch.arange(2, 42).view(2, 20)  # any token ids of the smoke vocabulary
PLAIN_MODEL_FILES = {
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "chat_template.jinja",
}


def logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=IDS).logits


def base_model():
    return AutoModelForCausalLM.from_pretrained(smoke.SMOKE_DIR / "model", dtype=torch.float32)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """RUN/final as a CPU run leaves it (adapter, tokenizer, float32 in RUN/settings.yaml), with a non-zero update:
    peft starts lora_B at zero, and an adapter that changes nothing would pass a merge test that merged nothing."""
    from peft import LoraConfig, get_peft_model

    smoke.build_assets(grpotrainer.PROMPT)
    torch.manual_seed(0)
    model = get_peft_model(base_model(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    final = tmp_path_factory.mktemp("run") / "final"
    model.save_pretrained(final)
    AutoTokenizer.from_pretrained(smoke.SMOKE_DIR / "model").save_pretrained(final)
    (final.parent / "settings.yaml").write_text("model:\n  dtype: float32\n")  # so a GPU machine merges in float32 too
    return final


@pytest.fixture(scope="module")
def merged(adapter) -> tuple[Path, str]:
    """The merged folder and what --merge printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert grpotrainer.main(["--smoke", "--merge", "--adapter", str(adapter)]) == 0
    return merge.merged_dir(adapter), printed.getvalue()


def test_merged_logits_equal_the_base_with_the_adapter_attached(adapter, merged):
    from peft import PeftModel

    attached = PeftModel.from_pretrained(base_model(), adapter)
    with attached.disable_adapter():
        without = logits(attached)
    with_adapter = logits(attached)
    merged_model = AutoModelForCausalLM.from_pretrained(merged[0])
    assert merged_model.dtype == torch.float32  # a CPU run computes in float32
    assert (with_adapter - without).abs().max() > 0.1  # the adapter matters, so the next line tests a real merge
    assert torch.allclose(logits(merged_model), with_adapter, rtol=0, atol=1e-4)


def test_merged_folder_is_a_plain_model_with_tokenizer_and_chat_template(adapter, merged):
    folder = merged[0]
    names = {path.name for path in folder.iterdir()}
    assert PLAIN_MODEL_FILES <= names
    assert not any(name.startswith("adapter_") for name in names), names
    assert not any("lora" in key for key in load_file(folder / "model.safetensors"))
    assert type(AutoModelForCausalLM.from_pretrained(folder)).__name__ == "Qwen3ForCausalLM"
    chat = [{"role": "user", "content": "1+1?"}]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert template == "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert not list(adapter.parent.glob(".final-merged.partial-*"))  # the save was renamed into place


def test_merge_says_where_it_wrote_and_how_to_load_it(merged):
    folder, printed = merged
    lines = printed.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("merged model in float32") and lines[0].endswith(f": {folder}")
    assert f'AutoModelForCausalLM.from_pretrained("{folder}")' in lines[1] and f"--smoke --eval_only --model_name {folder}" in lines[1]


def test_a_merged_checkpoint_is_no_checkpoint_that_the_trainer_would_rotate_away(tmp_path):
    from transformers.trainer_utils import sort_checkpoints

    for name in ("checkpoint-40", "checkpoint-80", "final"):
        (tmp_path / name).mkdir()
        merge.merged_dir(tmp_path / name).mkdir()
    assert merge.merged_dir(tmp_path / "final") == tmp_path / "final-merged"
    assert sort_checkpoints(str(tmp_path)) == [str(tmp_path / "checkpoint-40"), str(tmp_path / "checkpoint-80")]


def test_merge_uses_the_dtype_the_run_computed_in(tmp_path):
    run_settings = tmp_path / "settings.yaml"
    run_settings.write_text("model:\n  dtype: bfloat16\n")
    adapter = tmp_path / "final"
    assert merge.merge_dtype(adapter, "float32", Source(Layer.NO_GPU)) == ("bfloat16", f"as the run computed, per {run_settings}")
    assert merge.merge_dtype(adapter, "float16", Source(Layer.COMMAND_LINE))[0] == "float16"
    assert merge.merge_dtype(tmp_path / "elsewhere" / "final", "float32", Source(Layer.NO_GPU))[0] == "float32"


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, nothing written, and no model loaded where the files alone show the mistake


def copy_of(adapter: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(adapter, tmp_path / "run" / "final"))


def missing_adapter(adapter, tmp_path):
    return ["--adapter", tmp_path / "run" / "final"]


def plain_model_as_adapter(adapter, tmp_path):
    return ["--adapter", shutil.copytree(smoke.SMOKE_DIR / "model", tmp_path / "model")]


def adapter_for_another_base_by_name(adapter, tmp_path):
    copy = copy_of(adapter, tmp_path)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "Qwen/Qwen3-8B"}))
    return ["--adapter", copy]


def merged_folder_exists(adapter, tmp_path):
    copy = copy_of(adapter, tmp_path)
    (tmp_path / "run" / "final-merged").mkdir()
    (tmp_path / "run" / "final-merged" / "notes.txt").write_text("mine")
    return ["--adapter", copy]


def no_adapter_flag(adapter, tmp_path):
    return []


def with_eval_only(adapter, tmp_path):
    return ["--adapter", adapter, "--eval_only"]


def with_resume(adapter, tmp_path):
    return ["--adapter", adapter, "--resume"]


BEFORE_LOADING = [
    (missing_adapter, "holds no adapter_config.json"),
    (plain_model_as_adapter, "holds no adapter_config.json"),
    (adapter_for_another_base_by_name, "is an adapter for another base: it was trained on 'Qwen/Qwen3-8B'"),
    (merged_folder_exists, "final-merged already exists: a merged model is never overwritten"),
    (no_adapter_flag, "--merge needs --adapter"),
    (with_eval_only, "cannot be combined with --eval_only"),
    (with_resume, "cannot be combined with --resume"),
]


def snapshot(*folders: Path) -> dict:
    return {path: path.stat().st_mtime_ns for folder in folders for path in folder.rglob("*")}


@pytest.mark.parametrize("build, message", BEFORE_LOADING, ids=[build.__name__ for build, _ in BEFORE_LOADING])
def test_bad_input_fails_before_loading_a_model(capsys, monkeypatch, tmp_path, adapter, build, message):
    argv = ["--smoke", "--merge", *build(adapter, tmp_path)]
    monkeypatch.setattr(merge, "load_base", lambda *args: pytest.fail("loaded the base model"))
    before = snapshot(tmp_path, adapter.parent)
    assert message in error_line(capsys, argv)
    assert snapshot(tmp_path, adapter.parent) == before


def test_an_adapter_whose_shapes_do_not_fit_is_refused_and_nothing_written(capsys, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    other = Qwen3Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16)  # fmt: skip
    final = tmp_path / "run" / "final"
    get_peft_model(Qwen3ForCausalLM(other), LoraConfig(target_modules="all-linear")).save_pretrained(final)
    before = snapshot(tmp_path)
    assert "is an adapter for another base: it does not fit the model: size mismatch" in error_line(
        capsys, ["--smoke", "--merge", "--adapter", final]
    )
    assert snapshot(tmp_path) == before


def test_merge_cannot_be_set_in_the_config_file(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("merge: true\n")
    assert "'merge' cannot be set in" in error_line(capsys, ["--config", config])


# --------------------------------------------------------------------------------------------------------------------
# End to end, as a user does: train, merge, evaluate the merged folder (which loads in 4-bit like any model)


def test_a_trained_run_merges_and_the_merged_model_evaluates(tmp_path):
    run = tmp_path / "run"
    trained = run_script("--smoke", "--max_steps", 2, "--eval_strategy", "no", "--eval_before_and_after", "false",
                         "--save_steps", 1000, "--output_dir", run)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]

    merged = run_script("--smoke", "--merge", "--adapter", run / "final")
    assert merged.returncode == 0, merged.stderr[-3000:]
    folder = run / "final-merged"
    dtype = yaml.safe_load((run / "settings.yaml").read_text())["model"]["dtype"]  # float32 on a CPU, bf16 on a GPU
    assert f"merged model in {dtype}, as the run computed, per {run}/settings.yaml: {folder}" in merged.stdout
    base = load_file(smoke.SMOKE_DIR / "model" / "model.safetensors")
    weights = load_file(folder / "model.safetensors")
    assert base.keys() == weights.keys()
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights[q_proj], base[q_proj].to(weights[q_proj].dtype))  # the trained update is in them

    evaluated = run_script("--smoke", "--eval_only", "--model_name", folder, "--eval_samples", 4,
                           "--output_dir", tmp_path / "eval")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "eval_summary.json").read_text())
    assert summary["model"] == str(folder) and summary["questions"] == 4
