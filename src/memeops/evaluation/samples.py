"""Predictions on sample memes for the report page: the packed model folders are run on a few
memes to show their labels, probabilities and MGMCF's attention next to the gold labels.

This is the one part of the report that runs models (through the served model folders,
:func:`memeops.serving.predictor.open_predictor`, the same path as serving); it returns the records
of :mod:`memeops.reporting.inputs` and :mod:`memeops.reporting.page` draws them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from memeops.models.base import probabilities
from memeops.models.mgmcf import attention_layout
from memeops.models.text_tokenizer import CorpusTokenizer
from memeops.reporting.inputs import AttentionMap, SampleMeme
from memeops.serving.inputs import decode_image
from memeops.serving.predictor import open_predictor


def _probability(value: Any) -> float | None:
    """A predicted probability as a float, or None when the predictor gave none (or NaN)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def select_sample_memes(memes: pd.DataFrame, n: int = 8, split: str = "test", seed: int = 0) -> pd.DataFrame:
    """``n`` memes of ``split`` drawn with a fixed seed (the same memes on every build)."""
    pool = memes[memes["split"] == split] if "split" in memes.columns else memes
    if pool.empty:
        pool = memes
    return pool.sort_values("meme_id").sample(min(n, len(pool)), random_state=seed)


def meme_image_path(row: Mapping[str, Any], root: str | Path = ".") -> Path:
    """The image file of a consolidated meme row (``source_root`` / ``image_path``)."""
    path = Path(str(row.get("image_path", "")))
    if not path.is_absolute():
        path = Path(root) / str(row.get("source_root") or "") / path
    return path


def gold_labels(row: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, str]:
    """``{task: label}`` of a consolidated meme row (multi-label values joined by ``|``; unlabelled
    tasks left out)."""
    out = {}
    for task in tasks:
        value = row.get(f"label_{task}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[task] = "|".join(map(str, value)) if isinstance(value, (list, tuple, np.ndarray)) else str(value)
    return out


def predict_samples(
    rows: pd.DataFrame, model_dirs: Mapping[str, str | Path], tasks: Sequence[str], root: str | Path = ".",
) -> list[SampleMeme]:  # fmt: skip
    """:class:`SampleMeme` records for ``rows`` (consolidated memes) with each model folder's
    predictions (``open_predictor``); a folder that fails to load or predict is skipped."""
    records = [r for _, r in rows.iterrows()]
    frame = pd.DataFrame({"image": [str(meme_image_path(r, root)) for r in records],
                          "text": [str(r.get("text") or "") for r in records]})  # fmt: skip
    samples = [
        SampleMeme(str(r["meme_id"]), meme_image_path(r, root), str(r.get("text") or ""), gold_labels(r, tasks),
                   split=str(r.get("split", "")), language=str(r.get("language", "")))
        for r in records
    ]  # fmt: skip
    for name, folder in model_dirs.items():
        try:
            out = open_predictor(folder).predict(frame)
        except Exception as exc:  # noqa: BLE001 - one broken model folder must not sink the report
            print(f"report: predictions of {name} ({folder}) skipped: {' '.join(str(exc).split())[:200]}")
            continue
        for sample, (_, pred) in zip(samples, out.iterrows()):
            sample.predictions[name] = {
                t: (str(pred[t]), _probability(pred.get(f"{t}_prob"))) for t in tasks if t in pred.index
            }
    return samples


def _token_labels(predictor: Any, folder: Path, text: str, n: int) -> list[str]:
    """The caption's ``n`` valid token strings, from the packed corpus tokenizer when there is one."""
    try:
        path = folder / "encoder" / "clip" / "tokenizer.json"
        kind = getattr(getattr(predictor.inputs.text_encoder, "config", None), "kind", "clip")
        if kind == "clip" and path.is_file():
            tok = CorpusTokenizer.load(path)
            ids = tok([text])[0].tolist()
            names = [tok.tokenizer.id_to_token(i) or "?" for i in ids[:n]]
            if len(names) == n:
                return names
    except Exception as exc:  # noqa: BLE001 - labels are cosmetic
        print(f"report: token labels unavailable ({type(exc).__name__}); positions shown instead")
    return [f"t{i}" for i in range(n)]


def mgmcf_attention(model_dir: str | Path, rows: pd.DataFrame, root: str | Path = ".") -> list[AttentionMap]:
    """MGMCF's ``extras["attention"]`` for ``rows`` with the served model folder's own input chain
    (CLIP, text encoder, packed detector, crops, region CNN): ``predictor.inputs.encode`` then
    ``predictor.head``, as :meth:`MemePredictor.predict_proba` does, keeping the extras."""
    folder = Path(model_dir)
    predictor = open_predictor(folder)
    head = predictor.head
    cfg = head.cfg
    if cfg.interaction != "cap":
        raise ValueError(f"{folder}: MGMCF with interaction={cfg.interaction!r} has no attention")
    layout = attention_layout(cfg)
    names = getattr(getattr(predictor.inputs, "detector", None), "names", None) or {}
    records = [r for _, r in rows.iterrows()]
    paths = [meme_image_path(r, root) for r in records]
    texts = [str(r.get("text") or "") for r in records]
    images = [decode_image(str(p), i) for i, p in enumerate(paths)]
    with torch.inference_mode():
        batch = {k: v.to(predictor.device) for k, v in predictor.inputs.encode(images, texts).items()}
        out = head(batch)
    att = out.extras["attention"].float().cpu().numpy()
    labels = {
        s.name: [s.labels[int(i)] for i in probabilities(out.logits[s.name], s).argmax(-1).cpu()]
        for s in predictor.specs if s.kind == "single"
    }  # fmt: skip
    maps = []
    for b, (record, path, text) in enumerate(zip(records, paths, texts)):
        t0, t1 = layout["text"]
        tmask = batch["text_mask"][b].cpu().numpy().astype(bool)
        n_tok = int(tmask.sum())
        boxes, box_labels, region_w = [], [], []
        if "regions" in layout:
            r0, _ = layout["regions"]
            rmask = batch["region_mask"][b].cpu().numpy().astype(bool)
            classes = batch.get("region_classes")
            for k in np.flatnonzero(rmask):
                boxes.append([float(x) for x in batch["region_boxes"][b, k].cpu()])
                cid = int(classes[b, k]) if classes is not None else -1
                box_labels.append(str(names.get(cid, f"region {k}")) if cid >= 0 else f"region {k}")
                region_w.append(float(att[b, r0 + k]))
        maps.append(AttentionMap(
            meme_id=str(record["meme_id"]), image=path, text=text,
            tokens=_token_labels(predictor, folder, text, n_tok),
            token_weights=[float(w) for w in att[b, t0:t1][tmask]],
            image_weight=float(att[b, layout["image"][0]]),
            boxes=boxes, box_labels=box_labels, region_weights=region_w,
            predictions={t: v[b] for t, v in labels.items()},
        ))  # fmt: skip
    return maps
