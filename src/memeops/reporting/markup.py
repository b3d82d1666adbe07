"""The HTML pieces every report page is made of: escaped text, numbers, tables, notes, asset files.

Everything the pages show passes through :func:`esc` (quotes included, so it is safe inside
attributes too); :func:`html_table` escapes its header and expects its cells as HTML already.
:class:`Assets` owns a page's ``report_assets/`` folder and links its files relatively, so the page
renders offline from any folder it is copied to.
"""

from __future__ import annotations

import html
import math
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ASSETS_DIR = "report_assets"


def esc(value: Any) -> str:
    """HTML-escaped text (quotes included, so it is safe in attributes too); None is empty."""
    return html.escape("" if value is None else str(value), quote=True)


def num(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, not a number or NaN."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or an en dash when :func:`num` finds none."""
    v = num(value)
    return "–" if v is None else f"{v:.{digits}f}"


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (never empty)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """An HTML table in a horizontally scrolling box; ``header`` is escaped here, row cells must
    already be HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<div class="scroll"><table class="{esc(cls)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def note(text: str) -> str:
    """A one-line note (a section whose input is missing says so with one)."""
    return f'<p class="note">{esc(text)}</p>'


class Assets:
    """Files under ``<out dir>/report_assets`` (emptied on creation), linked relatively from the page."""

    def __init__(self, out_dir: Path):
        self.root = out_dir / ASSETS_DIR
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.count = 0

    def path(self, *parts: str) -> Path:
        """Where an asset named by ``parts`` (slugged) is written."""
        return self.root.joinpath(*[slug(p) for p in parts])

    def img(self, path: Path | None, alt: str, cls: str = "") -> str:
        """An ``<img>`` of the asset ``path``, or a short "no image" note when it is None."""
        if path is None:
            return f'<span class="missing">{esc(alt)}: no image</span>'
        self.count += 1
        rel = path.relative_to(self.root.parent).as_posix()
        return f'<img src="{esc(rel)}" alt="{esc(alt)}" class="{esc(cls)}" loading="eager">'
