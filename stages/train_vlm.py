"""Stage ``train_vlm``: the MemeLens-style VLM (memeops.vlm) on every source and task.

``python -m stages.train_vlm``: builds one instruction sample per (meme, single-label task with a
label), trains the regime of ``params vlm.regime`` on TRAIN (selected on VAL answer loss), scores
val / test / test_unseen once, writes reports/metrics/vlm.json, reports/plots/train/vlm.csv and
reports/vlm/examples.csv, saves models/vlm/, logs the MLflow run and registers ``memeops-vlm``
with alias ``challenger`` (see memeops.vlm.experiment).
"""

from __future__ import annotations

from pathlib import Path

from memeops.config import load_params
from memeops.data.features import FeatureConfig
from memeops.models.clip import ClipEncoderConfig, resolve_encoder_config
from memeops.vlm.experiment import VLMStageConfig, run_vlm_stage
from stages import run_stage


def main() -> int:
    params = load_params()
    cfg = params.section("vlm", VLMStageConfig)
    tasks = cfg.tasks or params.model_dump(by_alias=True)["train"]["tasks"]
    report = run_vlm_stage(
        cfg, tasks, resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig)),
        memes_path=Path(params.data.output_dir) / "memes.parquet",
        feature_dir=Path(params.section("features", FeatureConfig).cache_dir),
        validation_report=Path("reports/validation.json"),
    )  # fmt: skip
    test = report.get("test", {})
    print(f"train_vlm ({cfg.regime}): test mean macro-F1 {test.get('mean/macro_f1')}, "
          f"invalid {test.get('all/invalid_rate')}, ROUGE-L {test.get('all/rouge_l')}; {report['seconds']} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("train_vlm", main))
