"""MGMCF's input side: text-token encoders, the region CNN, region-feature files and the Dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from memeops.data.mgmcf_inputs import (
    MgmcfDataset,
    RegionFeatures,
    cached_text_features,
    encode_regions,
    load_region_features,
    mirror_boxes,
    save_region_features,
)
from memeops.models.base import TaskSpec
from memeops.models.clip import ClipEncoderConfig, load_clip
from memeops.models.region_cnn import RegionCNNConfig, build_region_cnn, split_patches
from memeops.models.text_encoders import TextEncoderConfig, TextFeatures, load_text_encoder


@pytest.fixture(scope="module")
def clip():
    return load_clip(ClipEncoderConfig(tokenizer="open_clip", embed_dim=16, image_size=32, vision_width=8,
                                       text_width=32, text_layers=1, text_heads=2, context_length=24),
                     allow_random=True)  # fmt: skip


def test_clip_text_tokens_match_the_pooled_embedding(clip) -> None:
    enc = load_text_encoder(TextEncoderConfig(max_length=10, batch_size=2), clip)
    texts = ["a cat", "my boss on monday morning again", "", "猫"]
    out = enc.encode(texts)
    assert out.tokens.shape == (4, 10, clip.dim) and out.mask.shape == (4, 10)
    torch.testing.assert_close(out.global_, clip.encode_texts(texts), atol=1e-5, rtol=1e-5)
    lengths = out.mask.sum(1)
    assert lengths[1] > lengths[0] >= 2 and bool((lengths >= 2).all())  # <sot> ... <eot>
    assert float(out.tokens[~out.mask].abs().max()) == 0.0  # padding is zeros
    empty = enc.encode([])
    assert empty.tokens.shape == (0, 10, clip.dim)


def test_hf_text_encoder_needs_a_path_and_stays_local(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs path"):
        TextEncoderConfig(kind="hf")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_text_encoder(TextEncoderConfig(kind="hf", path=str(tmp_path / "missing")))


def test_cached_text_features_round_trip(clip, tmp_path: Path) -> None:
    enc = load_text_encoder(TextEncoderConfig(max_length=8), clip)
    first = cached_text_features(enc, ["a", "b c"], str(tmp_path))
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    second = cached_text_features(enc, ["a", "b c"], str(tmp_path))
    torch.testing.assert_close(first.tokens, second.tokens)
    assert torch.equal(first.mask, second.mask)


def test_split_patches_is_row_major() -> None:
    crops = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    crops[0, :2, 2:] = 255  # top-right quarter
    patches = split_patches(crops, grid=2, patch_size=2)
    assert patches.shape == (4, 3, 2, 2)
    assert [float(p.mean()) for p in patches] == [0.0, 1.0, 0.0, 0.0]


def test_region_cnn_clip_tower_and_vgg16_from_a_weights_file(clip, tmp_path: Path) -> None:
    cnn = build_region_cnn(RegionCNNConfig(patch_grid=2, patch_size=32), clip)
    out = cnn.encode(torch.randint(0, 255, (3, 40, 40, 3), dtype=torch.uint8))
    assert out.shape == (3, 4, clip.dim)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3, 4), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="needs the pipeline's CLIP"):
        build_region_cnn(RegionCNNConfig())

    from safetensors.torch import save_file
    from torchvision.models import vgg16

    torch.manual_seed(0)
    trunk = vgg16(weights=None).features
    save_file({f"features.{k}": v.contiguous() for k, v in trunk.state_dict().items()}, str(tmp_path / "vgg.safetensors"))
    vgg = build_region_cnn(RegionCNNConfig(kind="vgg16", weights=str(tmp_path / "vgg.safetensors"), patch_size=32))
    torch.testing.assert_close(vgg.net.features[0].weight, trunk[0].weight)  # the file's weights, not a fresh init
    assert vgg.encode(torch.zeros(2, 32, 32, 3, dtype=torch.uint8)).shape == (2, 1, 1024)
    save_file({"classifier.0.weight": torch.zeros(2, 2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="no 'features"):
        build_region_cnn(RegionCNNConfig(kind="vgg16", weights=str(tmp_path / "bad.safetensors")))
    with pytest.raises(ValueError, match="patch_size >= 32"):
        RegionCNNConfig(kind="vgg16", patch_size=16)


def test_encode_regions_skips_empty_slots_and_round_trips(clip, tmp_path: Path) -> None:
    cnn = build_region_cnn(RegionCNNConfig(), clip)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (2, 3, 32, 32, 3), dtype=np.uint8)
    valid = np.array([[True, True, False], [False, False, False]])
    boxes = rng.random((2, 3, 4), dtype=np.float32)
    rf = encode_regions(["a", "b"], crops, boxes, np.ones((2, 3), np.float32), valid, cnn,
                        classes=np.array([[3, 5, 7], [1, 1, 1]]))  # fmt: skip
    assert rf.feats.shape == (2, 3, 1, clip.dim)
    assert float(rf.feats[torch.from_numpy(~valid)].abs().max()) == 0.0
    assert rf.classes.tolist() == [[3, 5, -1], [-1, -1, -1]] and rf.class_vocab == 6
    # feats_flip are the mirrored crops' features
    mirrored = cnn.encode(torch.from_numpy(crops[0, :1]).flip(2))
    torch.testing.assert_close(rf.feats_flip[0, 0], mirrored[0])
    path = save_region_features(tmp_path / "v.safetensors", rf, {"view": "v"})
    back = load_region_features(path)
    assert back.keys == ["a", "b"] and torch.equal(back.valid, rf.valid) and torch.equal(back.classes, rf.classes)
    torch.testing.assert_close(back.feats, rf.feats, atol=2e-3, rtol=1e-2)  # stored as float16
    assert back.take(["b", "a"]).keys == ["b", "a"]
    with pytest.raises(KeyError, match="no region features"):
        back.take(["zzz"])
    with pytest.raises(FileNotFoundError, match="run stage region_features"):
        load_region_features(tmp_path / "missing.safetensors")


def test_dataset_flips_image_regions_and_boxes_together() -> None:
    n, k, d = 8, 2, 4
    rows = pd.DataFrame({"meme_id": [f"m{i}" for i in range(n)], "label_metaphor": ["yes", "no"] * 4})
    image, image_flip = np.zeros((n, d), np.float32), np.ones((n, d), np.float32)
    text = TextFeatures(torch.zeros(n, d), torch.zeros(n, 3, d), torch.ones(n, 3, dtype=torch.bool))
    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).repeat(n, k, 1)
    regions = RegionFeatures([str(i) for i in range(n)], torch.zeros(n, k, 1, d), torch.ones(n, k, 1, d), boxes,
                             torch.ones(n, k), torch.ones(n, k, dtype=torch.bool), torch.zeros(n, k, dtype=torch.long))  # fmt: skip
    specs = [TaskSpec("metaphor", "single", ("no", "yes"))]
    ds = MgmcfDataset(rows, image, image_flip, text, regions, specs, train=True, generator=torch.Generator().manual_seed(0))
    batch = ds[list(range(n))]
    flipped = batch["image_emb"][:, 0] == 1
    assert 0 < int(flipped.sum()) < n  # some of each
    assert torch.equal(batch["region_feats"][:, 0, 0, 0] == 1, flipped)
    torch.testing.assert_close(batch["region_boxes"][flipped], mirror_boxes(boxes[flipped]))
    torch.testing.assert_close(batch["region_boxes"][~flipped], boxes[~flipped])
    assert batch["targets"]["metaphor"].tolist() == [1, 0] * 4
    item = MgmcfDataset(rows, image, image_flip, text, regions, specs)[3]  # eval: never flipped
    assert item["meme_id"] == "m3" and float(item["image_emb"].sum()) == 0.0 and item["region_boxes"].shape == (k, 4)
    with pytest.raises(ValueError, match="seeded"):
        MgmcfDataset(rows, image, image_flip, text, regions, specs, train=True)
