"""A quick run of the offline VLM on the pipeline's data (after ``make repro``): the measurement
behind docs/vlm.md until stage ``train_vlm`` exists.

``python -m benchmarks.vlm_quick '{"epochs": 1, "threads": 2}' [--with-text]`` builds one instruction
sample per (meme, task with a label) for ``train.tasks``, trains the tiny LLaVA-style model on
TRAIN (selecting the epoch on VAL answer loss), scores every candidate label of the TEST samples
once, generates answers for ``generate_samples`` of them and prints the VLM report's headline
numbers. ``--with-text`` adds the frozen CLIP text embedding to the visual prefix.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from memeops.config import load_params
from memeops.data.consolidate import read_memes
from memeops.data.features import FeatureConfig, FeatureStore, content_keys
from memeops.models.base import task_specs
from memeops.data.taxonomy import load_taxonomy
from memeops.models.clip import ClipEncoderConfig, load_clip, resolve_encoder_config
from memeops.vlm.instructions import instruction_samples
from memeops.vlm.scoring import vlm_report
from memeops.vlm.train import VLMTrainConfig, fit_vlm, generate_answers, score_candidates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="{}", help="VLMTrainConfig overrides as JSON")
    parser.add_argument("--with-text", action="store_true")
    args = parser.parse_args()
    params = load_params()
    memes = read_memes(f"{params.data.output_dir}/memes.parquet")
    clip = load_clip(resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig)))
    arrays = FeatureStore(params.section("features", FeatureConfig).cache_dir, clip.spec_key).get(content_keys(memes))

    def prefix(name: str, i: int) -> np.ndarray:
        return np.concatenate([arrays[name][i], arrays["text"][i]]) if args.with_text else arrays[name][i]

    images = {m: (prefix("image", i), prefix("image_flip", i)) for i, m in enumerate(memes["meme_id"])}
    tasks = params.model_dump(by_alias=True)["train"]["tasks"]
    samples = instruction_samples(memes, tasks)
    split = {s: [x for x in samples if x.split == s] for s in ("train", "val", "test")}
    cfg = VLMTrainConfig.model_validate(json.loads(args.config))
    start = time.perf_counter()
    fit = fit_vlm(split["train"], split["val"], images, cfg,
                  callback=lambda epoch, rec: print(json.dumps(rec), flush=True))  # fmt: skip
    test = split["test"]
    t = time.perf_counter()
    probs = score_candidates(fit.model, fit.tokenizer, test, images, cfg)
    score_s = time.perf_counter() - t
    rng = np.random.default_rng(cfg.seed)
    shown = sorted(rng.choice(len(test), min(cfg.generate_samples, len(test)), replace=False).tolist())
    generated = generate_answers(fit.model, fit.tokenizer, [test[i] for i in shown], images, cfg)
    specs = task_specs(load_taxonomy(), sorted({s.task for s in test}))
    report = vlm_report(test, probs, None, specs)
    gen_report = vlm_report([test[i] for i in shown], [probs[i] for i in shown], generated, specs)
    out = {"train_samples": len(split["train"]), "fit_seconds": round(fit.seconds, 1),
           "train_tokens_per_s": round(fit.train_tokens_per_s), "score_seconds": round(score_s, 1),
           "total_seconds": round(time.perf_counter() - start, 1), "best_epoch": fit.best_epoch,
           "test_macro_f1": {s.name: round(report[f"{s.name}/macro_f1"], 3) for s in specs},
           "test_mean_macro_f1": round(report["mean/macro_f1"], 3),
           "generated": {k: round(v, 3) for k, v in gen_report.items() if k.startswith("all/")},
           "example": generated[0] if generated else None}  # fmt: skip
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
