"""HarMeme (Harm-C / Harm-P, MOMENTA): ``{train,val,test}.jsonl`` beside ``images/``.

``labels[0]`` is the harm level; ``labels[1]`` the target, present only for harmful memes, so a
meme without it has ``harm_target`` missing (a note is added only when a harmful meme lacks it).

Options:
  image_dir: folder the ``image`` field is relative to (default "images").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
    read_jsonl,
    source_root,
)
from memeops.data.records import LoaderItem, Quarantined
from memeops.data.taxonomy import Taxonomy

FORMAT = "harmeme"
FILES: dict[str, str] = {"train.jsonl": "train", "val.jsonl": "val", "test.jsonl": "test"}


def load(source: SourceConfig, taxonomy: Taxonomy) -> Iterator[LoaderItem]:
    """One item per non-blank line of train/val/test.jsonl (at least one must exist)."""
    root = source_root(source)
    present = present_files(source, root, FILES)
    image_dir = str(option(source, "image_dir", "images"))
    language = source.language or "en"
    seen = SeenIds()
    for name, split in present:
        for location, obj in read_jsonl(root, root / name):
            if isinstance(obj, Quarantined):
                yield obj
            else:
                yield _row(obj, location, split, language, image_dir, taxonomy, seen)


def _row(
    obj: dict[str, Any], location: str, split: str, language: str, image_dir: str, taxonomy: Taxonomy, seen: SeenIds
) -> LoaderItem:
    if is_blank(obj.get("id")):
        return missing_field(location, "id")
    native_id = str(obj["id"]).strip()
    if (dup := seen.check(native_id, location)) is not None:
        return dup
    image = join_image(image_dir, obj.get("image"))
    if image is None:
        return missing_field(location, "image", native_id)
    labels = obj.get("labels")
    if isinstance(labels, str):  # tolerate a bare string for the one-label (not harmful) case
        labels = [labels]
    if not isinstance(labels, list) or not labels:
        return missing_field(location, "labels", native_id, "expected a list [harm level, target?]")

    rl = RowLabels(taxonomy, FORMAT)
    harm = rl.map("harmeme_harm", labels[0])
    if len(labels) > 1 and not is_blank(labels[1]):
        rl.map("harmeme_target", labels[1])
    else:
        note = "harmful meme without a target (labels[1] absent)" if harm not in (None, "not_harmful") else None
        rl.set("harm_target", None, note)
    if (bad := rl.quarantined(location, native_id)) is not None:
        return bad
    return meme(
        native_id=native_id,
        location=location,
        text=obj.get("text"),
        image=image,
        labels=rl,
        native={"labels": obj.get("labels")},
        split=split,
        language=language,
        text_origin="ocr",
    )
