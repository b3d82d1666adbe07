"""Feature cache: content keys, hit/miss logic, append-only shards, per-encoder folders, FeatureDataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

from memeops.data.features import (
    INDEX_FILE,
    SPEC_FILE,
    FeatureConfig,
    FeatureDataset,
    FeatureStore,
    content_key,
    content_keys,
    extract_features,
)
from memeops.models.base import IGNORE_INDEX, MISSING_MULTI, TaskSpec
from memeops.models.clip import ClipEncoder, ClipEncoderConfig, load_clip
from memeops.models.text_tokenizer import CorpusTokenizer

TINY = dict(embed_dim=16, image_size=32, patch_size=16, vision_width=32, vision_layers=1, vision_heads=2,
            text_width=32, text_layers=1, text_heads=2, context_length=16)  # fmt: skip
SPECS = [
    TaskSpec("hateful", "single", ("not_hateful", "hateful")),
    TaskSpec("target", "multi", ("women", "religion", "race")),
]
TEXTS = ["cats made my week", "说实话，老师", "nobody: gamers", "每天都是阳光", "", "pure sunshine"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> ClipEncoder:
    folder = tmp_path_factory.mktemp("tok")
    tok = CorpusTokenizer.train(TEXTS * 3, vocab_size=120).save(folder / "tokenizer.json")
    return load_clip(ClipEncoderConfig(tokenizer_path=str(tok), **TINY), allow_random=True)


def _write_image(path: Path, seed: int) -> str:
    """A 32x32 PNG at the encoder's own size, so preprocessing is lossless and commutes with a flip."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path, format="PNG")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _memes(root: Path, ids: range, splits: tuple[str, ...] = ("train", "val")) -> pd.DataFrame:
    hateful = ["hateful", "not_hateful", None]
    target = [["women"], [], None, ["religion", "race"]]
    rows = []
    for i in ids:
        sha = _write_image(root / "img" / f"{i}.png", i)
        rows.append(dict(meme_id=f"m:{i}", split=splits[i % len(splits)], text=TEXTS[i % len(TEXTS)],
                         source_root=str(root), image_path=f"img/{i}.png", image_sha256=sha,
                         label_hateful=hateful[i % 3], label_target=target[i % 4]))  # fmt: skip
    return pd.DataFrame(rows)


def _parquet_roundtrip(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Read back as the consolidated table is read (list columns arrive as numpy arrays)."""
    df.to_parquet(path)
    return pd.read_parquet(path)


def test_content_key_is_sha256_of_image_hash_and_text() -> None:
    assert content_key("ab", "hi") == hashlib.sha256(b"ab\0hi").hexdigest()
    assert content_key("ab", "hi") != content_key("ab", "hi ") != content_key("ac", "hi")
    df = pd.DataFrame({"image_sha256": ["ab", "ab"], "text": ["hi", None]})
    assert content_keys(df) == [content_key("ab", "hi"), content_key("ab", "")]


def test_cache_hits_misses_and_append_only_shards(tmp_path: Path, encoder: ClipEncoder) -> None:
    cfg = FeatureConfig(batch_size=4, cache_dir=str(tmp_path / "features"), num_workers=2)  # worker path
    memes = _memes(tmp_path, range(6))
    first = extract_features(memes, encoder, cfg)
    assert (first.total, first.cached, first.computed) == (6, 0, 6)
    assert first.new_shards == ["shard_00000.safetensors"] and first.images_per_s > 0
    folder = tmp_path / "features" / encoder.spec_key
    assert (folder / INDEX_FILE).is_file() and (folder / SPEC_FILE).is_file()
    shard0 = (folder / "shard_00000.safetensors").read_bytes()

    again = extract_features(memes, encoder, cfg)
    assert (again.cached, again.computed, again.new_shards) == (6, 0, [])

    more = pd.concat([memes, _memes(tmp_path, range(6, 8))], ignore_index=True)
    added = extract_features(more, encoder, cfg)
    assert (added.cached, added.computed) == (6, 2)
    assert added.new_shards == ["shard_00001.safetensors"]
    assert (folder / "shard_00000.safetensors").read_bytes() == shard0  # never rewritten

    store = FeatureStore(cfg.cache_dir, encoder.spec_key)
    assert len(store) == 8
    got = store.get(content_keys(more))
    assert set(got) == {"image", "image_flip", "text"} and got["image"].shape == (8, encoder.dim)
    images = [Image.open(tmp_path / p) for p in more["image_path"]]
    assert np.allclose(got["image"], encoder.encode_images(images).numpy(), atol=1e-5)
    assert np.allclose(got["text"], encoder.encode_texts(more["text"].tolist()).numpy(), atol=1e-5)
    flipped = encoder.encode_images([ImageOps.mirror(im) for im in images]).numpy()
    assert np.allclose(got["image_flip"], flipped, atol=1e-5)


def test_small_shards_duplicates_and_order(tmp_path: Path, encoder: ClipEncoder) -> None:
    cfg = FeatureConfig(batch_size=2, shard_size=3, cache_dir=str(tmp_path / "f"), num_workers=0)
    memes = _memes(tmp_path, range(7))
    dup = memes.iloc[[0]].assign(meme_id="m:dup")  # same image and text as m:0 -> same key
    stats = extract_features(pd.concat([memes, dup], ignore_index=True), encoder, cfg)
    assert stats.total == 7 and stats.computed == 7
    assert stats.new_shards == [f"shard_0000{i}.safetensors" for i in range(3)]  # 3 + 3 + 1 rows
    store = FeatureStore(cfg.cache_dir, encoder.spec_key)
    keys = content_keys(memes)
    rev = store.get(keys[::-1])["text"]
    assert np.allclose(rev[::-1], store.get(keys)["text"])
    index = json.loads((tmp_path / "f" / encoder.spec_key / INDEX_FILE).read_text())
    assert index["dim"] == encoder.dim and len(index["entries"]) == 7


def test_other_encoder_spec_gets_its_own_folder(tmp_path: Path, encoder: ClipEncoder) -> None:
    cfg = FeatureConfig(cache_dir=str(tmp_path / "f"), num_workers=0)
    memes = _memes(tmp_path, range(3))
    other = load_clip(encoder.config.model_copy(update={"init_seed": 1}), allow_random=True)
    assert other.spec_key != encoder.spec_key
    assert extract_features(memes, encoder, cfg).computed == 3
    assert extract_features(memes, other, cfg).computed == 3
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == sorted([encoder.spec_key, other.spec_key])


def test_store_errors_are_one_line(tmp_path: Path, encoder: ClipEncoder) -> None:
    with pytest.raises(FileNotFoundError, match="extract_features"):
        FeatureStore(tmp_path / "nothing", encoder.spec_key)
    cfg = FeatureConfig(cache_dir=str(tmp_path / "f"), num_workers=0)
    memes = _memes(tmp_path, range(2))
    extract_features(memes, encoder, cfg)
    store = FeatureStore(cfg.cache_dir, encoder.spec_key)
    with pytest.raises(KeyError) as err:
        store.get([*content_keys(memes), "a" * 64, "b" * 64])
    assert "2 of 4 content keys" in str(err.value) and "\n" not in str(err.value)


def test_feature_dataset_shapes_targets_and_masking(tmp_path: Path, encoder: ClipEncoder) -> None:
    memes = _parquet_roundtrip(_memes(tmp_path, range(8)), tmp_path / "memes.parquet")
    cfg = FeatureConfig(cache_dir=str(tmp_path / "f"), num_workers=0)
    extract_features(memes, encoder, cfg)
    store = FeatureStore(cfg.cache_dir, encoder.spec_key)
    ds = FeatureDataset(memes, store, SPECS, split="train", train=False)
    assert len(ds) == 4  # ids 0, 2, 4, 6
    item = ds[0]
    assert item["image_emb"].shape == (encoder.dim,) and item["text_emb"].shape == (encoder.dim,)
    assert item["meme_id"] == "m:0"
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image_emb"].shape == (4, encoder.dim) and batch["meme_id"] == ["m:0", "m:2", "m:4", "m:6"]
    # hateful cycles [hateful, not_hateful, None] over ids 0, 2, 4, 6 -> hateful, None, not_hateful, hateful
    assert batch["targets"]["hateful"].tolist() == [1, IGNORE_INDEX, 0, 1]
    # target cycles [["women"], [], None, ["religion", "race"]] over ids 0, 2, 4, 6
    assert batch["targets"]["target"].tolist() == [
        [1.0, 0.0, 0.0], [MISSING_MULTI] * 3, [1.0, 0.0, 0.0], [MISSING_MULTI] * 3,
    ]  # fmt: skip
    val = FeatureDataset(memes, store, SPECS, split="val")
    assert val.targets["target"][0].tolist() == [0.0, 0.0, 0.0]  # id 1: [] = labelled "none of these"
    assert val.targets["target"][1].tolist() == [0.0, 1.0, 1.0]  # id 3
    with pytest.raises(ValueError, match="Generator"):
        FeatureDataset(memes, store, SPECS, split="train", train=True)


def test_flip_augmentation_is_seeded(tmp_path: Path, encoder: ClipEncoder) -> None:
    memes = _memes(tmp_path, range(16), splits=("train",))
    cfg = FeatureConfig(cache_dir=str(tmp_path / "f"), num_workers=0)
    extract_features(memes, encoder, cfg)
    store = FeatureStore(cfg.cache_dir, encoder.spec_key)

    def flips(seed: int) -> list[bool]:
        gen = torch.Generator().manual_seed(seed)
        ds = FeatureDataset(memes, store, SPECS, "train", train=True, generator=gen)
        out = []
        for i in range(len(ds)):
            emb = ds[i]["image_emb"]
            assert torch.equal(emb, ds.image[i]) or torch.equal(emb, ds.image_flip[i])
            out.append(torch.equal(emb, ds.image_flip[i]))
        return out

    a, b, c = flips(3), flips(3), flips(4)
    assert a == b and a != c and 0 < sum(a) < len(a)
    plain = FeatureDataset(memes, store, SPECS, "train", train=False)
    assert all(torch.equal(plain[i]["image_emb"], plain.image[i]) for i in range(len(plain)))
