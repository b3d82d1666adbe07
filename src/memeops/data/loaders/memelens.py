"""MemeLens unified format: ``{lang}/{dataset}/images/`` plus ``train.jsonl``, ``val.jsonl``,
``test.jsonl`` per dataset folder; fields ``id, image, text, label, task_description, explanation,
native_label, native_task_description, native_explanation`` (the test split adds judge scores, kept
in ``extra``).

The format does not name a taxonomy task, so each dataset folder needs one: option ``tasks`` maps a
dataset folder (``"{dataset}"`` or ``"{lang}/{dataset}"``) to a task; a dataset without a mapping is
accepted only when its ``task_description`` is exactly a taxonomy task name (checked on its first
line, then on every line). Otherwise the whole source is a SourceError listing the unmapped
datasets: guessing a task would mislabel every row. ``label`` goes through the identity rule
``memelens_label`` (the task's own labels, case/space-insensitive); ``explanation`` becomes
``explanations[task]``.

Options:
  tasks: mapping dataset folder -> taxonomy task.
  languages: mapping language folder -> ISO code (default: the folder name is the code).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memeops.config import SourceConfig
from memeops.data.loaders.base import (
    RowLabels,
    SeenIds,
    is_blank,
    meme,
    missing_field,
    option,
    read_jsonl,
    source_error,
    source_root,
)
from memeops.data.records import LoaderItem, Quarantined
from memeops.data.taxonomy import Taxonomy

FORMAT = "memelens"
FILES: dict[str, str] = {"train.jsonl": "train", "val.jsonl": "val", "test.jsonl": "test"}
NATIVE = ("label", "native_label", "task_description", "native_task_description", "native_explanation")
KNOWN = ("id", "image", "text", "explanation", *NATIVE)


def load(source: SourceConfig, taxonomy: Taxonomy) -> Iterator[LoaderItem]:
    root = source_root(source)
    tasks = option(source, "tasks", {})
    if not isinstance(tasks, dict) or any(t not in taxonomy.tasks for t in tasks.values()):
        raise source_error(source, f"option 'tasks' as a mapping dataset -> one of {', '.join(taxonomy.task_names)}", root)
    codes = option(source, "languages", {})
    if not isinstance(codes, dict):
        raise source_error(source, "option 'languages' as a mapping language folder -> ISO code", root)
    datasets = _datasets(root)
    if not datasets:
        raise source_error(source, "dataset folders {lang}/{dataset}/ holding train/val/test.jsonl", root)
    resolved: dict[Path, str | None] = {}
    unmapped = []
    for lang, ds, folder in datasets:
        task = tasks.get(f"{lang}/{ds}") or tasks.get(ds)
        if task is None and _first_description(root, folder) not in taxonomy.tasks:
            unmapped.append(f"{lang}/{ds}")
        resolved[folder] = task
    if unmapped:
        raise source_error(
            source,
            f"option 'tasks' to map the datasets {', '.join(unmapped)} to taxonomy tasks "
            "(or a task_description that is a task name)",
            root,
        )
    seen = SeenIds()
    for lang, ds, folder in datasets:
        for name, split in FILES.items():
            if not (folder / name).is_file():
                continue
            for location, obj in read_jsonl(root, folder / name):
                if isinstance(obj, Quarantined):
                    yield obj
                else:
                    yield _row(obj, location, lang, ds, split, resolved[folder], str(codes.get(lang, lang)), taxonomy, seen)


def _datasets(root: Path) -> list[tuple[str, str, Path]]:
    found = []
    for lang_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for ds_dir in sorted(p for p in lang_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if any((ds_dir / name).is_file() for name in FILES):
                found.append((lang_dir.name, ds_dir.name, ds_dir))
    return found


def _first_description(root: Path, folder: Path) -> str | None:
    """The task_description of a dataset's first readable line (to accept datasets named by task)."""
    for name in FILES:
        if (folder / name).is_file():
            for _, obj in read_jsonl(root, folder / name):
                if isinstance(obj, dict):
                    return str(obj.get("task_description", "")).strip()
    return None


def _row(
    obj: dict[str, Any],
    location: str,
    lang: str,
    ds: str,
    split: str,
    task: str | None,
    language: str,
    taxonomy: Taxonomy,
    seen: SeenIds,
) -> LoaderItem:
    if is_blank(obj.get("id")):
        return missing_field(location, "id")
    native_id = f"{lang}/{ds}/{str(obj['id']).strip()}"
    if (dup := seen.check(native_id, location)) is not None:
        return dup
    image = obj.get("image")
    if is_blank(image):
        return missing_field(location, "image", native_id)
    image = str(image)
    image = f"{lang}/{ds}/{image}" if image.startswith("images/") else f"{lang}/{ds}/images/{image}"
    if task is None:
        task = str(obj.get("task_description", "")).strip()
        if task not in taxonomy.tasks:
            return Quarantined(location, "task_description",
                               f"dataset {lang}/{ds} has no task in option 'tasks' and task_description is not a "
                               "taxonomy task name", task, native_id)
    rl = RowLabels(taxonomy, FORMAT)
    rl.map("memelens_label", obj.get("label"), task=task)
    if (bad := rl.quarantined(location, native_id)) is not None:
        return bad
    explanation = obj.get("explanation")
    return meme(
        native_id=native_id,
        location=location,
        text=obj.get("text"),
        image=image,
        labels=rl,
        native={k: obj[k] for k in NATIVE if k in obj},
        split=split,
        language=language,
        explanations={} if is_blank(explanation) else {task: str(explanation)},
        extra={k: v for k, v in obj.items() if k not in KNOWN},
    )
