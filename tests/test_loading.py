"""loading.py: GSM8K from a folder or one file as chat prompts with their ground truth, one-line errors for data that
cannot be used, a CPU 4-bit model whose LoRA gradients survive an evaluation, and the checkpoint --resume continues."""

import json
import shutil

import pytest
import torch
import yaml
from conftest import ENV, GSM8K, error_line, needs_gsm8k, run_script
from peft import get_peft_model
from safetensors.torch import save_file
from trl import get_peft_config

import grpotrainer
import loading
import smoke


@needs_gsm8k
def test_real_gsm8k_loads_from_a_local_folder_as_chat_prompts_with_ground_truth():
    train = loading.load_split(str(GSM8K), None, "train")
    test = loading.to_chat_prompts(loading.load_split(str(GSM8K), None, "test"), grpotrainer.PROMPT, limit=3)
    assert len(train) == 7473 and len(test) == 3
    first = test[0]
    assert first["prompt"][0]["role"] == "user" and first["question"] in first["prompt"][0]["content"]
    assert "####" in first["prompt"][0]["content"] and first["ground_truth"] == "18"


@needs_gsm8k
def test_a_single_jsonl_file_is_a_dataset_too():
    assert len(loading.load_split(str(GSM8K / "test.jsonl"), None, "train")) == 1319


def test_one_dataset_file_is_split_into_training_rows_and_held_out_test_rows(capsys, tmp_path):
    file = tmp_path / "gsm8k.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in smoke.synthetic_gsm8k_rows(40, seed=0)))
    train, test = (loading.load_split(str(file), None, split, holdout=10) for split in ("train", "test"))
    assert (len(train), len(test)) == (30, 10) and not set(train["question"]) & set(test["question"])
    message = f"dataset {file} is one file, and a run must not be evaluated on its own training questions: set --eval_holdout N"  # fmt: skip
    assert message in error_line(capsys, ["--smoke", "--dataset_name", file, "--output_dir", tmp_path / "out"])
    assert "eval_holdout is 40, but dataset" in error_line(capsys, ["--smoke", "--dataset_name", file, "--eval_holdout", 40])
    assert "eval_holdout is for a dataset that is one file" in error_line(capsys, ["--smoke", "--eval_holdout", 5])
    assert grpotrainer.read_settings(["--smoke", "--eval_only", "--dataset_name", str(file)]).script.eval_holdout == 0
    assert not (tmp_path / "out").exists()


def write_splits(folder, rows) -> None:
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize("numbers", [[72, 5, -3], [72, 7.5, 0.25]], ids=["integers", "integers and decimals"])
def test_a_gold_answer_that_is_a_json_number_is_the_answer_itself(tmp_path, numbers):
    rows = smoke.synthetic_gsm8k_rows(4, seed=0)
    for row, number in zip(rows, numbers):
        row["answer"] = number
    write_splits(tmp_path, rows)  # the last row keeps GSM8K's text: numbers and text mixed in one column
    dataset = loading.load_split(str(tmp_path), None, "train")
    expected = [str(number).removesuffix(".0") for number in numbers] + [rows[3]["answer"].rsplit("#### ", 1)[1]]
    assert dataset["ground_truth"] == expected


@pytest.mark.parametrize("answer, shown", [(None, "null, a NoneType"), ([72], "[72], a list"), (True, "true, a bool")])
def test_a_gold_answer_of_any_other_type_is_one_line_naming_its_row(capsys, tmp_path, answer, shown):
    rows = smoke.synthetic_gsm8k_rows(4, seed=0)
    rows[2]["answer"] = answer
    write_splits(tmp_path, rows)
    message = f"dataset {tmp_path} (test) row 3: the gold answer is {shown}: it must be text ending in '#### <number>' or a number"  # fmt: skip
    assert error_line(capsys, ["--smoke", "--dataset_name", tmp_path, "--eval_samples", 1, "--output_dir", tmp_path / "out"]) == f"grpotrainer.py: error: {message}"  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_gold_answers_without_a_number_are_an_error_or_dropped_and_counted(capsys, tmp_path):
    rows = smoke.synthetic_gsm8k_rows(10, seed=0)
    rows[3]["answer"] = rows[7]["answer"] = "It is #### many"
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    message = f"2 of 10 rows of dataset {tmp_path} (test) have a gold answer with no number, the first (row 4): 'It is #### many'; fix them, or set --drop_unparsable_answers true"  # fmt: skip
    assert message in error_line(capsys, ["--smoke", "--dataset_name", tmp_path, "--eval_samples", 5, "--output_dir", tmp_path / "out"])  # fmt: skip
    kept = loading.load_split(str(tmp_path), None, "train", drop_unparsable=True)
    assert len(kept) == 8 and all(kept["ground_truth"])
    assert f"dataset {tmp_path} (train): dropped 2 of 10 rows whose gold answer has no number" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_asking_for_more_questions_than_the_split_holds_is_an_error():
    rows = loading.load_split(str(smoke.write_synthetic_gsm8k(smoke.SMOKE_DIR / "gsm8k")), None, "test")
    with pytest.raises(loading.InputError, match=f"eval_samples is 1000, but the test split holds only {len(rows)}"):
        loading.to_chat_prompts(rows, grpotrainer.PROMPT, limit=1000)


def test_bad_dataset_is_one_line_and_exit_2_and_leaves_no_output_folder(capsys, tmp_path):
    no_column = tmp_path / "no_column"
    no_column.mkdir()
    (no_column / "train.jsonl").write_text('{"query": "1+1?", "answer": "#### 2"}\n')
    (no_column / "test.jsonl").write_text('{"query": "1+1?", "answer": "#### 2"}\n')
    no_test = tmp_path / "no_test"
    no_test.mkdir()
    (no_test / "train.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    broken = tmp_path / "broken"
    broken.mkdir()
    good = '{"question": "1+1?", "answer": "#### 2"}\n'
    (broken / "train.jsonl").write_text(good * 3 + '{"question": "2+2?", "answer": \n' + good * 3)
    (broken / "test.jsonl").write_text(good)
    out = tmp_path / "out"
    cases = {
        broken: f"dataset file {broken / 'train.jsonl'} line 4 is not valid JSON (Expecting value)",
        tmp_path / "missing": "does not exist",
        tmp_path / "missing.jsonl": "does not exist",
        no_column: "has no 'question' column",
        no_test: "has no test.jsonl",
    }
    for dataset, message in cases.items():
        assert message in error_line(capsys, ["--smoke", "--dataset_name", dataset, "--eval_samples", 1, "--output_dir", out])
    assert not out.exists()


def test_what_only_the_model_reveals_fails_before_its_weights_load(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "load_model", lambda *args: pytest.fail("the model's weights were loaded"))
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump(grpotrainer.read_settings(["--smoke"]).as_dict()))
    cases = {
        ("--lora_target_modules", "q_proj", "qq_proj"): f"lora_target_modules: {smoke.SMOKE_DIR / 'model'} has no module 'qq_proj' (its linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj)",
        ("--eval_only", "--adapter", tmp_path / "missing"): f"adapter folder {tmp_path / 'missing'} does not exist or holds no adapter_config.json",
        ("--resume", "--output_dir", tmp_path): f"--resume: no complete checkpoint-<step> folder in {tmp_path} to continue from",
    }  # fmt: skip
    for args, message in cases.items():
        assert message in error_line(capsys, ["--smoke", *args] if "--resume" not in args else args)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["settings.yaml"]


def test_an_unreachable_hub_is_one_line_that_says_how_to_run_offline(tmp_path):
    unreachable = {key: value for key, value in ENV.items() if key != "HF_HUB_OFFLINE"} | {"HF_ENDPOINT": "http://127.0.0.1:9"}  # fmt: skip
    cases = {
        ("--model_name", "nobody-here/no-model"): "could not load model 'nobody-here/no-model': the hub cannot be reached and it is not in the local cache; offline, name a local model folder with --model_name (HF_HUB_OFFLINE=1 uses the hub's local cache only)",
        ("--smoke", "--dataset_name", "nobody-here/no-data"): "could not load the test split of dataset 'nobody-here/no-data': the hub cannot be reached and it is not in the local cache; offline, name a local dataset folder with train.jsonl and test.jsonl with --dataset_name",
    }  # fmt: skip
    for args, message in cases.items():
        result = run_script(*args, "--output_dir", tmp_path / "out", env=unreachable)
        assert result.returncode == 2 and "Retry" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(f"grpotrainer.py: error: {message}")
    assert not (tmp_path / "out").exists()


def lora_gradients(run, evaluate_first: bool):
    torch.manual_seed(0)
    model = get_peft_model(loading.load_model(run.model, run.training), get_peft_config(run.model))
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
    smoke.build_assets(grpotrainer.PROMPT)
    run = grpotrainer.read_settings(["--smoke"])
    before = lora_gradients(run, evaluate_first=False)
    after = lora_gradients(run, evaluate_first=True)
    assert torch.allclose(before, after, atol=1e-3), (before - after).abs().max()


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints: --resume skips a newer checkpoint that was not saved completely


def checkpoint(run_dir, step: int):
    """A checkpoint folder with what Trainer._save_checkpoint writes, in its order: weights, optimizer, state."""
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"lora": torch.ones(256)}, folder / "adapter_model.safetensors")
    torch.save({"state": torch.ones(256)}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda folder: (folder / "trainer_state.json").unlink(), "which has no trainer_state.json: its save was cut short"),
        (lambda folder: truncate(folder / "trainer_state.json"), "whose trainer_state.json is truncated"),
        (lambda folder: truncate(folder / "adapter_model.safetensors"), "whose adapter_model.safetensors is truncated"),
        (lambda folder: truncate(folder / "optimizer.pt"), "whose optimizer.pt is truncated"),
    ],
)
def test_resume_continues_from_the_newest_complete_checkpoint_and_names_what_it_skips(tmp_path, damage, why):
    complete = checkpoint(tmp_path, 10)
    assert loading.resume_checkpoint(str(tmp_path)) == (str(complete), [])
    damaged = checkpoint(tmp_path, 20)
    damage(damaged)
    assert loading.resume_checkpoint(str(tmp_path)) == (str(complete), [f"--resume: skipping {damaged}, {why}"])
    shutil.rmtree(complete)
    with pytest.raises(loading.InputError, match=f"no complete checkpoint-<step> folder in {tmp_path} to continue from; the newest, {damaged}, {why}"):  # fmt: skip
        loading.resume_checkpoint(str(tmp_path))


def test_resume_auto_starts_only_in_an_empty_folder_or_an_attempt_of_a_run(tmp_path):
    loading.check_auto_start(tmp_path / "missing")
    loading.check_auto_start(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(loading.InputError, match="holds files but no run of this script"):
        loading.check_auto_start(tmp_path)
    (tmp_path / "settings.yaml").write_text("")
    loading.check_auto_start(tmp_path)  # an attempt cut short before its first checkpoint
    (tmp_path / "final").mkdir()
    with pytest.raises(loading.InputError, match="holds a finished run"):
        loading.check_auto_start(tmp_path)


def test_a_run_is_finished_when_its_newest_checkpoint_reached_its_length_and_final_is_saved(tmp_path):
    run = grpotrainer.read_settings(["--smoke", "--max_steps", "10", "--output_dir", str(tmp_path)])
    checkpoint(tmp_path, 10)
    assert loading.finished_line(run.training) is None  # no final adapter yet: the save after training is missing
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "adapter_config.json").write_text("{}")
    assert loading.finished_line(run.training).startswith(f"--resume: {tmp_path} is finished: {tmp_path / 'checkpoint-10'} reached max_steps 10")  # fmt: skip
    run.training.max_steps = 20  # --resume --max_steps 20 trains on
    assert loading.finished_line(run.training) is None
