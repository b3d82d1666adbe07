"""Stage ``pretrain_clip``: the offline default CLIP, trained contrastively on the train split only.

Writes models/clip/{clip.safetensors, tokenizer.json, clip_config.json},
reports/metrics/pretrain_clip.json (val recall@1/@5 both ways) and reports/plots/pretrain_clip_loss.csv.
Timings go to MLflow only: the metrics file is a DVC out and must repeat byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

from memeops.config import load_params
from memeops.data.consolidate import read_memes
from memeops.models.clip import ClipEncoderConfig
from memeops.tracking.runs import log_metrics, tracked_run
from memeops.training.clip_pretrain import TIMING_KEYS, PretrainConfig, pretrain_clip
from memeops.training.experiment import TrainStageConfig, file_md5
from stages import run_stage

OUT_DIR = Path("models/clip")


def main() -> int:
    params = load_params()
    enc_cfg = params.section("encoders.clip", ClipEncoderConfig).model_copy(
        update={"weights": None, "pretrained": None, "tokenizer_path": None})
    cfg = params.section("pretrain_clip", PretrainConfig)
    memes_path = Path(params.data.output_dir) / "memes.parquet"
    memes = read_memes(memes_path)
    experiment = params.section("train", TrainStageConfig).experiment
    with tracked_run(experiment=experiment, run_name="pretrain_clip", stage="pretrain_clip", variant=None,
                     seed=cfg.seed, data_digest=file_md5(memes_path),
                     params={"pretrain_clip": cfg.model_dump(), "encoder": enc_cfg.model_dump()}):  # fmt: skip
        result = pretrain_clip(memes, cfg, enc_cfg, OUT_DIR)
        history = result.pop("history")
        for epoch, loss in enumerate(history["train_loss"], start=1):
            log_metrics({"train/loss": loss}, step=epoch)
        log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float))})
        import mlflow

        mlflow.log_artifact(str(OUT_DIR / "clip_config.json"), artifact_path="clip")
    metrics_dir, plots_dir = Path("reports/metrics"), Path("reports/plots")
    metrics_dir.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    scalars = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k not in TIMING_KEYS}
    (metrics_dir / "pretrain_clip.json").write_text(json.dumps(scalars, indent=2, sort_keys=True) + "\n")
    lines = ["epoch,train_loss"] + [f"{i + 1},{loss:.6f}" for i, loss in enumerate(history["train_loss"])]
    (plots_dir / "pretrain_clip_loss.csv").write_text("\n".join(lines) + "\n")
    print(f"pretrain_clip: val R@1 i2t {result['val_i2t_r1']:.3f} t2i {result['val_t2i_r1']:.3f} "
          f"(chance {result['chance_r1']:.4f}) in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("pretrain_clip", main))
