"""benchmarks/step_time.py: a short run on the smoke model prints a well-formed table and writes matching JSON."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ENV, REPO
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(REPO / "benchmarks"))
import step_time as benchmark  # noqa: E402

COLUMNS = ["variant", "median step s", "generation %", "log-prob %", "update %", "gen tok/s", "ms/decode step", "x bound", "compiles after warm-up", "peak GPU GiB", "peak host GiB", "status"]  # fmt: skip


def step_time(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "step_time.py"), *args],
        cwd=REPO, env=ENV | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip


def cells(line: str) -> list[str]:
    assert line.startswith("|") and line.endswith("|"), line
    return [cell.strip() for cell in line[1:-1].split("|")]


def test_short_smoke_run_prints_a_markdown_table_and_matching_json(tmp_path):
    result = step_time("--steps", "2", "--variants", "default", "--json", tmp_path / "result.json")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Machine: ") and "torch" in lines[0] and "trl" in lines[0]
    table = [line for line in lines if line.startswith("|")]
    assert cells(table[0]) == COLUMNS
    assert all(set(cell) == {"-"} for cell in cells(table[1]))
    rows = {cells(line)[0]: dict(zip(COLUMNS, cells(line))) for line in table[2:]}
    assert list(rows) == ["default"] and rows["default"]["status"] == "ok"
    median = float(rows["default"]["median step s"])
    assert math.isfinite(median) and median > 0
    shares = [float(rows["default"][column]) for column in ("generation %", "log-prob %", "update %")]
    assert all(share >= 0 for share in shares) and sum(shares) == pytest.approx(100, abs=0.2)

    report = json.loads((tmp_path / "result.json").read_text())
    measured = report["variants"]["default"]
    assert round(measured["median_step_s"], 2) == median
    assert len(measured["steps"]) == 2 and measured["generated_tokens_per_s"] > 0
    assert float(rows["default"]["ms/decode step"]) > 0 and rows["default"]["compiles after warm-up"] == "0"
    assert round(measured["ms_per_decoding_step"], 1) == float(rows["default"]["ms/decode step"])
    assert measured["settings"]["training"]["max_steps"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a real-size model is refused only without CUDA")
def test_a_real_size_without_cuda_is_one_line_and_exit_2():
    result = step_time("--model-size", "8b")
    assert result.returncode == 2 and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("step_time.py: error: ")]
    assert errors == [result.stderr.strip().splitlines()[-1]] and "Traceback" not in result.stderr
    assert "needs a CUDA GPU" in errors[0]


def test_the_bandwidth_bound_reads_the_weights_once_and_the_kv_cache_so_far_per_step(monkeypatch):
    config = Qwen3Config(**benchmark.QWEN3_SHAPES["0.6b"], vocab_size=151936, head_dim=128, num_key_value_heads=8)
    assert benchmark.kv_bytes_per_token(config, torch.bfloat16) == 2 * 28 * 8 * 128 * 2  # K and V, 28 layers, bf16
    tiny = Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=1000, tie_word_embeddings=False)  # fmt: skip
    model = Qwen3ForCausalLM(tiny)
    embedding_bytes = 1000 * 64 * 4
    weights = sum(p.numel() * 4 for p in model.parameters()) - embedding_bytes  # an untied input table is not read
    assert benchmark.weight_bytes_read_per_token(model) == weights
    monkeypatch.setattr(benchmark, "gpu_bandwidth", lambda: ("test GPU: 1e-6 TB/s", 1e-6))  # 1 MB/s
    measured = [{"decoding_steps": 10, "generation_s": 4.0, "cached_token_reads": 100.0}] * 2
    figures = benchmark.decoding_figures(measured, model, torch.float32)
    bound_s = (20 * weights + 200 * benchmark.kv_bytes_per_token(tiny, torch.float32)) / 1e6
    assert figures["ms_per_decoding_step"] == pytest.approx(400)
    assert figures["times_bound"] == pytest.approx(8 / bound_s)
    assert figures["bandwidth"] == "test GPU: 1e-6 TB/s"
