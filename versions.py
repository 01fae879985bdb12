"""The package versions this script was tested with (requirements.txt's pins), the installed ones, and the
combinations known to break. Standard library only: it runs before torch, transformers or TRL is imported."""

import importlib.metadata
import re
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
PACKAGES = ("torch", "trl", "transformers", "peft", "bitsandbytes", "accelerate", "datasets")
# Older than these, the script cannot run: GSM8KGRPOTrainer overrides TRL 1.16's private GRPOTrainer members
# (_calculate_rewards, _log_completion_extra), and settings.py uses transformers 5's config fields.
BREAKS_BELOW = {"trl": "1.16.0", "transformers": "5.0.0"}


def release(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0): the numeric release, without a local or pre-release tag."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def requirements(text: str) -> dict[str, tuple[str, str]]:
    """name -> (operator, version) for each 'name==x' or 'name>=x' line."""
    found = (re.match(r"([A-Za-z0-9_.-]+)\s*(==|>=)\s*([\w.]+)", line.strip()) for line in text.splitlines())
    return {match[1].lower(): (match[2], match[3]) for match in found if match}


def installed(packages=PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def mismatch_lines(found: dict[str, str | None], tested: dict[str, tuple[str, str]]) -> list[str]:
    """One line per package whose installed version is not the tested one, with the pin that fixes it."""
    lines = []
    for name, version in found.items():
        if name not in tested or version is None:
            continue
        operator, wanted = tested[name]
        ok = release(version) == release(wanted) if operator == "==" else release(version) >= release(wanted)
        if not ok:
            lines.append(f"warning: {name} {version} is installed, tested with {name}{operator}{wanted}: pip install '{name}{operator}{wanted}'")  # fmt: skip
    return lines


def known_bad(found: dict[str, str | None]) -> str | None:
    for name, least in BREAKS_BELOW.items():
        if found.get(name) is None or release(found[name]) < release(least):
            return f"{name} {found.get(name) or 'is not installed'}: this script needs {name}>={least} (tested: see requirements.txt); pip install -r requirements.txt"  # fmt: skip
    return None


def table(found: dict[str, str | None], tested: dict[str, tuple[str, str]]) -> str:
    """As `trl env` lists them: one '- name: installed (tested)' line per package."""
    return "\n".join(
        f"- {name}: {version or 'not installed'} (tested: {''.join(tested.get(name, ('', '-')))})"
        for name, version in found.items()
    )


def tested() -> dict[str, tuple[str, str]]:
    return requirements(REQUIREMENTS.read_text()) if REQUIREMENTS.is_file() else {}
