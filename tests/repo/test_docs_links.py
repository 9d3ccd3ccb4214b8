"""The documentation stays inside the repository.

* Every relative Markdown link in the README files, ``docs/`` and ``examples/`` points to a
  file or folder that exists in the repository (fragments such as ``#section`` are ignored;
  ``http(s)://`` and ``mailto:`` links are not checked).
* No file of the repository refers to design documents or requirement ids that a reader of
  the repository cannot open: the contracts live in ``docs/design/`` (see its README.md).
  This file is exempt: it has to name what it looks for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THIS_FILE = Path(__file__).resolve()

SKIPPED_DIRS = frozenset(
    {
        ".venv",
        ".git",
        "target",
        "__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        "node_modules",
    }
)
"""Directories never searched: virtual environments, VCS data, build output and caches."""

SEARCHED_SUFFIXES = frozenset({".py", ".md", ".rhai", ".toml", ".pyi"})

OUTSIDE_REFERENCE = re.compile(
    r"\b(?:SYSTEM|RHAI_RUNTIME|RHAI_BINDING_NOTES|HOUSE_STYLE|HA_NOTES)\.md\b"
    r"|\bORCH-CORE-\d+"
)
"""Design documents kept outside the repository, and the seed specification's requirement
ids: a reader of the repository can open neither."""

# [text](target) and [text](target "title"); images ![alt](target) match too.
INLINE_LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target
REFERENCE_DEFINITION = re.compile(
    r"^[ \t]{0,3}\[[^\]\n]+\]:[ \t]*<?(\S+?)>?(?:[ \t]+.*)?$", re.MULTILINE
)
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")


def _walk(root: Path) -> Iterator[Path]:
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            if entry.name not in SKIPPED_DIRS and not entry.name.endswith(".egg-info"):
                yield from _walk(entry)
        elif entry.is_file():
            yield entry


def _markdown_files() -> list[Path]:
    files = [ROOT / "README.md"]
    files += [p for p in _walk(ROOT / "docs") if p.suffix == ".md"]
    files += [p for p in _walk(ROOT / "examples") if p.suffix == ".md"]
    for part in ("core", "pool", "cli"):
        files += sorted((ROOT / part).glob("README*"))
    return [p for p in files if p.is_file()]


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (links there are code)."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else CODE_SPAN.sub("", line))
    return "\n".join(lines)


def _links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of every link in the prose of ``text``."""
    prose = _prose(text)
    for pattern in (INLINE_LINK, REFERENCE_DEFINITION):
        for match in pattern.finditer(prose):
            yield prose.count("\n", 0, match.start()) + 1, match.group(1)


def _is_external(target: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target)) or target.startswith("//")


def test_the_scan_finds_the_documentation() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _markdown_files()}
    assert {"README.md", "docs/concepts.md", "docs/design/README.md"} <= names


def test_relative_markdown_links_point_into_the_repository() -> None:
    broken: list[str] = []
    for doc in _markdown_files():
        for line, target in _links(doc.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0].split("?", 1)[0]
            if not path or _is_external(target):
                continue
            resolved = (ROOT / path.lstrip("/")) if path.startswith("/") else doc.parent / path
            if not resolved.exists():
                broken.append(f"{doc.relative_to(ROOT)}:{line}: {target}")
    assert not broken, "links to paths that do not exist:\n" + "\n".join(broken)


def test_no_references_to_documents_outside_the_repository() -> None:
    found: list[str] = []
    for path in _walk(ROOT):
        if path.suffix not in SEARCHED_SUFFIXES or path.resolve() == THIS_FILE:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            match = OUTSIDE_REFERENCE.search(line)
            if match:
                found.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)}")
    assert not found, (
        "references to documents a reader of the repository cannot open "
        "(point to docs/design/*.md instead):\n" + "\n".join(found)
    )
