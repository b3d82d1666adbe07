"""MGMCF against its own ablations over several seeds, on the pipeline's data (after ``make repro``).

``python -m benchmarks.mgmcf_seeds [--seeds 0 1 2] [--arms full global_only ...]`` trains the
``mgmcf`` variant of params.yaml once per (arm, seed) -- an arm is the variant with config / inputs
overrides -- selecting on VAL and scoring TEST once per run, exactly as stage ``train_mgmcf`` does
(nothing is registered). Writes ``reports/mgmcf_seeds.json``: per arm and seed the test metrics of
the focus tasks, and per arm mean, std and the min-max spread. Issue 7's ``ablate`` stage is the
pipeline-level version of this; this script is the quick check behind docs/mgmcf.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from memeops.config import TrainStageConfig, load_params
from memeops.data.consolidate import read_memes
from memeops.data.features import FeatureConfig, FeatureStore
from memeops.data.mgmcf_inputs import MgmcfInputs, MgmcfInputsConfig, RegionFeaturesConfig
from memeops.models.clip import ClipEncoderConfig, load_clip, resolve_encoder_config
from memeops.training.experiment import train_variant, variant_specs

ARMS: dict[str, dict[str, Any]] = {
    "full": {},
    "global_only": {"config": {"object_level": False}},
    "no_class_embedding": {"config": {"region_class_embedding": False}},
    "concat": {"config": {"interaction": "concat"}},
    "no_contrastive": {"config": {"contrastive": False}},
    "no_unimodal_heads": {"config": {"unimodal_heads": False}},
}
FOCUS = ("metaphor/macro_f1", "metaphor/auroc", "metaphor_type/macro_f1", "hateful/auroc", "mean/macro_f1")


def _arm_variant(base: dict[str, Any], arm: dict[str, Any], seed: int) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for key in ("config", "inputs"):
        out.setdefault(key, {}).update(arm.get(key, {}))
    out.setdefault("trainer", {})["seed"] = seed
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["full", "global_only"], choices=sorted(ARMS))
    parser.add_argument("--out", default="reports/mgmcf_seeds.json")
    args = parser.parse_args()

    params = load_params()
    train = params.model_dump(by_alias=True)["train"]
    memes = read_memes(Path(params.data.output_dir) / "memes.parquet")
    clip = load_clip(resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig)))
    store = FeatureStore(params.section("features", FeatureConfig).cache_dir, clip.spec_key)
    rf_cfg = params.section("region_features", RegionFeaturesConfig)
    results: dict[str, Any] = {"seeds": args.seeds, "arms": {}}
    inputs_cache: dict[str, MgmcfInputs] = {}
    for name in args.arms:
        runs = []
        for seed in args.seeds:
            variant = _arm_variant(train["variants"]["mgmcf"], ARMS[name], seed)
            cfg = TrainStageConfig.model_validate({**train, "variants": {"mgmcf": variant}})
            specs, _ = variant_specs("mgmcf", memes, cfg)
            inputs_cfg = MgmcfInputsConfig.model_validate(variant.get("inputs", {}))
            key = inputs_cfg.model_dump_json()
            if key not in inputs_cache:
                inputs_cache[key] = MgmcfInputs(memes, store, specs, inputs_cfg, clip, rf_cfg)
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="mgmcf-seeds-") as tmp:
                out = train_variant("mgmcf", memes, store, clip.dim, cfg, Path(tmp), inputs=inputs_cache[key])
            report = out.report()
            row = {"seed": seed, "seconds": round(time.perf_counter() - start, 1), "best_epoch": report["best_epoch"],
                   **{f"test/{k}": report["test"].get(k) for k in FOCUS},
                   **{f"val/{k}": report["val"].get(k) for k in FOCUS}}  # fmt: skip
            print(json.dumps({"arm": name, **row}))
            runs.append(row)
        summary = {}
        for k in FOCUS:
            values = np.array([r[f"test/{k}"] for r in runs if r[f"test/{k}"] is not None], dtype=float)
            if len(values):
                summary[k] = {"mean": round(float(values.mean()), 4), "std": round(float(values.std(ddof=1)), 4)
                              if len(values) > 1 else 0.0, "spread": round(float(values.max() - values.min()), 4)}  # fmt: skip
        results["arms"][name] = {"runs": runs, "test": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
