"""Files and folders written whole or not at all: a crash or Ctrl-C mid-write leaves the previous version (or none),
never half."""

import os
import shutil
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, flush it to disk, then rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_folder(new: Path, old: Path) -> None:
    """`new` takes `old`'s place by renames: a crash leaves one of the two whole, never a folder of mixed files."""
    retired = old.with_name(f".{old.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if old.exists():
        old.rename(retired)
    new.rename(old)
    shutil.rmtree(retired, ignore_errors=True)
