"""The offline smoke assets: a tiny Qwen3 that loads, chats and generates like the real one, and GSM8K-shaped data."""

import json
import operator
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, LogitsProcessor

import grpotrainer
import rewards
import smoke

CHAT = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does Tom have?"}]
CALCULATOR_NOTE = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>")
OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


@pytest.fixture(scope="module")
def model_dir(smoke_assets):
    return smoke_assets / "model"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return smoke.write_synthetic_gsm8k(tmp_path_factory.mktemp("smoke") / "gsm8k")


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


@pytest.fixture(scope="module")
def model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def folder_bytes(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def chat_prompt(tokenizer, **template_kwargs):
    return tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True, **template_kwargs)


def encode(tokenizer, texts):
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


class EndRowAfter(LogitsProcessor):
    """Forces the end-of-turn token in one row once it has `steps` new tokens, so we can see the padding after it."""

    def __init__(self, row, prompt_length, steps, eos_token_id):
        self.row, self.stop_at, self.eos_token_id = row, prompt_length + steps, eos_token_id

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.stop_at:
            scores[self.row] = -float("inf")
            scores[self.row, self.eos_token_id] = 0.0
        return scores


# --- model and tokenizer ---------------------------------------------------------------------


def test_model_is_a_tiny_qwen3_whose_ids_match_the_tokenizer(model, tokenizer):
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert model.config.vocab_size == len(tokenizer) <= 1024
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.config.bos_token_id == tokenizer.bos_token_id


def test_tokenizer_round_trips_gsm8k_text_and_keeps_chat_markers_whole(tokenizer):
    text = "Mia buys 3 * 1,200 = <<3*1200=3600>>3,600 pens.\n#### 3600"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert "####" in tokenizer.tokenize(text)
    for marker in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"]:
        assert len(tokenizer.encode(marker, add_special_tokens=False)) == 1


def test_chat_template_renders_chatml_with_the_generation_prompt(tokenizer):
    prompt = chat_prompt(tokenizer)
    assert prompt == f"<|im_start|>user\n{CHAT[0]['content']}<|im_end|>\n<|im_start|>assistant\n"
    without_generation_prompt = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert prompt.startswith(without_generation_prompt) and not without_generation_prompt.endswith("assistant\n")


def test_chat_template_with_thinking_disabled_prefills_an_empty_think_block(tokenizer):
    assert chat_prompt(tokenizer, enable_thinking=False) == chat_prompt(tokenizer) + "<think>\n\n</think>\n\n"
    assert chat_prompt(tokenizer, enable_thinking=True) == chat_prompt(tokenizer)


def test_generate_stops_at_the_end_of_turn_and_pads_with_the_pad_token(model, tokenizer):
    short = chat_prompt(tokenizer, enable_thinking=False)
    batch = encode(tokenizer, [short, short.replace("3 apples", "13 red apples")])
    prompt_length = batch["input_ids"].shape[1]
    stop_first_row = EndRowAfter(0, prompt_length, steps=2, eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False, logits_processor=[stop_first_row])
    first, second = out[:, prompt_length:].tolist()
    assert first[2:] == [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (len(first) - 3)
    assert len(second) == 6 and tokenizer.pad_token_id not in second


def test_model_loads_in_4bit_nf4_on_the_cpu_and_generates(model_dir, tokenizer):
    from bitsandbytes.nn import Linear4bit

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quantization, device_map="cpu", local_files_only=True
    )
    assert any(isinstance(module, Linear4bit) for module in model.modules())
    batch = encode(tokenizer, [chat_prompt(tokenizer, enable_thinking=False)])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=True)
    assert out.shape == (1, batch["input_ids"].shape[1] + 4)


# --- synthetic GSM8K -------------------------------------------------------------------------


def test_data_has_gsm8k_schema_and_the_requested_sizes(tmp_path):
    folder = smoke.write_synthetic_gsm8k(tmp_path, n_train=40, n_test=10, seed=3)
    train, test = read_jsonl(folder / "train.jsonl"), read_jsonl(folder / "test.jsonl")
    assert (len(train), len(test)) == (40, 10)
    assert all(set(row) == {"question", "answer"} and row["question"].endswith("?") for row in train + test)
    assert train != test


def test_every_answer_ends_with_an_integer_and_its_calculator_notes_are_true(data_dir):
    rows = read_jsonl(data_dir / "train.jsonl") + read_jsonl(data_dir / "test.jsonl")
    notes = 0
    for row in rows:
        *steps, final_line = row["answer"].split("\n")
        final = re.fullmatch(r"#### (\d+)", final_line)
        assert final, row["answer"]
        for a, op, b, result in CALCULATOR_NOTE.findall(row["answer"]):
            assert OPERATIONS[op](int(a), int(b)) == int(result), row["answer"]
            notes += 1
        last_note_result = CALCULATOR_NOTE.findall(steps[-1])[-1][3]
        assert last_note_result == final.group(1)
    assert notes >= len(rows)
    assert {op for row in rows for _, op, _, _ in CALCULATOR_NOTE.findall(row["answer"])} == set(OPERATIONS)
    assert any("," in row["answer"] for row in rows)  # large amounts are written like GSM8K's "1,200"


# --- determinism and reuse -------------------------------------------------------------------


def test_builds_are_deterministic(tmp_path, model_dir, data_dir):
    assert folder_bytes(smoke.build_tiny_model(tmp_path / "model", grpotrainer.PROMPT)) == folder_bytes(model_dir)
    assert folder_bytes(smoke.write_synthetic_gsm8k(tmp_path / "gsm8k")) == folder_bytes(data_dir)
    other_seed = smoke.write_synthetic_gsm8k(tmp_path / "other", seed=1)
    assert (other_seed / "train.jsonl").read_text() != (data_dir / "train.jsonl").read_text()


def test_a_second_call_reuses_a_complete_build(tmp_path, monkeypatch, model_dir):
    data_dir = smoke.write_synthetic_gsm8k(tmp_path / "gsm8k")

    def must_not_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a complete build")

    monkeypatch.setattr(smoke, "build_tokenizer", must_not_rebuild)
    monkeypatch.setattr(smoke, "warm_up", must_not_rebuild)
    monkeypatch.setattr(smoke, "synthetic_gsm8k_rows", must_not_rebuild)
    assert smoke.build_tiny_model(model_dir, grpotrainer.PROMPT) == model_dir
    assert smoke.write_synthetic_gsm8k(tmp_path / "gsm8k") == data_dir


def test_a_new_prompt_is_a_new_build(tmp_path, monkeypatch, capsys):
    """The warm-up asks its questions with the script's prompt, so a model warmed up on another prompt is stale."""
    warmed_on = []
    monkeypatch.setattr(smoke, "warm_up", lambda model, tokenizer, prompt: warmed_on.append(prompt))  # no training
    for prompt in ["Solve: {question}", "Solve: {question}", "Answer this: {question}"]:
        smoke.build_tiny_model(tmp_path / "model", prompt)
    assert warmed_on == ["Solve: {question}", "Answer this: {question}"]
    building = f"--smoke: building the tiny model in {tmp_path / 'model'}: "
    assert capsys.readouterr().out.count(building) == 2  # the console says why the first run waits


def test_an_interrupted_or_different_build_is_redone(tmp_path):
    data_dir = smoke.write_synthetic_gsm8k(tmp_path, n_train=8, n_test=2)
    (data_dir / "test.jsonl").unlink()
    (data_dir / smoke.BUILD_MARKER).unlink()  # as if killed before the build finished
    smoke.write_synthetic_gsm8k(tmp_path, n_train=8, n_test=2)
    assert len(read_jsonl(data_dir / "test.jsonl")) == 2
    smoke.write_synthetic_gsm8k(tmp_path, n_train=12, n_test=2)
    assert len(read_jsonl(data_dir / "train.jsonl")) == 12


# --- the warm-up ------------------------------------------------------------------------------


def test_warm_up_chats_are_asked_as_grpo_asks_and_end_in_each_form(tokenizer):
    chats = smoke.warm_up_chats(tokenizer, grpotrainer.PROMPT)
    assert len(chats) == smoke.WARM_UP["rows"]
    first = chats[0]["prompt"]
    assert first.startswith("<|im_start|>user\n" + grpotrainer.PROMPT.split("{question}")[0])
    assert first.endswith("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking off, as GRPO's
    solutions = chats["completion"]
    assert not any("<<" in text for text in solutions)  # no calculator notes: short enough to finish
    shares = {
        name: sum(reward(solutions)) / len(solutions)
        for name, reward in [("format", rewards.format_reward), ("stated", rewards.answer_present_reward)]
    }
    endings = smoke.WARM_UP["endings"]
    assert shares["format"] == pytest.approx(endings["hash_line"], abs=0.05)
    assert shares["stated"] == pytest.approx(endings["hash_line"] + endings["phrase"], abs=0.05)
    false_only = sum(score == 0.0 for score in rewards.reasoning_reward(solutions)) / len(solutions)
    assert 0.0 < false_only <= smoke.WARM_UP["wrong_share"] + 0.02  # a one-step solution with a wrong result


def test_the_warm_model_writes_solutions_whose_form_rewards_differ_within_a_group(model, tokenizer, data_dir):
    """What GRPO needs to learn: eight samples of one question, at the preset's temperature and length limit, that
    the rewards score differently. A random model earns none of them; this one finishes most of its answers."""
    questions = [row["question"] for row in read_jsonl(data_dir / "test.jsonl")[:8]]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": grpotrainer.PROMPT.format(question=q)}],
                                      tokenize=False, add_generation_prompt=True, enable_thinking=False)
        for q in questions
    ]  # fmt: skip
    batch = encode(tokenizer, prompts)
    preset = smoke.preset()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=preset["temperature"], num_return_sequences=8,
                             max_new_tokens=preset["max_completion_length"])  # fmt: skip
    ids = out[:, batch["input_ids"].shape[1] :].tolist()
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    cut = sum(row[-1] not in stops for row in ids) / len(ids)
    assert cut < 0.2, cut
    for reward in (rewards.format_reward, rewards.answer_present_reward):
        scores = reward(texts, completion_ids=ids, stop_token_ids=frozenset(stops))
        groups = [set(scores[i : i + 8]) for i in range(0, len(scores), 8)]
        assert sum(group == {0.0, 1.0} for group in groups) >= 4, (reward.__name__, groups)
