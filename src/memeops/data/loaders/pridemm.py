"""PrideMM (MemeCLIP): one CSV ``name,hate,target,stance,humour,split,text`` beside ``Images/``.

``target`` is NA when ``hate`` is 0: that maps to a missing ``harm_target`` (rule pridemm_target), not
an error. ``text`` can be the literal string "None", read as no text. The ``split`` column must be
train/val/test; any other value quarantines the row.

Options:
  csv: default "PrideMM.csv"; image_dir: default "Images".
  encoding: overrides the utf-8-sig -> gbk fallback.
"""

from __future__ import annotations

from collections.abc import Iterator

from memeops.config import SourceConfig
from memeops.data.loaders.base import (
    RowLabels,
    SeenIds,
    join_image,
    meme,
    option,
    read_table,
    require_file,
    source_root,
)
from memeops.data.records import LoaderItem, Quarantined
from memeops.data.taxonomy import Taxonomy

FORMAT = "pridemm"
SPLITS = ("train", "val", "test")
LABEL_FIELDS = ("hate", "target", "stance", "humour")
RULES = (
    ("pridemm_hate", "hate"),
    ("pridemm_target", "target"),
    ("pridemm_stance", "stance"),
    ("pridemm_humour", "humour"),
)


def load(source: SourceConfig, taxonomy: Taxonomy) -> Iterator[LoaderItem]:
    root = source_root(source)
    path = require_file(source, root, str(option(source, "csv", "PrideMM.csv")))
    image_dir = str(option(source, "image_dir", "Images"))
    language = source.language or "en"
    table = read_table(source, root, path, required=("name", *LABEL_FIELDS, "split", "text"))
    seen = SeenIds()
    for row in table.rows:
        native_id = seen.claim(row, "name")
        if isinstance(native_id, Quarantined):
            yield native_id
            continue
        split = row.get("split").strip()
        if split not in SPLITS:
            yield Quarantined(row.location, "split", f"split {split!r} is not one of {', '.join(SPLITS)}", split, native_id)
            continue
        rl = RowLabels(taxonomy, FORMAT)
        for rule_id, column in RULES:
            rl.map(rule_id, row.get(column))
        if (bad := rl.quarantined(row.location, native_id)) is not None:
            yield bad
            continue
        if rl.labels.get("hateful") == "yes" and rl.labels.get("harm_target") is None:
            rl.set("harm_target", None, f"hateful meme without a target (target {row.get('target')!r})")
        # PrideMM's `name` is used as the image file name as given (unverified: it carries the
        # extension, e.g. img_1.png); consolidation reports it when the file does not exist.
        yield meme(
            native_id=native_id,
            location=row.location,
            text=row.get("text"),
            none_literal=True,
            image=join_image(image_dir, native_id) or "",
            labels=rl,
            native={f: row.get(f) for f in LABEL_FIELDS},
            split=split,
            language=language,
        )
