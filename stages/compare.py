"""Stage ``compare``: the variants side by side on test, over their seeds, with paired tests.

Reads every variant's seeds' per-meme test predictions (``data/train/<variant>.parquet``) and writes
``reports/comparison.csv`` (one row per variant, task and metric: mean, std over seeds, 95% interval
over seeds and test memes, paired test against the row's best variant, Holm-adjusted) and
``reports/comparison.md`` (memeops.evaluation.compare).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from memeops.config import load_params
from memeops.data.consolidate import read_memes
from memeops.data.taxonomy import load_taxonomy
from memeops.evaluation.compare import compare_variants, markdown_table, wide_table
from memeops.models.base import task_specs
from memeops.training.seed_runs import runs_from_table
from stages import run_stage


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    variants: list[str] = Field(default_factory=lambda: ["gatedclip", "gatedclip_mt", "mgmcf", "vlm"])
    split: str = "test"
    metric: str = "macro_f1"
    n_boot: int = Field(1000, ge=100)
    alpha: float = Field(0.05, gt=0, lt=1)


def main() -> int:
    params = load_params()
    cfg = params.section("compare", CompareConfig)
    tasks = params.model_dump(by_alias=True)["train"]["tasks"]
    memes = read_memes(Path(params.data.output_dir) / "memes.parquet")
    ids = memes.loc[memes["split"] == cfg.split, "meme_id"].astype(str).tolist()
    specs = {s.name: s for s in task_specs(load_taxonomy(), tasks)}
    runs, variant_tasks = [], {}
    for variant in cfg.variants:
        path = Path("data/train") / f"{variant}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"no predictions {path} for variant {variant!r} (has its stage run?)")
        table = pd.read_parquet(path)
        runs += runs_from_table(table.assign(arm=variant), cfg.split, specs, ids, group="compare")
        variant_tasks[variant] = sorted(set(table["task"]))
    long = compare_variants(runs, specs, tasks, variant_tasks, metric=cfg.metric, n_boot=cfg.n_boot,
                            seed=params.model_dump()["train"].get("seed", 0), alpha=cfg.alpha)  # fmt: skip
    long.to_csv("reports/comparison.csv", index=False, float_format="%.6g")
    Path("reports/comparison.md").write_text(
        f"# {cfg.metric} per task on {cfg.split}: mean ± std over seeds [95% interval over seeds and memes]\n\n"
        "Written by stage `compare`. Each model is selected on val and scores test once per seed. `*`: below the "
        f"row's best variant by a paired bootstrap test over seeds and memes, Holm-adjusted p < {cfg.alpha}. "
        "The mean row compares only variants trained on every task. Every row with its p-values: "
        "`reports/comparison.csv`.\n\n" + markdown_table(wide_table(long, cfg.metric)) + "\n", encoding="utf-8")  # fmt: skip
    print(markdown_table(wide_table(long, cfg.metric)))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("compare", main))
