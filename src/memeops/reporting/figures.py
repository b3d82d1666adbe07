"""The one figure helper: every PNG the reports draw is made by :func:`new_figure` and written by
:func:`save_figure`.

matplotlib's object API (``Figure`` + the Agg canvas) rather than ``pyplot``: no global state, no
GUI backend, safe in worker processes and threads, and the same size / dpi / layout everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from memeops.data.synth.world import cjk_font_path

DPI = 100

_CJK_FONT: FontProperties | bool | None = None


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches at :data:`DPI`, constrained layout."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` with the Agg canvas to the PNG ``path`` (parent folders created)."""
    path = Path(path)
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def label_font() -> Any:
    """A font with CJK glyphs for token labels (Noto Sans CJK from ``manimgx-fonts-cjk``), or None
    when it is not installed (labels then fall back to matplotlib's default font)."""
    global _CJK_FONT
    if _CJK_FONT is None:
        try:
            path = cjk_font_path()
            _CJK_FONT = FontProperties(fname=str(path)) if path.is_file() else False
        except (OSError, ImportError):  # the font is a nicety
            _CJK_FONT = False
    return _CJK_FONT or None
