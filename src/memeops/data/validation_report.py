"""The validation report as plain data (stage ``validate`` writes it as JSON and Markdown): each
expectation's outcome reduced to what a person needs to act on it, the summary, the headline and
the one-line failure message. :mod:`memeops.data.validate` builds it from Great Expectations'
results.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ExpectationOutcome:
    """One expectation's result, reduced to what a person needs to act on it."""

    check: str  # stable id, e.g. "meme_id.unique"
    name: str  # human description, e.g. "meme_id unique"
    expectation: str  # GX type, e.g. "expect_column_values_to_be_unique"
    batch: str  # memes | label_elements | class_counts
    column: str | None
    blocking: bool
    success: bool
    unexpected_count: int | None = None
    examples: list[Any] = field(default_factory=list)  # at most validate.MAX_EXAMPLES
    details: str | None = None  # observed value, or the exception GX caught


@dataclass
class ValidationReport:
    success: bool  # every blocking expectation passed
    results: list[ExpectationOutcome]
    summary: dict[str, Any]

    @property
    def failed_blocking(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if r.blocking and not r.success]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.blocking and not r.success]

    def headline(self) -> str:
        rows = self.summary.get("rows", 0)
        n = len(self.results)
        warn = len(self.warnings)
        if self.success:
            extra = f", {warn} warning{'s' if warn != 1 else ''}" if warn else ""
            return f"validation passed: {rows} rows, {n} expectations{extra}"
        bad = len(self.failed_blocking)
        return f"validation failed: {bad} blocking expectation{'s' if bad != 1 else ''} of {n}, {rows} rows"

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "headline": self.headline(),
            "summary": self.summary,
            "results": [asdict(r) for r in self.results],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, default=str)

    def to_markdown(self) -> str:
        s = self.summary
        status = "✅ passed" if self.success else f"❌ failed ({len(self.failed_blocking)} blocking)"
        lines = [f"# Data validation: {status}", ""]
        splits = ", ".join(f"{k} {v}" for k, v in s.get("splits", {}).items()) or "none"
        lines += [
            "| Rows | Splits | Empty texts | Leakage policy | Warnings |",
            "|---:|---|---:|---|---:|",
            f"| {s.get('rows', 0)} | {_md(splits)} | {s.get('empty_texts', 0)} "
            f"({100 * s.get('empty_text_fraction', 0.0):.1f}%) | {s.get('leakage_policy', '')} "
            f"| {len(self.warnings)} |",
            "",
            "## Expectations",
            "",
            "| | Expectation | Column | Kind | Unexpected | Examples |",
            "|---|---|---|---|---:|---|",
        ]
        for r in self.results:
            mark = "✅" if r.success else "❌"
            kind = "blocking" if r.blocking else "warning"
            count = "" if r.unexpected_count is None else str(r.unexpected_count)
            examples = ", ".join(_show(e) for e in r.examples)
            if r.details and (not r.success or not examples):
                examples = f"{examples}; {r.details}" if examples else r.details
            lines.append(
                f"| {mark} | {_md(r.name)} | {_md(r.column or '')} | {kind} | {count} | {_md(examples)} |"
            )
        coverage = s.get("label_coverage", {})
        if coverage:
            lines += ["", "## Label coverage", "", "| Task | Labelled | Fraction |", "|---|---:|---:|"]
            for task, c in coverage.items():
                lines.append(f"| {task} | {c['labelled']} | {100 * c['fraction']:.1f}% |")
        return "\n".join(lines) + "\n"


def failure_message(report: ValidationReport) -> str:
    """One line naming each failed blocking expectation with example values (headline if it passed)."""
    failed = report.failed_blocking
    if not failed:
        return report.headline()
    parts = []
    for r in failed:
        bits = []
        if r.unexpected_count is not None:
            bits.append(f"{r.unexpected_count} unexpected")
        if r.examples:
            bits.append("e.g. " + ", ".join(_show(e) for e in r.examples))
        if r.details and (r.unexpected_count is None or not r.examples):
            bits.append(r.details)
        parts.append(f"{r.name} ({', '.join(bits)})" if bits else r.name)
    n = len(failed)
    return f"validation failed: {n} blocking expectation{'s' if n != 1 else ''}: " + "; ".join(parts)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
