"""Stage ``compare``: the variants side by side on test, over their seeds, with paired tests.

Reads every variant's seeds' per-meme test predictions (``data/train/<variant>.parquet``) and writes
``reports/comparison.csv`` (one row per variant, task and metric: mean, std over seeds, 95% interval
over seeds and test memes, paired test against the row's best variant, Holm-adjusted) and
``reports/comparison.md`` (memeops.evaluation.compare).
"""

from __future__ import annotations

from pathlib import Path

from memeops.data.taxonomy import load_taxonomy
from memeops.evaluation.compare import CompareConfig, comparison_markdown, compare_variants, read_seed_predictions
from memeops.models.base import task_specs
from memeops.stage_context import StageContext
from stages import run_stage


def main() -> int:
    ctx = StageContext()
    cfg = ctx.section("compare", CompareConfig)
    memes = ctx.memes()
    ids = memes.loc[memes["split"] == cfg.split, "meme_id"].astype(str).tolist()
    specs = {s.name: s for s in task_specs(load_taxonomy(), ctx.tasks)}
    runs, variant_tasks = read_seed_predictions(Path("data/train"), cfg.variants, cfg.split, specs, ids)
    long = compare_variants(runs, specs, ctx.tasks, variant_tasks, metric=cfg.metric, n_boot=cfg.n_boot,
                            seed=ctx.train.seed, alpha=cfg.alpha)  # fmt: skip
    long.to_csv(ctx.reports / "comparison.csv", index=False, float_format="%.6g")
    markdown = comparison_markdown(long, cfg)
    (ctx.reports / "comparison.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("compare", main))
