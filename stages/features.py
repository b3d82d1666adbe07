"""Stage ``features``: frozen-encoder embeddings (image, flipped image, text) of every consolidated meme.

The cache under ``features.cache_dir`` is keyed by (encoder spec + weights hash, meme content hash)
and persists across runs: only memes not cached yet are computed. The encoder is
``encoders.clip`` when it names weights or a pretrained tag, else the one stage pretrain_clip trained.
"""

from __future__ import annotations

from dataclasses import asdict

from memeops.data.features import FeatureConfig, extract_features
from memeops.stage_context import StageContext
from stages import run_stage


def main() -> int:
    ctx = StageContext()
    encoder = ctx.encoder()
    stats = extract_features(ctx.memes(), encoder, ctx.section("features", FeatureConfig))
    ctx.write_metrics("features", asdict(stats), default=str)
    print(f"features: {stats.computed} computed, {stats.cached} cached, {stats.images_per_s or 0:.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("features", main))
