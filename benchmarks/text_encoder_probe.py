"""Linear probes on caption embeddings: the pipeline CLIP's text tower against a pretrained sentence encoder.

``python -m benchmarks.text_encoder_probe`` (after ``dvc repro``; not part of ``make bench``). On
SynthMeme's **English** memes (all-MiniLM-L6-v2 is English only: docs/encoders.md) it embeds every
caption twice, with the pipeline CLIP's text tower (what the feature cache holds by default) and
with the ``encoders.text`` sentence encoder (default: the packaged all-MiniLM-L6-v2), and fits a
standardised logistic regression on the TRAIN captions for each latent variable the captions were
generated from (``extra.latent``; evaluation only, as in ``benchmarks/encoder_probe.py``):

- ``target``: who the caption names (generic captions: "none");
- ``slur_family``: the family of the slur the target is tied to (the ``hateful`` rule's text half);
- ``frame``: the caption's template.

Balanced accuracy on VAL and TEST. Writes ``--out`` (default reports/text_encoder_probe.json), never
bench.json. ``--limit N`` keeps the first N English memes (a smoke run).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks import machine, print_table
from benchmarks.encoder_probe import probe
from memeops.config import SentenceEncoderConfig, load_params
from memeops.data.consolidate import read_memes
from memeops.models.clip import ClipEncoderConfig, load_clip, resolve_encoder_config
from memeops.models.sentence_encoder import load_sentence_encoder

LATENTS = ("target", "slur_family", "frame")
EVAL_SPLITS = ("val", "test")


def english_synthmeme(memes: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """SynthMeme's English memes (the ones whose latent variables are known), first ``limit`` kept."""
    rows = memes[(memes["source"] == "synthmeme") & (memes["language"] == "en")].reset_index(drop=True)
    if rows.empty:
        raise SystemExit("text_encoder_probe needs SynthMeme's English memes (their latent variables)")
    return rows.head(limit) if limit else rows


def caption_embeddings(texts: Sequence[str], text_cfg: SentenceEncoderConfig) -> dict[str, np.ndarray]:
    """``{"clip": [N, D], "<encoder>": [N, D_text]}``: the pipeline tower and the sentence encoder."""
    params = load_params()
    clip = load_clip(resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig)))
    sentence = load_sentence_encoder(text_cfg)
    name = text_cfg.package if text_cfg.kind == "package" else Path(str(text_cfg.path)).name
    clip_rows = torch.cat([clip.encode_clip_texts(texts[i : i + 256]) for i in range(0, len(texts), 256)])
    return {"clip": clip_rows.numpy(), name: sentence.encode(list(texts)).numpy()}


def run(memes: pd.DataFrame, text_cfg: SentenceEncoderConfig) -> dict[str, Any]:
    """Probe results per encoder, latent variable and evaluation split."""
    texts = memes["text"].fillna("").astype(str).tolist()
    latent = pd.DataFrame([json.loads(e)["latent"] for e in memes["extra"]])
    split = memes["split"].to_numpy()
    train = split == "train"
    results: dict[str, Any] = {}
    for name, x in caption_embeddings(texts, text_cfg).items():
        results[name] = {"dim": int(x.shape[1])}
        for var in LATENTS:
            y = latent[var].fillna("none").astype(str).to_numpy()
            results[name][var] = {s: probe(x, y, train, split == s) for s in EVAL_SPLITS}
    counts = {s: int((split == s).sum()) for s in ("train", *EVAL_SPLITS)}
    return {"memes": counts, "encoders": results, "text_encoder": text_cfg.model_dump(), "machine": machine()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N English SynthMeme memes (smoke run)")
    parser.add_argument("--out", type=Path, default=Path("reports/text_encoder_probe.json"))
    parser.add_argument("--package", default=None, help="encoders.text package (default: the params', else MiniLM)")
    parser.add_argument("--path", default=None, help="a local Hugging Face sentence encoder folder instead")
    args = parser.parse_args(argv)
    params = load_params()
    text_cfg = params.section("encoders.text", SentenceEncoderConfig)
    if args.path:
        text_cfg = SentenceEncoderConfig(kind="path", path=args.path)
    elif args.package or not text_cfg.enabled:
        text_cfg = SentenceEncoderConfig(kind="package", **({"package": args.package} if args.package else {}))
    memes = english_synthmeme(read_memes(Path(params.data.output_dir) / "memes.parquet"), args.limit)
    out = run(memes, text_cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    rows = [("encoder", "dim", *(f"{v} {s}" for v in LATENTS for s in EVAL_SPLITS))]
    for name, res in out["encoders"].items():
        rows.append((name, str(res["dim"]), *(f"{res[v][s]:.3f}" for v in LATENTS for s in EVAL_SPLITS)))
    print_table(f"Caption probes, English SynthMeme (balanced accuracy; memes {out['memes']})", rows)
    return out


if __name__ == "__main__":
    main()
