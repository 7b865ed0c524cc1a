"""Reading the repository's Markdown the way the doc tests need it: fenced blocks, inline code,
links and GitHub's heading anchors."""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ILLUSTRATION = re.compile(r"^\s*(#|//)\s*illustration\b", re.IGNORECASE)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<lang>[\w+-]*)[^\n]*$")
_LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE = re.compile(r"(?<!`)`(?P<code>[^`\n]+)`(?!`)")
_HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*#*\s*$")


@dataclass
class Block:
    path: Path
    line: int          # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def is_illustration(self) -> bool:
        first = next((l for l in self.text.splitlines() if l.strip()), "")
        return bool(ILLUSTRATION.match(first))


def markdown_files() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def fenced_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start, body = m["fence"], i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        out.append(Block(path, start + 1, m["lang"].lower(), textwrap.dedent("\n".join(body))))
        i += 1
    return out


def prose(path: Path) -> str:
    """The text outside fenced blocks (where inline code and links live)."""
    lines = path.read_text().splitlines()
    keep, inside, fence = [], False, ""
    for line in lines:
        m = _FENCE.match(line)
        if m and not inside:
            inside, fence = True, m["fence"]
        elif inside and line.strip().startswith(fence):
            inside = False
        elif not inside:
            keep.append(line)
    return "\n".join(keep)


def inline_code(path: Path) -> list[str]:
    return [m["code"] for m in _INLINE.finditer(prose(path))]


def links(path: Path) -> list[str]:
    return [m["target"] for m in _LINK.finditer(prose(path))]


def slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*~]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", title.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m["title"]) for line in prose(path).splitlines() if (m := _HEADING.match(line))}
