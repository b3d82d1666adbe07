"""The rebuild check: every headline number of a rebuilt ``reports/`` against the committed one.

What "reproducible" means here (docs/reproducibility.md): on one machine a rebuild is bit-exact;
across machines (another CPU, another BLAS code path) each headline number must land inside the
committed 95% interval, which covers the variation over training seeds and test memes. This module
checks the second, weaker promise, so it also passes where the first holds.

Headline numbers (:data:`HEADLINE_FILES`): each row of ``reports/comparison.csv`` (one per variant,
task and metric) and of ``reports/ablations.csv`` (one per group and arm, on the group's headline
metric), each with its ``mean`` and ``[ci_low, ci_high]``. A rebuilt mean is consistent when it lies
inside the committed interval, widened by :data:`TOLERANCE` for float formatting. A row on one side
only fails (as ``missing``), and so does a headline file that neither side has.

``memeops verify`` runs :func:`verify` and prints :func:`render`; ``make verify`` first rebuilds the
pipeline in a temp copy of the project (``benchmarks.pipeline``), then runs ``memeops verify`` on it.
"""

from __future__ import annotations

import io
import math
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

TOLERANCE = 1e-9
"""Absolute slack on both ends of an interval: a CSV round trip may move the last digit."""


class VerifyError(ValueError):
    """A baseline or rebuilt file cannot be read as a headline table (one line, says which)."""


@dataclass(frozen=True)
class HeadlineFile:
    """A CSV of headline numbers: its name inside ``reports/`` and the columns that name a row."""

    name: str
    keys: tuple[str, ...]


HEADLINE_FILES = (
    HeadlineFile("comparison.csv", ("variant", "task", "metric")),
    HeadlineFile("ablations.csv", ("group", "arm")),
)
VALUE_COLUMNS = ("mean", "ci_low", "ci_high")


@dataclass(frozen=True)
class Interval:
    """A committed (or rebuilt) headline number: its mean and 95% interval (NaN where undefined)."""

    mean: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Check:
    """One compared number. ``status``: ``inside`` / ``outside`` / ``missing in rebuilt`` /
    ``missing in committed`` / ``missing on both sides`` (a whole headline file)."""

    name: str
    committed: Interval | None
    rebuilt: float | None
    status: str

    @property
    def ok(self) -> bool:
        return self.status == "inside"


def is_inside(committed: Interval, rebuilt: float, tolerance: float = TOLERANCE) -> bool:
    """Whether ``rebuilt`` is consistent with ``committed``.

    NaN means "undefined" (e.g. a metric a task cannot have): NaN is consistent only with NaN. A
    committed number without an interval (NaN bounds, e.g. one seed) must be repeated exactly: its
    interval is the point ``[mean, mean]``.
    """
    if math.isnan(committed.mean) or math.isnan(rebuilt):
        return math.isnan(committed.mean) and math.isnan(rebuilt)
    low, high = committed.ci_low, committed.ci_high
    if math.isnan(low) or math.isnan(high):
        low = high = committed.mean
    return low - tolerance <= rebuilt <= high + tolerance


def parse_headline(text: str, spec: HeadlineFile, where: str) -> dict[str, Interval]:
    """``{row name: Interval}`` of one headline CSV; the row name joins the key columns with ``/``
    (``ablations.csv`` rows are prefixed ``ablate/``). ``where`` names the file in errors."""
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={k: str for k in spec.keys}, keep_default_na=False,
                            na_values={c: ["", "nan", "NaN"] for c in VALUE_COLUMNS})  # fmt: skip
    except (ValueError, pd.errors.ParserError) as exc:
        raise VerifyError(f"{where}: not a CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in (*spec.keys, *VALUE_COLUMNS) if c not in frame.columns]
    if missing:
        have = ", ".join(map(str, frame.columns))
        raise VerifyError(f"{where}: no column {', '.join(missing)} (columns: {have})")
    try:
        values = frame[list(VALUE_COLUMNS)].apply(pd.to_numeric).astype(float)
    except ValueError as exc:
        raise VerifyError(f"{where}: a mean / ci value is not a number ({exc})") from None
    prefix = "ablate/" if spec.name == "ablations.csv" else ""
    names = [prefix + "/".join(parts) for parts in frame[list(spec.keys)].itertuples(index=False)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise VerifyError(f"{where}: rows named twice: {', '.join(dupes)}")
    rows = values.itertuples(index=False)
    return {name: Interval(*map(float, row)) for name, row in zip(names, rows, strict=True)}


def compare(committed: Mapping[str, Interval], rebuilt: Mapping[str, Interval],
            tolerance: float = TOLERANCE) -> list[Check]:  # fmt: skip
    """A :class:`Check` per row of either side: committed rows in their order, then rebuilt-only rows."""
    checks = []
    for name, interval in committed.items():
        if name not in rebuilt:
            checks.append(Check(name, interval, None, "missing in rebuilt"))
            continue
        value = rebuilt[name].mean
        status = "inside" if is_inside(interval, value, tolerance) else "outside"
        checks.append(Check(name, interval, value, status))
    extra = [name for name in rebuilt if name not in committed]
    checks += [Check(name, None, rebuilt[name].mean, "missing in committed") for name in extra]
    return checks


def git_text(revision: str, path: str, repo: Path) -> str | None:
    """``git show REVISION:path`` in ``repo``; None when the revision has no such file."""
    git = ["git", "-C", str(repo)]
    resolved = subprocess.run([*git, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
                              capture_output=True, text=True)  # fmt: skip
    if resolved.returncode != 0:
        raise VerifyError(f"baseline {revision!r} is neither a directory nor a git revision of {repo}")
    commit = resolved.stdout.strip()
    shown = subprocess.run([*git, "show", f"{commit}:{path}"], capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else None


def read_side(source: str | Path, spec: HeadlineFile, repo: Path) -> tuple[str, str | None]:
    """``(label, text or None)`` of one headline file: from a reports directory, or (``source`` not a
    directory) from ``reports/<name>`` at git revision ``source`` of ``repo``."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / spec.name
        return str(path), path.read_text(encoding="utf-8") if path.is_file() else None
    return f"{source}:reports/{spec.name}", git_text(str(source), f"reports/{spec.name}", repo)


def verify(baseline: str | Path = "HEAD", rebuilt: str | Path = "reports", repo: str | Path = ".",
           files: Sequence[HeadlineFile] = HEADLINE_FILES, tolerance: float = TOLERANCE,
           ) -> list[Check]:  # fmt: skip
    """Every headline number of ``rebuilt`` (a reports directory) against ``baseline`` (a git
    revision of ``repo`` or a reports directory); see the module docstring for the rule."""
    if not Path(rebuilt).is_dir():
        raise VerifyError(f"rebuilt reports {rebuilt} is not a directory")
    checks: list[Check] = []
    for spec in files:
        base_label, base_text = read_side(baseline, spec, Path(repo))
        new_label, new_text = read_side(rebuilt, spec, Path(repo))
        if base_text is None and new_text is None:
            checks.append(Check(spec.name, None, None, "missing on both sides"))
            continue
        committed = parse_headline(base_text, spec, base_label) if base_text is not None else {}
        fresh = parse_headline(new_text, spec, new_label) if new_text is not None else {}
        checks += compare(committed, fresh, tolerance)
    return checks


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render(checks: Sequence[Check]) -> str:
    """The table (number, committed mean [interval], rebuilt, inside), a summary line, and on failure
    one line naming every number that is outside or missing."""
    rows = [("number", "committed [95% interval]", "rebuilt", "inside")]
    for c in checks:
        ci = c.committed
        committed = "-" if ci is None else f"{_number(ci.mean)} [{_number(ci.ci_low)}, {_number(ci.ci_high)}]"
        rows.append((c.name, committed, _number(c.rebuilt), "yes" if c.ok else f"NO ({c.status})"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([r[0].ljust(w[0]), r[1].ljust(w[1]), r[2].rjust(w[2]), r[3]]) for r in rows]
    bad = [c for c in checks if not c.ok]
    outside = sum(c.status == "outside" for c in bad)
    missing = len(bad) - outside
    lines.append(f"{len(checks) - len(bad)} of {len(checks)} headline numbers inside the committed "
                 f"intervals; {outside} outside, {missing} missing")  # fmt: skip
    if bad:
        lines.append("not reproduced: " + ", ".join(c.name for c in bad))
    return "\n".join(lines)
