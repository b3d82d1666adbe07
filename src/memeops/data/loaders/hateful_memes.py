"""Hateful Memes (Facebook HM) and its fine-grained re-annotation (FHM).

Files are read labelled-first (train, dev_seen, dev_unseen, test_seen, test_unseen, then the phase-1
``test.jsonl``) so that a phase-1 test row whose id already appeared in ``test_seen`` is the one
quarantined as a duplicate. ``test.jsonl`` carries no ``label``: its rows are kept with ``hateful``
missing, never guessed.

Options:
  files: mapping file name -> split (default: the six files below; any subset may be present,
         at least one is required). Add e.g. ``dev.jsonl: val`` for the phase-1 dev file.
  image_dir: folder for the derived image name when a line has no ``img`` (default "img").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from memeops.config import SPLITS, SourceConfig
from memeops.data.loaders.base import (
    RowLabels,
    SeenIds,
    is_blank,
    meme,
    missing_field,
    option,
    present_files,
    read_jsonl,
    source_error,
    source_root,
)
from memeops.data.records import LoaderItem, Quarantined
from memeops.data.taxonomy import Taxonomy

FORMAT = "hateful_memes"
DEFAULT_FILES: dict[str, str] = {
    "train.jsonl": "train",
    "dev_seen.jsonl": "val",
    "dev_unseen.jsonl": "val_unseen",
    "test_seen.jsonl": "test",
    "test_unseen.jsonl": "test_unseen",
    "test.jsonl": "test",
}
FINE_GRAINED = ("set_name", "gold_hate", "gold_pc", "gold_attack", "pc", "attack")


def load(source: SourceConfig, taxonomy: Taxonomy) -> Iterator[LoaderItem]:
    """One item per non-blank line of each present file, in the order of ``files``."""
    root = source_root(source)
    files = option(source, "files", DEFAULT_FILES)
    if not isinstance(files, dict) or any(s not in SPLITS for s in files.values()):
        raise source_error(source, f"option 'files' as a mapping file name -> one of {', '.join(SPLITS)}", root)
    present = present_files(source, root, files)
    image_dir = str(option(source, "image_dir", "img"))
    language = source.language or "en"
    seen = SeenIds()
    for name, split in present:
        for location, obj in read_jsonl(root, root / name):
            if isinstance(obj, Quarantined):
                yield obj
            else:
                yield _row(obj, location, split, language, image_dir, taxonomy, seen)


def _canonical_id(value: Any) -> str:
    """HM ids are integers; '05349' and 5349 name the same meme, so digit ids lose leading zeros."""
    text = str(value).strip()
    return str(int(text)) if text.isdigit() else text


def _image(obj: dict[str, Any], native_id: str, image_dir: str) -> str | None:
    if "img" in obj:
        return None if is_blank(obj["img"]) else str(obj["img"])
    if native_id.isdigit():
        # The image file name is the id zero-padded to 5 digits (img/05349.png for id 5349).
        return f"{image_dir.rstrip('/')}/{int(native_id):05d}.png" if image_dir else f"{int(native_id):05d}.png"
    return None


def _single(value: Any) -> Any:
    """FHM writes gold_hate as a one-element list (["hateful"]); a bare string is accepted too."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return value[0]
    return value


def _row(
    obj: dict[str, Any],
    location: str,
    split: str,
    language: str,
    image_dir: str,
    taxonomy: Taxonomy,
    seen: SeenIds,
) -> LoaderItem:
    if is_blank(obj.get("id")):
        return missing_field(location, "id")
    native_id = _canonical_id(obj["id"])
    if (dup := seen.check(native_id, location)) is not None:
        return dup
    image = _image(obj, native_id, image_dir)
    if image is None:
        return missing_field(location, "image", native_id, "no 'img' and the id is not an integer")

    rl = RowLabels(taxonomy, FORMAT)
    has_label = not is_blank(obj.get("label"))
    has_gold = not is_blank(obj.get("gold_hate")) and obj.get("gold_hate") != []
    from_label = rl.convert("hm_label", obj["label"])[1] if has_label else None
    gold = _single(obj.get("gold_hate"))
    from_gold = rl.convert("fhm_gold_hate", gold)[1] if has_gold else None
    if obj.get("gold_pc") is not None:
        rl.map("fhm_gold_pc", obj["gold_pc"])
    if obj.get("gold_attack") is not None:
        rl.map("fhm_gold_attack", obj["gold_attack"])
    if (bad := rl.quarantined(location, native_id)) is not None:
        return bad
    if has_label and has_gold and from_label != from_gold:
        return Quarantined(
            location=location,
            field="label",
            reason=(
                f"label {obj['label']!r} (rule hm_label -> {from_label!r}) disagrees with gold_hate "
                f"{obj['gold_hate']!r} (rule fhm_gold_hate -> {from_gold!r})"
            ),
            value=str(obj["label"]),
            native_id=native_id,
        )
    if has_label or has_gold:
        rl.set("hateful", from_label if has_label else from_gold)
    else:
        rl.set("hateful", None, "unlabelled: no 'label' or 'gold_hate' field (e.g. phase-1 test.jsonl); not guessed")

    native = {k: obj[k] for k in ("label", *FINE_GRAINED) if k in obj}
    return meme(
        native_id=native_id,
        location=location,
        text=obj.get("text"),
        image=image,
        labels=rl,
        native=native,
        split=split,
        language=language,
    )
