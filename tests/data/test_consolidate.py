"""Consolidation: every bad input ends in quarantine with its reason; counts reconcile; leakage policy.

Fixtures are written in the Hateful Memes layout (jsonl + img/) into tmp_path by the tests, and a
Memotion ``labels.csv`` where a source without an official split is needed.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memeops.config import ConsolidateConfig, LeakageConfig, SourceConfig, SplitFractions, ValidateConfig
from memeops.config.data import LEAKAGE_POLICIES
from memeops.data.consolidate import (
    _Pending,
    assign_splits,
    build_datasheet,
    consolidate,
    read_memes,
    write_outputs,
)
from memeops.data.leakage import POLICY_RULES, Leak, leakage_markdown, leakage_report
from memeops.data.records import RawMeme, SourceError
from memeops.data.taxonomy import load_taxonomy
from memeops.data.validate import LEAK_RULES, validate_memes
from memeops.data.validation_report import failure_message

TAX = load_taxonomy()


def _png(path: Path, seed: int, size: int = 48) -> bytes:
    """A distinct small image per seed (smooth random field, so pHashes differ)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path.read_bytes()


def _write_jsonl(path: Path, rows: list) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
            fh.write("\n")


def _cfg(root_rel: str, **kw) -> ConsolidateConfig:
    base = dict(sources=[SourceConfig(name="hm", format="hateful_memes", path=root_rel)], workers=1)
    base.update(kw)
    return ConsolidateConfig(**base)


@pytest.fixture
def bad_source(tmp_path: Path) -> Path:
    """An HM-layout source with one good row per split and every kind of bad input."""
    root = tmp_path / "hm"
    img = root / "img"
    for i in range(1, 7):
        _png(img / f"{i:05d}.png", seed=i)
    (img / "00020.png").write_bytes(os.urandom(300))  # corrupt: random bytes
    good = _png(tmp_path / "scratch.png", seed=99)
    (img / "00021.png").write_bytes(good[: len(good) // 2])  # truncated
    (img / "00022.png").write_bytes(b"")  # zero bytes
    (img / "00023.png").write_text("this is not an image\n")  # non-image
    Image.new("1", (12000, 12000)).save(img / "00024.png")  # 144 Mpx in ~20 KB: a decompression bomb
    _png(tmp_path / "outside.png", seed=7)
    os.symlink(tmp_path / "outside.png", img / "00025.png")  # symlink escaping the root
    rows_train = [
        {"id": 1, "img": "img/00001.png", "label": 0, "text": "a fine meme"},
        {"id": 2, "img": "img/00002.png", "label": 1, "text": ""},  # empty text: kept, counted
        {"id": 20, "img": "img/00020.png", "label": 0, "text": "corrupt"},
        {"id": 21, "img": "img/00021.png", "label": 0, "text": "truncated"},
        {"id": 22, "img": "img/00022.png", "label": 0, "text": "zero bytes"},
        {"id": 23, "img": "img/00023.png", "label": 0, "text": "not an image"},
        {"id": 24, "img": "img/00024.png", "label": 0, "text": "bomb"},
        {"id": 25, "img": "img/00025.png", "label": 0, "text": "symlink out"},
        {"id": 26, "img": "../outside.png", "label": 0, "text": "dot-dot"},
        {"id": 27, "img": str(tmp_path / "outside.png"), "label": 0, "text": "absolute"},
        {"id": 28, "img": "img/00028.png", "label": 0, "text": "missing file"},
        {"id": 29, "img": "img/00003.png", "label": 7, "text": "stray label"},
        {"id": 1, "img": "img/00003.png", "label": 0, "text": "duplicate id"},
        {"id": 30, "img": "img/00003.png", "label": 0, "text": "x" * 5000},  # too long
        '{"id": 31, "img": "img/00003.png", "label": 0, "text": "broken',  # malformed JSON
    ]
    _write_jsonl(root / "train.jsonl", rows_train)
    _write_jsonl(root / "dev_seen.jsonl", [{"id": 4, "img": "img/00004.png", "label": 1, "text": "val meme"}])
    _write_jsonl(root / "test_seen.jsonl", [
        {"id": 5, "img": "img/00005.png", "label": 0, "text": "test meme"},
        {"id": 6, "img": "img/00001.png", "label": 1, "text": "same image as a train meme"},  # exact leak
    ])
    return root


DROP_LATER = LeakageConfig(policy="drop_later")


def test_bad_inputs_are_quarantined_with_reasons(bad_source: Path, tmp_path: Path) -> None:
    result = consolidate(_cfg("hm", max_text_chars=4000, leakage=DROP_LATER), TAX, tmp_path)
    counts = result.counts["hm"]
    assert counts.read == 18
    assert counts.read == counts.kept + counts.quarantined
    kept_ids = set(result.memes["native_id"])
    assert kept_ids == {"1", "2", "4", "5"}
    reasons = {q.native_id: (q.field, q.reason) for q in result.quarantine}
    expect = {
        "20": "not a readable image", "21": "cannot be decoded", "22": "empty (0 bytes)",
        "23": "not a readable image", "24": "decompression bomb", "25": "outside the source root",
        "26": "climbs out", "27": "absolute image path", "28": "does not exist",
        "30": "over the 4000-character limit", "6": "leakage: exact duplicate of hm:1",
    }
    for native_id, fragment in expect.items():
        assert native_id in reasons, f"row {native_id} not quarantined"
        assert fragment in reasons[native_id][1], (native_id, reasons[native_id])
    stray = [q for q in result.quarantine if q.native_id == "29"]
    assert stray and stray[0].value == "7"
    assert any("duplicate" in q.reason for q in result.quarantine if q.native_id == "1")
    assert any(q.field and "json" in q.reason.lower() for q in result.quarantine), "malformed JSON line"
    assert all(q.source == "hm" and q.location for q in result.quarantine)
    assert (result.memes.loc[result.memes.native_id == "2", "text"] == "").all()


def test_outputs_and_datasheet_reconcile(bad_source: Path, tmp_path: Path) -> None:
    result = consolidate(_cfg("hm", leakage=DROP_LATER), TAX, tmp_path)
    sheet = build_datasheet(result, TAX)
    write_outputs(result, sheet, tmp_path / "out", tmp_path / "reports")
    memes = read_memes(tmp_path / "out" / "memes.parquet")
    assert memes["meme_id"].is_unique and len(memes) == 4
    assert set(memes["split"]) == {"train", "val", "test"}
    assert memes["image_sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert memes["image_phash"].str.fullmatch(r"[0-9a-f]{16}").all()
    quarantine = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert len(quarantine) == sheet["sources"]["hm"]["quarantined"] == 14
    assert sheet["total"]["read"] == sheet["total"]["kept"] + sheet["total"]["quarantined"]
    assert sheet["text"]["empty"] == 1
    assert sheet["leakage"]["exact"] == 1
    assert "read = kept + quarantined" in (tmp_path / "reports" / "datasheet.md").read_text()


def test_flag_policy_keeps_and_flags_leaks(tmp_path: Path) -> None:
    root = tmp_path / "hm"
    _png(root / "img" / "00001.png", seed=1, size=128)
    near = Image.open(root / "img" / "00001.png").convert("RGB")
    buf = io.BytesIO()
    near.save(buf, format="JPEG", quality=80)  # re-encoded: different bytes, same picture
    (root / "img" / "00002.jpg").write_bytes(buf.getvalue())
    _png(root / "img" / "00003.png", seed=3, size=128)
    _write_jsonl(root / "train.jsonl", [{"id": 1, "img": "img/00001.png", "label": 0, "text": "a"},
                                        {"id": 3, "img": "img/00003.png", "label": 1, "text": "c"}])
    _write_jsonl(root / "test_seen.jsonl", [{"id": 2, "img": "img/00002.jpg", "label": 0, "text": "b"}])
    flagged = consolidate(_cfg("hm", leakage=LeakageConfig(policy="flag")), TAX, tmp_path)
    row = flagged.memes.set_index("native_id").loc["2"]
    assert row["leak_of"] == "hm:1" and row["leak_kind"] == "near"
    dropped = consolidate(_cfg("hm", leakage=LeakageConfig(policy="drop_later")), TAX, tmp_path)
    assert "2" not in set(dropped.memes["native_id"])
    assert dropped.counts["hm"].quarantined == 1


MEMOTION_HEADER = ",image_name,text_ocr,text_corrected,humour,sarcasm,offensive,motivational,overall_sentiment"


@pytest.fixture
def leaky_sources(tmp_path: Path) -> Path:
    """Two sources sharing one picture. ``hm`` (official splits): train meme 1, its exact copy in the
    official test split (meme 6) and a clean test meme 5. ``memo`` (Memotion labels.csv, no official
    split): m1.png, a copy of the same picture, and a distinct m2.png."""
    hm = tmp_path / "hm"
    picture = _png(hm / "img" / "00001.png", seed=1)
    (hm / "img" / "00006.png").write_bytes(picture)
    _png(hm / "img" / "00005.png", seed=5)
    _write_jsonl(hm / "train.jsonl", [{"id": 1, "img": "img/00001.png", "label": 0, "text": "train meme"}])
    _write_jsonl(hm / "test_seen.jsonl", [{"id": 5, "img": "img/00005.png", "label": 0, "text": "clean test meme"},
                                          {"id": 6, "img": "img/00006.png", "label": 1, "text": "leaked test meme"}])
    memo = tmp_path / "memo"
    (memo / "images").mkdir(parents=True)
    (memo / "images" / "m1.png").write_bytes(picture)
    _png(memo / "images" / "m2.png", seed=2)
    rows = [f"{i},m{i}.png,text {i},text {i},funny,general,slight,motivational,positive" for i in (1, 2)]
    (memo / "labels.csv").write_text("\n".join([MEMOTION_HEADER, *rows]) + "\n", encoding="utf-8")
    return tmp_path


def _leaky_cfg(**kw) -> ConsolidateConfig:
    """Both sources; every assigned meme goes to test, so memo:m1.png is a later-split duplicate of hm:1."""
    sources = [SourceConfig(name="hm", format="hateful_memes", path="hm"),
               SourceConfig(name="memo", format="memotion", path="memo")]
    return ConsolidateConfig(sources=sources, workers=1, split=SplitFractions(train=0.0, val=0.0, test=1.0), **kw)


def test_auto_policy_flags_official_duplicates_and_drops_assigned_ones(leaky_sources: Path, tmp_path: Path) -> None:
    cfg = _leaky_cfg()
    assert cfg.leakage.policy == "auto"  # the default
    result = consolidate(cfg, TAX, leaky_sources)
    memes = result.memes.set_index("meme_id")
    # the official test split stays whole: its duplicate is kept and flagged
    assert set(memes.index) == {"hm:1", "hm:5", "hm:6", "memo:m2.png"}
    flagged = memes.loc["hm:6", ["split", "split_origin", "leak_of", "leak_kind"]].tolist()
    assert flagged == ["test", "official", "hm:1", "exact"]
    assert pd.isna(memes.loc["hm:5", "leak_of"]) and memes.loc["memo:m2.png", "split_origin"] == "assigned"
    # the split memeops assigned loses its duplicate, to the quarantine with the reason
    (dropped,) = result.quarantine
    assert dropped.source == "memo" and dropped.native_id == "m1.png" and dropped.field == "image"
    assert dropped.reason == "leakage: exact duplicate of hm:1 in earlier split 'train' (policy auto, assigned split)"
    for c in result.counts.values():
        assert c.read == c.kept + c.quarantined
    assert (result.counts["hm"].kept, result.counts["memo"].kept, result.counts["memo"].quarantined) == (3, 1, 1)

    sheet = build_datasheet(result, TAX)
    leak = sheet["leakage"]
    assert (leak["policy"], leak["exact"], leak["flagged"], leak["dropped"]) == ("auto", 2, 1, 1)
    assert leak["by_split"] == {"test": {"flagged": 1, "dropped": 1}}
    assert leak["groups_total"] == 1
    assert leak["groups"] == [{"meme_id": "hm:1", "split": "train", "duplicates": [
        {"meme_id": "hm:6", "split": "test", "kind": "exact", "action": "flagged"},
        {"meme_id": "memo:m1.png", "split": "test", "kind": "exact", "action": "dropped"}]}]
    write_outputs(result, sheet, tmp_path / "out", tmp_path / "reports")
    md = (tmp_path / "reports" / "datasheet.md").read_text(encoding="utf-8")
    assert "| test | 1 | 1 |" in md
    assert "| hm:1 | train | hm:6 (test, exact, flagged); memo:m1.png (test, exact, dropped) |" in md
    assert json.loads((tmp_path / "reports" / "datasheet.json").read_text())["leakage"]["groups"] == leak["groups"]

    # validate accepts the table under auto (a flagged duplicate in an official split), not under drop_later
    table = read_memes(tmp_path / "out" / "memes.parquet")
    report = validate_memes(table, ValidateConfig(min_class_count=0), "auto", TAX)
    assert report.success, failure_message(report)
    assert not validate_memes(table, ValidateConfig(min_class_count=0), "drop_later", TAX).success


def test_flag_and_drop_later_policies_on_the_same_sources(leaky_sources: Path) -> None:
    flagged = consolidate(_leaky_cfg(leakage=LeakageConfig(policy="flag")), TAX, leaky_sources)
    assert flagged.memes.set_index("meme_id").loc[["hm:6", "memo:m1.png"], "leak_of"].tolist() == ["hm:1", "hm:1"]
    assert flagged.leakage["by_split"] == {"test": {"flagged": 2, "dropped": 0}} and not flagged.quarantine
    dropped = consolidate(_leaky_cfg(leakage=DROP_LATER), TAX, leaky_sources)
    assert {q.native_id for q in dropped.quarantine} == {"6", "m1.png"} and dropped.memes["leak_of"].isna().all()
    assert dropped.leakage["by_split"] == {"test": {"flagged": 0, "dropped": 2}}
    assert all("(policy drop_later)" in q.reason for q in dropped.quarantine)


def test_datasheet_lists_a_bounded_number_of_leakage_groups() -> None:
    leaks = [Leak(f"s:t{i:03d}", "test", f"s:{i:03d}", "train", "near", "flagged") for i in range(60)]
    leaks.append(Leak("s:v000", "val", "s:000", "train", "exact", "dropped"))
    block = leakage_report("auto", 4, leaks)
    assert block["groups_total"] == 60 and len(block["groups"]) == 60 and len(block["examples"]) == 20
    assert [d["meme_id"] for d in block["groups"][0]["duplicates"]] == ["s:v000", "s:t000"]  # split order
    assert block["by_split"] == {"val": {"flagged": 0, "dropped": 1}, "test": {"flagged": 60, "dropped": 0}}
    md = "\n".join(leakage_markdown(block, 0))
    assert "Leakage groups (an earlier meme and its later-split duplicates): 60; the first 50 below" in md
    assert "| s:049 | train |" in md and "| s:050 | train |" not in md
    quiet = "\n".join(leakage_markdown(leakage_report("auto", 4, []), 0))
    assert "| earlier meme |" not in quiet and "Policy `auto`" in quiet


def test_every_policy_has_a_rule_in_consolidate_and_validate() -> None:
    assert set(LEAKAGE_POLICIES) == set(POLICY_RULES) == set(LEAK_RULES) == {"auto", "drop_later", "flag"}
    with pytest.raises(ValueError):
        LeakageConfig(policy="keep")


def test_assigned_splits_are_seeded_and_stratified() -> None:
    source = SourceConfig(name="s", format="met_meme", path=".")

    def rows() -> list[_Pending]:
        return [_Pending(source, RawMeme(native_id=str(i), location=f"f:{i}", text="", image="x",
                                         labels={"metaphor": "yes" if i % 4 == 0 else "no"})) for i in range(400)]

    a, b = rows(), rows()
    task = assign_splits(a, SplitFractions(), 7, TAX, "s")
    assign_splits(b, SplitFractions(), 7, TAX, "s")
    assert task == "metaphor"
    assert [r.raw.split for r in a] == [r.raw.split for r in b]
    assert all(r.split_origin == "assigned" for r in a)
    for label in ("yes", "no"):
        members = [r for r in a if r.raw.labels["metaphor"] == label]
        share = sum(r.raw.split == "train" for r in members) / len(members)
        assert abs(share - 0.7) < 0.02, (label, share)


def test_official_test_split_means_assignment_only_to_train_and_val() -> None:
    source = SourceConfig(name="m", format="memotion", path=".")
    rows = [_Pending(source, RawMeme(str(i), f"f:{i}", "", "x", split=None if i < 100 else "test")) for i in range(120)]
    assign_splits(rows, SplitFractions(), 1, TAX, "m")
    assert {r.raw.split for r in rows[:100]} == {"train", "val"}


def test_missing_source_path_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"source 'hm' \(hateful_memes\): path 'nope' does not exist"):
        consolidate(_cfg("nope"), TAX, tmp_path)


@pytest.mark.parametrize(
    "source, fragment",
    [({"name": "x", "format": "hatefulmemes", "path": "data"}, "unknown format 'hatefulmemes'"),
     ({"name": "x", "format": "harmeme", "path": "nowhere"}, "path 'nowhere' does not exist")],
)
def test_stage_reports_bad_source_in_one_line(tmp_path: Path, repo_root: Path, subprocess_env: dict, source: dict, fragment: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "params.yaml").write_text(json.dumps({"data": {"sources": [source]}}))
    proc = subprocess.run([sys.executable, "-m", "stages.consolidate"], cwd=tmp_path, env=subprocess_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "'x'" in lines[0], proc.stderr


def test_split_groups_stay_together() -> None:
    source = SourceConfig(name="m3", format="multi3hate", path=".")
    rows = [_Pending(source, RawMeme(f"{lang}/{i}", f"f:{i}", "", "x", extra={"split_group": str(i)},
                                     labels={"hateful": "yes" if i % 2 else "no"}))
            for i in range(60) for lang in ("en", "de", "zh")]
    assign_splits(rows, SplitFractions(), 3, TAX, "m3")
    by_group: dict[str, set] = {}
    for r in rows:
        by_group.setdefault(r.raw.extra["split_group"], set()).add(r.raw.split)
    assert all(len(splits) == 1 for splits in by_group.values())
    assert {s for splits in by_group.values() for s in splits} == {"train", "val", "test"}
