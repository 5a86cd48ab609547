"""The code blocks of a Markdown document, with the `<!-- doc-test: ... -->` directive before each.

Every fenced block must name its language. Blocks tagged sh/bash/shell are commands a reader runs in
order; tests/e2e/test_docs.py runs them. A directive on the line before a block (blank lines between
allowed) says how, with `;`-separated items:

- `skip (reason)`, alone: not run (the test lists every skipped block, so a new one is noticed);
- `new host`: run from here on a fresh machine (sandbox), e.g. an alternative walk-through;
- `new shell`: a new login shell (another terminal, or logging in again after `usermod -aG`);
- `background until URL`: the block runs in the foreground forever (a server): start it, wait for URL;
- `wait for PATH`: wait until PATH (relative to the checkout, or absolute) is a non-empty file, as a
  reader does for something written within a second or so (a batched event log);
- `before: COMMAND`: a command the sandbox runs as root first (what the prose asks the reader to do).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ("SHELL_LANGUAGES", "Block", "Host", "hosts", "parse")

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell"})
_DIRECTIVE = re.compile(r"<!--\s*doc-test:\s*(.*?)\s*-->")
_FENCE = re.compile(r"^(```+|~~~+)\s*([^\s`]*)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)")


@dataclass
class Block:
    """One fenced code block: where it is, its language and text, and what its directive asks."""

    doc: str
    line: int  # of the opening fence, 1-based
    heading: str
    language: str
    text: str
    skip: str | None = None
    new_host: bool = False
    new_shell: bool = False
    background_until: str | None = None
    wait_for: str | None = None
    before: str | None = None

    @property
    def is_shell(self) -> bool:
        return self.language in SHELL_LANGUAGES

    @property
    def first_line(self) -> str:
        return self.text.strip().splitlines()[0] if self.text.strip() else ""

    def where(self) -> str:
        return f"{self.doc}:{self.line} ({self.heading})"


@dataclass
class Host:
    """The shell blocks a reader runs on one machine, in order."""

    doc: str
    heading: str
    blocks: list[Block] = field(default_factory=list)


def _apply(block: Block, directive: str) -> None:
    if directive.startswith("skip"):  # the whole directive: its reason may hold semicolons
        block.skip = directive.removeprefix("skip").strip().removeprefix("(").removesuffix(")") or "no reason"
        return
    items = directive.split(";")
    for n, raw in enumerate(items):
        item = raw.strip()
        if item.startswith("before:"):  # takes the rest of the directive, semicolons included
            block.before = ";".join([item.removeprefix("before:"), *items[n + 1 :]]).strip()
            return
        if item == "new host":
            block.new_host = True
        elif item == "new shell":
            block.new_shell = True
        elif item.startswith("background until "):
            block.background_until = item.removeprefix("background until ").strip()
        elif item.startswith("wait for "):
            block.wait_for = item.removeprefix("wait for ").strip()
        elif item:
            raise ValueError(f"{block.where()}: unknown doc-test directive {item!r}")


def parse(path: Path, name: str) -> list[Block]:
    """Every fenced block of the document, in order; raises ValueError on an unterminated fence."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    heading = ""
    directive: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence is None:
            if m := _HEADING.match(line):
                heading = m.group(2).strip()
            if m := _DIRECTIVE.search(line):
                directive = m.group(1)
            elif line.strip():
                directive = None  # a directive binds only the block right after it
            i += 1
            continue
        marker, language = fence.group(1), fence.group(2)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(marker)), None)
        if end is None:
            raise ValueError(f"{name}:{i + 1}: unterminated code fence")
        block = Block(name, i + 1, heading, language, "\n".join(lines[i + 1 : end]) + "\n")
        if directive is not None:
            _apply(block, directive)
        blocks.append(block)
        directive = None
        i = end + 1
    return blocks


def hosts(blocks: list[Block]) -> list[Host]:
    """The shell blocks grouped by machine: a document starts on one, `new host` starts another."""
    grouped: list[Host] = []
    for block in blocks:
        if not block.is_shell:
            continue
        if not grouped or block.new_host or grouped[-1].doc != block.doc:
            grouped.append(Host(block.doc, block.heading))
        grouped[-1].blocks.append(block)
    return grouped
