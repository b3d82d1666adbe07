"""The consolidated meme table: one stable schema for every source.

Written by stage ``consolidate`` to ``data/consolidated/memes.parquet``; read by validation and by
every training stage. Missing labels are nulls; a multi-label task with a known "none of these"
is an empty list, not a null.
"""

from __future__ import annotations

import pyarrow as pa

from memeops.data.taxonomy import Taxonomy, label_column

#: Columns that are not task labels, in order, with their Arrow types.
BASE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("meme_id", pa.string()),  # "<source>:<native_id>", unique across sources
    ("source", pa.string()),
    ("format", pa.string()),
    ("native_id", pa.string()),
    ("split", pa.string()),  # one of config.SPLITS
    ("split_origin", pa.string()),  # official | assigned
    ("language", pa.string()),  # ISO code, "und" when unknown
    ("text", pa.string()),  # never null; "" allowed (counted by validation)
    ("text_origin", pa.string()),  # annotation | ocr | missing
    ("source_root", pa.string()),  # the source's path as given in params
    ("image_path", pa.string()),  # relative to source_root, posix
    ("image_sha256", pa.string()),
    ("image_phash", pa.string()),  # 64-bit perceptual hash, 16 hex digits
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("native_labels", pa.string()),  # JSON: the source's own labels, verbatim
    ("label_notes", pa.string()),  # JSON: task -> why the task was set missing
    ("explanations", pa.string()),  # JSON: task -> explanation text
    ("extra", pa.string()),  # JSON: other ground truth (boxes, caption, style, ...)
    ("leak_of", pa.string()),  # meme_id of an earlier-split duplicate (flag policy), else null
    ("leak_kind", pa.string()),  # exact | near | null
    ("location", pa.string()),  # "<file>:<line or row>" in the source
]

QUARANTINE_COLUMNS = ("source", "location", "native_id", "field", "reason", "value")


def arrow_schema(taxonomy: Taxonomy) -> pa.Schema:
    """Base columns plus one ``label_<task>`` column per taxonomy task (string or list<string>)."""
    fields = [pa.field(name, dtype) for name, dtype in BASE_COLUMNS]
    for task in taxonomy.tasks.values():
        dtype = pa.list_(pa.string()) if task.is_multi else pa.string()
        fields.append(pa.field(label_column(task.name), dtype))
    return pa.schema(fields)
