"""SynthMeme written in the MemeLens unified format: a second source of another format, offline.

MemeLens gathers many single-task data sets under ``{lang}/{dataset}/images/`` with
``train/val/test.jsonl`` rows ``id, image, text, label, task_description, explanation, native_*``
(reference/datasets.md). :func:`export_memelens` turns generated SynthMeme records into that
layout: each meme goes to ONE data set (one task), as in MemeLens where every data set annotates
its own memes for its own task. The unified-vs-per-source comparison (benchmarks/vlm_regimes.py)
and the loader tests read it back through :mod:`memeops.data.loaders.memelens`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

SPLITS = {"train": "train", "val": "val", "test": "test", "test_unseen": "test"}  # MemeLens has no unseen split


def export_memelens(records: Sequence[Mapping], synth_dir: str | Path, out_dir: str | Path,
                    datasets: Mapping[str, str], seed: int = 0) -> dict[str, int]:  # fmt: skip
    """Write ``records`` (from :func:`memeops.data.synth.generate.load_records`) as MemeLens data sets.

    ``datasets`` maps a data-set folder name to the SynthMeme task it annotates; each record is
    assigned (seeded, balanced) to one data set and keeps only that task's label and explanation.
    Records without a label for their data set's task are skipped. Returns rows written per
    ``{lang}/{dataset}``. Images are copied next to the rows, as the format wants.
    """
    if not datasets:
        raise ValueError("datasets must map at least one data-set folder to a task")
    synth_dir, out_dir = Path(synth_dir), Path(out_dir)
    names = list(datasets)
    order = np.random.default_rng(seed).permutation(len(records))
    rows: dict[tuple[str, str, str], list[dict]] = {}
    for rank, i in enumerate(order):
        rec = records[int(i)]
        ds = names[rank % len(names)]
        task = datasets[ds]
        label = (rec.get("labels") or {}).get(task)
        if label is None:
            continue
        lang = str(rec.get("lang") or "en")
        image = Path(str(rec["image"])).name
        target = out_dir / lang / ds / "images" / image
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(synth_dir / str(rec["image"]), target)
        explanation = (rec.get("explanations") or {}).get(task)
        rows.setdefault((lang, ds, SPLITS[str(rec["split"])]), []).append({
            "id": str(rec["id"]), "image": f"images/{image}", "text": rec.get("text") or "",
            "label": label, "task_description": task, "explanation": explanation or "",
            "native_label": label, "native_task_description": task, "native_explanation": "",
        })  # fmt: skip
    counts: dict[str, int] = {}
    for (lang, ds, split), items in sorted(rows.items()):
        path = out_dir / lang / ds / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for item in items:
                fh.write(json.dumps(item, ensure_ascii=False) + "\n")
        counts[f"{lang}/{ds}"] = counts.get(f"{lang}/{ds}", 0) + len(items)
    return counts
