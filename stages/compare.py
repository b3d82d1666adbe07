"""Stage ``compare``: the variants' test macro-F1 per task side by side (GatedCLIP, MGMCF, the VLM, the
baselines), with each task's primary-metric 95% interval. Writes reports/comparison.md and
reports/comparison.csv from reports/metrics/<variant>.json (memeops.evaluation.compare).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from memeops.config import load_params
from memeops.evaluation.compare import ci_table, markdown_table, metric_table, read_reports
from stages import run_stage


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    variants: list[str] = Field(default_factory=lambda: ["gatedclip", "gatedclip_mt", "mgmcf", "vlm"])
    split: str = "test"
    metric: str = "macro_f1"


def main() -> int:
    params = load_params()
    cfg = params.section("compare", CompareConfig)
    tasks = params.model_dump(by_alias=True)["train"]["tasks"]
    reports = read_reports(Path("reports/metrics"), cfg.variants)
    table = metric_table(reports, tasks, cfg.split, cfg.metric)
    table.to_csv("reports/comparison.csv", index=False)
    lines = [
        f"# {cfg.metric} per task on {cfg.split} (each model selected on val, {cfg.split} scored once)", "",
        ("Written by stage `compare` from `reports/metrics/<variant>.json`. `gatedclip` is trained on "
         "`hateful` only (its paper's task); `gatedclip_mt` is the same model on every task. The VLM's "
         "labels come from candidate scoring (docs/vlm.md). A dash: the variant has no such task."), "",
        markdown_table(table), "",
        "## 95% bootstrap interval of each task's primary metric (AUROC for binary tasks, macro-F1 otherwise)", "",
        markdown_table(ci_table(reports, tasks, cfg.split)),
    ]  # fmt: skip
    Path("reports/comparison.md").write_text("\n".join(lines), encoding="utf-8")
    print(markdown_table(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("compare", main))
