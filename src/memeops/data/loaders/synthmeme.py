"""SynthMeme, the project's own generated set: ``{train,val,test,test_unseen}.jsonl`` beside
``images/``; each line's ``image`` is already relative to the source root ("images/sm_000123.jpg").

Every task in ``labels`` goes through the identity rule ``synthmeme_labels`` (null -> missing); an
unknown task name or a label outside the task's set quarantines the row: the generator writes the
taxonomy's own labels, so anything else is a bug to see, not to map. The split comes from the file
name (a line's own ``split``, when present, must agree). Rendering ground truth (objects with
boxes, caption parts, latent factors, style) and the noise-free ``clean_labels`` go to ``extra``;
``explanations`` are copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from memeops.config import SourceConfig
from memeops.data.loaders.base import (
    RowLabels,
    SeenIds,
    is_blank,
    meme,
    missing_field,
    read_jsonl,
    source_error,
    source_root,
)
from memeops.data.records import LoaderItem, Quarantined
from memeops.data.taxonomy import Taxonomy

FORMAT = "synthmeme"
SPLITS = ("train", "val", "test", "test_unseen")
EXTRA = ("objects", "caption", "latent", "style", "clean_labels")


def load(source: SourceConfig, taxonomy: Taxonomy) -> Iterator[LoaderItem]:
    root = source_root(source)
    present = [s for s in SPLITS if (root / f"{s}.jsonl").is_file()]
    if not present:
        raise source_error(source, f"at least one of {', '.join(f'{s}.jsonl' for s in SPLITS)}", root)
    seen = SeenIds()
    for split in present:
        for location, obj in read_jsonl(root, root / f"{split}.jsonl"):
            if isinstance(obj, Quarantined):
                yield obj
            else:
                yield _row(obj, location, split, source.language, taxonomy, seen)


def _row(
    obj: dict[str, Any], location: str, split: str, language: str | None, taxonomy: Taxonomy, seen: SeenIds
) -> LoaderItem:
    if is_blank(obj.get("id")):
        return missing_field(location, "id")
    native_id = str(obj["id"]).strip()
    if (dup := seen.check(native_id, location)) is not None:
        return dup
    if is_blank(obj.get("image")):
        return missing_field(location, "image", native_id)
    if obj.get("split") not in (None, split):
        return Quarantined(location, "split", f"line says split {obj['split']!r} but is in {split}.jsonl",
                           str(obj["split"]), native_id)
    labels = obj.get("labels")
    if not isinstance(labels, dict):
        return missing_field(location, "labels", native_id, "expected an object task -> label")
    rl = RowLabels(taxonomy, FORMAT)
    for task, value in labels.items():
        if task not in taxonomy.tasks:
            return Quarantined(location, f"labels.{task}", f"unknown task {task!r} (rule synthmeme_labels)",
                               None if value is None else str(value), native_id)
        if value is None:
            rl.set(task, None)
        else:
            rl.map("synthmeme_labels", value, task=task)
    if (bad := rl.quarantined(location, native_id)) is not None:
        bad.field = f"labels.{rl.error.task}" if rl.error is not None else bad.field
        return bad
    explanations = obj.get("explanations") or {}
    return meme(
        native_id=native_id,
        location=location,
        text=obj.get("text"),
        image=str(obj["image"]),
        labels=rl,
        native={"labels": labels},
        split=split,
        language=str(obj.get("lang") or language or "en"),
        explanations={k: str(v) for k, v in explanations.items() if not is_blank(v)} if isinstance(explanations, dict) else {},
        extra={k: obj.get(k) for k in EXTRA},
    )
