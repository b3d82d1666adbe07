"""Stage ``validate``: the Great Expectations suite on small in-memory consolidated tables."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memeops.config import ValidateConfig
from memeops.data.schema import arrow_schema
from memeops.data.taxonomy import load_taxonomy
from memeops.data.validate import build_suite, class_counts, validate_memes
from memeops.data.validation_report import ValidationReport, failure_message

REPO = Path(__file__).resolve().parents[2]
TAX = load_taxonomy()
CFG = ValidateConfig(min_class_count=3, class_count_splits=["train"], max_empty_text_fraction=0.5)
SENTIMENTS = ("negative", "neutral", "positive")
PCS = (["race"], [], None, ["religion", "sex"])


def sha(i: int) -> str:
    return hashlib.sha256(f"image-{i}".encode()).hexdigest()


def make_frame(n_train: int = 12, n_val: int = 6, n_test: int = 6) -> pd.DataFrame:
    """A valid consolidated table: every schema column, Arrow dtypes, a few labelled tasks."""
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    rows = []
    for i, split in enumerate(splits):
        row = {name: None for name in arrow_schema(TAX).names}
        row.update(
            meme_id=f"s:{i}", source="s", format="synthmeme", native_id=str(i), split=split,
            split_origin="official", language="en", text=f"caption {i}", text_origin="annotation",
            source_root="x", image_path=f"img/{i}.jpg", image_sha256=sha(i), image_phash=f"{i:016x}",
            width=256, height=256, native_labels="{}", label_notes="{}", explanations="{}", extra="{}",
            location=f"labels.jsonl:{i + 1}",
            label_hateful=("no", "yes")[i % 2],
            label_sentiment=SENTIMENTS[i % 3],
            label_protected_category=PCS[i % 4],
        )
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=arrow_schema(TAX)).to_pandas()


def run(df: pd.DataFrame, policy: str = "drop_later", cfg: ValidateConfig = CFG) -> ValidationReport:
    return validate_memes(df, cfg, policy, TAX)


def result(report: ValidationReport, check: str):
    (found,) = [r for r in report.results if r.check == check]
    return found


def assert_fails(report: ValidationReport, check: str, *in_message: str) -> str:
    assert not report.success
    r = result(report, check)
    assert not r.success and r.blocking
    msg = failure_message(report)
    assert msg.startswith("validation failed: ")
    for part in (r.name, *in_message):
        assert part in msg, (part, msg)
    return msg


# ---------------------------------------------------------------------------------------------


def test_clean_frame_passes():
    df = make_frame()
    report = run(df)
    assert report.success, failure_message(report)
    assert all(r.success for r in report.results)
    s = report.summary
    assert s["rows"] == 24 and s["splits"] == {"train": 12, "val": 6, "test": 6}
    assert s["empty_texts"] == 0
    assert s["label_coverage"]["hateful"] == {"labelled": 24, "fraction": 1.0}
    assert s["label_coverage"]["protected_category"]["labelled"] == 18
    assert s["label_coverage"]["stance"]["labelled"] == 0
    assert failure_message(report).startswith("validation passed")


def test_suite_marks_every_expectation_blocking_or_not():
    suites = build_suite(TAX, CFG, "drop_later")
    expectations = [e for s in suites for e in s.expectations]
    assert all(isinstance(e.meta["blocking"], bool) and e.description for e in expectations)
    checks = {e.meta["check"]: e.meta["blocking"] for e in expectations}
    assert checks["meme_id.unique"] and checks["label_hateful.in_set"] and checks["class_counts.min"]
    assert checks["label_attack_type.in_set"] and checks["image_phash.cross_split"]
    assert checks["text.empty_fraction"] is False
    with pytest.raises(ValueError, match="leakage policy"):
        build_suite(TAX, CFG, "keep")


def test_duplicate_meme_id():
    df = make_frame()
    df.loc[5, "meme_id"] = "s:4"
    assert_fails(run(df), "meme_id.unique", "'s:4'")


def test_stray_single_label():
    df = make_frame()
    df.loc[2, "label_hateful"] = "maybe"
    df.loc[3, "label_hateful"] = "YES"
    msg = assert_fails(run(df), "label_hateful.in_set", "'maybe'", "'YES'", "2 unexpected")
    assert "label_hateful values in {no, yes}" in msg


def test_bad_multi_label_element():
    df = make_frame()
    df.at[0, "label_protected_category"] = ["race", "gender"]
    report = run(df)
    assert_fails(report, "label_protected_category.in_set", "'gender'")
    assert result(report, "label_protected_category.in_set").unexpected_count == 1


def test_null_text():
    df = make_frame()
    df.loc[7, "text"] = None
    assert_fails(run(df), "text.not_null", "'s:7'")


def test_empty_texts_are_counted_and_only_warn():
    df = make_frame()
    df.loc[[1, 2], "text"] = ""
    report = run(df)
    assert report.success
    assert report.summary["empty_texts"] == 2
    assert result(report, "text.empty_fraction").success
    df.loc[:15, "text"] = ""
    report = run(df)
    assert report.success  # a warning, not blocking
    warn = result(report, "text.empty_fraction")
    assert not warn.success and not warn.blocking and warn.unexpected_count == 16
    assert report.warnings == [warn]
    assert report.summary["empty_texts"] == 16


def test_missing_hash():
    df = make_frame()
    df.loc[3, "image_sha256"] = None
    df.loc[4, "image_sha256"] = "ABC"
    report = run(df)
    assert_fails(report, "image_sha256.not_null", "'s:3'")
    assert_fails(report, "image_sha256.format", "'ABC'")


def test_missing_phash():
    df = make_frame()
    df.loc[3, "image_phash"] = None
    assert_fails(run(df), "image_phash.not_null", "'s:3'")


def test_unknown_split():
    df = make_frame()
    df.loc[20, "split"] = "dev"
    report = run(df)
    assert_fails(report, "split.in_set", "'dev'")
    assert report.summary["splits"]["dev"] == 1


def test_too_few_examples_of_a_class_in_train():
    df = make_frame()
    df.loc[[1, 3, 5, 7, 9], "label_hateful"] = "no"  # train keeps one 'yes' (row 11)
    counts = class_counts(df, CFG, TAX)
    assert counts.set_index("key").loc["train/hateful/yes", "count"] == 1
    assert set(counts["task"]) == {"hateful", "sentiment"}  # only tasks labelled in train
    assert_fails(run(df), "class_counts.min", "'train/hateful/yes (1)'")


def test_label_seen_only_outside_train_counts_as_zero():
    df = make_frame()
    df.loc[20, "label_sentiment"] = None
    df.loc[21, "label_stance"] = "oppose"  # stance unlabelled in train: not checked there
    df.loc[22, "label_harmful"] = "very_harmful"
    df.loc[0, "label_harmful"] = "not_harmful"
    df.loc[[1, 2], "label_harmful"] = "not_harmful"
    assert_fails(run(df), "class_counts.min", "'train/harmful/very_harmful (0)'")


def test_cross_split_duplicate_under_drop_later():
    df = make_frame()
    df.loc[20, "image_sha256"] = df.loc[0, "image_sha256"]
    df.loc[14, "image_phash"] = df.loc[2, "image_phash"]
    report = run(df, "drop_later")
    assert_fails(report, "image_sha256.cross_split", "'s:20 (test) ~ s:0 (train)'")
    assert_fails(report, "image_phash.cross_split", "'s:14 (val) ~ s:2 (train)'")


def test_duplicate_within_one_split_is_not_leakage():
    df = make_frame()
    df.loc[1, "image_sha256"] = df.loc[0, "image_sha256"]
    assert run(df).success


def test_unflagged_duplicate_under_flag():
    df = make_frame()
    df.loc[20, "image_sha256"] = df.loc[0, "image_sha256"]
    assert_fails(run(df, "flag"), "image_sha256.cross_split", "'s:20 (test) ~ s:0 (train)'")
    df.loc[20, ["leak_of", "leak_kind"]] = ["s:0", "exact"]
    report = run(df, "flag")
    assert report.success, failure_message(report)
    assert not run(df, "drop_later").success  # flagging is not dropping


def test_auto_allows_only_flagged_duplicates_in_official_splits():
    df = make_frame()
    df.loc[20, "image_sha256"] = df.loc[0, "image_sha256"]
    assert_fails(run(df, "auto"), "image_sha256.cross_split", "'s:20 (test) ~ s:0 (train)'")  # not flagged
    df.loc[20, ["leak_of", "leak_kind"]] = ["s:0", "exact"]
    report = run(df, "auto")
    assert report.success, failure_message(report)
    assert report.summary["leakage_policy"] == "auto"
    assert "later-split duplicates only in official splits" in result(report, "image_sha256.cross_split").name
    df.loc[20, "split_origin"] = "assigned"  # auto drops an assigned split's duplicates: one left is an error
    assert_fails(run(df, "auto"), "image_sha256.cross_split", "'s:20 (test) ~ s:0 (train)'")
    assert run(df, "flag").success  # flag keeps every flagged duplicate, whatever the split's origin


def test_missing_column_and_empty_table():
    df = make_frame().drop(columns=["language"])
    msg = assert_fails(run(df), "table.columns", "'language'")
    assert "language not null" in msg
    report = run(make_frame().iloc[0:0])
    assert_fails(report, "table.rows", "observed 0")


def test_report_json_and_markdown():
    df = make_frame()
    df.loc[2, "label_hateful"] = "maybe"
    report = run(df)
    data = json.loads(report.to_json())
    assert data["success"] is False
    row = next(r for r in data["results"] if r["check"] == "label_hateful.in_set")
    assert row["examples"] == ["maybe"] and row["unexpected_count"] == 1 and row["blocking"] is True
    assert data["summary"]["splits"]["train"] == 12
    md = report.to_markdown()
    assert md.startswith("# Data validation: ❌ failed (1 blocking)")
    assert "| ❌ | label_hateful values in {no, yes} | label_hateful | blocking | 1 | 'maybe' |" in md
    assert "| ✅ | meme_id unique | meme_id | blocking | 0 |" in md
    assert "warning" in md and "## Label coverage" in md


# --------------------------------------------------------------------------------------------- stage


def write_project(root: Path, df: pd.DataFrame | None, policy: str = "drop_later") -> Path:
    out = root / "consolidated"
    out.mkdir()
    (root / "params.yaml").write_text(
        "data:\n"
        "  sources: [{name: s, format: synthmeme, path: x}]\n"
        f"  output_dir: {out}\n"
        f"  leakage: {{policy: {policy}}}\n"
        "validate: {min_class_count: 3}\n",
        encoding="utf-8",
    )
    if df is not None:
        pq.write_table(pa.Table.from_pandas(df, schema=arrow_schema(TAX), preserve_index=False),
                       out / "memes.parquet")
    return out


def test_stage_subprocess_fails_on_bad_parquet(tmp_path):
    df = make_frame()
    df.loc[5, "meme_id"] = "s:4"
    df.at[1, "label_protected_category"] = ["bogus"]
    write_project(tmp_path, df)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.validate"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("validation failed: 2 blocking expectations:"), err
    assert "meme_id unique" in err and "'s:4'" in err and "'bogus'" in err
    assert "Calculating Metrics" not in err  # progress bars off
    report = json.loads((tmp_path / "reports" / "validation.json").read_text(encoding="utf-8"))
    assert report["success"] is False
    md = (tmp_path / "reports" / "validation.md").read_text(encoding="utf-8")
    assert md.startswith("# Data validation: ❌")


@pytest.fixture
def stage(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.chdir(tmp_path)
    import stages.validate

    return stages.validate


def test_stage_passes_and_writes_reports(stage, tmp_path, capsys):
    write_project(tmp_path, make_frame())
    assert stage.main() == 0
    out = capsys.readouterr()
    assert out.out.startswith("validation passed: 24 rows") and out.err == ""
    assert json.loads((tmp_path / "reports" / "validation.json").read_text())["success"] is True
    assert "✅" in (tmp_path / "reports" / "validation.md").read_text()


def test_stage_uses_leakage_policy_from_params(stage, tmp_path, capsys):
    df = make_frame()
    df.loc[20, "image_phash"] = df.loc[0, "image_phash"]
    df.loc[20, "leak_of"] = "s:0"
    write_project(tmp_path, df, policy="flag")
    assert stage.main() == 0


def test_stage_missing_input_and_bad_config(stage, tmp_path, capsys):
    from stages import run_stage

    write_project(tmp_path, None)
    assert run_stage("validate", stage.main) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "memes.parquet" in err and "consolidate" in err
    (tmp_path / "params.yaml").write_text("data: {sources: []}\n", encoding="utf-8")
    assert run_stage("validate", stage.main) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "params.yaml" in err
