"""--help and --help_all (usage.py), as a user calls them."""

import subprocess
import sys

import pytest
from conftest import ENV, REPO

import grpotrainer


def test_help_lists_the_settings_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_:
        grpotrainer.read_settings(["--help"])
    printed = capsys.readouterr().out
    assert exit_.value.code == 0 and "--kl_coef" in printed and "--learning_rate" in printed and "--merge" in printed


def test_help_shows_the_scripts_settings_first_and_help_all_every_field(capsys):
    with pytest.raises(SystemExit):
        grpotrainer.read_settings(["--help"])
    short = capsys.readouterr().out
    options = [line.split()[0] for line in short.splitlines() if line.startswith("  --")]
    assert options[:3] == ["--model_name", "--dataset_name", "--dataset_config"]
    assert "a hub id or a local folder (default: Qwen/Qwen3-8B)" in " ".join(short.split())
    assert "--learning_rate" in options and "--vllm_mode" not in options and "--help_all" in short
    with pytest.raises(SystemExit) as exit_:
        grpotrainer.read_settings(["--help_all"])
    assert exit_.value.code == 0 and "--vllm_mode" in capsys.readouterr().out


def test_help_read_only_in_part_ends_quietly():
    """`python grpotrainer.py --help | head` closes the pipe early: no traceback, exit code 0."""
    with subprocess.Popen(
        [sys.executable, str(REPO / "grpotrainer.py"), "--help"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, bufsize=1,
    ) as process:  # fmt: skip
        assert process.stdout.readline().startswith("usage: python grpotrainer.py")
        process.stdout.close()
        assert process.wait(timeout=600) == 0
        assert process.stderr.read() == ""
