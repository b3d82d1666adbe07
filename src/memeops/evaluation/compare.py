"""Side-by-side tables of the variants' reports (``reports/metrics/<variant>.json``).

Every variant -- the head models, MGMCF and the VLM -- writes its metrics nested by split with keys
``<task>/<metric>`` (the VLM pools its sources into the same keys), so one table reads them all.
A variant that did not train a task shows an empty cell, never a zero.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd


def read_reports(folder: str | Path, variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{variant: report}`` for each ``<folder>/<variant>.json``; a missing one is a one-line error."""
    out = {}
    for name in variants:
        path = Path(folder) / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"no metrics report {path} for variant {name!r} (has its stage run?)")
        out[name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def metric_table(reports: Mapping[str, Mapping[str, Any]], tasks: Sequence[str], split: str = "test",
                 metric: str = "macro_f1") -> pd.DataFrame:  # fmt: skip
    """Rows = tasks (+ ``mean`` over the tasks each variant has), columns = variants."""
    rows = []
    for task in tasks:
        row: dict[str, Any] = {"task": task}
        for name, report in reports.items():
            value = (report.get(split) or {}).get(f"{task}/{metric}")
            row[name] = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["task", *reports])
    mean = {"task": "mean"} | {name: frame[name].dropna().mean() if frame[name].notna().any() else None for name in reports}
    return pd.concat([frame, pd.DataFrame([mean])], ignore_index=True)


def ci_table(reports: Mapping[str, Mapping[str, Any]], tasks: Sequence[str], split: str = "test") -> pd.DataFrame:
    """The 95% bootstrap interval of each task's primary metric, as ``"lo–hi (metric)"`` strings."""
    rows = []
    for task in tasks:
        row: dict[str, Any] = {"task": task}
        for name, report in reports.items():
            intervals = (report.get("ci95") or {}).get(split) or {}
            key = next((k for k in intervals if k.split("/")[0] == task), None)
            row[name] = f"{intervals[key][0]:.3f}–{intervals[key][1]:.3f} ({key.split('/')[1]})" if key else None
        rows.append(row)
    return pd.DataFrame(rows, columns=["task", *reports])


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table (NaN/None shown as an en dash)."""
    cols = list(frame.columns)

    def cell(v: Any) -> str:
        if v is None or (not isinstance(v, (str, list, tuple)) and pd.isna(v)):
            return "–"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
