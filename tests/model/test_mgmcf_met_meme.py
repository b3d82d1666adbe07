"""MGMCF end to end on a MET-MEME fixture (GBK CSVs, English and Chinese) at a tiny size.

The fixture is written by the test: images, ``label_E.csv`` / ``label_C.csv`` / ``E_text.csv`` /
``C_text.csv`` in GBK. The chain is the pipeline's, as library calls: consolidate -> frozen CLIP
features -> grid regions -> region features -> MGMCF (bilingual text from a tiny Hugging Face BERT
built from a config, with a WordPiece tokenizer trained on the fixture's texts) on the four
MET-MEME tasks -> scored once per evaluation split -> packed as a model folder that predicts from
raw images.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from memeops.config import ConsolidateConfig, TrainStageConfig
from memeops.data.consolidate import consolidate
from memeops.data.features import FeatureConfig, FeatureStore, extract_features
from memeops.data.mgmcf_inputs import (
    MgmcfInputs,
    MgmcfInputsConfig,
    RegionFeaturesConfig,
    encode_regions,
    region_features_path,
    save_region_features,
)
from memeops.data.taxonomy import load_taxonomy
from memeops.models.clip import ClipEncoderConfig, load_clip
from memeops.models.region_cnn import build_region_cnn
from memeops.serving.inputs import example_frame
from memeops.serving.mgmcf import MgmcfInputEncoder
from memeops.serving.predictor import MemePredictor
from memeops.serving.pyfunc import save_model_dir
from memeops.training.experiment import train_variant, variant_specs
from memeops.vision.extract import VIEWS_DIR, RegionsConfig, extract_regions
from memeops.vision.regions import RegionStore, RegionViewConfig

pytestmark = pytest.mark.slow

MET_TASKS = ["emotion", "intention", "offensiveness_level", "metaphor"]  # sentiment 7, intention 5, offensiveness 4, metaphor 2
EN_HEADER = ["file_name", "sentiment category", "sentiment degree", "intention detection", "offensiveness detection",
             "metaphor occurrence", "metaphor category", "target domain", "source domain", "target modality",
             "source modality", "", ""]  # fmt: skip
ZH_HEADER = ["images_name", "sentiment category", "sentiment degree", "intention detection", "offensiveness detection",
             "metaphor occurrence", "metaphor category", "source domain", "target domain", "target modality",
             "source modality", ""]  # fmt: skip
CATEGORIES = ["image dominant", "text dominant", "complementary"]
EN_WORDS = ["cat", "boss", "monday", "coffee", "exam", "dog", "pizza", "rain"]
ZH_WORDS = ["猫", "老板", "周一", "咖啡", "考试", "狗", "披萨", "下雨"]


def _csv(path: Path, rows: list[list[str]]) -> None:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    path.write_bytes(buf.getvalue().encode("gbk"))


def _image(path: Path, rng: np.random.Generator, metaphor: bool) -> None:
    # a distinct noise picture per meme (flat colours would be near duplicates for the leakage check)
    im = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize((64, 64), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    x, y = (int(v) for v in rng.integers(4, 40, 2))
    draw.rectangle([x, y, x + 18, y + 18], fill=(250, 20, 20) if metaphor else (20, 20, 250))
    im.save(path, quality=90)


def write_met_meme(root: Path, n_en: int = 70, n_zh: int = 50, seed: int = 0) -> None:
    """A MET-MEME-format source: GBK CSVs (both languages) + images; labels cycle so every class
    of the four tasks occurs in each language."""
    rng = np.random.default_rng(seed)
    en, en_text, zh, zh_text = [EN_HEADER], [["file_name", "text", ""]], [ZH_HEADER], [["images_name", "text"]]
    for lang, n in (("en", n_en), ("zh", n_zh)):
        for i in range(n):
            metaphor = i % 2
            row = [str(i % 7 + 1), str(i % 3 + 1), str(i % 5 + 1), str(i % 4), str(metaphor),
                   CATEGORIES[i % 3] if metaphor else "", "", "", "", "", ""]  # fmt: skip
            words = EN_WORDS if lang == "en" else ZH_WORDS
            text = " ".join(words[j % len(words)] for j in (i, i // 2, i + 3))
            if lang == "en":
                name = f"image_ ({i}).jpg"
                en.append([name, *row, ""])
                en_text.append([name, text, ""])
            else:
                name = f"Image_({i}).jpg"
                zh.append([name, *row])
                zh_text.append([name, text.replace(" ", "")])
            folder = root / ("Eimages" if lang == "en" else "Cimages")
            folder.mkdir(exist_ok=True)
            _image(folder / name, rng, bool(metaphor))
    _csv(root / "label_E.csv", en)
    _csv(root / "E_text.csv", en_text)
    _csv(root / "label_C.csv", zh)
    _csv(root / "C_text.csv", zh_text)


def write_tiny_bert(folder: Path, texts: list[str]) -> Path:
    """A 1-layer BERT from a config plus a WordPiece tokenizer trained on ``texts`` (CJK split by
    character, as BERT's normaliser does), saved as a local Hugging Face folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    BertModel(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)  # fmt: skip
    fast.save_pretrained(folder)
    return folder


def test_mgmcf_trains_the_four_met_meme_tasks_end_to_end(tmp_path: Path) -> None:
    source = tmp_path / "met"
    source.mkdir()
    write_met_meme(source)
    taxonomy = load_taxonomy()
    result = consolidate(ConsolidateConfig.model_validate(
        {"sources": [{"name": "met", "format": "met_meme", "path": str(source)}], "split_seed": 1,
         "output_dir": str(tmp_path / "consolidated"), "workers": 1}), taxonomy, tmp_path)  # fmt: skip
    memes = result.memes
    assert set(memes["language"]) == {"en", "zh"} and len(memes) == 120
    for task in MET_TASKS:  # every task is labelled, with the paper's label counts
        assert memes[f"label_{task}"].notna().all()
    assert [memes[f"label_{t}"].nunique() for t in MET_TASKS] == [7, 5, 4, 2]

    clip = load_clip(ClipEncoderConfig(tokenizer="open_clip", embed_dim=16, image_size=32, vision_width=8,
                                       text_width=32, text_layers=1, text_heads=2, context_length=24),
                     allow_random=True)  # fmt: skip
    extract_features(memes, clip, FeatureConfig(cache_dir=str(tmp_path / "features"), num_workers=0))
    store = FeatureStore(tmp_path / "features", clip.spec_key)

    grid = RegionViewConfig(source="grid", grid=2, max_regions=4, crop_size=32)
    regions_cfg = RegionsConfig(output_dir=str(tmp_path / "regions"), views={"grid": grid})
    extract_regions(memes, None, regions_cfg)
    rf_cfg = RegionFeaturesConfig(views=["grid"], cache_dir=str(tmp_path / "region_features"))
    cnn = build_region_cnn(rf_cfg.cnn, clip)
    rs = RegionStore(tmp_path / "regions" / VIEWS_DIR / "grid")
    rs_all = rs.get(rs.keys())
    save_region_features(region_features_path(rf_cfg.cache_dir, cnn.spec_key, "grid"),
                         encode_regions(rs_all.keys, rs_all.crops, rs_all.boxes, rs_all.scores, rs_all.valid, cnn, rs_all.classes), {})

    bert = write_tiny_bert(tmp_path / "bert", memes["text"].tolist())
    inputs_cfg = {"text_encoder": {"kind": "hf", "path": str(bert), "max_length": 12}, "regions_view": "grid",
                  "text_cache_dir": None}  # fmt: skip
    cfg = TrainStageConfig.model_validate({
        "tasks": MET_TASKS, "seed": 0, "bootstrap_samples": 20,
        "variants": {"mgmcf": {"model": "mgmcf", "inputs": inputs_cfg,
                               "config": {"d_model": 16, "heads": 2, "cap_layers": 2, "context_tokens": 2}}},
        "trainer": {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "patience": 2, "monitor": "mean/macro_f1"},
    })  # fmt: skip
    specs, dropped = variant_specs("mgmcf", memes, cfg)
    assert dropped == [] and [s.num_labels for s in specs] == [7, 5, 4, 2]
    inputs = MgmcfInputs(memes, store, specs, MgmcfInputsConfig.model_validate(inputs_cfg), clip, rf_cfg)
    assert inputs.model_dims()["text_dim"] == 16 and inputs.model_dims()["max_regions"] == 4
    out = train_variant("mgmcf", memes, store, clip.dim, cfg, tmp_path / "run", inputs=inputs)
    report = out.report()
    for split in ("val", "test"):
        for task in MET_TASKS:
            assert 0.0 <= report[split][f"{task}/accuracy"] <= 1.0
            assert f"{task}/weighted_precision" in report[split]
    assert report["primary_metric"] == {"emotion": "macro_f1", "intention": "macro_f1",
                                        "offensiveness_level": "macro_f1", "metaphor": "auroc"}  # fmt: skip
    att = out.predictions["test"].extras["attention"]
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)

    # packed with its own input chain (HF text encoder copied in, grid regions: no detector)
    clip_dir = tmp_path / "clip_src"
    clip_dir.mkdir()
    from safetensors.torch import save_model

    save_model(clip.model, str(clip_dir / "clip.safetensors"))
    (clip_dir / "clip_config.json").write_text(clip.config.model_copy(update={"weights": "clip.safetensors"}).model_dump_json())
    sources = {"clip_dir": clip_dir, "detector_dir": None, "view": grid,
               "text_encoder": inputs.cfg.text_encoder, "region_cnn": rf_cfg.cnn}  # fmt: skip
    folder = save_model_dir(tmp_path / "model", out.model.cpu(), "mgmcf", out.model_config, specs, None,
                            inputs_packer=lambda dest: MgmcfInputEncoder.pack(sources, dest))  # fmt: skip
    spec = json.loads((folder / "memeops_model.json").read_text())
    assert spec["inputs"]["kind"] == "mgmcf" and (folder / "encoder" / "text_encoder").is_dir()
    test_memes = memes[memes["split"] == "test"]
    row = test_memes.iloc[0]
    image_path = Path(row["source_root"]) / row["image_path"]
    predictor = MemePredictor.from_dir(folder)
    table = predictor.predict({"image": [str(image_path), example_frame()["image"][0]], "text": [row["text"], "猫 老板"]})
    assert list(table["emotion"].isin(specs[0].labels)) == [True, True]
    # the packed chain (raw image -> CLIP, BERT, grid crops, region CNN) reproduces the training
    # inputs: the same probabilities as the trained model's test scoring, up to float16 caching
    direct = predictor.predict_proba({"image": [str(image_path)], "text": [row["text"]]})
    for task in MET_TASKS:
        np.testing.assert_allclose(direct[task][0], out.predictions["test"].probs[task][0], atol=2e-3)
