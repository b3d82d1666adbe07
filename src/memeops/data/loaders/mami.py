"""MAMI (SemEval-2022 Task 5, misogyny): tab-separated training file plus an optional test set.

Training rows have no official train/val division, so their ``split`` is None (consolidation
assigns train/val); test rows get "test". ``misogyny_type`` is the set of the four type columns at 1
(each column mapped by its own rule); it is the empty set when all four are 0.

The test ground truth ``truth.txt`` has no header: file_name, misogynous, shaming, stereotype,
objectification, violence. A test row without a ground-truth row keeps its labels missing;
ground-truth rows that merge into no test row (orphans, duplicates) are each quarantined, so
``read = training rows + test rows + unmerged truth rows``.

Options:
  train_file: default "TRAINING/training.csv"; train_image_dir: default the train file's folder.
  test_file: default "test/Test.csv"; truth_file: default "test/truth.txt";
  test_image_dir: default the test file's folder.
  encoding: overrides the utf-8-sig -> gbk fallback.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path

from memeops.config import SourceConfig
from memeops.data.loaders.base import (
    CsvRow,
    RowLabels,
    SeenIds,
    index_truth_rows,
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

FORMAT = "mami"
TYPES = ("shaming", "stereotype", "objectification", "violence")
LABEL_FIELDS = ("misogynous", *TYPES)
TEXT = "text transcription"


def load(source: SourceConfig, taxonomy: Taxonomy) -> Iterator[LoaderItem]:
    root = source_root(source)
    language = source.language or "en"
    train_file = str(option(source, "train_file", "TRAINING/training.csv"))
    train_images = str(option(source, "train_image_dir", posixpath.dirname(train_file)))
    table = read_table(
        source, root, require_file(source, root, train_file), delimiter="\t", required=("file_name", *LABEL_FIELDS, TEXT)
    )
    seen = SeenIds()
    for row in table.rows:
        yield _meme(row, row, None, train_images, language, taxonomy, seen)
    yield from _test(source, root, language, taxonomy, seen)


def _labels(row: CsvRow, taxonomy: Taxonomy) -> RowLabels:
    rl = RowLabels(taxonomy, FORMAT)
    rl.map("mami_misogynous", row.get("misogynous"))
    types: set[str] = set()
    for column in TYPES:  # each column's rule maps 1 -> its type, 0 -> nothing (an empty set)
        _, label = rl.convert(f"mami_{column}", row.get(column))
        types.update(label or [])
    task = taxonomy.task("misogyny_type")
    rl.set("misogyny_type", sorted(types, key=task.labels.index))
    return rl


def _meme(
    row: CsvRow, truth: CsvRow | None, note: str | None, image_dir: str, language: str, taxonomy: Taxonomy, seen: SeenIds,
    split: str | None = None,
) -> LoaderItem:
    native_id = seen.claim(row, "file_name")
    if isinstance(native_id, Quarantined):
        return native_id
    if truth is not None:
        rl = _labels(truth, taxonomy)
        if (bad := rl.quarantined(row.location, native_id)) is not None:
            if truth is not row:
                bad.reason = f"{truth.location}: {bad.reason}"
            return bad
        native = {f: truth.get(f) for f in LABEL_FIELDS}
    else:
        rl = RowLabels(taxonomy, FORMAT)
        rl.set("misogynous", None, note)
        rl.set("misogyny_type", None, note)
        native = {}
    return meme(
        native_id=native_id,
        location=row.location,
        text=row.get(TEXT),
        image=join_image(image_dir, native_id) or "",
        labels=rl,
        native=native,
        split=split,
        language=language,
    )


def _test(source: SourceConfig, root: Path, language: str, taxonomy: Taxonomy, seen: SeenIds) -> Iterator[LoaderItem]:
    test_file = str(option(source, "test_file", "test/Test.csv"))
    truth_path = root / str(option(source, "truth_file", "test/truth.txt"))
    image_dir = str(option(source, "test_image_dir", posixpath.dirname(test_file)))
    if not (root / test_file).is_file():
        if truth_path.is_file():
            raise source_error(source, f"the test file beside {truth_path.name}", root / test_file)
        return
    tests = read_table(source, root, root / test_file, delimiter="\t", required=("file_name", TEXT))
    truth: dict[str, CsvRow] = {}
    leftovers: list[LoaderItem] = []
    if truth_path.is_file():
        table = read_table(source, root, truth_path, delimiter="\t", columns=["file_name", *LABEL_FIELDS])
        truth, unmatched = index_truth_rows(table.rows, "file_name")
        leftovers.extend(unmatched)
    why = f"unlabelled test meme (no row in {truth_path.name})" if truth_path.is_file() else "unlabelled test meme (no truth file)"
    used: set[str] = set()
    for row in tests.rows:
        key = row.get("file_name").strip()
        gt = truth.get(key)
        if gt is not None:
            used.add(key)
        yield _meme(row, gt, why, image_dir, language, taxonomy, seen, split="test")
    yield from leftovers
    for key, row in truth.items():
        if key not in used:
            yield Quarantined(row.location, "file_name", f"orphan ground-truth row: {key!r} is not in {test_file}", key, key)
