"""The report page's sections over results and data: the leaderboard, the per-task comparison,
the ablations, the datasheet, the data validation and the MLflow runs.

Each ``*_section`` function returns the HTML body of one section from the files under
``reports/`` (layout in :mod:`memeops.reporting.page`); a missing input gives a one-line note,
never an error. Every text from the inputs is escaped.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memeops.evaluation.compare import metric_table
from memeops.reporting.charts import chart_ablation, chart_curves, chart_heatmap, chart_leaderboard
from memeops.reporting.inputs import MlflowRun, leaderboard, primary_cell, read_json, report_tasks, run_url
from memeops.reporting.markdown import markdown_to_html
from memeops.reporting.markup import Assets, esc, fmt, html_table, note, num


def leaderboard_section(reports: Mapping[str, Mapping], runs: Mapping[str, str], assets: Assets) -> str:
    """Variants ranked by test mean macro-F1 (``runs``: variant -> MLflow run link), a bar chart, and
    each task's primary metric with its 95% interval."""
    if not reports:
        return note("No variant metrics yet (reports/metrics/<variant>.json from the train stages).")
    rows = leaderboard(reports)
    body_rows = []
    for rank, r in enumerate(rows, 1):
        link = runs.get(r["variant"])
        run = f'<a href="{esc(link)}">run</a>' if link else "–"
        body_rows.append([str(rank), f"<strong>{esc(r['variant'])}</strong>", str(r["tasks"]), str(r["n_seeds"]),
                          esc(fmt(r["test"]) + r["test_seeds"]), fmt(r["val"]), fmt(r["test_unseen"]), run])  # fmt: skip
    parts = [
        ("<p>Each variant is trained once per seed; every seed is selected on val and scored once on test. "
         "Values are means over seeds ± the standard deviation over seeds, [the 95% interval over seeds and "
         "test memes]; means are over the tasks the variant was trained on (a single-task variant is not "
         "comparable with the multi-task ones on this column alone). Whether two variants differ is decided by "
         "the paired tests of <code>reports/comparison.md</code>, not by overlapping intervals.</p>"),
        html_table(["#", "variant", "tasks", "seeds", "test mean macro-F1", "val mean macro-F1",
                "test_unseen mean macro-F1", "MLflow"], body_rows, "num"),
    ]  # fmt: skip
    chart = chart_leaderboard(rows, assets.path("charts", "leaderboard.png"))
    if chart:
        parts.append(f"<figure>{assets.img(chart, 'leaderboard chart', 'chart')}</figure>")
    tasks = report_tasks(reports)
    names = [r["variant"] for r in rows]
    metric_of = {t: next((rep["primary_metric"][t] for rep in reports.values() if t in rep["primary_metric"]), "")
                 for t in tasks}  # fmt: skip
    prim = [[f"{esc(t)} <span class=\"dim\">({esc(metric_of[t])})</span>"]
            + [esc(primary_cell(reports[n], t)) for n in names] for t in tasks]  # fmt: skip
    parts += [
        "<h3>Primary metric per task on test: mean ± std over seeds [95% interval over seeds and memes]</h3>",
        "<p>AUROC for binary tasks, macro-F1 otherwise.</p>",
        html_table(["task", *names], prim, "num small"),
    ]
    return "\n".join(parts)


def comparison_section(reports_dir: Path, reports: Mapping[str, Mapping], assets: Assets) -> str:
    """Test macro-F1 per task and variant, a heat map of it, and the validation curves.

    The table is computed from the variants' metrics reports, so every variant with a
    ``metrics/<variant>.json`` is a column (stage ``compare``'s ``comparison.csv`` may list fewer);
    ``comparison.csv`` is shown only when there is no metrics report at all.
    """
    path = reports_dir / "comparison.csv"
    if reports:
        frame = metric_table(reports, report_tasks(reports))
        origin = "the variants' metrics (reports/metrics/<variant>.json)"
    elif path.is_file():
        frame = pd.read_csv(path)
        origin = "reports/comparison.csv (stage compare)"
    else:
        return note("No comparison yet: no reports/metrics/<variant>.json and no reports/comparison.csv.")
    cols = list(frame.columns)
    rows = []
    for rec in frame.itertuples(index=False):
        values = [num(v) for v in rec[1:]]
        best = max((v for v in values if v is not None), default=None)
        cells = [esc(rec[0])]
        for v in values:
            text = fmt(v)
            cells.append(f"<strong>{text}</strong>" if v is not None and v == best else text)
        rows.append(cells)
    parts = [(f"<p>Test macro-F1 per task, from {esc(origin)}; the best per row in bold, a dash where "
              "the variant has no such task.</p>"), html_table(cols, rows, "num")]  # fmt: skip
    heat = chart_heatmap(frame, assets.path("charts", "comparison_heatmap.png"))
    if heat:
        parts.append(f"<figure>{assets.img(heat, 'per-task macro-F1 heat map', 'chart')}</figure>")
    curves = {}
    for csv_path in sorted((reports_dir / "plots" / "train").glob("*.csv")):
        try:
            curves[csv_path.stem] = pd.read_csv(csv_path)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
    chart = chart_curves(curves, "val/mean/macro_f1", assets.path("charts", "val_curves.png"))
    if chart:
        parts += ["<h3>Validation mean macro-F1 per epoch</h3>",
                  f"<figure>{assets.img(chart, 'validation curves', 'chart')}</figure>"]  # fmt: skip
    return "\n".join(parts)


def ablation_section(reports_dir: Path, assets: Assets) -> str:
    """``ablations.csv`` as one table + chart per group, ``ablations.md`` below, then the ablation
    figures (contract in docs/report.md); a "not produced yet" note without any of them."""
    csv_path, md_path = reports_dir / "ablations.csv", reports_dir / "ablations.md"
    # top-level figures (any stage) and stage ablate's own folder, in name order
    figures = sorted((reports_dir / "figures").glob("*.png")) + sorted((reports_dir / "figures" / "ablate").glob("*.png"))
    if not csv_path.is_file() and not md_path.is_file() and not figures:
        return ('<p class="note pending">Ablations not produced yet: this section shows '
                "<code>reports/ablations.csv</code>, <code>reports/ablations.md</code> and "
                "<code>reports/figures/*.png</code> once the ablation stage has written them "
                "(contract in docs/report.md).</p>")  # fmt: skip
    parts = []
    if csv_path.is_file():
        try:
            frame = pd.read_csv(csv_path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            frame = None
            parts.append(note(f"reports/ablations.csv could not be read: {exc}"))
        if frame is not None and not frame.empty:
            label = "arm" if "arm" in frame.columns else frame.columns[0]
            groups = list(frame.groupby("group", sort=False)) if "group" in frame.columns else [("", frame)]
            for gi, (group, sub) in enumerate(groups):
                sub = sub.drop(columns=["group"], errors="ignore").reset_index(drop=True)
                if group != "":
                    parts.append(f"<h3>{esc(group)}</h3>")
                cols = [label, *[c for c in sub.columns if c != label]]
                rows = [[esc(v) if not isinstance(v, (float, np.floating)) else fmt(v)
                         for v in (rec[c] for c in cols)] for _, rec in sub.iterrows()]  # fmt: skip
                parts.append(html_table([str(c) for c in cols], rows, "num"))
                chart = chart_ablation(sub, label, assets.path("charts", f"ablation_{gi}_{group}.png"))
                if chart:
                    parts.append(f"<figure>{assets.img(chart, f'ablation chart {group}', 'chart')}</figure>")
    if md_path.is_file():
        parts.append('<div class="md">' + markdown_to_html(md_path.read_text(encoding="utf-8")) + "</div>")
    for fig in figures:
        dest = assets.path("figures", fig.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fig, dest)
        parts.append(
            f"<figure>{assets.img(dest, fig.stem, 'chart')}<figcaption>{esc(fig.stem)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _kv(mapping: Mapping[str, Any]) -> str:
    """A two-column count table of ``mapping``."""
    return html_table(["", "count"], ([esc(k), esc(v)] for k, v in mapping.items()), "num small")


def datasheet_section(reports_dir: Path) -> str:
    """Counts from ``datasheet.json`` (splits, languages, sources, leakage) and ``datasheet.md`` folded."""
    data = read_json(reports_dir / "datasheet.json")
    md = reports_dir / "datasheet.md"
    if not isinstance(data, dict) and not md.is_file():
        return note("No datasheet yet: reports/datasheet.json (stage consolidate) is missing.")
    parts = []
    if isinstance(data, dict):
        total = data.get("total", "–")
        if isinstance(total, dict):
            total = ", ".join(f"{k} {v}" for k, v in total.items())
        parts.append(f"<p>Memes: <strong>{esc(total)}</strong>.</p>")
        grid = []
        for key, title in (
            ("splits", "splits"),
            ("languages", "languages"),
            ("by_source_split", "source / split"),
        ):
            if isinstance(data.get(key), dict):
                grid.append(f"<div><h4>{esc(title)}</h4>{_kv(data[key])}</div>")
        leak = data.get("leakage")
        if isinstance(leak, dict):
            items = {k: v for k, v in leak.items() if not isinstance(v, (dict, list))}
            grid.append(f"<div><h4>leakage</h4>{_kv(items)}</div>")
        parts.append('<div class="grid">' + "".join(grid) + "</div>")
    if md.is_file():
        parts.append("<details><summary>Full datasheet (reports/datasheet.md)</summary>"
                     + markdown_to_html(md.read_text(encoding="utf-8")) + "</details>")  # fmt: skip
    return "\n".join(parts)


def validation_section(reports_dir: Path) -> str:
    """``validation.json``'s verdict and expectations (failed ones first, unfolded), else ``validation.md``."""
    data = read_json(reports_dir / "validation.json")
    md = reports_dir / "validation.md"
    if not isinstance(data, dict) and not md.is_file():
        return note("No validation report yet: reports/validation.json (stage validate) is missing.")
    parts = []
    if isinstance(data, dict):
        ok = bool(data.get("success"))
        parts.append(f'<p class="badge {"ok" if ok else "bad"}">{"PASSED" if ok else "FAILED"}</p>'
                     f"<p>{esc(data.get('headline', ''))}</p>")  # fmt: skip
        results = [r for r in data.get("results") or [] if isinstance(r, dict)]
        failed = [r for r in results if not r.get("success")]
        parts.append(f"<p>{len(results) - len(failed)} of {len(results)} expectations met.</p>")
        rows = [[('<span class="ok">✓</span>' if r.get("success") else '<span class="bad">✗</span>'),
                 esc(r.get("name")), esc(r.get("column") or ""), esc("blocking" if r.get("blocking") else "warning"),
                 esc("" if r.get("unexpected_count") is None else r.get("unexpected_count")),
                 esc(r.get("details") or "")] for r in failed + [r for r in results if r.get("success")]]  # fmt: skip
        if rows:
            parts.append("<details" + (" open" if failed else "") + "><summary>Expectations</summary>"
                         + html_table(["", "expectation", "column", "kind", "unexpected", "details"], rows, "small")
                         + "</details>")  # fmt: skip
    elif md.is_file():
        parts.append(markdown_to_html(md.read_text(encoding="utf-8")))
    return "\n".join(parts)


def mlflow_section(runs: Sequence[MlflowRun] | None, ui: str, error: str | None) -> str:
    """The latest top-level run per stage, linked into the MLflow UI at ``ui``; ``error`` when the
    tracking store could not be read."""
    if error:
        return note(f"MLflow runs unavailable: {error}")
    if not runs:
        return note("No MLflow runs found in the tracking store.")
    rows = [[esc(r.stage), esc(r.variant), esc(r.experiment), f'<a href="{esc(run_url(ui, r))}">{esc(r.run_name)}</a>',
             esc(r.status)] for r in runs]  # fmt: skip
    return (f"<p>The latest top-level run per DVC stage; links open the MLflow UI at <code>{esc(ui)}</code> "
            "(<code>make ui</code>) on the stage's runs, newest first (the report names runs, not run ids or "
            "times, so that a rebuild writes the same page).</p>"
            + html_table(["stage", "variant", "experiment", "run", "status"], rows, "small"))  # fmt: skip
