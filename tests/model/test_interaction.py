"""The interaction models' inputs and heads: caption n-grams, detector object tags, the Bilinear model,
GatedCLIP's ``interaction="lowrank"`` switch, the lexical training dataset and serving encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError

from memeops.data.features import FeatureStore
from memeops.data.lexical import (
    NGRAMS_FILE,
    CaptionNgrams,
    LexicalConfig,
    LexicalDataset,
    LexicalInputs,
    LexicalInputsConfig,
    object_tags,
)
from memeops.models import baselines as bl
from memeops.models.base import TaskSpec, normalise_inputs
from memeops.models.bilinear import Bilinear, BilinearConfig
from memeops.models.factory import MODEL_REGISTRY, build_model
from memeops.models.gatedclip import GatedCLIP, GatedCLIPConfig

SPECS = [
    TaskSpec("hateful", "single", ("no", "yes")),
    TaskSpec("offensive", "single", ("not", "slight", "very", "hateful")),
    TaskSpec("target", "multi", ("religion", "race", "gender", "disability")),
]
B, DIM, V, C = 6, 16, 20, 5
TRAIN_CAPTIONS = [
    "my boss is a snake",
    "my teacher is a snake",
    "my boss is a cat",
    "老板是蛇",
    "老师是猫",
    "cats rule the office",
]
#: the interaction fields every lowrank model below needs (data-fixed in the project: the inputs set them)
LOWRANK = {"lexical_dim": V, "object_classes": C, "rank": 3, "object_hidden": 8}


# --------------------------------------------------------------------------- caption n-grams


def _ngrams(**cfg) -> CaptionNgrams:
    return CaptionNgrams.fit(TRAIN_CAPTIONS, LexicalConfig(**{"min_df": 1, **cfg}))


def test_vocabulary_comes_from_the_train_captions_only() -> None:
    ngrams = _ngrams()
    assert ngrams.size == len(ngrams.vocabulary) > 0
    assert {"snake", "boss", "蛇", "老板", "猫"} & set(ngrams.vocabulary) == {"蛇", "老板", "猫"}  # n <= 3
    assert {"sna", "bos", "蛇", "老板"} <= set(ngrams.vocabulary)
    # a word seen only in a (val/test) caption adds nothing to the vocabulary
    assert not any("z" in g for g in ngrams.vocabulary)
    row = ngrams.transform(["zebra zzz"])
    assert row.shape == (1, ngrams.size) and row.dtype == torch.float32
    present = [ngrams.vocabulary[i] for i in row[0].nonzero().flatten().tolist()]
    assert {"a", "a ", "e"} <= set(present)  # its known n-grams still count, and only those
    assert all(g in " zebra " or g in " zzz " for g in present)
    # min_df counts captions: an n-gram of one caption only is dropped at min_df=2
    strict = _ngrams(min_df=2).vocabulary
    assert "老" in strict and "蛇" not in strict and "off" in ngrams.vocabulary and "off" not in strict


def test_rows_are_unit_vectors_and_empty_text_is_a_zero_row() -> None:
    ngrams = _ngrams()
    rows = ngrams.transform(["my boss is a snake", "老板是猫", "", None, "!!!"])  # type: ignore[list-item]
    norms = rows.norm(dim=1)
    torch.testing.assert_close(norms[:2], torch.ones(2))
    assert torch.equal(rows[2], torch.zeros(ngrams.size)) and torch.equal(rows[3], torch.zeros(ngrams.size))
    # 0/1 per n-gram scaled by 1/sqrt(count): every non-zero entry of a row has the same value
    nz = rows[0][rows[0] > 0]
    torch.testing.assert_close(nz, torch.full_like(nz, 1 / len(nz) ** 0.5))
    # case-insensitive
    torch.testing.assert_close(ngrams.transform(["MY BOSS is a Snake"]), rows[:1])


def test_max_chars_cuts_captions_before_counting() -> None:
    prefix = "my boss is a cat"  # 16 characters: the smallest max_chars
    assert len(prefix) == 16
    a, b = prefix + " snake teacher", prefix + " office rule"
    cut = _ngrams(max_chars=16)
    torch.testing.assert_close(cut.transform([a]), cut.transform([b]))
    torch.testing.assert_close(cut.transform([a]), cut.transform([prefix]))
    full = _ngrams(max_chars=512)
    assert not torch.equal(full.transform([a]), full.transform([b]))  # the tails are in the vocabulary


def test_save_load_round_trip_gives_the_same_rows(tmp_path: Path) -> None:
    ngrams = _ngrams(ngram_max=2, max_chars=64)
    path = ngrams.save(tmp_path / "enc")
    assert path == tmp_path / "enc" / NGRAMS_FILE and "老板" in path.read_text(encoding="utf-8")
    loaded = CaptionNgrams.load(tmp_path / "enc")
    assert loaded.cfg == ngrams.cfg and loaded.vocabulary == ngrams.vocabulary
    texts = ["my boss is a snake", "老师是蛇 zebra", "", "Cats"]
    assert torch.equal(loaded.transform(texts), ngrams.transform(texts))
    with pytest.raises(FileNotFoundError, match="caption n-gram vocabulary"):
        CaptionNgrams.load(tmp_path / "nothing")


def test_too_high_min_df_is_a_one_line_error() -> None:
    # more captions asked for than given / every n-gram pruned (no bigram is in all six captions)
    for cfg in (LexicalConfig(min_df=50), LexicalConfig(ngram_min=2, min_df=len(TRAIN_CAPTIONS))):
        with pytest.raises(ValueError, match="min_df") as err:
            CaptionNgrams.fit(TRAIN_CAPTIONS, cfg)
        assert "\n" not in str(err.value) and str(err.value).startswith("caption n-grams:")
    with pytest.raises(ValueError, match="empty n-gram vocabulary"):
        CaptionNgrams(LexicalConfig(), [])
    with pytest.raises(ValidationError, match="ngram_min"):
        LexicalConfig(ngram_min=3, ngram_max=2)


# --------------------------------------------------------------------------- detector object tags


def _detections(*rows: tuple[str, int, float]) -> pd.DataFrame:
    return pd.DataFrame([{"image_sha256": key, "rank": i, "x0": 0.0, "y0": 0.0, "x1": 1.0, "y1": 1.0,
                          "score": score, "class_id": cls} for i, (key, cls, score) in enumerate(rows)])  # fmt: skip


DETECTIONS = _detections(("a", 0, 0.9), ("a", 2, 0.3), ("b", 1, 0.6), ("b", 1, 0.95), ("d", 2, 0.1))


def test_object_tags_per_image_with_min_score() -> None:
    tags = object_tags(DETECTIONS, ["a", "c", "b", "a"], num_classes=3, min_score=0.5)
    assert tags.dtype == torch.float32
    expected = [[1, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0]]  # duplicate "a" rows both tagged; "c" has none
    assert torch.equal(tags, torch.tensor(expected, dtype=torch.float32))
    low = object_tags(DETECTIONS, ["a", "c", "b", "d"], num_classes=3, min_score=0.05)
    assert torch.equal(low, torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32))
    none = object_tags(DETECTIONS.iloc[:0], ["a", "b"], num_classes=3, min_score=0.5)
    assert torch.equal(none, torch.zeros(2, 3))


def test_object_tags_refuse_a_class_outside_the_detector() -> None:
    bad = pd.concat([DETECTIONS, _detections(("b", 7, 0.8))], ignore_index=True)
    with pytest.raises(ValueError, match="class 7 but the detector has 3 classes"):
        object_tags(bad, ["a", "b"], num_classes=3, min_score=0.5)
    with pytest.raises(ValueError, match="has 2 classes"):
        object_tags(DETECTIONS, ["a"], num_classes=2, min_score=0.2)  # class 2 of "a" (score 0.3) is kept
    object_tags(DETECTIONS, ["a"], num_classes=2, min_score=0.5)  # ... and dropped at 0.5: no error
    object_tags(DETECTIONS, ["a"], num_classes=3, min_score=0.5)  # 3 classes: ids 0..2 are fine


# --------------------------------------------------------------------------- Bilinear


def _batch(b: int = B, seed: int = 0, ngrams: bool = True, tags: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {"image_emb": torch.randn(b, DIM, generator=g), "text_emb": torch.randn(b, DIM, generator=g)}
    if ngrams:
        batch["caption_ngrams"] = F.normalize((torch.rand(b, V, generator=g) < 0.3).float(), dim=-1)
    if tags:
        batch["object_tags"] = (torch.rand(b, C, generator=g) < 0.4).float()
    return batch


def _bilinear(seed: int = 0, **overrides) -> Bilinear:
    torch.manual_seed(seed)
    cfg = {"image_dim": DIM, "text_dim": DIM, "hidden": 8, **LOWRANK, **overrides}
    return build_model("bilinear", cfg, SPECS).eval()


def _assert_logit_shapes(out, b: int = B) -> None:
    assert set(out.logits) == {s.name for s in SPECS}
    for spec in SPECS:
        assert out.logits[spec.name].shape == (b, spec.num_labels)
        assert torch.isfinite(out.logits[spec.name]).all()


def _object_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
    scaled = normalise_inputs(batch, "unit_variance")
    with torch.no_grad():
        o = model.interaction.object_head(scaled["image_emb"])
    return weight * F.binary_cross_entropy_with_logits(o, batch["object_tags"])


def test_bilinear_is_registered_and_gives_logits_and_the_object_loss() -> None:
    assert MODEL_REGISTRY["bilinear"] == (BilinearConfig, Bilinear)
    model, batch = _bilinear(object_weight=0.5), _batch()
    assert isinstance(model, Bilinear) and model.interaction is not None and model.trunk is not None
    out = model(batch)
    _assert_logit_shapes(out)
    assert out.aux_loss is not None and out.aux_loss.ndim == 0
    torch.testing.assert_close(out.aux_loss, _object_loss(model, batch, 0.5))


def test_no_object_loss_unsupervised_or_without_tags() -> None:
    assert _bilinear(object_supervision=False)(_batch()).aux_loss is None
    assert _bilinear(object_weight=0.0)(_batch()).aux_loss is None
    out = _bilinear()(_batch(tags=False))  # serving: no detector, no tags
    _assert_logit_shapes(out)
    assert out.aux_loss is None


def test_bilinear_config_needs_the_lexical_inputs() -> None:
    base = {"image_dim": DIM, "text_dim": DIM}
    with pytest.raises(ValidationError, match="needs object_classes"):
        BilinearConfig(**base)  # lowrank by default: the factory's default config is not enough
    with pytest.raises(ValidationError, match="needs lexical_dim"):
        BilinearConfig(**base, object_classes=C)
    BilinearConfig(**base, object_classes=C, text_view="clip")  # the CLIP text view needs no vocabulary
    with pytest.raises(ValidationError, match="trunk=False needs interaction 'lowrank'"):
        BilinearConfig(**base, trunk=False, interaction="none")
    with pytest.raises(ValidationError):
        BilinearConfig(**base, **LOWRANK, text_view="bert")
    with pytest.raises(ValidationError):
        BilinearConfig(**base, **LOWRANK, rnak=2)


def test_clip_text_view_reads_text_emb_not_ngrams() -> None:
    model = _bilinear(text_view="clip", lexical_dim=0, trunk=False)
    assert model.interaction.text_factor.in_features == DIM
    batch = _batch(ngrams=False)
    out = model(batch)
    _assert_logit_shapes(out)
    other_text = {**batch, "text_emb": torch.randn(B, DIM)}
    assert not torch.allclose(model(other_text).logits["hateful"], out.logits["hateful"])


def test_ngram_view_reads_caption_ngrams_and_needs_them() -> None:
    model, batch = _bilinear(trunk=False), _batch()
    assert model.interaction.text_factor.in_features == V and model.heads is None
    out = model(batch)
    # without the trunk only the interaction reads the inputs: text_emb is ignored, the n-grams are not
    other_text = {**batch, "text_emb": torch.randn(B, DIM)}
    torch.testing.assert_close(model(other_text).logits["hateful"], out.logits["hateful"])
    flipped = {**batch, "caption_ngrams": batch["caption_ngrams"].flip(0)}
    assert not torch.allclose(model(flipped).logits["hateful"], out.logits["hateful"])
    with pytest.raises(KeyError, match="caption_ngrams"):
        model(_batch(ngrams=False))


def test_interaction_none_is_the_concat_baseline_exactly() -> None:
    model = _bilinear(interaction="none")
    assert model.interaction is None
    assert not any(name.startswith("interaction") for name, _ in model.named_parameters())
    concat = bl.Concat(bl.ConcatConfig(image_dim=DIM, text_dim=DIM, hidden=8), SPECS).eval()
    concat.load_state_dict(model.state_dict())  # strict: the same parameters under the same names
    batch = _batch(ngrams=False, tags=False)
    out, ref = model(batch), concat(batch)
    assert out.aux_loss is None
    for spec in SPECS:
        torch.testing.assert_close(out.logits[spec.name], ref.logits[spec.name])
    n_lowrank = sum(p.numel() for p in _bilinear().parameters())
    assert n_lowrank > sum(p.numel() for p in model.parameters())


def test_interaction_alone_learns_a_caption_object_agreement(torch_globals) -> None:
    """label = 1 iff the caption's family equals the pictured object's family (2 families x 2 names
    x 2 classes): an XOR of the two modalities, which the rank-2 interaction alone must learn."""
    torch.manual_seed(0)
    family_of_text, family_of_class = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    text_id, cls = torch.arange(16) // 4, torch.arange(16) % 4  # every (caption, object) pair
    text_id, cls = text_id.repeat(4), cls.repeat(4)
    n = len(text_id)
    labels = (family_of_text[text_id] == family_of_class[cls]).long()
    assert labels.float().mean() == 0.5  # chance is 0.5
    batch = {"image_emb": F.one_hot(cls, 4).float() + 0.1 * torch.randn(n, 4),
             "text_emb": torch.randn(n, 4),  # noise: trunk=False does not read it
             "caption_ngrams": F.one_hot(text_id, 4).float(), "object_tags": F.one_hot(cls, 4).float()}  # fmt: skip
    spec = [SPECS[0]]
    cfg = BilinearConfig(image_dim=4, text_dim=4, trunk=False, lexical_dim=4, object_classes=4, rank=2,
                         object_hidden=16, object_dropout=0.0, interaction_dropout=0.0)  # fmt: skip
    model = Bilinear(cfg, spec).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(200):
        out = model(batch)
        loss = F.cross_entropy(out.logits["hateful"], labels) + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model.eval()(batch).logits["hateful"].argmax(-1) == labels).float().mean().item()
    assert accuracy >= 0.95


# --------------------------------------------------------------------------- GatedCLIP + interaction


def _gated(**overrides) -> GatedCLIP:
    torch.manual_seed(0)
    cfg = {"image_dim": DIM, "text_dim": DIM, "hidden": 16, "proj_dim": 8, "gate_hidden": 4, "cls_hidden": 8}
    return GatedCLIP(GatedCLIPConfig(**cfg, **overrides), SPECS).eval()


def test_gatedclip_default_has_no_interaction_parameters() -> None:
    model = _gated()
    assert model.interaction is None and model.config.interaction == "none"
    keys = set(model.state_dict())
    assert not any(k.startswith("interaction") for k in keys)
    assert keys == set(_gated(interaction="none", **LOWRANK).state_dict())  # the fields alone add nothing
    with pytest.raises(ValidationError, match="needs object_classes"):
        GatedCLIPConfig(interaction="lowrank")


def test_gatedclip_lowrank_adds_the_interaction_terms_and_object_loss() -> None:
    plain, lowrank = _gated(), _gated(interaction="lowrank", object_weight=2.0, **LOWRANK)
    batch = _batch()
    assert {k for k in lowrank.state_dict() if not k.startswith("interaction")} == set(plain.state_dict())
    out, ref = lowrank(batch), plain(batch)
    _assert_logit_shapes(out)
    assert out.extras["gate"].shape == (B,)
    # the same base model (seeded, built first): logits differ by exactly the interaction's terms
    scaled = normalise_inputs(batch, "unit_variance")
    with torch.no_grad():
        terms, z, _ = lowrank.interaction(scaled, scaled["image_emb"], scaled["text_emb"])
    assert z.shape == (B, 3)
    for spec in SPECS:
        torch.testing.assert_close(out.logits[spec.name], ref.logits[spec.name] + terms[spec.name])
    # aux = the alignment term + the object-tag term
    torch.testing.assert_close(out.aux_loss, ref.aux_loss + _object_loss(lowrank, batch, 2.0))
    assert out.aux_loss > ref.aux_loss
    torch.testing.assert_close(lowrank(_batch(tags=False)).aux_loss, ref.aux_loss)  # serving: alignment only
    assert _gated(interaction="lowrank", align=False, **LOWRANK)(_batch(tags=False)).aux_loss is None


# --------------------------------------------------------------------------- the lexical training inputs


def test_lexical_inputs_fit_on_train_and_batch_ngrams_and_tags(tmp_path: Path, cached_features) -> None:
    n = 12
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    texts = TRAIN_CAPTIONS + ["zebra snake", "老板", "my cat"] + ["quux boss", "", "猫"]
    memes = pd.DataFrame({"meme_id": [f"m{i}" for i in range(n)], "split": splits, "text": texts,
                          "image_sha256": [f"{i % 10:064x}" for i in range(n)],  # memes 10, 11 reuse images 0, 1
                          "label_hateful": ["yes", "no"] * 6})  # fmt: skip
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(n, DIM)).astype(np.float32), rng.normal(size=(n, DIM)).astype(np.float32)
    cached_features(tmp_path / "features", memes, image, text)
    detections = _detections((f"{0:064x}", 1, 0.9), (f"{7:064x}", 2, 0.8), (f"{7:064x}", 0, 0.2))
    cfg = LexicalInputsConfig(lexical={"min_df": 1})
    store = FeatureStore(tmp_path / "features", "spec")
    inputs = LexicalInputs(memes, store, [SPECS[0]], DIM, cfg, detections, num_classes=3, min_score=0.5)
    assert inputs.ngrams.vocabulary == _ngrams().vocabulary  # fitted on the TRAIN captions only
    assert not any(ch in g for g in inputs.ngrams.vocabulary for ch in "zq")
    assert inputs.model_dims() == {"image_dim": DIM, "text_dim": DIM, "lexical_dim": inputs.ngrams.size,
                                   "object_classes": 3}  # fmt: skip
    val = inputs.dataset("val")
    assert isinstance(val, LexicalDataset) and len(val) == 3
    batch = val.batch([1, 2])  # memes 7, 8
    assert batch["meme_id"] == ["m7", "m8"]
    torch.testing.assert_close(batch["caption_ngrams"], inputs.ngrams.transform(texts[7:9]))
    assert torch.equal(batch["object_tags"], torch.tensor([[0, 0, 1], [0, 0, 0]], dtype=torch.float32))
    test = inputs.dataset("test").batch([0, 1])  # memes 9, 10: meme 10 shows image 0
    assert torch.equal(test["object_tags"], torch.tensor([[0, 0, 0], [0, 1, 0]], dtype=torch.float32))
    out = build_model("bilinear", {**inputs.model_dims(), "hidden": 8, "rank": 2}, [SPECS[0]]).eval()(batch)
    assert out.logits["hateful"].shape == (2, 2) and out.aux_loss is not None


# --------------------------------------------------------------------------- the serving encoder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrain_clip-style folder (clip.safetensors + clip_config.json) of a tiny random CLIP."""
    from safetensors.torch import save_model

    from memeops.models.clip import ClipEncoderConfig, load_clip

    folder = tmp_path_factory.mktemp("clip")
    clip = load_clip(ClipEncoderConfig(tokenizer="open_clip", embed_dim=16, image_size=32, vision_width=8,
                                       text_width=32, text_layers=1, text_heads=2, context_length=24),
                     allow_random=True)  # fmt: skip
    save_model(clip.model, str(folder / "clip.safetensors"))
    packed_cfg = clip.config.model_copy(update={"weights": "clip.safetensors"})
    (folder / "clip_config.json").write_text(packed_cfg.model_dump_json())
    return folder


def test_lexical_encoder_packs_loads_and_encodes_raw_memes(tmp_path: Path, clip_dir: Path) -> None:
    from memeops.serving.folder import ClipFeatureInputs
    from memeops.serving.lexical import LexicalInputEncoder
    from memeops.serving.predictor import input_encoder_class

    assert input_encoder_class("lexical") is LexicalInputEncoder
    ngrams = _ngrams()
    section = LexicalInputEncoder.pack({"clip_dir": clip_dir, "ngrams": ngrams}, tmp_path / "encoder")
    assert section["kind"] == "lexical" and section["ngrams"] == ngrams.size
    assert section["clip"]["kind"] == ClipFeatureInputs.kind and section["clip"]["dim"] == 16
    assert (tmp_path / "encoder" / NGRAMS_FILE).is_file()
    assert (tmp_path / "encoder" / "clip" / "clip_config.json").is_file()

    encoder = LexicalInputEncoder.load(tmp_path / "encoder", section, "cpu")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(2)]
    captions = ["my boss is a snake", "老师是猫"]
    out = encoder.encode(images, captions)
    assert set(out) == {"image_emb", "text_emb", "caption_ngrams"}
    assert out["image_emb"].shape == out["text_emb"].shape == (2, 16)
    assert torch.equal(out["caption_ngrams"], ngrams.transform(captions))
    clip = ClipFeatureInputs.load(clip_dir, {}, "cpu").encode(images, captions)  # packed CLIP = the source's
    torch.testing.assert_close(out["image_emb"], clip["image_emb"])
    torch.testing.assert_close(out["text_emb"], clip["text_emb"])


def test_lexical_inputs_config_mistakes_are_one_line_config_errors(tmp_path: Path) -> None:
    """A non-detector object view, or a detector without classes, is a ConfigError (stages print it as
    one line), raised before any data is read."""
    import json
    from types import SimpleNamespace

    from memeops.config import ConfigError, VariantConfig
    from memeops.training.experiment import lexical_family
    from memeops.vision.extract import RegionsConfig

    (tmp_path / "detector").mkdir()
    (tmp_path / "detector" / "detector_config.json").write_text(json.dumps({"class_names": []}))
    (tmp_path / "detections.parquet").write_bytes(b"")
    regions = RegionsConfig(detector_dir=str(tmp_path / "detector"), output_dir=str(tmp_path))
    memes = pd.DataFrame({"split": ["train"], "text": ["a"], "image_sha256": ["0" * 64]})
    encoder = SimpleNamespace(dim=4)

    def family(object_view: str) -> None:
        variant = VariantConfig.model_validate({"model": "bilinear", "inputs": {"lexical": {}, "object_view": object_view}})
        lexical_family(variant, memes, None, [], encoder, regions)

    with pytest.raises(ConfigError, match="object_view 'grid' must be a detector view"):
        family("grid")
    with pytest.raises(ConfigError, match="names no classes"):
        family("detector")
    with pytest.raises(ConfigError, match="needs the regions params"):
        lexical_family(VariantConfig.model_validate({"model": "bilinear", "inputs": {"lexical": {}}}),
                       memes, None, [], encoder, None)  # fmt: skip
