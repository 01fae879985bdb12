"""versions.py: the tested set from requirements.txt, one line per mismatch with its fix, and a known-bad set refused
in one line before anything loads."""

import subprocess
import sys

import yaml
from conftest import ENV, REPO

import grpotrainer
import settings
import versions


def test_a_mismatch_is_one_line_naming_installed_tested_and_the_fixing_pin():
    tested = versions.tested()
    assert tested["trl"] == ("==", "1.16.0") and tested["torch"][0] == ">="
    assert versions.mismatch_lines(versions.installed(), tested) == []  # this environment is the tested one
    found = {"trl": "1.16.0", "peft": "0.20.0", "torch": "2.5.1+cu121", "transformers": "5.23.0"}
    assert versions.mismatch_lines(found, tested) == [
        "warning: peft 0.20.0 is installed, tested with peft==0.21.2: pip install 'peft==0.21.2'",
        f"warning: torch 2.5.1+cu121 is installed, tested with torch>={tested['torch'][1]}: pip install 'torch>={tested['torch'][1]}'",
    ]  # fmt: skip


FAKED_TRL = """
import importlib.metadata, runpy, sys
real = importlib.metadata.version
importlib.metadata.version = lambda name: "1.15.0" if name == "trl" else real(name)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_known_bad_version_is_one_line_and_exit_2_before_anything_loads(tmp_path):
    result = subprocess.run([sys.executable, "-c", FAKED_TRL, str(REPO / "grpotrainer.py"), "--smoke", "--output_dir",
                             str(tmp_path / "run")], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "grpotrainer.py: error: trl 1.15.0: this script needs trl>=1.16.0 (tested: see requirements.txt); pip install -r requirements.txt"  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_version_prints_the_table_and_settings_yaml_keeps_the_versions(capsys, tmp_path):
    assert grpotrainer.main(["--version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "- trl: 1.16.0 (tested: ==1.16.0)" and len(lines) == len(versions.PACKAGES)
    run = grpotrainer.read_settings(["--smoke", "--output_dir", str(tmp_path)])
    settings.report_settings(run, grpotrainer.CONSTANTS)
    assert yaml.safe_load((tmp_path / "settings.yaml").read_text())["versions"]["trl"] == "1.16.0"
