"""Unified vs per-source VLM training (MemeLens's comparison) on SynthMeme plus a second source.

``python -m benchmarks.vlm_regimes`` (after ``make repro``): the pipeline's SynthMeme memes are the
first source. The second is a fresh SynthMeme draw (another seed, more Chinese) written in the
MemeLens unified format -- three single-task data sets (hateful, sentiment, sarcasm), each meme in
one of them -- and read back by the ``memelens`` loader through ``consolidate``. Both regimes use
``params vlm`` (trainer, prefix) and the pipeline's CLIP; each trains on TRAIN, selects on VAL and
scores TEST once. Writes ``reports/vlm_regimes.json`` and ``reports/vlm_regimes.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from memeops.config import ConsolidateConfig, SourceConfig, SynthConfig, load_params
from memeops.data.consolidate import consolidate, read_memes
from memeops.data.features import FeatureConfig, FeatureStore, content_keys, extract_features
from memeops.data.synth.generate import generate, load_records
from memeops.data.synth.memelens import export_memelens
from memeops.data.taxonomy import load_taxonomy
from memeops.evaluation.compare import markdown_table
from memeops.models.base import task_specs
from memeops.models.clip import ClipEncoderConfig, load_clip, resolve_encoder_config
from memeops.vlm.experiment import VLMStageConfig, compare_regimes, prefix_vectors, vlm_samples

SECOND_DATASETS = {"hate_speech": "hateful", "sentiment": "sentiment", "sarcasm": "sarcasm"}


def second_source(workdir: Path, n_memes: int, seed: int) -> tuple[object, dict[str, int]]:
    """Generate, export as MemeLens and consolidate the second source; its meme table and counts."""
    synth = SynthConfig(seed=seed, n_memes=n_memes, languages={"en": 0.4, "zh": 0.6}, workers=2,
                        output_dir=str(workdir / "synth"))  # fmt: skip
    generate(synth, report_path=None)
    counts = export_memelens(load_records(synth.output_dir), synth.output_dir, workdir / "memelens", SECOND_DATASETS, seed)
    source = SourceConfig(name="lensfix", format="memelens", path=str(workdir / "memelens"),
                          tasks=SECOND_DATASETS, languages={"en": "en", "zh": "zh"})  # fmt: skip
    result = consolidate(ConsolidateConfig(sources=[source], workers=2), load_taxonomy(), Path("."))
    if result.quarantine:
        print(f"second source: {len(result.quarantine)} rows quarantined, e.g. {result.quarantine[0]}")
    return result.memes, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--second-n", type=int, default=900, help="memes generated for the second source")
    parser.add_argument("--seed", type=int, default=77, help="the second source's generator seed")
    parser.add_argument("--out", default="reports/vlm_regimes")
    args = parser.parse_args()
    start = time.perf_counter()
    params = load_params()
    cfg = params.section("vlm", VLMStageConfig)
    tasks = cfg.tasks or params.model_dump(by_alias=True)["train"]["tasks"]
    encoder_cfg = resolve_encoder_config(params.section("encoders.clip", ClipEncoderConfig))
    clip = load_clip(encoder_cfg)
    memes = read_memes(Path(params.data.output_dir) / "memes.parquet")
    arrays = FeatureStore(params.section("features", FeatureConfig).cache_dir, clip.spec_key).get(content_keys(memes))
    images = prefix_vectors(memes, arrays, cfg.with_text)
    samples, _ = vlm_samples(memes, tasks)
    with tempfile.TemporaryDirectory(prefix="memeops-vlm-regimes-") as tmp:
        second, exported = second_source(Path(tmp), args.second_n, args.seed)
        feature_cfg = FeatureConfig(cache_dir=str(Path(tmp) / "features"))
        extract_features(second, clip, feature_cfg)
        second_arrays = FeatureStore(feature_cfg.cache_dir, clip.spec_key).get(content_keys(second))
        images.update(prefix_vectors(second, second_arrays, cfg.with_text))
        second_samples, _ = vlm_samples(second, list(SECOND_DATASETS.values()))
    all_samples = samples + second_samples
    specs = task_specs(load_taxonomy(), sorted({s.task for s in all_samples}))
    counts = {src: {split: sum(1 for s in all_samples if s.source == src and s.split == split)
                    for split in ("train", "val", "test")} for src in sorted({s.source for s in all_samples})}  # fmt: skip
    print(json.dumps({"samples": counts, "exported": exported}))
    table, results = compare_regimes(all_samples, images, cfg.trainer, specs,
                                     callback=lambda key, epoch, rec: print(key, json.dumps(rec), flush=True))  # fmt: skip
    out = {
        "trainer": cfg.trainer.model_dump(), "with_text": cfg.with_text, "samples": counts,
        "second_source": {"format": "memelens", "datasets": SECOND_DATASETS, "n_memes": args.second_n, "seed": args.seed},
        "fit_seconds": {r: {k: round(f.seconds, 1) for k, f in res.fits.items()} for r, res in results.items()},
        "best_epoch": {r: {k: f.best_epoch for k, f in res.fits.items()} for r, res in results.items()},
        "table": json.loads(table.to_json(orient="records")),
        "total_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    Path(f"{args.out}.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    md = ["# VLM: unified vs per-source training (test split, scored once per model)", "",
          (f"Written by `python -m benchmarks.vlm_regimes` ({out['total_seconds']} s on this machine). Sources: "
           "`synthmeme` (the pipeline's data, 10 tasks) and `lensfix` (a second SynthMeme draw, seed "
           f"{args.seed}, 60% Chinese, in the MemeLens format: three single-task data sets). Train / val / test "
           f"instruction samples: {counts}."), "",
          markdown_table(table)]  # fmt: skip
    Path(f"{args.out}.md").write_text("\n".join(md), encoding="utf-8")
    print(markdown_table(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
