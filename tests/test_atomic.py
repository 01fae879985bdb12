"""atomic.py: a file or folder is replaced whole, or left as it was."""

import os

import pytest

from atomic import replace_folder, write_atomically


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


def test_a_folder_is_replaced_whole_and_a_crash_before_the_swap_leaves_the_old_one(tmp_path, monkeypatch):
    best, new = tmp_path / "best", tmp_path / ".best.saving"
    best.mkdir()
    (best / "adapter_model.safetensors").write_text("step 2")
    (best / "only-in-old").write_text("")
    new.mkdir()
    (new / "adapter_model.safetensors").write_text("step 4")
    replace_folder(new, best)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"] and [p.name for p in best.iterdir()] == ["adapter_model.safetensors"]  # fmt: skip
    assert (best / "adapter_model.safetensors").read_text() == "step 4"

    new.mkdir()  # a crash between the two renames: the old folder is set aside, the new one not yet in place
    rename = type(new).rename

    def crash_on_the_new_one(self, target):
        if self == new:
            raise OSError("disk gone")
        return rename(self, target)

    monkeypatch.setattr(type(new), "rename", crash_on_the_new_one)
    with pytest.raises(OSError):
        replace_folder(new, best)
    kept = [p for p in tmp_path.iterdir() if (p / "adapter_model.safetensors").is_file()]
    assert [(p / "adapter_model.safetensors").read_text() for p in kept] == ["step 4"]  # the old one, whole
