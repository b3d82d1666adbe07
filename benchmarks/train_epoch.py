"""Benchmark: one GatedCLIP training epoch on cached features vs. the same epoch recomputing the
frozen encoders (image decode + preprocess + CLIP image and text towers) for every batch.

Run after ``dvc repro`` (needs the feature cache and the encoder): ``python -m benchmarks.train_epoch``
or ``make bench``. Merges ``{"train_epoch": {...}}`` into reports/bench.json and prints a table.
Both epochs run the same head, batches, optimiser and thread count, so the ratio is the share of
an epoch the cache saves.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks import merge_bench, print_table
from memeops.config import TrainStageConfig, load_params
from memeops.data.consolidate import read_memes
from memeops.data.features import FeatureConfig, FeatureDataset, FeatureStore, image_paths
from memeops.models.clip import ClipEncoderConfig, load_clip, resolve_encoder_config
from memeops.models.factory import build_model, model_config_class
from memeops.threads import torch_threads
from memeops.training.experiment import trainable_specs
from memeops.training.seeding import make_generator, seed_everything
from memeops.training.optim import compute_loss, make_optimizer

VARIANT = "gatedclip"


def _epoch(model, optimizer, loader, specs, features_of) -> tuple[float, int]:
    """One pass; ``features_of(batch)`` supplies ``image_emb``/``text_emb``. Returns (seconds, samples)."""
    model.train()
    start, seen = time.perf_counter(), 0
    for batch in loader:
        batch.update(features_of(batch))
        loss = compute_loss(model(batch), batch["targets"], specs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(batch["meme_id"])
    return time.perf_counter() - start, seen


def main() -> dict:
    params = load_params()
    stage = params.section("train", TrainStageConfig)
    trainer_cfg = stage.trainer_config(VARIANT)
    memes = read_memes(Path(params.data.output_dir) / "memes.parquet")
    encoder = load_clip(resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig)))
    store = FeatureStore(params.section("features", FeatureConfig).cache_dir, encoder.spec_key)
    specs, _ = trainable_specs(memes, stage.tasks_for(VARIANT))
    variant = stage.variant(VARIANT)
    model_cfg = model_config_class(variant.model).model_validate(
        {"image_dim": encoder.dim, "text_dim": encoder.dim, **variant.config})
    train = memes[memes["split"] == "train"].reset_index(drop=True)
    row_of = {m: i for i, m in enumerate(train["meme_id"].astype(str))}
    paths, texts = image_paths(train), train["text"].fillna("").astype(str).tolist()

    def recompute(batch: dict) -> dict:
        rows = [row_of[m] for m in batch["meme_id"]]
        images = [Image.open(paths[r]).convert("RGB") for r in rows]
        return {"image_emb": encoder.encode_images(images), "text_emb": encoder.encode_texts([texts[r] for r in rows])}

    results = {}
    with torch_threads(trainer_cfg.threads):
        for mode, features_of in (("cached", lambda batch: {}), ("recomputed", recompute)):
            seed_everything(trainer_cfg.seed)
            model = build_model(variant.model, model_cfg, specs)
            dataset = FeatureDataset(memes, store, specs, "train", train=True, generator=make_generator(1))
            loader = DataLoader(dataset, batch_size=trainer_cfg.batch_size, shuffle=True,
                                generator=make_generator(trainer_cfg.seed))  # fmt: skip
            seconds, seen = _epoch(model, make_optimizer(model, trainer_cfg), loader, specs, features_of)
            results[mode] = {"seconds": round(seconds, 3), "samples_per_s": round(seen / seconds, 1)}
    out = {
        "variant": VARIANT, "samples": len(train), "threads": trainer_cfg.threads,
        "torch_threads_available": torch.get_num_threads(), **results,
        "recomputed_over_cached": round(results["recomputed"]["seconds"] / results["cached"]["seconds"], 1),
    }  # fmt: skip
    merge_bench("train_epoch", out)
    print_table("GatedCLIP training epoch", [
        ("cached features", f"{results['cached']['seconds']:.2f} s", f"{results['cached']['samples_per_s']:.0f} samples/s"),
        ("recomputed encoders", f"{results['recomputed']['seconds']:.2f} s",
         f"{results['recomputed']['samples_per_s']:.0f} samples/s"),
        ("ratio", f"{out['recomputed_over_cached']}x", ""),
    ])  # fmt: skip
    return out


if __name__ == "__main__":
    main()
