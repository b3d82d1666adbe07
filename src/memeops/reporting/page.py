"""The report: one static HTML page (``reports/index.html``) over the pipeline's outputs.

:func:`build_report` writes one self-contained HTML file (inline CSS, no script, no external URL:
it renders offline, opened as ``file://``) and its images under ``<out dir>/report_assets/``
(relative links; the folder is rewritten on every build). Sections, each from the files below
(paths relative to ``reports_dir``; a missing input gives a one-line note in its section, never an
error):

* **Leaderboard** -- ``metrics/<variant>.json`` (every JSON with ``primary_metric`` and ``test``:
  the train stages' reports): test / val / test_unseen mean macro-F1 over the variant's tasks, and
  each task's primary metric on test with its 95% bootstrap interval (``ci95.test``); a bar chart.
* **Per-task comparison** -- test macro-F1 per task of every variant with a metrics report
  (``comparison.csv`` of stage ``compare`` only when there is none) and a heat map of it;
  validation curves from ``plots/train/<variant>.csv`` (``val/mean/macro_f1`` against ``epoch``).
* **Ablations** -- optional, written by a later stage (contract):

  - ``ablations.csv``: one row per ablation arm. Column ``arm`` names the row (else the first
    column); an optional ``group`` column splits it into one table + chart per group; every other
    column is shown (numbers with 3 decimals). The chart plots ``mean`` (else the first numeric
    column) per arm, with error bars from ``ci_low`` / ``ci_high`` when both exist, else ``std``.
  - ``ablations.md``: notes rendered below the tables (headings, tables, lists, paragraphs).
  - ``figures/*.png`` and ``figures/ablate/*.png``: embedded in name order, captioned by the file stem.

  With none of them the section says that the ablations are not produced yet.
* **Sample memes** -- :class:`SampleMeme` records (``samples=``): the image, caption, gold labels
  and the predictions of a few model folders (:func:`memeops.evaluation.samples.predict_samples`
  computes them with :func:`memeops.serving.predictor.open_predictor`).
* **VLM explanations** -- ``vlm/examples.csv`` (stage ``train_vlm``: ``meme_id, task, label,
  scored_label, scored_prob, generated_label, valid, invalid_reason, explanation,
  reference_explanation``); thumbnails when ``meme_images`` maps the meme id to its file.
* **MGMCF attention** -- :class:`AttentionMap` records (``attention=``): the global context's
  attention (``extras["attention"]``, last CAP block, mean over heads and queries) drawn on the
  meme's region boxes, a bar chart over [text tokens | image | regions], the caption's tokens
  shaded by weight. :func:`memeops.evaluation.samples.mgmcf_attention` computes them with the
  MGMCF model folder.
* **Data** -- ``datasheet.json`` / ``datasheet.md`` (stage ``consolidate``) and
  ``validation.json`` / ``validation.md`` (stage ``validate``).
* **MLflow runs** -- :class:`MlflowRun` records (``mlflow_runs=``;
  :func:`memeops.reporting.inputs.latest_mlflow_runs` reads the tracking store): the latest top-level run per DVC stage, linked as
  ``<mlflow_ui>/#/experiments/<experiment id>/runs/<run id>`` (``mlflow_ui`` default
  :data:`DEFAULT_MLFLOW_UI`, or ``$MEMEOPS_MLFLOW_UI``). These links are the page's only absolute
  URLs; nothing is loaded from them.

Every text from the inputs is HTML-escaped. Charts are PNGs from the one figure helper
(:mod:`memeops.reporting.figures`). The sections live in :mod:`memeops.reporting.sections` and
:mod:`memeops.reporting.examples`; this module assembles the page. See ``docs/report.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from memeops.reporting.examples import attention_section, samples_section, vlm_section
from memeops.reporting.inputs import (
    DEFAULT_MLFLOW_UI,
    MLFLOW_UI_ENV,
    AttentionMap,
    MlflowRun,
    SampleMeme,
    latest_train_runs,
    read_variant_reports,
    run_url,
)
from memeops.reporting.markup import Assets, esc
from memeops.reporting.sections import (
    ablation_section,
    comparison_section,
    datasheet_section,
    leaderboard_section,
    mlflow_section,
    validation_section,
)

CSS = """
:root { --ok: #1a7f37; --bad: #c62828; --dim: #6b7280; --line: #e5e7eb; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC", sans-serif;
       margin: 0; color: #111827; background: #f9fafb; }
header { background: #1f2937; color: #f9fafb; padding: 16px 24px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
nav { position: sticky; top: 0; background: #111827; padding: 6px 24px; z-index: 2; }
nav a { color: #d1d5db; margin-right: 14px; text-decoration: none; font-size: 13px; }
nav a:hover { color: #fff; }
main { padding: 8px 24px 40px; max-width: 1500px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 18px 16px; margin: 16px 0; }
h2 { border-bottom: 2px solid var(--line); padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid var(--line); padding: 3px 8px; vertical-align: top; text-align: left; }
th { background: #f3f4f6; }
table.num td { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.small { font-size: 12px; }
table.wide td { max-width: 360px; }
figure { margin: 8px 0; }
img.chart { max-width: 100%; height: auto; border: 1px solid var(--line); }
img.thumb { width: 200px; max-width: 100%; height: auto; border-radius: 4px; }
img.mini { width: 72px; height: auto; }
img.overlay { width: 320px; max-width: 100%; height: auto; border-radius: 4px; }
.scroll { overflow-x: auto; max-width: 100%; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px; background: #fff; min-width: 0; }
.card table { font-size: 11px; }
.caption { white-space: pre-wrap; font-weight: 600; margin: 6px 0; }
.meta { color: var(--dim); font-size: 12px; }
.att { display: grid; grid-template-columns: 340px minmax(0, 1fr); gap: 16px; border-top: 1px solid var(--line); padding: 12px 0; }
.tok { padding: 1px 3px; border-radius: 3px; margin: 1px; display: inline-block; }
.grid { display: flex; flex-wrap: wrap; gap: 24px; }
.ok { color: var(--ok); font-weight: 600; } .bad { color: var(--bad); font-weight: 600; }
.dim { color: var(--dim); } .small { font-size: 12px; }
.note { color: var(--dim); font-style: italic; }
.pending { border-left: 4px solid #f59e0b; padding-left: 8px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 12px; color: #fff; font-weight: 700; }
.badge.ok { background: var(--ok); color: #fff; } .badge.bad { background: var(--bad); color: #fff; }
.missing { color: var(--dim); font-size: 12px; }
pre { background: #f3f4f6; padding: 8px; overflow-x: auto; }
"""




def section(anchor: str, title: str, body: str) -> str:
    """One ``<section>`` of the page, its ``anchor`` the target of the navigation bar's link."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def build_report(
    reports_dir: str | Path,
    out_path: str | Path,
    *,
    samples: Sequence[SampleMeme] | None = None,
    attention: Sequence[AttentionMap] | None = None,
    mlflow_runs: Sequence[MlflowRun] | None = None,
    mlflow_error: str | None = None,
    mlflow_ui: str | None = None,
    meme_images: Mapping[str, Path] | None = None,
    variants: Sequence[str] | None = None,
    title: str = "memeops report",
    vlm_examples: int = 12,
) -> Path:
    """Write the report page to ``out_path`` (assets in ``<its folder>/report_assets``); returns it.

    ``reports_dir`` holds the pipeline's reports (layout in the module docstring); the records
    that need models or the tracking store (``samples``, ``attention``, ``mlflow_runs``) are
    computed by the caller (``stages/report.py``) with :mod:`memeops.evaluation.samples` and
    :func:`memeops.reporting.inputs.latest_mlflow_runs`; a section without them says so.
    ``variants`` restricts the leaderboard and the comparison (default: every train-stage metrics
    file).
    """
    reports_dir, out_path = Path(reports_dir), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ui = mlflow_ui or os.environ.get(MLFLOW_UI_ENV) or DEFAULT_MLFLOW_UI
    assets = Assets(out_path.parent)
    reports = read_variant_reports(reports_dir / "metrics", variants)
    run_links = {v: run_url(ui, r) for v, r in latest_train_runs(mlflow_runs or ()).items()}
    sections = [
        ("leaderboard", "Leaderboard", leaderboard_section(reports, run_links, assets)),
        ("comparison", "Per-task comparison", comparison_section(reports_dir, reports, assets)),
        ("ablations", "Ablations", ablation_section(reports_dir, assets)),
        ("samples", "Sample memes and predictions", samples_section(samples, assets)),
        ("vlm", "VLM explanations", vlm_section(reports_dir, meme_images or {}, assets, vlm_examples)),
        ("attention", "MGMCF attention", attention_section(attention, assets)),
        ("datasheet", "Datasheet", datasheet_section(reports_dir)),
        ("validation", "Data validation", validation_section(reports_dir)),
        ("mlflow", "MLflow runs", mlflow_section(mlflow_runs, ui, mlflow_error)),
    ]
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><div>Multimodal meme classification: GatedCLIP, MGMCF, a "
        f"MemeLens-style VLM and baselines on {esc(', '.join(sorted(reports)) or 'no variants yet')}.</div></header>"
        f"<nav>{nav}</nav><main>"
        + "\n".join(section(a, t, b) for a, t, b in sections)
        + "</main></body></html>\n"
    )  # fmt: skip
    out_path.write_text(page, encoding="utf-8")
    return out_path
