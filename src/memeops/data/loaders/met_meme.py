"""MET-MEME (bilingual English / Chinese, rich in metaphors).

Per language a label CSV and a text CSV (GBK-encoded, often with empty trailing columns):
English ``label_E.csv`` + ``E_text.csv`` (column ``file_name``), Chinese ``label_C.csv`` +
``C_text.csv`` (column ``images_name``, and ``source domain, target domain`` in swapped order).
Columns are matched by (normalised) name, so order does not matter; ``images_name`` is read as
``file_name``.

The unit read is the label row: each yields one item, its text row (matched on the file name) is
merged into it, and a label row without a text row keeps an empty text (``text_origin`` missing).
Text rows that merge into nothing (orphans, duplicates, rows without a file name) each yield one
Quarantined, so ``read = label rows + unmerged text rows = kept + quarantined``.

MET-MEME has known stray values (表达情感, 图像, image主导, ...): its ``on_unmapped`` is
``missing``, so only the affected task is set missing, with the rule's message in label_notes.
There is no public official split: ``split`` is None and consolidation assigns one.

Options:
  languages: list of "en" / "zh" (default: whichever label/text pairs exist; at least one).
  image_dir_en: default "Eimages"; image_dir_zh: default "Cimages".
  encoding: overrides the utf-8-sig -> gbk fallback for all four CSVs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from memeops.config import SourceConfig
from memeops.data.loaders.base import (
    CsvRow,
    RowLabels,
    SeenIds,
    is_blank,
    join_image,
    meme,
    missing_field,
    option,
    read_table,
    source_error,
    source_root,
)
from memeops.data.records import LoaderItem, Quarantined
from memeops.data.taxonomy import Taxonomy

FORMAT = "met_meme"
# language -> (label CSV, text CSV, default image folder)
LANGUAGES: dict[str, tuple[str, str, str]] = {
    "en": ("label_E.csv", "E_text.csv", "Eimages"),
    "zh": ("label_C.csv", "C_text.csv", "Cimages"),
}
ALIASES = {"images_name": "file_name", "image_name": "file_name"}
LABEL_COLUMNS = (
    "sentiment category",
    "sentiment degree",
    "intention detection",
    "offensiveness detection",
    "metaphor occurrence",
    "metaphor category",
)
# (rule id, native column) in the order the rules are applied.
RULES = (
    ("met_sentiment", "sentiment category"),
    ("met_emotion", "sentiment category"),
    ("met_emotion_intensity", "sentiment degree"),
    ("met_intention", "intention detection"),
    ("met_offensive", "offensiveness detection"),
    ("met_offensiveness_level", "offensiveness detection"),
    ("met_metaphor", "metaphor occurrence"),
    ("met_metaphor_type", "metaphor category"),
)


def load(source: SourceConfig, taxonomy: Taxonomy) -> Iterator[LoaderItem]:
    root = source_root(source)
    for lang in _languages(source, root):
        label_csv, text_csv, default_dir = LANGUAGES[lang]
        image_dir = str(option(source, f"image_dir_{lang}", default_dir))
        yield from _load_language(source, root, lang, label_csv, text_csv, image_dir, taxonomy)


def _languages(source: SourceConfig, root: Path) -> list[str]:
    wanted = option(source, "languages", None)
    if isinstance(wanted, str):
        wanted = [wanted]
    if wanted is not None and (not wanted or any(lang not in LANGUAGES for lang in wanted)):
        raise source_error(source, f"option 'languages' as a list of {', '.join(LANGUAGES)}", root)
    chosen: list[str] = []
    for lang in wanted or list(LANGUAGES):
        label_csv, text_csv, _ = LANGUAGES[lang]
        has_label, has_text = (root / label_csv).is_file(), (root / text_csv).is_file()
        if has_label and has_text:
            chosen.append(lang)
        elif has_label or has_text or wanted is not None:
            missing = text_csv if has_label else label_csv
            raise source_error(source, f"{missing} (MET-MEME needs {label_csv} and {text_csv} together)", root / missing)
    if not chosen:
        pairs = " or ".join(f"{a} + {b}" for a, b, _ in LANGUAGES.values())
        raise source_error(source, pairs, root)
    return chosen


def _load_language(
    source: SourceConfig, root: Path, lang: str, label_csv: str, text_csv: str, image_dir: str, taxonomy: Taxonomy
) -> Iterator[LoaderItem]:
    labels = read_table(source, root, root / label_csv, required=("file_name", *LABEL_COLUMNS), aliases=ALIASES)
    texts = read_table(source, root, root / text_csv, required=("file_name", "text"), aliases=ALIASES)
    first_text: dict[str, CsvRow] = {}
    for row in texts.rows:
        key = row.get("file_name").strip()
        if key:
            first_text.setdefault(key, row)

    seen = SeenIds()
    used: set[str] = set()
    for row in labels.rows:
        name = row.get("file_name")
        if is_blank(name):
            yield missing_field(row.location, "image", None, "file_name is empty")
            continue
        key = name.strip()
        native_id = f"{lang}/{key}"
        if (dup := seen.check(native_id, row.location, "file_name")) is not None:
            yield dup
            continue
        text_row = first_text.get(key)
        if text_row is not None:
            used.add(key)
        yield _meme(row, native_id, lang, join_image(image_dir, name) or "", text_row, taxonomy)

    text_seen = SeenIds()
    for row in texts.rows:
        key = row.get("file_name").strip()
        if not key:
            yield missing_field(row.location, "file_name", None, "text row without a file name")
        elif (dup := text_seen.check(f"{lang}/{key}", row.location, "file_name")) is not None:
            yield dup
        elif key not in used:
            yield Quarantined(
                location=row.location,
                field="file_name",
                reason=f"orphan text row: no row in {label_csv} has file name {key!r}",
                value=key,
                native_id=f"{lang}/{key}",
            )


def _meme(row: CsvRow, native_id: str, lang: str, image: str, text_row: CsvRow | None, taxonomy: Taxonomy) -> LoaderItem:
    rl = RowLabels(taxonomy, FORMAT)
    for rule_id, column in RULES:
        rl.map(rule_id, row.get(column))
    if rl.labels.get("metaphor") == "yes" and is_blank(row.get("metaphor category")):
        rl.set("metaphor_type", None, "metaphor occurrence is 1 but metaphor category is blank")
    native: dict[str, object] = {col: val for col, val in row.values.items() if col != "file_name"}
    if row.extra:
        native["extra_cells"] = row.extra
    return meme(
        native_id=native_id,
        location=row.location,
        text=None if text_row is None else text_row.get("text"),
        image=image,
        labels=rl,
        native=native,
        split=None,  # the official splits are not public
        language=lang,
    )
