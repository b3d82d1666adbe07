"""A small, escaping Markdown-to-HTML converter for the notes other stages write (``ablations.md``,
``datasheet.md``, ``validation.md``) and the report page shows.

Only the subset those files use: headings, pipe tables, ``-`` / ``*`` lists, fenced code,
paragraphs, inline ``code`` and **bold**; link targets are dropped (the page loads nothing from
outside). Raw HTML in the source is escaped, so it is shown as text and never passed through.
"""

from __future__ import annotations

import re

from memeops.reporting.markup import esc, html_table

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_BULLET = re.compile(r"^[-*]\s+")
_RULE_CELL = re.compile(r":?-{2,}:?|:?-*:?")


def inline_markdown(text: str) -> str:
    """One line of Markdown as escaped HTML: ``code``, **bold**, links reduced to their text."""
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", out)


def _table_block(lines: list[str], i: int) -> tuple[str, int]:
    """The pipe table starting at line ``i`` as HTML (separator rows dropped), and the next line."""
    rows = []
    while i < len(lines) and lines[i].strip().startswith("|"):
        cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
        if not all(_RULE_CELL.fullmatch(c) for c in cells):
            rows.append(cells)
        i += 1
    if not rows:
        return "", i
    header, body = rows[0], rows[1:]
    return html_table(header, ([inline_markdown(c) for c in r] for r in body), "md"), i


def _list_block(lines: list[str], i: int) -> tuple[str, int]:
    """The bullet list starting at line ``i`` as HTML, and the next line."""
    items = []
    while i < len(lines) and _BULLET.match(lines[i].strip()):
        items.append("<li>" + inline_markdown(_BULLET.sub("", lines[i].strip())) + "</li>")
        i += 1
    return "<ul>" + "".join(items) + "</ul>", i


def _code_block(lines: list[str], i: int) -> tuple[str, int]:
    """The fenced code block opening at line ``i`` (escaped, verbatim), and the line after its fence."""
    block = []
    i += 1
    while i < len(lines) and not lines[i].strip().startswith("```"):
        block.append(lines[i])
        i += 1
    return "<pre>" + esc("\n".join(block)) + "</pre>", i + 1


def markdown_to_html(text: str, heading_offset: int = 2) -> str:
    """``text`` as escaped HTML; headings move down ``heading_offset`` levels (``#`` becomes
    ``<h3>`` by default, under the page's section headings)."""
    out: list[str] = []
    lines = text.splitlines()
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append("<p>" + inline_markdown(" ".join(para)) + "</p>")
            para.clear()

    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        block = ""
        if stripped.startswith("```"):
            block, i = _code_block(lines, i)
        elif m := _HEADING.match(stripped):
            level = min(6, len(m.group(1)) + heading_offset)
            block, i = f"<h{level}>{inline_markdown(m.group(2))}</h{level}>", i + 1
        elif stripped.startswith("|"):
            block, i = _table_block(lines, i)
        elif _BULLET.match(stripped):
            block, i = _list_block(lines, i)
        else:
            if stripped:
                para.append(stripped)
            else:
                flush()
            i += 1
            continue
        flush()
        if block:
            out.append(block)
    flush()
    return "\n".join(out)
