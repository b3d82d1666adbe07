"""pretrain_clip's speed-ups keep the recipe: the decoded-image cache and the per-epoch progress."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from memeops.data import image_cache
from memeops.data.features import ImageFiles
from memeops.data.image_cache import CachedImageFiles, DecodedImages
from memeops.models.clip import ClipEncoderConfig
from memeops.training import clip_pretrain
from memeops.training.clip_pretrain import (
    WEIGHTS_FILE,
    EpochStats,
    PretrainConfig,
    pretrain_clip,
    train_transform,
)

SMALL = dict(embed_dim=32, image_size=32, patch_size=16, vision_width=16, vision_kind="convnet",
             text_width=64, text_layers=1, text_heads=2, context_length=24)  # fmt: skip


def _images(root: Path, n: int) -> list[Path]:
    """n random 48-px JPEGs."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = root / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _epochs(ds: torch.utils.data.Dataset, epochs: int) -> list[torch.Tensor]:
    """Every batch of ``epochs`` shuffled passes, from fixed seeds (crops draw from the global generator)."""
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))
    return [images for _ in range(epochs) for images, _idx in loader]


def test_cache_decodes_each_file_once_and_matches_uncached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _images(tmp_path, 6)
    paths = paths + [paths[0]]  # the same file twice: decoded once
    transform = train_transform(32, (0.5, 1.0))
    expected = _epochs(ImageFiles(paths, transform), 3)

    opened: list[Path] = []
    real_open = Image.open
    def counting_open(path: Path, *args: object) -> Image.Image:
        opened.append(Path(path))
        return real_open(path, *args)

    monkeypatch.setattr(image_cache.Image, "open", counting_open)
    cached = CachedImageFiles(paths, transform)
    got = _epochs(cached, 3)
    assert sorted(opened) == sorted(set(paths)) and cached.cache.decodes == len(cached.cache) == 6
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_shared_cache_serves_a_second_dataset(tmp_path: Path) -> None:
    paths = _images(tmp_path, 3)
    cache = DecodedImages()
    first = CachedImageFiles(paths, np.asarray, cache)
    second = CachedImageFiles(paths[::-1], np.asarray, cache)
    assert np.array_equal(first[0][0], second[2][0]) and cache.decodes == 1  # one file, read once
    assert first[0][0].shape == (48, 48, 3) and second[0][0].shape == (48, 48, 3) and cache.decodes == 2


def _memes(root: Path, n: int) -> pd.DataFrame:
    """n memes (2/3 train, 1/3 val) with one object each."""
    paths = _images(root / "images", n)
    classes = ["snake", "rat", "octopus"]
    rows = [dict(split="train" if i % 3 else "val", text=f"caption number {i % 5}", source_root=str(root),
                 image_path=str(p.relative_to(root)),
                 extra=json.dumps({"objects": [{"class": classes[i % 3]}]}))
            for i, p in enumerate(paths)]  # fmt: skip
    return pd.DataFrame(rows)


def test_pretrain_cache_gives_the_uncached_weights_and_reports_each_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    memes = _memes(tmp_path / "data", 36)  # 24 train
    cfg = PretrainConfig(epochs=2, batch_size=8, warmup_steps=2, vocab_size=120, threads=1)
    enc_cfg = ClipEncoderConfig(**SMALL)
    seen: list[EpochStats] = []
    cached = pretrain_clip(memes, cfg, enc_cfg, tmp_path / "cached", on_epoch_end=seen.append)
    lines = capsys.readouterr().err.splitlines()

    monkeypatch.setattr(clip_pretrain, "CachedImageFiles", ImageFiles)  # the pre-cache loader
    plain = pretrain_clip(memes, cfg, enc_cfg, tmp_path / "plain", progress=False)
    assert capsys.readouterr().err == ""
    weights = [(tmp_path / run / WEIGHTS_FILE).read_bytes() for run in ("cached", "plain")]
    assert weights[0] == weights[1]
    assert cached["history"] == plain["history"] and cached["val_i2t_r1"] == plain["val_i2t_r1"]

    assert [s.epoch for s in seen] == [1, 2] and [s.loss for s in seen] == cached["history"]["train_loss"]
    assert all(s.images == 24 and s.epochs == 2 for s in seen) and seen[-1].eta_s == 0
    assert [ln.split(":")[0] for ln in lines if ln.startswith("pretrain_clip epoch")] == [
        "pretrain_clip epoch 1/2", "pretrain_clip epoch 2/2"]  # fmt: skip


def test_epoch_line_reports_loss_rate_and_eta() -> None:
    stats = EpochStats(epoch=2, epochs=20, loss=3.14159, images=1472, seconds=16.0, elapsed=34.0)
    assert stats.images_per_s == 92 and stats.eta_s == pytest.approx(306)
    assert stats.line() == "pretrain_clip epoch 2/20: loss 3.1416, 92 img/s, 16.0 s, ETA 5:06"
