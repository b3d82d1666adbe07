"""Memotion 7k: ``labels.csv`` (the labelled training set) and, optionally, the test set
``2000_testdata.csv`` + ``Meme_groundTruth.csv``.

``labels.csv`` has no official train/val division, so its rows get ``split`` None (consolidation
assigns train/val); test rows get "test". Text is ``text_corrected`` when non-empty, else the OCR
text (``text_origin`` "ocr").

Test ground truth (unverified format): ``Labels`` looks like ``<sent>_<HSOM binary>_<HSOM intensity>``
(e.g. "1_1110_2013"). Only the sentiment code before the first underscore is certain enough to map,
through the rule ``memotion_test_sentiment`` in taxonomy.yaml. ASSUMPTION (unverified): the codes are
-1 negative, 0 neutral, 1 positive -- what a public Memotion loader parses
(``int(x[:x.find('_')])`` with {-1: negative, 0: neutral, 1: positive}). A wrong scale would mislabel
silently (0 would mean negative on a 0/1/2 scale), so when any code in the file falls outside the rule
every labelled test row is quarantined with the codes seen, instead of trusting part of the file.
The whole ``Labels`` string is kept in ``native``; the other tasks stay unannotated for test rows.

Items: one per labels.csv row, one per test-data row (its ground-truth row merged in), and one
Quarantined per ground-truth row that merges into nothing (orphan, duplicate, unnamed).

Options:
  labels_file: default "labels.csv"; image_dir: default "images".
  test_file: default "2000_testdata.csv"; truth_file: default "Meme_groundTruth.csv" (some copies
  name it "Meme_groundTruth .csv", which is used when the default is absent);
  test_image_dir: default = image_dir (the original archive keeps test images in "2000_data").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from memeops.config import SourceConfig
from memeops.data.loaders.base import (
    CsvRow,
    RowLabels,
    SeenIds,
    as_code,
    index_truth_rows,
    is_blank,
    join_image,
    meme,
    option,
    read_table,
    require_file,
    source_error,
    source_root,
)
from memeops.data.records import LoaderItem, Quarantined
from memeops.data.taxonomy import Taxonomy

FORMAT = "memotion"
LABEL_FIELDS = ("humour", "sarcasm", "offensive", "motivational", "overall_sentiment")
RULES = (
    ("memotion_humour", "humour"),
    ("memotion_sarcasm", "sarcasm"),
    ("memotion_offensive", "offensive"),
    ("memotion_offensiveness_level", "offensive"),
    ("memotion_motivational", "motivational"),
    ("memotion_sentiment", "overall_sentiment"),
)
TEST_RULE = "memotion_test_sentiment"
LABELS_SHAPE = "'<sentiment code>_<HSOM binary>_<HSOM intensity>' such as '1_1110_2013' (unverified format)"
_SENTIMENT = re.compile(r"^\s*([+-]?\d+)_")


def load(source: SourceConfig, taxonomy: Taxonomy) -> Iterator[LoaderItem]:
    root = source_root(source)
    language = source.language or "en"
    image_dir = str(option(source, "image_dir", "images"))
    labels_path = require_file(source, root, str(option(source, "labels_file", "labels.csv")))
    table = read_table(source, root, labels_path, required=("image_name", "text_ocr", "text_corrected", *LABEL_FIELDS))
    seen = SeenIds()
    for row in table.rows:
        yield _train_row(row, image_dir, language, taxonomy, seen)
    yield from _test(source, root, language, str(option(source, "test_image_dir", image_dir)), taxonomy, seen)


def _text(row: CsvRow, corrected: str, ocr: str) -> tuple[str, str]:
    """(text, origin) for :func:`meme`: the corrected text when present, else the OCR text."""
    if not is_blank(row.get(corrected)):
        return row.get(corrected), "annotation"
    return row.get(ocr), "ocr"


def _train_row(row: CsvRow, image_dir: str, language: str, taxonomy: Taxonomy, seen: SeenIds) -> LoaderItem:
    native_id = seen.claim(row, "image_name")
    if isinstance(native_id, Quarantined):
        return native_id
    rl = RowLabels(taxonomy, FORMAT)
    for rule_id, column in RULES:
        rl.map(rule_id, row.get(column))
    if (bad := rl.quarantined(row.location, native_id)) is not None:
        return bad
    text, origin = _text(row, "text_corrected", "text_ocr")
    return meme(
        native_id=native_id,
        location=row.location,
        text=text,
        text_origin=origin,
        image=join_image(image_dir, native_id) or "",
        labels=rl,
        native={f: row.get(f) for f in LABEL_FIELDS},
        split=None,  # labels.csv has no official train/val division
        language=language,
    )


def _truth_path(source: SourceConfig, root: Path) -> Path | None:
    given = option(source, "truth_file", None)
    candidates = [given] if given else ["Meme_groundTruth.csv", "Meme_groundTruth .csv"]
    for name in candidates:
        if (root / name).is_file():
            return root / name
    return None


def _test(
    source: SourceConfig, root: Path, language: str, image_dir: str, taxonomy: Taxonomy, seen: SeenIds
) -> Iterator[LoaderItem]:
    test_path = root / str(option(source, "test_file", "2000_testdata.csv"))
    truth_path = _truth_path(source, root)
    if not test_path.is_file():
        if truth_path is not None:
            raise source_error(source, f"the test data file beside {truth_path.name}", test_path)
        return
    tests = read_table(source, root, test_path, required=("image_name", "ocr_extracted_text", "corrected_text"))
    truth: dict[str, CsvRow] = {}
    truth_items: list[LoaderItem] = []  # duplicates / unnamed truth rows, yielded after the test rows
    if truth_path is not None:
        table = read_table(source, root, truth_path, required=("image_name", "labels"))
        truth, truth_items = index_truth_rows(table.rows, "image_name")
    scale_error = _scale_error(truth, taxonomy)

    used: set[str] = set()
    for row in tests.rows:
        native_id = seen.claim(row, "image_name")
        if isinstance(native_id, Quarantined):
            yield native_id
            continue
        gt = truth.get(native_id)
        if gt is not None:
            used.add(native_id)
        yield _test_row(row, native_id, gt, truth_path, image_dir, language, scale_error, taxonomy)

    yield from truth_items
    for key, row in truth.items():
        if key not in used:
            yield Quarantined(row.location, "image_name", f"orphan ground-truth row: {key!r} is not in {test_path.name}",
                              key, key)


def _scale_error(truth: dict[str, CsvRow], taxonomy: Taxonomy) -> str | None:
    """Why the assumed sentiment scale does not fit this file, or None when every code maps."""
    rule = taxonomy.rule(FORMAT, TEST_RULE)
    codes = {as_code(m.group(1)) for row in truth.values() if (m := _SENTIMENT.match(row.get("labels")))}
    stray = sorted(c for c in codes if c not in rule.mapping)
    if not stray:
        return None
    return (
        f"rule {TEST_RULE} assumes sentiment codes {', '.join(rule.mapping)} in Labels {LABELS_SHAPE}, "
        f"but this file has codes {', '.join(sorted(codes))} (unmapped: {', '.join(stray)}); "
        "the scale is unverified, so no test sentiment is trusted -- fix the rule in taxonomy.yaml"
    )


def _test_row(
    row: CsvRow,
    native_id: str,
    gt: CsvRow | None,
    truth_path: Path | None,
    image_dir: str,
    language: str,
    scale_error: str | None,
    taxonomy: Taxonomy,
) -> LoaderItem:
    rl = RowLabels(taxonomy, FORMAT)
    native: dict[str, object] = {}
    if gt is None:
        why = f"no row in {truth_path.name}" if truth_path is not None else "no ground-truth file"
        rl.set("sentiment", None, f"unlabelled test meme ({why})")
    else:
        value = gt.get("labels")
        native["Labels"] = value
        m = _SENTIMENT.match(value)
        if m is None:
            why = f"{gt.location}: Labels {value!r} does not have the expected shape {LABELS_SHAPE}"
            return Quarantined(row.location, "Labels", why, value, native_id)
        if scale_error is not None:
            return Quarantined(row.location, "Labels", f"{gt.location}: {scale_error}", value, native_id)
        rl.map(TEST_RULE, m.group(1))
        if (bad := rl.quarantined(row.location, native_id)) is not None:
            bad.reason = f"{gt.location}: {bad.reason}"
            return bad
    text, origin = _text(row, "corrected_text", "ocr_extracted_text")
    return meme(
        native_id=native_id,
        location=row.location,
        text=text,
        text_origin=origin,
        image=join_image(image_dir, row.get("image_name")) or "",
        labels=rl,
        native=native,
        split="test",
        language=language,
    )
