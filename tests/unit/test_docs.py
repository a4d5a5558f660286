"""The README stays an operator's page: short, its links and the docs' links resolve, and nothing in the
repository tells the story of its own development (a figure is stated once, with the command behind it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_MAX_CHARS = 15_000

# [text](target) and [text]: target; images too. Targets with a scheme, mail or only an anchor are not files.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
NOT_A_FILE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.IGNORECASE)
CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)
# A path of this repository named in a code span: `responder/ops/doctor.py`, `tests/lab/test_lab.py::test_x`.
REPO_PATH = re.compile(r"`((?:responder|tests|runbooks|docs)/[\w./-]*)(?:::\w+)?`")

# Phrases that date a text by the work that produced it rather than describe the product.
HISTORY = re.compile(
    r"\bsessions? \d+\b"
    r"|\bearlier this (?:session|round|run)\b"
    r"|\b(?:previous|last|earlier) sessions?\b"
    r"|\brounds? of development\b",
    re.IGNORECASE)


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def text_files() -> list[Path]:
    """What ships or runs: the docs, the package, the tests, the runbooks, the set-up scripts."""
    files = markdown_files()
    for folder, pattern in (("responder", "*.py"), ("tests", "*.py"), ("runbooks", "*"), ("responder", "*.sh")):
        files += [p for p in sorted((ROOT / folder).rglob(pattern)) if p.is_file()]
    files += [ROOT / "dev", ROOT / ".ci" / "run", ROOT / "pyproject.toml"]
    return [p for p in files if p.exists() and p != Path(__file__).resolve()]


def relative_links(markdown: str) -> list[str]:
    prose = CODE_BLOCK.sub("", markdown)
    targets = [m.group(1) or m.group(2) for m in LINK.finditer(prose)]
    return [t for t in targets if not NOT_A_FILE.match(t)]


def test_readme_fits_the_operator():
    size = len(README.read_text(encoding="utf-8"))
    assert size <= README_MAX_CHARS, (f"README.md is {size:,} characters (limit {README_MAX_CHARS:,}): move lab, "
                                      "benchmark and design material to docs/")


def test_the_docs_exist():
    assert {p.name for p in (ROOT / "docs").glob("*.md")} >= {"lab.md", "design.md", "benchmarks.md"}


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(doc: Path):
    links = relative_links(doc.read_text(encoding="utf-8"))
    broken = [t for t in links if not (doc.parent / t.split("#", 1)[0]).exists()]
    assert not broken, f"{doc.relative_to(ROOT)} links to paths that do not exist: {broken}"
    anchors = [t for t in links if "#" in t and t.split("#", 1)[0].endswith(".md")]
    unknown = [t for t in anchors if t.split("#", 1)[1] not in heading_anchors(doc.parent / t.split("#", 1)[0])]
    assert not unknown, f"{doc.relative_to(ROOT)} links to headings that do not exist: {unknown}"


def heading_anchors(markdown_file: Path) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", CODE_BLOCK.sub("", markdown_file.read_text(encoding="utf-8")),
                          re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_named_exist(doc: Path):
    named = REPO_PATH.findall(doc.read_text(encoding="utf-8"))
    missing = sorted({p for p in named if not (ROOT / p).exists()})
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_readme_links_to_the_docs():
    links = {Path(t.split("#", 1)[0]).as_posix() for t in relative_links(README.read_text(encoding="utf-8"))}
    assert {"docs/lab.md", "docs/design.md", "docs/benchmarks.md"} <= links


def test_no_development_history():
    found = []
    for path in text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if HISTORY.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "development history (state the product as it is):\n" + "\n".join(found)


def test_the_checks_catch_what_they_look_for():
    assert relative_links("[a](docs/x.md) [b](https://x.io) [c](#top) ![d](img.png)\n[e]: ../f.md\n"
                          "```\n[g](not-a-link.md)\n```") == ["docs/x.md", "img.png", "../f.md"]
    assert REPO_PATH.findall("`responder/ops/doctor.py` and `tests/lab/test_lab.py::test_x`, not `responder doctor`") == [
        "responder/ops/doctor.py", "tests/lab/test_lab.py"]
    assert "containment-of-1000-namespaces" in heading_anchors(ROOT / "docs" / "benchmarks.md")
    word = "session"  # built here, so this file itself holds no such phrase
    assert HISTORY.search(f"measured in {word} 8") and HISTORY.search(f"{word.title()}s 4 to 8")
    assert HISTORY.search(f"the same command earlier this {word}")
    assert not HISTORY.search("what this session watches") and not HISTORY.search("a test session holds the lock")


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_table_cells_hold_no_bare_pipe(doc: Path):
    """A `|` in a table row splits the cell, inside a code span too (GitHub renders `a|b` as two cells)."""
    rows = [line for line in CODE_BLOCK.sub("", doc.read_text(encoding="utf-8")).splitlines() if line.startswith("|")]
    split = [span for row in rows for span in re.findall(r"`[^`]*`", row) if re.search(r"(?<!\\)\|", span)]
    assert not split, f"{doc.relative_to(ROOT)}: pipes inside table cells: {split}"
