"""benchmarks/step_time.py: a short run on the smoke model prints a well-formed table and writes matching JSON."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ENV, REPO

COLUMNS = ["variant", "median step s", "generation %", "log-prob %", "update %", "gen tok/s", "peak GPU GiB", "peak host GiB", "status"]  # fmt: skip


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
    assert measured["settings"]["training"]["max_steps"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a real-size model is refused only without CUDA")
def test_a_real_size_without_cuda_is_one_line_and_exit_2():
    result = step_time("--model-size", "8b")
    assert result.returncode == 2 and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("step_time.py: error: ")]
    assert errors == [result.stderr.strip().splitlines()[-1]] and "Traceback" not in result.stderr
    assert "needs a CUDA GPU" in errors[0]
