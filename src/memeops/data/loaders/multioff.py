"""MultiOFF (offensive memes): three CSVs with an official train/val/test split.

Columns ``image_name, sentence, label``; labels are exactly ``offensive`` and ``Non-offensiv`` (sic),
mapped by the rule ``multioff_label``; anything else is quarantined.

Options:
  image_dir: default "Labelled Images".
  encoding: overrides the utf-8-sig -> gbk fallback.
"""

from __future__ import annotations

from collections.abc import Iterator

from memeops.config import SourceConfig
from memeops.data.loaders.base import (
    RowLabels,
    SeenIds,
    is_blank,
    join_image,
    meme,
    missing_field,
    option,
    present_files,
    read_table,
    source_root,
)
from memeops.data.records import LoaderItem
from memeops.data.taxonomy import Taxonomy

FORMAT = "multioff"
FILES: dict[str, str] = {
    "Training_meme_dataset.csv": "train",
    "Validation_meme_dataset.csv": "val",
    "Testing_meme_dataset.csv": "test",
}


def load(source: SourceConfig, taxonomy: Taxonomy) -> Iterator[LoaderItem]:
    root = source_root(source)
    present = present_files(source, root, FILES)
    image_dir = str(option(source, "image_dir", "Labelled Images"))
    language = source.language or "en"
    seen = SeenIds()
    for name, split in present:
        table = read_table(source, root, root / name, required=("image_name", "sentence", "label"))
        for row in table.rows:
            image_name = row.get("image_name")
            if is_blank(image_name):
                yield missing_field(row.location, "image", None, "image_name is empty")
                continue
            native_id = image_name.strip()
            if (dup := seen.check(native_id, row.location, "image_name")) is not None:
                yield dup
                continue
            rl = RowLabels(taxonomy, FORMAT)
            rl.map("multioff_label", row.get("label"))
            if (bad := rl.quarantined(row.location, native_id)) is not None:
                yield bad
                continue
            yield meme(
                native_id=native_id,
                location=row.location,
                text=row.get("sentence"),
                image=join_image(image_dir, image_name) or "",
                labels=rl,
                native={"label": row.get("label")},
                split=split,
                language=language,
            )
