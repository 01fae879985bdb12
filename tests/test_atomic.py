"""atomic.py: a file is replaced whole, or left as it was."""

import os

import pytest

from atomic import write_atomically


def test_a_file_is_written_and_replaced_whole(tmp_path):
    path = tmp_path / "settings.yaml"
    write_atomically(path, "first\n")
    write_atomically(path, "second\n")
    assert path.read_text() == "second\n" and [p.name for p in tmp_path.iterdir()] == ["settings.yaml"]


def test_a_write_that_fails_before_the_rename_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "eval_summary.json"
    write_atomically(path, "old")

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomically(path, "new")
    assert path.read_text() == "old"
