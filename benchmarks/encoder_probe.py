"""Linear probes on the cached CLIP features: does the frozen encoder carry what SynthMeme's rules need?

``python -m benchmarks.encoder_probe`` (after ``dvc repro``; part of ``make bench``). For SynthMeme
memes it reads the latent variables the labels were generated from (``extra.latent``) and fits a
logistic regression on standardised TRAIN embeddings, scoring balanced accuracy on VAL:

- image embedding -> key object's family (4 classes) and key object (16);
- text embedding -> the caption target's slur family (4 + "none" for generic captions) and target.

The ``hateful`` rule needs both (family(object) == slur_family(target)), so these say whether a
fusion model *can* beat the unimodal ones on these features. Merges ``{"encoder_probe": ...}`` into
reports/bench.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks import merge_bench, print_table
from memeops.config import load_params
from memeops.data.consolidate import read_memes
from memeops.data.features import FeatureConfig, FeatureStore, content_keys
from memeops.models.clip import ClipEncoderConfig, load_clip, resolve_encoder_config


def probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> float:
    """Balanced accuracy on ``val`` rows of a standardised logistic regression fitted on ``train``
    rows; NaN when train has one class or val has no rows (a smoke run's tiny splits)."""
    if len(set(y[train])) < 2 or not val.any():
        return math.nan
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
    model.fit(x[train], y[train])
    return float(balanced_accuracy_score(y[val], model.predict(x[val])))


def main() -> dict:
    params = load_params()
    memes = read_memes(Path(params.data.output_dir) / "memes.parquet")
    memes = memes[memes["source"] == "synthmeme"].reset_index(drop=True)
    if memes.empty:
        raise SystemExit("encoder_probe needs SynthMeme memes (their latent variables)")
    encoder = load_clip(resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig)))
    feats = FeatureStore(params.section("features", FeatureConfig).cache_dir, encoder.spec_key).get(content_keys(memes))
    latent = pd.DataFrame([json.loads(e)["latent"] for e in memes["extra"]])
    train, val = (memes["split"] == "train").to_numpy(), (memes["split"] == "val").to_numpy()
    out = {
        "spec_key": encoder.spec_key,
        "image_to_object_family": probe(feats["image"], latent["family"].to_numpy(), train, val),
        "image_to_object": probe(feats["image"], latent["object"].to_numpy(), train, val),
        "text_to_slur_family": probe(feats["text"], latent["slur_family"].fillna("none").to_numpy(), train, val),
        "text_to_target": probe(feats["text"], latent["target"].fillna("none").to_numpy(), train, val),
        "chance": {"object_family": 0.25, "object": 1 / 16, "slur_family": 0.2, "target": 1 / 13},
    }
    merge_bench("encoder_probe", out)
    print_table("Linear probes on cached features (val balanced accuracy)", [
        (k, f"{v:.3f}") for k, v in out.items() if isinstance(v, float)])  # fmt: skip
    return out


if __name__ == "__main__":
    main()
