"""Stage ``features``: frozen-encoder embeddings (image, flipped image, text) of every consolidated meme.

The cache under ``features.cache_dir`` is keyed by (encoder spec + weights hash, meme content hash)
and persists across runs: only memes not cached yet are computed. The encoder is
``encoders.clip`` when it names weights or a pretrained tag, else the one stage pretrain_clip trained.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from memeops.config import load_params
from memeops.data.consolidate import read_memes
from memeops.data.features import FeatureConfig, extract_features
from memeops.models.clip import ClipEncoderConfig, load_clip, resolve_encoder_config
from stages import run_stage


def main() -> int:
    params = load_params()
    encoder = load_clip(resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig)))
    memes = read_memes(Path(params.data.output_dir) / "memes.parquet")
    stats = extract_features(memes, encoder, params.section("features", FeatureConfig))
    Path("reports/metrics").mkdir(parents=True, exist_ok=True)
    Path("reports/metrics/features.json").write_text(json.dumps(asdict(stats), indent=2, sort_keys=True, default=str) + "\n")
    print(f"features: {stats.computed} computed, {stats.cached} cached, {stats.images_per_s or 0:.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage("features", main))
