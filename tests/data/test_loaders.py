"""Format loaders: every taxonomy rule, every kind of bad row, and the one-line SourceErrors.

Each test writes a tiny source into tmp_path in the on-disk format that
shared/reference/datasets.md describes (GBK MET-MEME CSVs with empty trailing columns, a UTF-8-BOM
Memotion CSV, zero-padded HM image names, ``image_ (0).jpg`` names, MultiOFF ``Non-offensiv``,
PrideMM's literal "None" text, an unlabelled HM phase-1 test.jsonl, ...), loads it, and checks the
mapped labels rule by rule against shared/reference/taxonomy.md. Every fixture also checks the
contract consolidation relies on: one item per row read, so ``read == kept + quarantined``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from memeops.config import SourceConfig
from memeops.data.loaders import FORMAT_NAMES, get_loader
from memeops.data.records import Quarantined, RawMeme, SourceError
from memeops.data.taxonomy import load_taxonomy

TAX = load_taxonomy()
_CONSOLIDATED_FORMATS: set[str] = set()  # formats whose fixtures went through consolidate()


# ------------------------------------------------------------------------------------------ helpers


def source(fmt: str, path: Path | str, **options: Any) -> SourceConfig:
    return SourceConfig(name=f"t-{fmt.replace('_', '-')}", format=fmt, path=str(path), **options)


def load(src: SourceConfig) -> tuple[dict[str, RawMeme], list[Quarantined], int]:
    """(kept by native id, quarantined, items read); kept ids must be unique."""
    items = list(get_loader(src)(src, TAX))
    kept = [i for i in items if isinstance(i, RawMeme)]
    bad = [i for i in items if isinstance(i, Quarantined)]
    assert len(kept) + len(bad) == len(items), "a loader yielded something other than RawMeme/Quarantined"
    by_id = {m.native_id: m for m in kept}
    assert len(by_id) == len(kept), "duplicate native ids among kept memes"
    for m in kept:  # every kept label is well formed for its task
        for task, value in m.labels.items():
            assert TAX.is_valid(task, value), (m.native_id, task, value)
        assert isinstance(m.text, str) and m.image
        json.dumps(m.native), json.dumps(m.extra)  # JSON-serialisable
    _consolidate_fixture(src, by_id, len(items))
    return by_id, bad, len(items)


def _consolidate_fixture(src: SourceConfig, kept: dict[str, RawMeme], read: int) -> None:
    """Run the same fixture through the whole consolidation path (images included).

    Missing images of kept rows are drawn first (distinct ones, so leakage checks stay quiet),
    then consolidate() must reconcile ``read = kept + quarantined`` and carry every mapped label
    into the table unchanged.
    """
    import numpy as np

    from memeops.config import ConsolidateConfig
    from memeops.data.consolidate import consolidate
    from memeops.data.taxonomy import label_column

    root = Path(src.path)
    for i, meme in enumerate(sorted(kept.values(), key=lambda m: m.native_id)):
        path = root / meme.image
        if not path.exists() and ".." not in Path(meme.image).parts and not Path(meme.image).is_absolute():
            rng = np.random.default_rng(i + 1)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((32, 32)).save(path, format="PNG")
    _CONSOLIDATED_FORMATS.add(src.format)
    cfg = ConsolidateConfig(sources=[src.model_copy(update={"path": root.name})], workers=1)
    result = consolidate(cfg, TAX, root.parent)
    counts = result.counts[src.name]
    assert counts.read == read and counts.read == counts.kept + counts.quarantined
    table = result.memes.set_index("native_id")
    for native_id, row in table.iterrows():
        for task, value in kept[native_id].labels.items():
            got = row[label_column(task)]
            got = None if got is None or (not isinstance(got, (list, np.ndarray)) and got != got) else got
            expected = value
            assert (list(got) if isinstance(got, np.ndarray) else got) == expected, (src.format, native_id, task)


def bad_for(bad: list[Quarantined], native_id: str | None = None, location: str | None = None) -> Quarantined:
    hits = [q for q in bad if (native_id is None or q.native_id == native_id) and (location is None or q.location == location)]
    assert len(hits) == 1, (native_id, location, bad)
    return hits[0]


def write_jsonl(path: Path, rows: list[Any]) -> int:
    """Write objects (or raw strings, verbatim) one per line; return the count of non-blank lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
            fh.write("\n")
    return sum(1 for r in rows if not (isinstance(r, str) and not r.strip()))


def write_csv(path: Path, rows: list[list[Any]], *, encoding: str = "utf-8", delimiter: str = ",") -> int:
    """Write rows (the first one is the header when there is one); return the number of rows."""
    buf = io.StringIO(newline="")
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue().encode(encoding))
    return len(rows)


def tiny_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


# ---------------------------------------------------------------------------------- Hateful Memes


@pytest.fixture
def hm_source(tmp_path: Path) -> tuple[Path, int]:
    root = tmp_path / "hm"
    tiny_image(root / "img" / "42953.png")
    tiny_image(root / "img" / "05349.png")
    n = write_jsonl(root / "train.jsonl", [
        {"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character not their color that matters"},
        {"id": 5349, "label": 1, "text": "no img field"},
        '{"id": 17, "img": "img/00017.png", "label": 0, "text": "broken',
        "",
        {"id": 42953, "img": "img/42953.png", "label": 1, "text": "duplicate id"},
        {"id": 1111, "img": "img/01111.png", "label": 2, "text": "stray label"},
        {"id": "abc", "label": 0, "text": "no img and the id is not a number"},
        {"img": "img/00018.png", "label": 0, "text": "no id"},
    ])
    n += write_jsonl(root / "dev_seen.jsonl", [
        {"id": 1234, "img": "img/01234.png", "label": 1, "text": "fine-grained", "set_name": "dev_seen",
         "gold_hate": ["hateful"], "gold_pc": ["religion", "race"], "gold_attack": ["mocking", "dehumanizing"],
         "pc": [["religion"], ["race"]], "attack": [["mocking"]]},
        {"id": 2222, "img": "img/02222.png", "label": 0, "text": "empty sets", "gold_hate": ["not_hateful"],
         "gold_pc": ["pc_empty"], "gold_attack": ["attack_empty"]},
        {"id": 3333, "img": "img/03333.png", "label": 0, "text": "disagrees", "gold_hate": ["hateful"]},
        {"id": 4444, "img": "img/04444.png", "text": "gold only", "gold_hate": ["hateful"], "gold_pc": ["nationality"]},
        {"id": 5555, "img": "img/05555.png", "label": 1, "text": "stray pc", "gold_hate": ["hateful"], "gold_pc": ["aliens"]},
    ])
    n += write_jsonl(root / "dev_unseen.jsonl", [{"id": 6666, "img": "img/06666.png", "label": 0, "text": "u"}])
    n += write_jsonl(root / "test_seen.jsonl", [
        {"id": 7777, "img": "img/07777.png", "label": 1, "text": "seen test"},
        {"id": 9999, "img": "img/09999.png", "label": 0},
    ])
    n += write_jsonl(root / "test_unseen.jsonl", [{"id": 8080, "img": "img/08080.png", "label": 0, "text": "x"}])
    n += write_jsonl(root / "test.jsonl", [
        {"id": 7777, "img": "img/07777.png", "text": "phase-1 copy of a test_seen meme"},
        {"id": 8888, "img": "img/08888.png", "text": "phase-1 unlabelled"},
    ])
    return root, n


def test_hateful_memes_rules(hm_source: tuple[Path, int]) -> None:
    root, n = hm_source
    kept, bad, read = load(source("hateful_memes", root))
    assert read == n == len(kept) + len(bad)
    # hm_label: 0 -> no, 1 -> yes
    assert kept["42953"].labels["hateful"] == "no"
    assert kept["5349"].labels["hateful"] == "yes"
    # the image path as the source gives it; absent img -> zero-padded id
    assert kept["42953"].image == "img/42953.png"
    assert kept["5349"].image == "img/05349.png"
    assert kept["42953"].location == "train.jsonl:1" and kept["42953"].split == "train"
    assert kept["42953"].language == "en" and kept["42953"].text_origin == "annotation"
    # fhm_gold_hate agrees with label; fhm_gold_pc / fhm_gold_attack are multi-label sets
    fg = kept["1234"]
    assert fg.labels["hateful"] == "yes"
    assert fg.labels["protected_category"] == ["race", "religion"]
    assert fg.labels["attack_type"] == ["mocking", "dehumanizing"]
    assert fg.native["pc"] == [["religion"], ["race"]] and fg.native["set_name"] == "dev_seen"
    # pc_empty / attack_empty -> the empty set (known "none"), not missing
    assert kept["2222"].labels["protected_category"] == []
    assert kept["2222"].labels["attack_type"] == []
    assert kept["2222"].labels["hateful"] == "no"
    # gold_hate alone is used when label is absent
    assert kept["4444"].labels["hateful"] == "yes" and kept["4444"].labels["protected_category"] == ["nationality"]
    # rows without fine-grained fields do not claim those tasks
    assert "protected_category" not in kept["42953"].labels
    # splits by file
    assert kept["6666"].split == "val_unseen" and kept["8080"].split == "test_unseen"
    assert kept["7777"].split == "test" and kept["1234"].split == "val"
    # missing text -> "" with text_origin missing
    assert kept["9999"].text == "" and kept["9999"].text_origin == "missing"


def test_hateful_memes_unlabelled_test_kept_missing(hm_source: tuple[Path, int]) -> None:
    root, _ = hm_source
    kept, bad, _ = load(source("hateful_memes", root))
    m = kept["8888"]
    assert m.labels == {"hateful": None} and m.split == "test"
    assert "unlabelled" in m.label_notes["hateful"]
    # the phase-1 copy of a test_seen id is the one quarantined (labelled files are read first)
    dup = bad_for(bad, location="test.jsonl:1")
    assert dup.field == "id" and "test_seen.jsonl:1" in dup.reason


def test_hateful_memes_bad_rows(hm_source: tuple[Path, int]) -> None:
    root, _ = hm_source
    _, bad, _ = load(source("hateful_memes", root))
    malformed = bad_for(bad, location="train.jsonl:3")
    assert malformed.field == "json" and "malformed JSON" in malformed.reason
    dup = bad_for(bad, location="train.jsonl:5")
    assert dup.field == "id" and "train.jsonl:1" in dup.reason and dup.native_id == "42953"
    stray = bad_for(bad, native_id="1111")
    assert stray.field == "label" and "hm_label" in stray.reason and stray.value == "2"
    assert bad_for(bad, native_id="abc").field == "image"
    assert bad_for(bad, location="train.jsonl:8").field == "id"
    disagree = bad_for(bad, native_id="3333")
    assert "disagrees" in disagree.reason and "gold_hate" in disagree.reason
    pc = bad_for(bad, native_id="5555")
    assert pc.field == "gold_pc" and "fhm_gold_pc" in pc.reason and "aliens" in pc.reason


def test_hateful_memes_files_option(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "dev.jsonl", [{"id": 1, "img": "img/00001.png", "label": 1, "text": "t"}])
    kept, _, _ = load(source("hateful_memes", tmp_path, files={"dev.jsonl": "val"}))
    assert kept["1"].split == "val"
    with pytest.raises(SourceError, match="option 'files'"):
        load(source("hateful_memes", tmp_path, files={"dev.jsonl": "development"}))


# ------------------------------------------------------------------------------------------ HarMeme


def test_harmeme_rules_and_bad_rows(tmp_path: Path) -> None:
    n = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "covid_memes_5425", "image": "covid_memes_5425.png", "labels": ["somewhat harmful", "individual"],
         "text": "FIRST LINE\nSECOND LINE\n"},
        {"id": "covid_memes_1", "image": "covid_memes_1.png", "labels": ["not harmful"], "text": "a"},
        {"id": "covid_memes_2", "image": "covid_memes_2.png", "labels": ["very harmful", "society"], "text": "b"},
        {"id": "covid_memes_3", "image": "covid_memes_3.png", "labels": ["very harmful", "organization"], "text": "c"},
        {"id": "covid_memes_4", "image": "covid_memes_4.png", "labels": ["somewhat harmful", "community"], "text": "d"},
        {"id": "covid_memes_5", "labels": ["not harmful"], "text": "no image field"},
        {"id": "covid_memes_6", "image": "covid_memes_6.png", "labels": ["kinda harmful"], "text": "stray level"},
        {"id": "covid_memes_7", "image": "covid_memes_7.png", "labels": ["very harmful", "aliens"], "text": "stray"},
        {"id": "covid_memes_8", "image": "covid_memes_8.png", "labels": ["very harmful"], "text": "no target"},
    ])
    n += write_jsonl(tmp_path / "val.jsonl", [
        "{not json}",
        {"id": "covid_memes_5425", "image": "covid_memes_5425.png", "labels": ["not harmful"], "text": "dup"},
    ])
    n += write_jsonl(tmp_path / "test.jsonl", [
        {"id": "covid_memes_9", "image": "covid_memes_9.png", "labels": ["not harmful"], "text": ""},
    ])
    kept, bad, read = load(source("harmeme", tmp_path))
    assert read == n == len(kept) + len(bad) and len(kept) == 7
    m = kept["covid_memes_5425"]
    assert m.image == "images/covid_memes_5425.png" and m.split == "train" and m.language == "en"
    assert m.text == "FIRST LINE\nSECOND LINE\n" and m.text_origin == "ocr"
    # harmeme_harm: the three levels
    assert m.labels["harmful"] == "somewhat_harmful"
    assert kept["covid_memes_1"].labels["harmful"] == "not_harmful"
    assert kept["covid_memes_2"].labels["harmful"] == "very_harmful"
    # harmeme_target: the four targets; ["not harmful"] -> harm_target missing
    assert m.labels["harm_target"] == "individual"
    assert kept["covid_memes_2"].labels["harm_target"] == "society"
    assert kept["covid_memes_3"].labels["harm_target"] == "organization"
    assert kept["covid_memes_4"].labels["harm_target"] == "community"
    assert kept["covid_memes_1"].labels["harm_target"] is None
    assert "harm_target" not in kept["covid_memes_1"].label_notes
    assert "without a target" in kept["covid_memes_8"].label_notes["harm_target"]
    assert kept["covid_memes_1"].native == {"labels": ["not harmful"]}
    assert kept["covid_memes_9"].split == "test" and kept["covid_memes_9"].text_origin == "missing"
    assert bad_for(bad, native_id="covid_memes_5").field == "image"
    stray = bad_for(bad, native_id="covid_memes_6")
    assert "harmeme_harm" in stray.reason and stray.value == "kinda harmful"
    assert "harmeme_target" in bad_for(bad, native_id="covid_memes_7").reason
    assert bad_for(bad, location="val.jsonl:1").field == "json"
    assert "train.jsonl:1" in bad_for(bad, location="val.jsonl:2").reason


# ----------------------------------------------------------------------------------------- MET-MEME

MET_EN_HEADER = ["file_name", "sentiment category", "sentiment degree", "intention detection",
                 "offensiveness detection", "metaphor occurrence", "metaphor category", "target domain",
                 "source domain", "target modality", "source modality", "", "", ""]
MET_ZH_HEADER = ["images_name", "sentiment category", "sentiment degree", "intention detection",
                 "offensiveness detection", "metaphor occurrence", "metaphor category", "source domain",
                 "target domain", "target modality", "source modality", "", ""]


@pytest.fixture
def met_source(tmp_path: Path) -> tuple[Path, int]:
    def en(name: str, *cells: str) -> list[str]:
        row = [name, *cells]
        return row + [""] * (len(MET_EN_HEADER) - len(row))

    labels = [
        MET_EN_HEADER,
        en("image_ (0).jpg", "7", "2", "3", "0", "1", "image dominant", "人", "动物", "image", "text"),
        en("image_ (1).jpg", "1", "1", "1", "1", "0", ""),
        en("image_ (2).jpg", "2", "3", "2", "2", "1", "text dominant"),
        en("image_ (3).jpg", "3", "1", "4", "3", "1", "complementary"),
        en("image_ (4).jpg", "4", "1", "5", "0", "0", ""),
        en("image_ (5).jpg", "5", "2", "1", "0", "0", ""),
        en("image_ (6).jpg", "6", "3", "1", "0", "0", ""),
        en("image_ (7).jpg", "表达情感", "1", "1", "0", "1", "图像"),
        en("image_ (8).jpg", "1", "1", "1", "0", "0", ""),  # no text row
        en("image_ (9).jpg", "1", "1", "1", "0", "1", ""),  # metaphor without a category
        en("image_ (0).jpg", "1", "1", "1", "0", "0", ""),  # duplicate
        en("", "1", "1", "1", "0", "0", ""),  # no file name
        en("image_ (10).jpg", "1", "1", "1", "0", "0", "", "", "", "", "", "stray trailing"),
        [""] * len(MET_EN_HEADER),  # an all-empty row: not a row
    ]
    n = write_csv(tmp_path / "label_E.csv", labels, encoding="gbk") - 2
    texts = [["file_name", "text", "", ""]] + [[f"image_ ({i}).jpg", f"english text {i}", "", ""] for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10)]
    texts += [["image_ (99).jpg", "orphan", "", ""], ["image_ (1).jpg", "second text row", "", ""]]
    write_csv(tmp_path / "E_text.csv", texts, encoding="gbk")
    n += 2  # the orphan and the duplicate text rows are quarantined; the others merge into label rows
    zh = [
        MET_ZH_HEADER,
        ["Image_(1).jpg", "6", "3", "4", "3", "1", "image dominant", "动物", "人", "image", "image", "", ""],
        ["Image_(2).jpg", "2", "2", "2", "0", "1", "image主导", "", "", "", "", "", ""],
    ]
    n += write_csv(tmp_path / "label_C.csv", zh, encoding="gbk") - 1
    write_csv(tmp_path / "C_text.csv", [["images_name", "text"], ["Image_(1).jpg", "中文文本，带标点"],
                                        ["Image_(2).jpg", "第二条"]], encoding="gbk")
    return tmp_path, n


def test_met_meme_rules(met_source: tuple[Path, int]) -> None:
    root, n = met_source
    kept, bad, read = load(source("met_meme", root))
    assert read == n == len(kept) + len(bad)
    m0 = kept["en/image_ (0).jpg"]
    assert m0.image == "Eimages/image_ (0).jpg" and m0.split is None and m0.language == "en"
    assert m0.location == "label_E.csv:2" and m0.text == "english text 0"
    # met_sentiment + met_emotion: 7 -> neutral & surprise
    assert m0.labels["sentiment"] == "neutral" and m0.labels["emotion"] == "surprise"
    # 1 happiness, 2 love -> positive; 3 anger, 4 sorrow, 5 fear, 6 hate -> negative
    expected = {1: ("happiness", "positive"), 2: ("love", "positive"), 3: ("anger", "negative"),
                4: ("sorrow", "negative"), 5: ("fear", "negative"), 6: ("hate", "negative")}
    for i, (emotion, sentiment) in expected.items():
        assert (kept[f"en/image_ ({i}).jpg"].labels["emotion"], kept[f"en/image_ ({i}).jpg"].labels["sentiment"]) == (emotion, sentiment)
    # met_emotion_intensity: 1 slight, 2 moderate, 3 very
    assert [kept[f"en/image_ ({i}).jpg"].labels["emotion_intensity"] for i in (1, 0, 2)] == ["slight", "moderate", "very"]
    # met_intention: 1..5
    assert [kept[f"en/image_ ({i}).jpg"].labels["intention"] for i in (1, 2, 0, 3, 4)] == [
        "interactive", "expressive", "entertaining", "offensive", "other"]
    # met_offensive + met_offensiveness_level: 0 none/no, 1 slight, 2 moderate, 3 very (all yes)
    assert [(kept[f"en/image_ ({i}).jpg"].labels["offensive"], kept[f"en/image_ ({i}).jpg"].labels["offensiveness_level"])
            for i in (0, 1, 2, 3)] == [("no", "none"), ("yes", "slight"), ("yes", "moderate"), ("yes", "very")]
    # met_metaphor: 0/1; met_metaphor_type: the three categories, blank when no metaphor -> missing
    assert kept["en/image_ (1).jpg"].labels["metaphor"] == "no" and kept["en/image_ (0).jpg"].labels["metaphor"] == "yes"
    assert [kept[f"en/image_ ({i}).jpg"].labels["metaphor_type"] for i in (0, 2, 3)] == [
        "image_dominant", "text_dominant", "complementary"]
    assert kept["en/image_ (1).jpg"].labels["metaphor_type"] is None
    assert "metaphor_type" not in kept["en/image_ (1).jpg"].label_notes
    assert "blank" in kept["en/image_ (9).jpg"].label_notes["metaphor_type"]
    # domains and modalities stay native; Chinese columns in swapped order are matched by name
    assert m0.native["target domain"] == "人" and m0.native["source domain"] == "动物"
    zh = kept["zh/Image_(1).jpg"]
    assert zh.image == "Cimages/Image_(1).jpg" and zh.language == "zh" and zh.text == "中文文本，带标点"
    assert zh.native["source domain"] == "动物" and zh.native["target domain"] == "人"
    assert zh.labels["emotion"] == "hate" and zh.labels["offensiveness_level"] == "very"
    # stray trailing cells are kept in native
    assert kept["en/image_ (10).jpg"].native["extra_cells"] == ["stray trailing"]


def test_met_meme_stray_values_set_task_missing(met_source: tuple[Path, int]) -> None:
    root, _ = met_source
    kept, bad, _ = load(source("met_meme", root))
    m = kept["en/image_ (7).jpg"]  # on_unmapped: missing -> the row is kept
    assert m.labels["sentiment"] is None and m.labels["emotion"] is None
    assert "met_sentiment" in m.label_notes["sentiment"] and "表达情感" in m.label_notes["sentiment"]
    assert m.labels["metaphor_type"] is None and "图像" in m.label_notes["metaphor_type"]
    assert m.labels["intention"] == "interactive"  # the sound part of the row is kept
    assert "image主导" in kept["zh/Image_(2).jpg"].label_notes["metaphor_type"]
    assert kept["en/image_ (8).jpg"].text == "" and kept["en/image_ (8).jpg"].text_origin == "missing"
    dup = bad_for(bad, location="label_E.csv:12")
    assert "duplicate" in dup.reason and "label_E.csv:2" in dup.reason
    assert bad_for(bad, location="label_E.csv:13").field == "image"
    orphan = bad_for(bad, native_id="en/image_ (99).jpg")
    assert "orphan" in orphan.reason and orphan.location.startswith("E_text.csv:")
    assert "duplicate" in bad_for(bad, location="E_text.csv:13").reason


def test_met_meme_languages_and_missing_pair(met_source: tuple[Path, int], tmp_path: Path) -> None:
    root, _ = met_source
    kept, _, _ = load(source("met_meme", root, languages=["zh"]))
    assert {m.language for m in kept.values()} == {"zh"}
    half = tmp_path / "half"
    half.mkdir()
    (half / "label_E.csv").write_bytes((root / "label_E.csv").read_bytes())
    with pytest.raises(SourceError, match=r"E_text\.csv"):
        load(source("met_meme", half))


# ----------------------------------------------------------------------------------------- Memotion

MEMOTION_HEADER = ["", "image_name", "text_ocr", "text_corrected", "humour", "sarcasm", "offensive",
                   "motivational", "overall_sentiment"]


@pytest.fixture
def memotion_source(tmp_path: Path) -> tuple[Path, int]:
    rows = [
        MEMOTION_HEADER,
        ["0", "image_1.jpg", "OCR one", "Corrected one", "hilarious", "general", "not_offensive", "not_motivational", "very_positive"],
        ["1", "image_2.jpeg", "ocr two\nsecond line", "", "not_funny", "twisted_meaning", "very_offensive", "motivational", "negative"],
        ["2", "image_3.JPG", "", "", "funny", "very_twisted", "slight", "not_motivational", "neutral"],
        ["3", "image_4.png", "a", "b", "very_funny", "not_sarcastic", "hateful_offensive", "motivational", "very_negative"],
        ["4", "image_5.png", "a", "b", "funny", "general", "offensive_ish", "motivational", "positive"],
        ["5", "image_1.jpg", "a", "b", "funny", "general", "slight", "motivational", "positive"],
        ["6", "", "a", "b", "funny", "general", "slight", "motivational", "positive"],
    ]
    n = write_csv(tmp_path / "labels.csv", rows, encoding="utf-8-sig") - 1
    n += write_csv(tmp_path / "2000_testdata.csv", [
        ["Image_name", "Image_URL", "OCR_extracted_text", "corrected_text"],
        ["t1.jpg", "http://x/1", "ocr t1", "corrected t1"],
        ["t2.jpg", "http://x/2", "ocr t2", ""],
        ["t3.jpg", "http://x/3", "ocr t3", "c3"],
    ], encoding="utf-8-sig") - 1
    write_csv(tmp_path / "Meme_groundTruth.csv", [
        ["Image_name", "Labels"], ["t1.jpg", "1_1110_2013"], ["t2.jpg", "-1_0000_0000"], ["t9.jpg", "0_0000_0000"],
    ], encoding="utf-8-sig")
    n += 1  # t9 has no test row: quarantined as an orphan
    return tmp_path, n


def test_memotion_rules(memotion_source: tuple[Path, int]) -> None:
    root, n = memotion_source
    kept, bad, read = load(source("memotion", root))
    assert read == n == len(kept) + len(bad)
    m1, m2, m3, m4 = (kept[k] for k in ("image_1.jpg", "image_2.jpeg", "image_3.JPG", "image_4.png"))
    assert m1.image == "images/image_1.jpg" and m1.split is None and m1.location == "labels.csv:2"
    assert m1.text == "Corrected one" and m1.text_origin == "annotation"
    assert m2.text == "ocr two\nsecond line" and m2.text_origin == "ocr"
    assert m3.text == "" and m3.text_origin == "missing"
    # memotion_humour: not_funny -> no, else yes
    assert [m.labels["humour"] for m in (m2, m3, m4, m1)] == ["no", "yes", "yes", "yes"]
    # memotion_sarcasm: verbatim
    assert [m.labels["sarcasm"] for m in (m4, m1, m2, m3)] == ["not_sarcastic", "general", "twisted_meaning", "very_twisted"]
    # memotion_offensive + memotion_offensiveness_level (very_offensive -> yes & moderate)
    assert (m1.labels["offensive"], m1.labels["offensiveness_level"]) == ("no", "none")
    assert (m3.labels["offensive"], m3.labels["offensiveness_level"]) == ("yes", "slight")
    assert (m2.labels["offensive"], m2.labels["offensiveness_level"]) == ("yes", "moderate")
    assert (m4.labels["offensive"], m4.labels["offensiveness_level"]) == ("yes", "very")
    # memotion_motivational
    assert (m1.labels["motivational"], m2.labels["motivational"]) == ("no", "yes")
    # memotion_sentiment: very_/negative -> negative, neutral, very_/positive -> positive
    assert [m.labels["sentiment"] for m in (m4, m2, m3, m1)] == ["negative", "negative", "neutral", "positive"]
    assert m2.native["offensive"] == "very_offensive"
    # test set: memotion_test_sentiment on the code before the first underscore
    t1, t2, t3 = kept["t1.jpg"], kept["t2.jpg"], kept["t3.jpg"]
    assert t1.split == t2.split == t3.split == "test"
    assert t1.labels == {"sentiment": "positive"} and t1.native == {"Labels": "1_1110_2013"}
    assert t2.labels == {"sentiment": "negative"} and t2.text == "ocr t2" and t2.text_origin == "ocr"
    assert t3.labels == {"sentiment": None} and "unlabelled" in t3.label_notes["sentiment"]
    assert t1.image == "images/t1.jpg" and t1.location == "2000_testdata.csv:2"


def test_memotion_bad_rows(memotion_source: tuple[Path, int]) -> None:
    root, _ = memotion_source
    _, bad, _ = load(source("memotion", root))
    stray = bad_for(bad, native_id="image_5.png")
    assert stray.field == "offensive" and "memotion_offensive" in stray.reason and stray.value == "offensive_ish"
    dup = bad_for(bad, location="labels.csv:7")
    assert "duplicate" in dup.reason and "labels.csv:2" in dup.reason
    assert bad_for(bad, location="labels.csv:8").field == "image"
    assert "orphan" in bad_for(bad, native_id="t9.jpg").reason


def test_memotion_ground_truth_shape_and_scale(memotion_source: tuple[Path, int]) -> None:
    root, _ = memotion_source
    write_csv(root / "Meme_groundTruth.csv", [["Image_name", "Labels"], ["t1.jpg", "positive"], ["t2.jpg", "2_1110_2013"],
                                              ["t3.jpg", "0_0000_0000"]])
    kept, bad, _ = load(source("memotion", root))
    shape = bad_for(bad, native_id="t1.jpg")
    assert shape.field == "Labels" and "<sentiment code>_<HSOM binary>_<HSOM intensity>" in shape.reason
    # one code outside the assumed -1/0/1 scale: no test sentiment is trusted, not even the 0
    scale = bad_for(bad, native_id="t2.jpg")
    assert "memotion_test_sentiment" in scale.reason and "2" in scale.reason
    assert "t3.jpg" not in kept and "unverified" in bad_for(bad, native_id="t3.jpg").reason


# --------------------------------------------------------------------------------------------- MAMI

MAMI_HEADER = ["file_name", "misogynous", "shaming", "stereotype", "objectification", "violence", "Text Transcription"]


def test_mami_rules_and_bad_rows(tmp_path: Path) -> None:
    n = write_csv(tmp_path / "TRAINING" / "training.csv", [
        MAMI_HEADER,
        ["1.jpg", "0", "0", "0", "0", "0", "Milk Milk.zip"],
        ["10.jpg", "1", "1", "0", "1", "0", 'She said "hi" to me'],
        ["100.jpg", "1", "0", "1", "0", "1", "text"],
        ["1000.jpg", "1", "0", "0", "0", "0", "misogynous without a type"],
        ["2.jpg", "2", "0", "0", "0", "0", "stray"],
        ["3.jpg", "1", "0", "x", "0", "0", "stray type"],
        ["1.jpg", "0", "0", "0", "0", "0", "duplicate"],
    ], delimiter="\t") - 1
    n += write_csv(tmp_path / "test" / "Test.csv", [
        ["file_name", "Text Transcription"], ["15236.jpg", "test one"], ["15237.jpg", "test two"], ["15238.jpg", ""],
    ], delimiter="\t") - 1
    n += write_csv(tmp_path / "test" / "truth.txt", [
        ["15236.jpg", "1", "0", "0", "1", "0"], ["15237.jpg", "0", "0", "0", "0", "0"], ["99999.jpg", "1", "1", "1", "1", "1"],
    ], delimiter="\t") - 2  # two truth rows merge into test rows; the orphan is an item
    kept, bad, read = load(source("mami", tmp_path))
    assert read == n == len(kept) + len(bad)
    a, b, c, d = (kept[k] for k in ("1.jpg", "10.jpg", "100.jpg", "1000.jpg"))
    assert a.image == "TRAINING/1.jpg" and a.split is None and a.location == "TRAINING/training.csv:2"
    assert b.text == 'She said "hi" to me'
    # mami_misogynous
    assert (a.labels["misogynous"], b.labels["misogynous"]) == ("no", "yes")
    # mami_shaming / mami_stereotype / mami_objectification / mami_violence -> one multi-label set
    assert a.labels["misogyny_type"] == []
    assert b.labels["misogyny_type"] == ["shaming", "objectification"]
    assert c.labels["misogyny_type"] == ["stereotype", "violence"]
    assert d.labels["misogyny_type"] == []
    assert b.native == {"misogynous": "1", "shaming": "1", "stereotype": "0", "objectification": "1", "violence": "0"}
    t1, t2, t3 = kept["15236.jpg"], kept["15237.jpg"], kept["15238.jpg"]
    assert t1.split == "test" and t1.image == "test/15236.jpg"
    assert t1.labels == {"misogynous": "yes", "misogyny_type": ["objectification"]}
    assert t2.labels == {"misogynous": "no", "misogyny_type": []}
    assert t3.labels == {"misogynous": None, "misogyny_type": None} and t3.text_origin == "missing"
    assert "mami_misogynous" in bad_for(bad, native_id="2.jpg").reason
    stray = bad_for(bad, native_id="3.jpg")
    assert stray.field == "stereotype" and "mami_stereotype" in stray.reason
    assert "duplicate" in bad_for(bad, location="TRAINING/training.csv:8").reason
    assert "orphan" in bad_for(bad, native_id="99999.jpg").reason


# ----------------------------------------------------------------------------------------- MultiOFF


def test_multioff_rules_and_bad_rows(tmp_path: Path) -> None:
    header = ["image_name", "sentence", "label"]
    n = write_csv(tmp_path / "Training_meme_dataset.csv", [
        header, ["a.png", "some text", "offensive"], ["b.jpg", "other text", "Non-offensiv"],
        ["c.png", "t", "Non-offensive"], ["", "no image", "offensive"],
    ]) - 1
    n += write_csv(tmp_path / "Validation_meme_dataset.csv", [header, ["d.png", "val", "offensive"]]) - 1
    n += write_csv(tmp_path / "Testing_meme_dataset.csv", [header, ["e.png", "", "Non-offensiv"], ["a.png", "dup", "offensive"]]) - 1
    kept, bad, read = load(source("multioff", tmp_path))
    assert read == n == len(kept) + len(bad)
    # multioff_label: offensive -> yes, Non-offensiv (sic) -> no
    assert kept["a.png"].labels == {"offensive": "yes"}
    assert kept["b.jpg"].labels == {"offensive": "no"}
    assert kept["a.png"].image == "Labelled Images/a.png" and kept["a.png"].split == "train"
    assert kept["d.png"].split == "val" and kept["e.png"].split == "test" and kept["e.png"].text_origin == "missing"
    stray = bad_for(bad, native_id="c.png")
    assert "multioff_label" in stray.reason and stray.value == "Non-offensive"
    assert bad_for(bad, location="Training_meme_dataset.csv:5").field == "image"
    assert "Training_meme_dataset.csv:2" in bad_for(bad, location="Testing_meme_dataset.csv:3").reason


# ------------------------------------------------------------------------------------------ PrideMM


def test_pridemm_rules_and_bad_rows(tmp_path: Path) -> None:
    n = write_csv(tmp_path / "PrideMM.csv", [
        ["name", "hate", "target", "stance", "humour", "split", "text"],
        ["img_1.png", "1", "0", "2", "0", "train", "hateful text"],
        ["img_2.png", "1", "1", "1", "1", "val", "x"],
        ["img_3.png", "1", "2", "0", "0", "test", "y"],
        ["img_4.png", "1", "3", "0", "0", "train", "z"],
        ["img_5.png", "0", "NA", "1", "1", "train", "None"],
        ["img_6.png", "0", "NA", "0", "0", "dev", "bad split"],
        ["img_7.png", "1", "5", "0", "0", "train", "stray target"],
        ["img_8.png", "1", "NA", "0", "0", "train", "hateful without target"],
    ]) - 1
    kept, bad, read = load(source("pridemm", tmp_path))
    assert read == n == len(kept) + len(bad)
    m1, m2, m3, m4, m5 = (kept[f"img_{i}.png"] for i in range(1, 6))
    assert m1.image == "Images/img_1.png" and m1.split == "train" and m2.split == "val" and m3.split == "test"
    # pridemm_hate
    assert (m1.labels["hateful"], m5.labels["hateful"]) == ("yes", "no")
    # pridemm_target: 0 undirected, 1 individual, 2 community, 3 organization, NA -> missing
    assert [m.labels["harm_target"] for m in (m1, m2, m3, m4)] == ["undirected", "individual", "community", "organization"]
    assert m5.labels["harm_target"] is None and "harm_target" not in m5.label_notes
    assert "without a target" in kept["img_8.png"].label_notes["harm_target"]
    # pridemm_stance: 0 neutral, 1 support, 2 oppose
    assert [m.labels["stance"] for m in (m3, m2, m1)] == ["neutral", "support", "oppose"]
    # pridemm_humour
    assert (m1.labels["humour"], m2.labels["humour"]) == ("no", "yes")
    # literal "None" text -> "" with text_origin missing
    assert m5.text == "" and m5.text_origin == "missing" and m1.text == "hateful text"
    assert m5.native["target"] == "NA"
    split = bad_for(bad, native_id="img_6.png")
    assert split.field == "split" and split.value == "dev"
    stray = bad_for(bad, native_id="img_7.png")
    assert stray.field == "target" and "pridemm_target" in stray.reason


# --------------------------------------------------------------------------------------- Multi3Hate


def test_multi3hate_majority_and_bad_rows(tmp_path: Path) -> None:
    n = 0
    write_csv(tmp_path / "final_annotations.csv", [
        ["Meme ID", "US", "DE", "MX", "CN", "IN"],
        ["1", "1", "1", "1", "0", "0"],  # 3-2 -> yes
        ["2", "0", "0", "0", "1", "1"],  # 2-3 -> no
        ["3", "1", "0", "1", "0", ""],  # 2-2 tie (one vote missing) -> yes
        ["4", "0", "0", "", "1", ""],  # 1-2 -> no
        ["5", "1", "2", "0", "0", "0"],  # stray vote
        ["6", "1", "1", "1", "1", "1"],  # no caption row: orphan
    ])
    n += 1
    cap_header = ["Meme ID", "Template Name", "Original (English)", "Translation"]
    n += write_csv(tmp_path / "captions" / "en.csv", [
        cap_header, ["1", "Drake", "top text <sep> bottom text", ""], ["2", "Doge", "such text", "such text"],
        ["3", "T", "three", "three"], ["4", "T", "four", "four"], ["5", "T", "five", "five"], ["7", "T", "seven", "seven"],
    ]) - 1
    n += write_csv(tmp_path / "captions" / "de.csv", [
        cap_header, ["1", "Drake", "top text <sep> bottom text", "oben <sep> unten"], ["3", "T", "three", "drei"],
        ["3", "T", "three", "drei nochmal"],
    ]) - 1
    kept, bad, read = load(source("multi3hate", tmp_path))
    assert read == n == len(kept) + len(bad)
    # multi3hate_country_vote + majority; ties -> yes; missing votes skipped
    assert kept["en/1"].labels == {"hateful": "yes"}
    assert kept["en/2"].labels == {"hateful": "no"}
    assert kept["en/3"].labels == {"hateful": "yes"}
    assert kept["en/4"].labels == {"hateful": "no"}
    assert kept["de/1"].labels == {"hateful": "yes"}
    assert kept["en/1"].native == {"US": "1", "DE": "1", "MX": "1", "CN": "0", "IN": "0"}
    # text: Translation, or for en the original when Translation is empty; <sep> kept
    assert kept["en/1"].text == "top text <sep> bottom text"
    assert kept["de/1"].text == "oben <sep> unten" and kept["de/1"].language == "de"
    assert kept["de/1"].image == "images/de/1.png" and kept["de/1"].split is None
    assert kept["de/1"].extra["meme_id"] == "1"
    stray = bad_for(bad, native_id="en/5")
    assert stray.field == "DE" and "multi3hate_country_vote" in stray.reason and stray.value == "2"
    assert "orphan" in bad_for(bad, native_id="en/7").reason
    assert "orphan" in bad_for(bad, native_id="6").reason
    assert "captions/de.csv:3" in bad_for(bad, location="captions/de.csv:4").reason


# ----------------------------------------------------------------------------------------- MemeLens


def test_memelens_rules_and_bad_rows(tmp_path: Path) -> None:
    base = {"task_description": "Is this meme hateful?", "native_label": "hateful",
            "native_task_description": "hate", "native_explanation": "native why"}
    n = write_jsonl(tmp_path / "en" / "fhm" / "train.jsonl", [
        {"id": "1", "image": "a.png", "text": "t1", "label": "yes", "explanation": "because", **base},
        {"id": "2", "image": "images/b.png", "text": "t2", "label": "No", "explanation": "", **base},
        {"id": "3", "image": "c.png", "text": "t3", "label": "maybe", **base},
        {"id": "1", "image": "a.png", "text": "dup", "label": "yes", **base},
        "{malformed",
        {"id": "4", "text": "no image", "label": "yes", **base},
    ])
    n += write_jsonl(tmp_path / "en" / "fhm" / "test.jsonl", [
        {"id": "9", "image": "d.png", "text": "t9", "label": "yes", "judge_score": 4, **base},
    ])
    n += write_jsonl(tmp_path / "ar" / "prop" / "val.jsonl", [
        {"id": "p1", "image": "p.png", "text": "نص", "label": "yes", "task_description": "propaganda"},
    ])
    tiny_image(tmp_path / "en" / "fhm" / "images" / "a.png")
    kept, bad, read = load(source("memelens", tmp_path, tasks={"fhm": "hateful"}))
    assert read == n == len(kept) + len(bad)
    m = kept["en/fhm/1"]
    # memelens_label: identity on the task's labels (case-insensitive)
    assert m.labels == {"hateful": "yes"} and kept["en/fhm/2"].labels == {"hateful": "no"}
    assert m.image == "en/fhm/images/a.png" and kept["en/fhm/2"].image == "en/fhm/images/b.png"
    assert m.explanations == {"hateful": "because"} and kept["en/fhm/2"].explanations == {}
    assert m.native["native_label"] == "hateful" and m.split == "train" and m.language == "en"
    assert kept["en/fhm/9"].split == "test" and kept["en/fhm/9"].extra == {"judge_score": 4}
    # a dataset without a mapping is accepted when task_description is a task name
    assert kept["ar/prop/p1"].labels == {"propaganda": "yes"} and kept["ar/prop/p1"].split == "val"
    assert kept["ar/prop/p1"].language == "ar"
    assert "memelens_label" in bad_for(bad, native_id="en/fhm/3").reason
    assert "en/fhm/train.jsonl:1" in bad_for(bad, location="en/fhm/train.jsonl:4").reason
    assert bad_for(bad, location="en/fhm/train.jsonl:5").field == "json"
    assert bad_for(bad, native_id="en/fhm/4").field == "image"


def test_memelens_unmapped_dataset_is_source_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "en" / "other" / "train.jsonl", [{"id": "1", "image": "a.png", "label": "yes",
                                                            "task_description": "Is it bad?"}])
    with pytest.raises(SourceError, match=r"en/other") as info:
        load(source("memelens", tmp_path))
    assert "\n" not in str(info.value) and "t-memelens" in str(info.value)


# ---------------------------------------------------------------------------------------- SynthMeme


def synth_line(i: int, **over: Any) -> dict[str, Any]:
    row = {
        "id": f"sm_{i:06d}", "image": f"images/sm_{i:06d}.jpg", "text": f"caption {i}", "lang": "en",
        "split": "train",
        "labels": {"hateful": "yes", "offensive": "yes", "offensiveness_level": "very", "harm_target": "community",
                   "metaphor": "no", "metaphor_type": None, "intention": "offensive", "sarcasm": "not_sarcastic",
                   "sentiment": "negative", "emotion": "hate"},
        "clean_labels": {"hateful": "yes"},
        "explanations": {"hateful": "The caption names a group."},
        "objects": [{"class": "dog", "class_id": 3, "box": [1, 2, 30, 40], "key": True}],
        "caption": {"top": "top", "bottom": None},
        "latent": {"target": "t"},
        "style": "impact",
    }
    row.update(over)
    return row


def test_synthmeme_rules_and_bad_rows(tmp_path: Path) -> None:
    n = write_jsonl(tmp_path / "train.jsonl", [
        synth_line(1),
        synth_line(2, lang="zh", text="中文", labels={"hateful": "no", "protected_category": ["race", "sex"]}),
        synth_line(3, labels={"funniness": "high"}),
        synth_line(4, labels={"hateful": "maybe"}),
        synth_line(5, image=""),
        "not json",
    ])
    n += write_jsonl(tmp_path / "val.jsonl", [synth_line(1, split="val"), synth_line(7, split="train")])
    n += write_jsonl(tmp_path / "test_unseen.jsonl", [synth_line(6, split="test_unseen")])
    kept, bad, read = load(source("synthmeme", tmp_path))
    assert read == n == len(kept) + len(bad)
    m = kept["sm_000001"]
    # synthmeme_labels: identity per task; null -> missing
    assert m.labels["hateful"] == "yes" and m.labels["offensiveness_level"] == "very"
    assert m.labels["metaphor_type"] is None
    assert kept["sm_000002"].labels == {"hateful": "no", "protected_category": ["race", "sex"]}
    assert m.image == "images/sm_000001.jpg" and m.split == "train" and m.language == "en"
    assert kept["sm_000002"].language == "zh" and kept["sm_000002"].text == "中文"
    assert m.explanations == {"hateful": "The caption names a group."}
    assert set(m.extra) == {"objects", "caption", "latent", "style", "clean_labels"}
    assert m.extra["objects"][0]["box"] == [1, 2, 30, 40]
    assert kept["sm_000006"].split == "test_unseen"
    assert bad_for(bad, native_id="sm_000003").field == "labels.funniness"
    stray = bad_for(bad, native_id="sm_000004")
    assert stray.field == "labels.hateful" and "synthmeme_labels" in stray.reason
    assert bad_for(bad, native_id="sm_000005").field == "image"
    assert bad_for(bad, location="train.jsonl:6").field == "json"
    assert "train.jsonl:1" in bad_for(bad, location="val.jsonl:1").reason
    assert bad_for(bad, native_id="sm_000007").field == "split"


# ------------------------------------------------------------------------------------- SourceErrors


def test_unknown_format_is_one_line_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        get_loader(source("hatefulmemes", tmp_path))
    assert "t-hatefulmemes" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_missing_path_is_one_line_source_error(fmt: str, tmp_path: Path) -> None:
    src = source(fmt, tmp_path / "does-not-exist")
    with pytest.raises(SourceError) as info:
        list(get_loader(src)(src, TAX))
    message = str(info.value)
    assert src.name in message and fmt in message and "\n" not in message


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_empty_or_wrong_layout_is_source_error(fmt: str, tmp_path: Path) -> None:
    """A directory that holds none of the format's expected files (only an unrelated one)."""
    (tmp_path / "README.txt").write_text("not a data set\n")
    src = source(fmt, tmp_path)
    with pytest.raises(SourceError) as info:
        list(get_loader(src)(src, TAX))
    assert src.name in str(info.value) and "\n" not in str(info.value)


def test_csv_without_required_columns_is_source_error(tmp_path: Path) -> None:
    write_csv(tmp_path / "PrideMM.csv", [["name", "hate"], ["img_1.png", "1"]])
    with pytest.raises(SourceError, match=r"columns target, stance, humour, split, text in PrideMM\.csv"):
        load(source("pridemm", tmp_path))


def test_undecodable_csv_is_source_error(tmp_path: Path) -> None:
    write_csv(tmp_path / "PrideMM.csv", [["name", "hate", "target", "stance", "humour", "split", "text"],
                                         ["img_1.png", "1", "0", "0", "0", "train", "x"]])
    src = source("pridemm", tmp_path, encoding="ascii")
    (tmp_path / "PrideMM.csv").write_bytes((tmp_path / "PrideMM.csv").read_bytes() + "é\r\n".encode())
    with pytest.raises(SourceError, match="encoding"):
        load(src)


def test_zz_every_format_was_consolidated() -> None:
    """Runs last in file order (pytest keeps it): each of the ten formats' fixtures went through
    consolidate() in the tests above."""
    assert _CONSOLIDATED_FORMATS == set(FORMAT_NAMES)
