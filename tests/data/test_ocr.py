"""OCR (stage ``ocr``): the CER function, reading order, real reads of rendered English and Chinese
captions, and consolidation filling texts from the OCR table (with quarantine when it cannot).

Images are drawn into tmp_path with the SynthMeme renderer (the project's fonts: DejaVu Sans Bold,
Noto Sans CJK Bold). One engine per module (loading it takes well under a second).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memeops.config import ConfigError, ConsolidateConfig, OcrConfig, SourceConfig, load_params
from memeops.data.consolidate import build_datasheet, consolidate, datasheet_markdown
from memeops.data.ocr import (
    OcrEngine,
    OcrLine,
    aggregate_cer,
    character_error_rate,
    clean_line,
    levenshtein,
    normalize_for_cer,
    order_lines,
    read_texts,
    run_ocr_stage,
    sample_indices,
    shipped_models,
    write_texts,
)
from memeops.data.records import SourceError
from memeops.data.synth.render import background, draw_caption, fit_caption
from memeops.data.taxonomy import load_taxonomy

TAX = load_taxonomy()

# Measured on these renders (256 px, JPEG 90): raw CER 0.000 for both languages on the gradient
# background, at most 0.019 over three background styles x two seeds (one lost space). The bound
# leaves room for one or two character errors.
MAX_CER = 0.05

EN = ("Why is the printer always broken", "when I need it most?")
ZH = ("我的邻居又来了", "今天真的好累啊")


def render_meme(path: Path, top: str, bottom: str, lang: str, seed: int = 0, size: int = 256,
                style: str = "gradient") -> Path:
    """A SynthMeme-style meme: background plus bold white outlined top and bottom captions."""
    img = background(style, np.random.default_rng(seed), size).convert("RGB")
    margin = max(2, round(0.02 * size))
    t, b = fit_caption(top, lang, size, 0.24 * size), fit_caption(bottom, lang, size, 0.24 * size)
    draw_caption(img, t, lang, margin)
    draw_caption(img, b, lang, size - margin - b.height)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    return OcrEngine(OcrConfig(workers=1))


# ------------------------------------------------------------------------------------------ CER


def test_cer_on_hand_made_strings() -> None:
    assert character_error_rate("abc", "abc") == 0.0
    assert character_error_rate("abd", "abc") == pytest.approx(1 / 3)  # substitution
    assert character_error_rate("abcd", "abc") == pytest.approx(1 / 3)  # insertion
    assert character_error_rate("ac", "abc") == pytest.approx(1 / 3)  # deletion
    assert character_error_rate("", "abc") == 1.0
    assert character_error_rate("kitten", "sitting") == pytest.approx(3 / 7)
    assert character_error_rate("我的老板", "我的老师") == pytest.approx(0.25)  # one character, not bytes
    assert character_error_rate("现在的每个人", "现在每个人") == pytest.approx(1 / 5)
    # empty reference: 0 for an empty hypothesis, else 1 (a rate, not a division by zero)
    assert character_error_rate("", "") == 0.0
    assert character_error_rate("x", "") == 1.0
    assert levenshtein("abc", "") == levenshtein("", "abc") == 3


def test_cer_normalisation_ignores_case_whitespace_and_width() -> None:
    hyp, ref = "hello world\nagain", "Hello World again"
    assert character_error_rate(hyp, ref) > 0
    assert character_error_rate(hyp, ref, normalize=True) == 0.0
    assert normalize_for_cer("市议会：让我 的生活") == "市议会:让我的生活"  # NFKC: full-width colon
    assert character_error_rate("Whenmyneighbour", "When my neighbour", normalize=True) == 0.0


def test_aggregate_is_micro_and_per_language() -> None:
    agg = aggregate_cer([("en", "ab", "abcd"), ("zh", "我", "我们"), ("en", "", "xy")])
    assert agg["overall"]["n"] == 3
    assert agg["overall"]["cer_raw"] == pytest.approx((2 + 1 + 2) / (4 + 2 + 2), abs=1e-4)  # 4 decimals
    assert agg["by_language"]["en"]["cer_raw"] == pytest.approx(4 / 6, abs=1e-4)
    assert agg["by_language"]["zh"]["cer_raw"] == pytest.approx(0.5)
    assert agg["overall"]["empty_outputs"] == 1 and agg["by_language"]["en"]["empty_outputs"] == 1


def test_sample_is_seeded() -> None:
    assert sample_indices(100, 10, 3) == sample_indices(100, 10, 3)
    assert sample_indices(100, 10, 3) != sample_indices(100, 10, 4)
    assert sample_indices(5, 10, 0) == [0, 1, 2, 3, 4] and sample_indices(5, 0, 0) == []


def test_params_ocr_switch_and_section(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  sources:\n    - {name: a, format: hateful_memes, path: a, ocr: off}\n"
                    "    - {name: b, format: hateful_memes, path: b, ocr: missing}\n    - {name: c, format: synthmeme, path: c}\n"
                    "ocr: {cer_sample: 7, space_bias: 5}\n")
    params = load_params(path)
    assert [s.ocr for s in params.data.sources] == ["off", "missing", "off"]  # unquoted YAML `off` is False
    assert "ocr" not in params.data.sources[1].options  # a field, not a loader option
    assert params.ocr.cer_sample == 7 and params.section("ocr", OcrConfig).space_bias == 5
    assert params.ocr.join == "blocks"  # defaults for what the section leaves out
    path.write_text("data:\n  sources:\n    - {name: a, format: hateful_memes, path: a, ocr: sometimes}\n")
    with pytest.raises(ConfigError, match="ocr"):
        load_params(path)
    path.write_text("data:\n  sources:\n    - {name: a, format: hateful_memes, path: a}\nocr: {cer_samples: 3}\n")
    with pytest.raises(ConfigError, match="cer_samples"):
        load_params(path)


# ---------------------------------------------------------------------------------- line order


def _line(x0: float, y0: float, x1: float, y1: float, text: str) -> OcrLine:
    return OcrLine((x0, y0, x1, y1), text, 0.99)


def test_lines_read_top_to_bottom_left_to_right_and_join_into_blocks() -> None:
    lines = [  # shuffled: bottom caption (two rows, the second split in two boxes), then the top one
        _line(73, 223, 182, 249, "the bed"),
        _line(24, 4, 234, 30, "When my neighbour"),
        _line(100, 192, 206, 219, "under"),
        _line(51, 194, 95, 217, "I hid"),
        _line(13, 28, 243, 52, "showed up at my door"),
    ]
    assert order_lines(lines) == "When my neighbour showed up at my door\nI hid under the bed"
    assert order_lines(lines, "lines") == "When my neighbour\nshowed up at my door\nI hid under\nthe bed"
    assert order_lines([]) == ""


def test_chinese_lines_join_without_spaces() -> None:
    lines = [_line(63, 198, 194, 221, "是我的邻居做"), _line(53, 10, 202, 46, "还有什么事"),
             _line(73, 228, 178, 251, "不到的吗？")]
    assert order_lines(lines) == "还有什么事\n是我的邻居做不到的吗？"
    assert clean_line(" 我的 邻居  and  you ") == "我的邻居 and you"


# -------------------------------------------------------------------------------- the engine


def test_models_ship_with_the_package() -> None:
    assert all(path.is_file() and path.stat().st_size > 100_000 for path in shipped_models())


@pytest.mark.parametrize("caption, lang", [(EN, "en"), (ZH, "zh")])
def test_reads_rendered_caption(engine: OcrEngine, tmp_path: Path, caption: tuple[str, str], lang: str) -> None:
    path = render_meme(tmp_path / f"{lang}.jpg", *caption, lang)
    text, confidence = engine.read_text(path)
    ref = "\n".join(caption)
    assert character_error_rate(text, ref) <= MAX_CER, (text, ref)
    assert text.count("\n") == 1, text  # top and bottom captions: two blocks, as captions are stored
    assert 0.8 <= confidence <= 1.0


def test_space_bias_restores_english_spaces(engine: OcrEngine, tmp_path: Path) -> None:
    path = render_meme(tmp_path / "en.jpg", *EN, "en")
    ref = "\n".join(EN)
    plain, _ = OcrEngine(OcrConfig(space_bias=1.0)).read_text(path)
    biased, _ = engine.read_text(path)
    assert character_error_rate(biased, ref) < character_error_rate(plain, ref), (plain, biased)
    assert character_error_rate(plain, ref, normalize=True) <= MAX_CER  # the letters were read anyway


def test_blank_image_reads_nothing(engine: OcrEngine) -> None:
    text, confidence = engine.read_text(np.full((128, 128, 3), 90, dtype=np.uint8))
    assert text == "" and confidence == 0.0


# ------------------------------------------------------------------ stage + consolidate (tmp data)


def _hm_source(tmp_path: Path, name: str, rows: list[tuple[int, str, tuple[str, str], str]]) -> None:
    """Hateful Memes layout: ``(id, text, rendered caption, lang)`` per row, images under img/."""
    root = tmp_path / name
    lines = []
    for i, (native, text, caption, lang) in enumerate(rows):
        render_meme(root / "img" / f"{native:05d}.jpg", *caption, lang, seed=native, style=("gradient", "texture")[i % 2])
        lines.append(json.dumps({"id": native, "img": f"img/{native:05d}.jpg", "label": native % 2, "text": text},
                                ensure_ascii=False))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def two_sources(tmp_path: Path) -> Path:
    _hm_source(tmp_path, "asks", [(1, "annotated text", EN, "en"), (2, "", EN, "en"), (3, "", ZH, "zh")])
    _hm_source(tmp_path, "plain", [(4, "", EN, "en"), (5, "kept as is", ZH, "zh")])
    return tmp_path


def _data(mode: str = "missing", **kw) -> ConsolidateConfig:
    return ConsolidateConfig(sources=[SourceConfig(name="asks", format="hateful_memes", path="asks", ocr=mode),
                                      SourceConfig(name="plain", format="hateful_memes", path="plain")],
                             workers=1, **kw)


def _texts(two_sources: Path, data: ConsolidateConfig, engine: OcrEngine) -> pd.DataFrame:
    result = run_ocr_stage(data, OcrConfig(workers=1, cer_sample=0), TAX, two_sources, engine=engine)
    write_texts(result.texts, two_sources / data.ocr_texts)
    return read_texts(two_sources / data.ocr_texts)


def test_missing_mode_fills_only_blank_texts(two_sources: Path, engine: OcrEngine) -> None:
    data = _data("missing")
    texts = _texts(two_sources, data, engine)
    assert list(zip(texts["source"], texts["native_id"])) == [("asks", "2"), ("asks", "3")]  # not plain, not 1
    result = consolidate(data, TAX, two_sources)
    memes = result.memes.set_index("meme_id")
    assert memes.loc["asks:1", "text"] == "annotated text" and memes.loc["asks:1", "text_origin"] == "annotation"
    for meme_id, caption in (("asks:2", EN), ("asks:3", ZH)):
        assert memes.loc[meme_id, "text_origin"] == "ocr"
        assert character_error_rate(memes.loc[meme_id, "text"], "\n".join(caption)) <= MAX_CER
        assert json.loads(memes.loc[meme_id, "extra"])["ocr"]["engine"].startswith("rapidocr-onnxruntime==")
    # the source with ocr off is untouched: its empty text stays empty and 'missing'
    assert memes.loc["plain:4", "text"] == "" and memes.loc["plain:4", "text_origin"] == "missing"
    assert memes.loc["plain:5", "text_origin"] == "annotation"
    sheet = build_datasheet(result, TAX)
    assert sheet["sources"]["asks"]["text_from_ocr"] == 2 and sheet["sources"]["plain"]["text_from_ocr"] == 0
    assert sheet["text"]["from_ocr_stage"] == 2 == int((result.memes["text_origin"] == "ocr").sum())
    assert "Texts from stage ocr: asks (ocr: missing): 2 filled" in datasheet_markdown(sheet)


def test_all_mode_replaces_every_text_and_keeps_the_old_one(two_sources: Path, engine: OcrEngine) -> None:
    data = _data("all")
    assert len(_texts(two_sources, data, engine)) == 3
    memes = consolidate(data, TAX, two_sources).memes.set_index("meme_id")
    assert (memes.loc[["asks:1", "asks:2", "asks:3"], "text_origin"] == "ocr").all()
    note = json.loads(memes.loc["asks:1", "extra"])["ocr"]
    assert note["replaced_text"] == "annotated text" and note["mode"] == "all"


def test_meme_missing_from_ocr_table_is_quarantined(two_sources: Path, engine: OcrEngine) -> None:
    data = _data("missing")
    texts = _texts(two_sources, data, engine)
    result = consolidate(data, TAX, two_sources, ocr_texts=texts[texts["native_id"] != "3"])
    assert "asks:3" not in set(result.memes["meme_id"])
    (entry,) = [q for q in result.quarantine if q.native_id == "3"]
    assert entry.source == "asks" and entry.field == "text"
    assert "has no entry for this meme (rerun stage ocr)" in entry.reason
    counts = result.counts["asks"]
    assert counts.read == counts.kept + counts.quarantined == 3


def test_stale_ocr_entry_is_quarantined(two_sources: Path, engine: OcrEngine) -> None:
    data = _data("missing")
    texts = _texts(two_sources, data, engine)
    render_meme(two_sources / "asks" / "img" / "00002.jpg", "a different", "picture now", "en", seed=9)
    result = consolidate(data, TAX, two_sources, ocr_texts=texts)
    (entry,) = [q for q in result.quarantine if q.native_id == "2"]
    assert "stale OCR entry" in entry.reason


def test_no_ocr_table_is_one_line_error(two_sources: Path) -> None:
    with pytest.raises(SourceError, match=r"source 'asks' \(hateful_memes\): ocr: missing needs stage ocr's texts"):
        consolidate(_data("missing"), TAX, two_sources)
    consolidate(_data("off"), TAX, two_sources)  # nothing asks: the table is not needed


def test_cer_sample_on_synthmeme_layout(tmp_path: Path, engine: OcrEngine) -> None:
    root = tmp_path / "sm"
    rows = []
    for i, (caption, lang) in enumerate([(EN, "en"), (ZH, "zh"), (("Coffee first,", "everything else later"), "en")]):
        render_meme(root / "images" / f"sm_{i:06d}.jpg", *caption, lang, seed=i)
        rows.append({"id": f"sm_{i:06d}", "image": f"images/sm_{i:06d}.jpg", "text": "\n".join(caption), "lang": lang,
                     "labels": {}})
    (root / "test.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    (root / "train.jsonl").write_text(json.dumps({**rows[0], "id": "sm_x"}) + "\n", encoding="utf-8")
    data = ConsolidateConfig(sources=[SourceConfig(name="synthmeme", format="synthmeme", path="sm")], workers=1)
    result = run_ocr_stage(data, OcrConfig(workers=1, cer_sample=10), TAX, tmp_path, engine=engine)
    assert result.texts == []  # ocr off: nothing for consolidate
    cer = result.metrics["cer"]["synthmeme"]
    assert cer["overall"]["n"] == 3 and {row["split"] for row in result.cer_rows} == {"test"}
    assert set(cer["by_language"]) == {"en", "zh"}
    assert cer["overall"]["cer_raw"] <= MAX_CER and cer["overall"]["empty_outputs"] == 0
    assert result.metrics["sources"]["synthmeme"]["ocr_memes"] == 0 and result.metrics["images"] == 3


def test_stage_runs_with_two_workers(two_sources: Path, engine: OcrEngine, subprocess_env: dict[str, str]) -> None:
    """``python -m stages.ocr``: a process pool, files where params say, the same texts as in-process,
    nothing in $HOME."""
    _hm_source(two_sources, "asks", [(1, "", EN, "en"), (2, "", EN, "en"), (3, "", ZH, "zh"), (6, "", ZH, "zh")])
    params = {"data": {"sources": [{"name": "asks", "format": "hateful_memes", "path": "asks", "ocr": "missing"}]},
              "ocr": {"workers": 2, "cer_sample": 0}}
    (two_sources / "params.yaml").write_text(json.dumps(params))
    env = subprocess_env
    proc = subprocess.run([sys.executable, "-m", "stages.ocr"], cwd=two_sources, env=env, capture_output=True, check=False,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    texts = read_texts(two_sources / "data" / "ocr" / "texts.parquet")
    assert list(texts["native_id"]) == ["1", "2", "3", "6"] and texts["error"].isna().all()
    for row in texts.itertuples():
        assert row.ocr_text == engine.read_text(two_sources / "asks" / row.image)[0]
    metrics = json.loads((two_sources / "reports" / "metrics" / "ocr.json").read_text())
    assert metrics["sources"]["asks"]["ocr_memes"] == 4
    assert "images_per_s" not in metrics and "seconds" not in metrics  # a DVC out: timings go to the log line
    assert re.search(r"\(\d+(\.\d+)? images/s\)", proc.stdout), proc.stdout
    assert (two_sources / "data" / "ocr" / "cer_sample.parquet").is_file()
    assert not any(Path(env["HOME"]).iterdir())
