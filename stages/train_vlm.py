"""Stage ``train_vlm``: the MemeLens-style VLM (memeops.vlm) on every source and task.

``python -m stages.train_vlm``: builds one instruction sample per (meme, single-label task with a
label), trains the regime of ``params vlm.regime`` on TRAIN (selected on VAL answer loss), scores
val / test / test_unseen once, writes reports/metrics/vlm.json, reports/plots/train/vlm.csv and
reports/vlm/examples.csv, saves models/vlm/, logs the MLflow run and registers ``memeops-vlm``
with alias ``challenger`` (see memeops.vlm.experiment).
"""

from __future__ import annotations

from memeops.stage_context import StageContext
from memeops.vlm.experiment import VLMStageConfig, run_vlm_stage
from stages import run_stage


def main() -> int:
    ctx = StageContext()
    cfg = ctx.section("vlm", VLMStageConfig)
    report = run_vlm_stage(cfg, cfg.tasks or ctx.tasks, ctx.encoder_config, memes_path=ctx.memes_path,
                           feature_dir=ctx.feature_dir, validation_report=ctx.validation_report)  # fmt: skip
    test = report.get("test", {})
    print(f"train_vlm ({cfg.regime}): test mean macro-F1 {test.get('mean/macro_f1')}, "
          f"invalid {test.get('all/invalid_rate')}, ROUGE-L {test.get('all/rouge_l')}; {report['seconds']} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("train_vlm", main))
