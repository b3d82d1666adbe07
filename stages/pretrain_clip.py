"""Stage ``pretrain_clip``: the offline default CLIP, trained contrastively on the train split only.

Writes models/clip/{clip.safetensors, tokenizer.json, clip_config.json},
reports/metrics/pretrain_clip.json (val recall@1/@5 both ways) and reports/plots/pretrain_clip_loss.csv.
Timings go to MLflow only: the metrics file is a DVC out and must repeat byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from memeops.models.clip import ClipEncoderConfig
from memeops.stage_context import StageContext
from memeops.tracking.runs import log_metrics
from memeops.training.clip_pretrain import TIMING_KEYS, EpochStats, PretrainConfig, pretrain_clip
from stages import run_stage

OUT_DIR = Path("models/clip")


def log_epoch(stats: EpochStats) -> None:
    """Each epoch's loss and rate to the open MLflow run as the epoch ends (live, not after the fit)."""
    log_metrics({"train/loss": stats.loss, "train/images_per_s": stats.images_per_s}, step=stats.epoch)


def main() -> int:
    ctx = StageContext()
    enc_cfg = ctx.section("encoders.clip", ClipEncoderConfig).model_copy(
        update={"weights": None, "pretrained": None, "tokenizer_path": None})
    cfg = ctx.section("pretrain_clip", PretrainConfig)
    memes = ctx.memes()
    with ctx.tracked_run("pretrain_clip", seed=cfg.seed,
                         params={"pretrain_clip": cfg.model_dump(), "encoder": enc_cfg.model_dump()}):  # fmt: skip
        result = pretrain_clip(memes, cfg, enc_cfg, OUT_DIR, on_epoch_end=log_epoch)  # prints progress too
        history = result.pop("history")
        log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float))})
        import mlflow  # heavy: imported once the run is open

        mlflow.log_artifact(str(OUT_DIR / "clip_config.json"), artifact_path="clip")
    scalars = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k not in TIMING_KEYS}
    ctx.write_metrics("pretrain_clip", scalars)
    lines = ["epoch,train_loss"] + [f"{i + 1},{loss:.6f}" for i, loss in enumerate(history["train_loss"])]
    plot = ctx.reports / "plots" / "pretrain_clip_loss.csv"
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"pretrain_clip: val R@1 i2t {result['val_i2t_r1']:.3f} t2i {result['val_t2i_r1']:.3f} "
          f"(chance {result['chance_r1']:.4f}) in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("pretrain_clip", main))
