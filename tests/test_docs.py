"""The documents a user reads: every relative link leads to a file of the repository (and a #section to a heading
there), the README stays a short manual that links every reference page, and each of its command blocks is safe to
paste whole."""

import re
from pathlib import Path

import pytest

from conftest import REPO

DOCUMENTS = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 260
CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
URL = re.compile(r"^[a-z][a-z0-9+.-]*:")  # http:, https:, mailto: ... lead outside the repository


def relative_links(text: str) -> list[str]:
    """Link targets in the prose: code blocks and inline code show text, not links."""
    prose = INLINE_CODE.sub("", CODE_BLOCK.sub("", text))
    return [target for target in LINK.findall(prose) if not URL.match(target)]


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", CODE_BLOCK.sub("", document.read_text()), re.M)
    return {heading_anchor(heading) for heading in headings}


def broken_links(document: Path, root: Path) -> list[str]:
    """The relative links of `document` that lead to no file under `root`, or to a section its page lacks."""
    broken = []
    for target in relative_links(document.read_text()):
        file, _, section = target.partition("#")
        path = (document.parent / file).resolve() if file else document
        if not path.is_relative_to(root) or not path.exists():
            broken.append(target)
        elif section and (path.suffix != ".md" or section not in anchors(path)):
            broken.append(target)
    return broken


def command_blocks(text: str) -> list[str]:
    return [block for block in CODE_BLOCK.findall(text) if block.startswith("```bash")]


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(path.relative_to(REPO)) for path in DOCUMENTS])
def test_every_relative_link_leads_to_a_file_of_the_repository(document):
    assert broken_links(document, REPO) == []


def test_the_link_check_finds_a_missing_file_a_missing_section_and_a_link_out_of_the_repository(tmp_path):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "page.md").write_text("# A page\n\n## What `--smoke` does\n")
    (repo / "config.yaml").write_text("seed: 42\n")
    (tmp_path / "elsewhere.md").write_text("# outside the repository\n")
    readme = repo / "README.md"
    readme.write_text(
        "# Title\n\n## Install\n\n"
        "[ok](docs/page.md) [ok](docs/page.md#what---smoke-does) [ok](#install) [ok](config.yaml) "
        "[web](https://example.com/x.md) `[code](not/a/link.md)`\n"
        "[gone](docs/gone.md) [no section](docs/page.md#nowhere) [outside](../elsewhere.md) [here](#settings)\n"
        "```bash\n[in a code block](not/a/link.md)\n```\n"
    )
    assert broken_links(readme, repo) == ["docs/gone.md", "docs/page.md#nowhere", "../elsewhere.md", "#settings"]


def test_the_readme_is_a_short_manual_that_links_every_reference_page():
    readme = REPO / "README.md"
    assert len(readme.read_text().splitlines()) <= README_MAX_LINES
    linked = {target.partition("#")[0] for target in relative_links(readme.read_text())}
    pages = {f"docs/{page.name}" for page in (REPO / "docs").glob("*.md")}
    assert pages and pages <= linked, pages - linked
    assert "CONTRIBUTING.md" in linked


def test_every_readme_command_block_runs_at_most_one_install_of_torch_and_one_run():
    """Pasted whole, a block must not install two torch builds, or start a second run after the first."""
    blocks = command_blocks((REPO / "README.md").read_text())
    assert blocks
    for block in blocks:
        assert block.count("pip install torch") <= 1, block
        assert len(re.findall(r"\bgrpotrainer\.py\b", block)) <= 1, block
