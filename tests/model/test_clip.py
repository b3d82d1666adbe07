"""CLIP encoder loading (local files only), the corpus tokenizer, and tiny-size contrastive pretraining."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from memeops.models.clip import (
    TINY_ARCH,
    ClipEncoderConfig,
    build_clip_model,
    encode_text,
    load_clip,
    load_encoder_config,
    resolve_pretrained_file,
)
from memeops.models.text_tokenizer import CorpusTokenizer
from memeops.training.clip_pretrain import (
    CONFIG_FILE,
    TIMING_KEYS,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    ObjectTags,
    PairTokens,
    PretrainConfig,
    caption_contrast_loss,
    mask_tokens,
    objects_alt_text,
    pair_candidates,
    pair_texts,
    pretrain_clip,
    retrieval_recall,
)

TEXTS = [
    "Honestly? cats made my whole week",
    "Nobody: teachers: fixing everything before lunch",
    "每天都是满满的阳光",
    "说实话？老师让我开心了一整周",
    "我们能不能都承认，猫这次干得漂亮？",
    "gamers be like pure sunshine, every single day",
] * 4

# Small enough that each model builds and runs in milliseconds.
SMALL = dict(embed_dim=32, image_size=32, patch_size=16, vision_width=64, vision_layers=1, vision_heads=2,
             text_width=64, text_layers=1, text_heads=2, context_length=24)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    return CorpusTokenizer.train(TEXTS, vocab_size=300).save(folder / "tokenizer.json")


def _images(n: int, size: int = 48, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# --- tokenizer -------------------------------------------------------------------------------------


def test_tokenizer_special_ids_and_eot_highest(tokenizer_file: Path) -> None:
    tok = CorpusTokenizer.load(tokenizer_file)
    assert (tok.pad_id, tok.sot_id, tok.unk_id) == (0, 1, 2)
    assert tok.eot_id == tok.vocab_size - 1  # open_clip's argmax pooling finds <eot>
    out = tok(["cats made my week", "说实话"], context_length=10)
    assert out.shape == (2, 10) and out.dtype == torch.long
    assert (out[:, 0] == tok.sot_id).all()
    assert (out.argmax(dim=-1) == (out == tok.eot_id).int().argmax(dim=-1)).all()
    eot_pos = int((out[1] == tok.eot_id).nonzero())
    assert (out[1, eot_pos + 1 :] == tok.pad_id).all()


def test_tokenizer_chinese_is_units_not_bytes(tokenizer_file: Path) -> None:
    tok = CorpusTokenizer.load(tokenizer_file)
    ids = tok.encode_ids(["说实话，老师"])[0]
    assert tok.unk_id not in ids and len(ids) <= 6  # at most one token per character (merges allowed)
    pieces = tok.tokenizer.encode("说实话，老师", add_special_tokens=False).tokens
    assert "".join(pieces).replace(",", "，") == "说实话，老师"  # NFKC folds the full-width comma
    assert tok.encode_ids(["龘"])[0] == [tok.unk_id]  # unseen character: <unk>, not byte soup


def test_tokenizer_truncation_keeps_eot_and_roundtrip(tokenizer_file: Path, tmp_path: Path) -> None:
    tok = CorpusTokenizer.load(tokenizer_file)
    long = " ".join(["cats made my whole week"] * 20)
    out = tok([long], context_length=8)
    assert out[0, -1] == tok.eot_id and (out[0] != tok.pad_id).all()
    again = CorpusTokenizer.load(tok.save(tmp_path / "t.json"))
    assert torch.equal(again(TEXTS, 24), tok(TEXTS, 24))


# --- config and errors -----------------------------------------------------------------------------


def test_config_rejects_bad_combinations() -> None:
    with pytest.raises(ValueError, match="not both"):
        ClipEncoderConfig(arch="ViT-B-32", pretrained="openai", weights="x.pt", tokenizer="open_clip")
    with pytest.raises(ValueError, match="tokenizer='open_clip'"):
        ClipEncoderConfig(arch="ViT-B-32", pretrained="openai")
    with pytest.raises(ValueError):
        ClipEncoderConfig(unknown_field=1)


def test_no_weights_needs_allow_random(tokenizer_file: Path) -> None:
    with pytest.raises(ValueError, match="pretrain_clip"):
        load_clip(ClipEncoderConfig(tokenizer_path=str(tokenizer_file), **SMALL))


def test_missing_weights_file_is_one_line(tmp_path: Path, tokenizer_file: Path) -> None:
    missing = tmp_path / "nope" / "clip.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        load_clip(ClipEncoderConfig(weights=str(missing), tokenizer_path=str(tokenizer_file), **SMALL))
    msg = str(err.value)
    assert str(missing) in msg and "encoders.clip.weights" in msg and "\n" not in msg


def test_uncached_pretrained_tag_fails_fast(tmp_path: Path) -> None:
    cfg = ClipEncoderConfig(arch="ViT-B-32", pretrained="laion2b_s34b_b79k", tokenizer="open_clip",
                            cache_dir=str(tmp_path))  # fmt: skip
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        load_clip(cfg)
    assert time.perf_counter() - start < 5
    assert "not in the local cache" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no pretrained tag"):
        resolve_pretrained_file("ViT-B-32", "no_such_tag")


def test_pretrained_tag_found_in_local_caches(tmp_path: Path) -> None:
    # Hugging Face hub cache layout (what hf_hub_download leaves behind).
    pcfg = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")
    repo = pcfg["hf_hub"].rstrip("/")
    repo_dir = tmp_path / "hf" / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    assert resolve_pretrained_file("ViT-B-32", "laion2b_s34b_b79k", str(tmp_path / "hf")) == (
        snap / "open_clip_model.safetensors"
    )
    # open_clip's URL cache layout (a file named like the URL's last part).
    url_name = Path(open_clip.get_pretrained_cfg("ViT-B-32", "openai")["url"]).name
    (tmp_path / "url").mkdir()
    (tmp_path / "url" / url_name).write_bytes(b"x")
    found = resolve_pretrained_file("ViT-B-32", "openai", str(tmp_path / "url"))
    assert found.name in (url_name, "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


# --- real-checkpoint loading -------------------------------------------------------------------------


def test_tiny_checkpoint_safetensors_and_pt_load_identically(tmp_path: Path, tokenizer_file: Path) -> None:
    base = ClipEncoderConfig(tokenizer_path=str(tokenizer_file), init_seed=7, **SMALL)
    vocab = CorpusTokenizer.load(tokenizer_file).vocab_size
    model = build_clip_model(base, vocab).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "clip.safetensors"))
    ddp_style = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(ddp_style, tmp_path / "clip.pt")

    images, texts = _images(3), ["cats made my week", "说实话", ""]
    files = ("clip.safetensors", "clip.pt")
    encs = [load_clip(base.model_copy(update={"weights": str(tmp_path / f)})) for f in files]
    img = [e.encode_images(images) for e in encs]
    txt = [e.encode_texts(texts) for e in encs]
    assert torch.equal(img[0], img[1]) and torch.equal(txt[0], txt[1])
    assert img[0].shape == (3, 32) and encs[0].dim == 32
    assert torch.allclose(img[0].norm(dim=-1), torch.ones(3), atol=1e-5)
    with torch.no_grad():  # the checkpoint really is what we saved
        ref = model.encode_image(encs[0].image_tensor(images), normalize=True)
    assert torch.allclose(img[0], ref, atol=1e-6)

    # spec_key: content-addressed (a moved copy keeps it), different for other weights / random init
    shutil.copy(tmp_path / "clip.safetensors", tmp_path / "moved.safetensors")
    moved = load_clip(base.model_copy(update={"weights": str(tmp_path / "moved.safetensors")}))
    assert moved.spec_key == encs[0].spec_key != encs[1].spec_key
    assert load_clip(base, allow_random=True).spec_key not in (encs[0].spec_key, encs[1].spec_key)
    assert encs[0].spec_key.startswith(TINY_ARCH)


def test_checkpoint_mismatch_is_one_line(tmp_path: Path, tokenizer_file: Path) -> None:
    cfg = ClipEncoderConfig(tokenizer_path=str(tokenizer_file), **SMALL)
    vocab = CorpusTokenizer.load(tokenizer_file).vocab_size
    model = build_clip_model(cfg.model_copy(update={"embed_dim": 16}), vocab)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="shape mismatches") as err:
        load_clip(cfg.model_copy(update={"weights": str(tmp_path / "w.safetensors")}))
    assert "\n" not in str(err.value)


def test_standard_arch_checkpoint_by_path(tmp_path: Path) -> None:
    """A standard open_clip arch built offline, saved, loaded back by path with its own tokenizer.

    ViT-S-32 (63M parameters) rather than ViT-B-32: the B-32 round trip took 13 s here (> 10 s budget).
    """
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32", pretrained=None).eval()
    path = tmp_path / "vits32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    enc = load_clip(ClipEncoderConfig(arch="ViT-S-32", tokenizer="open_clip", weights=str(path)))
    assert enc.dim == 384
    images, texts = _images(2, 64), ["a photo of a cat", "a meme"]
    tokens = open_clip.get_tokenizer("ViT-S-32")(texts)
    with torch.no_grad():
        ref_img = model.encode_image(enc.image_tensor(images), normalize=True)
        ref_txt = model.encode_text(tokens, normalize=True)
    assert torch.allclose(enc.encode_images(images), ref_img, atol=1e-5)
    assert torch.allclose(enc.encode_texts(texts), ref_txt, atol=1e-5)


def test_trimmed_text_encoding_matches_open_clip(tokenizer_file: Path) -> None:
    cfg = ClipEncoderConfig(tokenizer_path=str(tokenizer_file), **SMALL)
    tok = CorpusTokenizer.load(tokenizer_file)
    model = build_clip_model(cfg, tok.vocab_size).eval()
    tokens = tok(TEXTS[:6], cfg.context_length)
    with torch.no_grad():
        reference = model.encode_text(tokens, normalize=True)
        assert torch.allclose(encode_text(model, tokens), reference, atol=1e-6)


# --- pretraining ---------------------------------------------------------------------------------------


def _meme_table(root: Path, n: int) -> pd.DataFrame:
    """n memes (2/3 train, 1/3 val): a coloured square per object class, caption, SynthMeme-like extra."""
    (root / "images").mkdir(parents=True)
    classes = ["snake", "tropical_fish", "octopus", "rat"]
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % len(classes)
        arr = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        x, y = rng.integers(0, 40, 2)
        arr[y : y + 24, x : x + 24] = colours[c]
        Image.fromarray(arr).save(root / "images" / f"{i}.jpg")
        box = [int(x), int(y), int(x) + 24, int(y) + 24]
        extra = {"objects": [{"class": classes[c], "box": box, "key": True}]}
        rows.append(dict(meme_id=f"t:{i}", split="train" if i % 3 else "val", text=TEXTS[i % len(TEXTS)],
                         source_root=str(root), image_path=f"images/{i}.jpg", image_sha256=f"{i:064x}",
                         extra=json.dumps(extra)))  # fmt: skip
    return pd.DataFrame(rows)


def test_alt_text_from_objects() -> None:
    extra = {"objects": [{"class": "snake"}, {"class": "alarm_clock"}, {"class": "snake"}, {"class": "tree"}]}
    assert objects_alt_text(json.dumps(extra)) == "with a snake, an alarm clock, a tree"
    assert objects_alt_text(None) == objects_alt_text("{}") == objects_alt_text("not json") == ""
    memes = pd.DataFrame({"text": ["hi", None], "extra": [json.dumps(extra), None]})
    assert pair_texts(memes, "caption+objects") == ["hi with a snake, an alarm clock, a tree", ""]
    assert pair_texts(memes, "caption") == ["hi", ""]


def test_retrieval_recall_perfect_collapsed_and_duplicates() -> None:
    eye = torch.eye(5)
    perfect = retrieval_recall(eye, eye, list("abcde"))
    assert perfect["val_i2t_r1"] == perfect["val_t2i_r1"] == 1.0
    collapsed = retrieval_recall(torch.ones(5, 3), torch.ones(5, 3), list("abcde"))
    assert collapsed["val_i2t_r1"] == collapsed["val_t2i_r1"] == 0.0  # ties never count as hits
    dup = retrieval_recall(eye, eye[[1, 0, 2, 3, 4]], ["a", "a", "c", "d", "e"])  # texts 0/1 identical
    assert dup["val_i2t_r1"] == 1.0


def test_pretrain_tiny_writes_files_and_is_deterministic(tmp_path: Path) -> None:
    """Two runs in two folders write byte-identical files, whatever the global state in between
    (generators drawn from, torch's thread count changed): the output depends on the inputs only."""
    memes = _meme_table(tmp_path / "data", 96)  # 64 train, 32 val
    cfg = PretrainConfig(epochs=1, batch_size=16, warmup_steps=2, vocab_size=200, threads=2)
    enc_cfg = ClipEncoderConfig(**SMALL)
    a = pretrain_clip(memes, cfg, enc_cfg, tmp_path / "a")
    threads = torch.get_num_threads()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # every global generator moved on
    torch.set_num_threads(1)
    try:
        b = pretrain_clip(memes, cfg, enc_cfg, tmp_path / "run" / "b")
    finally:
        torch.set_num_threads(threads)
    for name in (WEIGHTS_FILE, TOKENIZER_FILE, CONFIG_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "run" / "b" / name).read_bytes(), name
    for key in ("val_i2t_r1", "val_i2t_r5", "val_t2i_r1", "val_t2i_r5"):
        assert 0.0 <= a[key] <= 1.0 and a[key] == b[key]
    assert a["val_pairs"] == 32 and a["train_pairs"] == 64 and a["chance_r1"] == pytest.approx(1 / 32)
    assert len(a["history"]["train_loss"]) == 1 and a["history"] == b["history"]
    assert a["images_per_s"] > 0 and set(TIMING_KEYS) <= set(a)

    # The written config names its files relative to its folder and loads back as a frozen encoder.
    raw = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert (raw["weights"], raw["tokenizer_path"]) == (WEIGHTS_FILE, TOKENIZER_FILE)
    saved = load_encoder_config(tmp_path / "a" / CONFIG_FILE)
    assert saved.weights == str(tmp_path / "a" / WEIGHTS_FILE) and saved.vocab_size == a["vocab_size"]
    enc = load_clip(saved)
    assert enc.encode_texts(["说实话 with a snake"]).shape == (1, 32)


def test_pretrain_uses_train_split_only(tmp_path: Path) -> None:
    memes = _meme_table(tmp_path / "data", 30)
    val_only_word = "zyzzyva"
    memes.loc[memes["split"] == "val", "text"] = val_only_word
    pretrain_clip(memes, PretrainConfig(epochs=1, batch_size=8, vocab_size=200), ClipEncoderConfig(**SMALL),
                  tmp_path / "out")  # fmt: skip
    tok = CorpusTokenizer.load(tmp_path / "out" / TOKENIZER_FILE)
    assert val_only_word not in tok.tokenizer.get_vocab()


# --- the pretraining objective's parts -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["convnet", "resnet", "vit"])
def test_every_image_tower_kind_builds_and_embeds(kind: str, tokenizer_file: Path) -> None:
    cfg = ClipEncoderConfig(tokenizer_path=str(tokenizer_file), vision_kind=kind,
                            **{**SMALL, "vision_width": 16 if kind != "vit" else 64})  # fmt: skip
    enc = load_clip(cfg, allow_random=True)
    assert enc.encode_images(_images(3, size=40)).shape == (3, 32)


def test_convnet_tower_sees_a_small_object_anywhere() -> None:
    """Global max pooling: the same small patch moved across the image keeps the pooled max feature."""
    from memeops.models.clip import MaxPoolConvNet

    torch.manual_seed(0)
    net = MaxPoolConvNet(embed_dim=8, image_size=256, width=8).eval()
    a, b = torch.zeros(1, 3, 256, 256), torch.zeros(1, 3, 256, 256)
    a[..., 96:112, 96:112] = 1.0
    b[..., 128:144, 64:80] = 1.0  # same patch, shifted by multiples of the total stride (32), far from borders
    with torch.no_grad():
        fa, fb = net.trunk(a).amax(dim=(2, 3)), net.trunk(b).amax(dim=(2, 3))
    torch.testing.assert_close(fa, fb)


def test_mask_tokens_keeps_specials_and_masks_about_the_share() -> None:
    tokens = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11, 20, 0, 0]] * 200)  # sot, content, eot=20, pad
    out = mask_tokens(tokens, 0.3, unk_id=2, eot_id=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, [0, 8, 9, 10]], tokens[:, [0, 8, 9, 10]])
    masked = (out[:, 1:8] == 2).float().mean().item()
    assert 0.25 < masked < 0.35


def test_caption_contrast_loss_prefers_matching_views_and_ignores_duplicate_captions() -> None:
    a = torch.nn.functional.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    ids = torch.arange(6)
    assert caption_contrast_loss(a, a, ids, 0.1) < caption_contrast_loss(a, a.roll(1, 0), ids, 0.1)
    dup = a.clone()
    dup[1] = dup[0]  # two memes share a caption: each other's views are not negatives
    with_dup = caption_contrast_loss(dup, dup, torch.tensor([0, 0, 2, 3, 4, 5]), 0.1)
    assert torch.isfinite(with_dup) and with_dup < caption_contrast_loss(dup, dup, ids, 0.1)


def test_one_object_candidates_and_seeded_draw() -> None:
    extra = {"objects": [{"class": "snake"}, {"class": "alarm_clock"}]}
    memes = pd.DataFrame({"text": ["hi", "yo"], "extra": [json.dumps(extra), None]})
    cands = pair_candidates(memes, "caption+object")
    assert cands == [["hi with a snake", "hi with an alarm clock"], ["yo"]]
    assert pair_candidates(memes, "caption+objects") == [["hi with a snake, an alarm clock"], ["yo"]]

    def tokenize(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[len(t)] for t in texts])

    draws = [PairTokens.build(cands, tokenize, seed=1).draw(torch.tensor([0, 1] * 20)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])  # seeded
    assert set(draws[0][0::2, 0].tolist()) == {len("hi with a snake"), len("hi with an alarm clock")}
    assert set(draws[0][1::2, 0].tolist()) == {len("yo")}


def test_object_tags_multi_hot_from_train_objects() -> None:
    extra = {"objects": [{"class": "snake"}, {"class": "tree"}]}
    memes = pd.DataFrame({"extra": [json.dumps(extra), json.dumps({"objects": [{"class": "tree"}]}), None]})
    tags = ObjectTags.build(memes, embed_dim=4, weight=1.0)
    assert tags is not None and tags.targets.tolist() == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    torch.nn.init.zeros_(tags.head.bias)  # zero features + zero bias: every logit 0, BCE = ln 2 per tag
    assert tags.loss(torch.zeros(3, 4), torch.tensor([0, 1, 2])).item() == pytest.approx(2 * 0.6931, abs=1e-3)  # summed over the 2 tags
    assert ObjectTags.build(memes, 4, weight=0.0) is None
    assert ObjectTags.build(pd.DataFrame({"text": ["x"]}), 4, weight=1.0) is None
