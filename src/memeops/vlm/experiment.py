"""The VLM as a pipeline variant: regimes (unified / per-source), scoring, the stage's run.

* **unified** (MemeLens's recommendation): one model trained on every source's and task's train
  samples at once, selected on the pooled val answer loss;
* **per_source**: one model per source, trained and selected on that source's samples only.

Whatever the regime, every evaluation split is scored once by the selected model(s): candidate
scoring, or the label head (``trainer.label_source``), gives the label probabilities (all metrics,
bootstrap intervals of each task's primary metric); a seeded sample of each split also gets a generated answer (invalid rate, ROUGE-L of the
explanation). :func:`compare_regimes` trains both regimes on the same samples and tabulates their
test macro-F1 per source and task (``benchmarks/vlm_regimes.py`` writes it to ``reports/``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from memeops.evaluation.metrics import Predictions, primary_metric
from memeops.models.base import TaskSpec
from memeops.timing import is_timing_key, timings, without_timings
from memeops.training.experiment import rounded_metrics
from memeops.training.seed_runs import SELECTION_RULE, runs_from_table, select_seed, summarise_seeds
from memeops.vlm.instructions import InstructionSample, instruction_samples, unsupported_tasks
from memeops.vlm.scoring import vlm_report
from memeops.vlm.train import MONITOR, MONITOR_WITH_HEAD, VLMFit, VLMTrainConfig, fit_vlm, generate_answers, label_probs

Images = Mapping[str, tuple[np.ndarray, np.ndarray]]
EVAL_SPLITS = ("val", "test", "test_unseen")
UNIFIED = "unified"


class VLMStageConfig(BaseModel):
    """``params.yaml`` section ``vlm`` (stage ``train_vlm``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = "memeops"
    tasks: list[str] | None = None  # None: train.tasks (multi-label ones are skipped, with the reason logged)
    regime: Literal["unified", "per_source"] = "unified"
    # Prefix = the CLIP image embedding, plus the CLIP text embedding of the caption when True (the
    # caption is in the prompt either way; the embedding hands a from-scratch decoder its meaning).
    with_text: bool = True
    trainer: VLMTrainConfig = Field(default_factory=VLMTrainConfig)
    eval_splits: list[str] = Field(default_factory=lambda: list(EVAL_SPLITS))
    bootstrap_samples: int = 1000
    # Training seeds (None: trainer.seed alone). The VLM is the costliest stage on CPU, so by default it
    # trains one seed and its report says so; its interval then covers test-sample variation only.
    seeds: list[int] | None = None
    register_model: bool = True
    model_dir: str = "models/vlm"


def prefix_vectors(memes: pd.DataFrame, arrays: Mapping[str, np.ndarray], with_text: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """``meme_id -> (prefix, flipped-image prefix)`` from the feature store's rows (meme order)."""
    image, flip = np.asarray(arrays["image"]), np.asarray(arrays["image_flip"])
    if with_text:
        text = np.asarray(arrays["text"])
        image, flip = np.concatenate([image, text], axis=1), np.concatenate([flip, text], axis=1)
    return {str(m): (image[i], flip[i]) for i, m in enumerate(memes["meme_id"].tolist())}


def by_split(samples: Sequence[InstructionSample]) -> dict[str, list[InstructionSample]]:
    out: dict[str, list[InstructionSample]] = {}
    for s in samples:
        out.setdefault(s.split, []).append(s)
    return out


def predictions_of(samples: Sequence[InstructionSample], probs: Sequence[np.ndarray]) -> Predictions:
    """Candidate probabilities as the project's :class:`Predictions` (per task, in sample order)."""
    tasks: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        tasks.setdefault(s.task, []).append(i)
    return Predictions(
        probs={t: np.stack([np.asarray(probs[i], dtype=np.float64) for i in idx]) for t, idx in tasks.items()},
        targets={t: np.array([samples[i].label_index for i in idx], dtype=np.int64) for t, idx in tasks.items()},
    )


@dataclass
class ScoredSplit:
    """One evaluation split scored by one model (or, per source, by each source's model)."""

    samples: list[InstructionSample]
    probs: list[np.ndarray]
    generated_idx: list[int]  # samples that also got a generated answer
    generated: list[str]

    def report(self, specs: Sequence[TaskSpec]) -> dict[str, float]:
        """Candidate-scoring metrics on every sample, generation metrics on the generated ones."""
        out = vlm_report(self.samples, self.probs, None, specs)
        if self.generated_idx:
            shown = [self.samples[i] for i in self.generated_idx]
            gen = vlm_report(shown, [self.probs[i] for i in self.generated_idx], self.generated, specs)
            gen_keys = ("invalid_rate", "generated_accuracy", "rouge_l", "n_explained", "all/n")
            out.update({k: v for k, v in gen.items() if k.endswith(gen_keys)})
        return out


@dataclass
class RegimeResult:
    """What one regime produced: a fit per model key (``unified`` or a source) and scored splits."""

    regime: str
    fits: dict[str, VLMFit]
    splits: dict[str, ScoredSplit] = field(default_factory=dict)
    seconds: float = 0.0


def _generated_sample(n: int, k: int, seed: int) -> list[int]:
    if n == 0 or k == 0:
        return []
    return sorted(np.random.default_rng(seed).choice(n, min(k, n), replace=False).tolist())


def score_split(fits: Mapping[str, VLMFit], samples: Sequence[InstructionSample], images: Images,
                cfg: VLMTrainConfig, regime: str, seed: int) -> ScoredSplit:  # fmt: skip
    """Score ``samples`` once: each sample by the model of its source (per-source) or the one model."""
    samples = list(samples)
    probs: list[np.ndarray | None] = [None] * len(samples)
    shown = _generated_sample(len(samples), cfg.generate_samples, seed)
    shown_set = set(shown)
    generated: dict[int, str] = {}
    for key, fit in fits.items():
        idx = [i for i, s in enumerate(samples) if regime == UNIFIED or s.source == key]
        if not idx:
            continue
        part = [samples[i] for i in idx]
        for i, p in zip(idx, label_probs(fit.model, fit.tokenizer, part, images, cfg)):
            probs[i] = p
        wanted = [i for i in idx if i in shown_set]
        answers = generate_answers(fit.model, fit.tokenizer, [samples[i] for i in wanted], images, cfg)
        generated.update(zip(wanted, answers))
    missing = [samples[i].source for i, p in enumerate(probs) if p is None]
    if missing:
        raise ValueError(f"no per-source model for sources {sorted(set(missing))} (they have no train samples)")
    kept = [i for i in shown if i in generated]
    return ScoredSplit(samples, [p for p in probs if p is not None], kept, [generated[i] for i in kept])


def _keyed(callback: Callable[[str, int, dict[str, float]], None] | None, key: str) -> Any:
    """The per-epoch callback of one model of a regime (``fit_vlm`` reports ``(epoch, record)``)."""
    return None if callback is None else (lambda epoch, record: callback(key, epoch, record))


def train_regime(samples: Sequence[InstructionSample], images: Images, cfg: VLMTrainConfig, regime: str,
                 eval_splits: Sequence[str] = EVAL_SPLITS,
                 callback: Callable[[str, int, dict[str, float]], None] | None = None) -> RegimeResult:  # fmt: skip
    """Fit the regime's model(s) on TRAIN (selected on VAL) and score each of ``eval_splits`` once."""
    start = time.perf_counter()
    split = by_split(samples)
    train, val = split.get("train", []), split.get("val", [])
    if not train or not val:
        raise ValueError("the VLM needs train and val instruction samples (check the tasks and splits)")
    groups = {UNIFIED: (train, val)} if regime == UNIFIED else {
        src: ([s for s in train if s.source == src], [s for s in val if s.source == src])
        for src in sorted({s.source for s in train})
    }  # fmt: skip
    fits = {}
    for key, (tr, va) in groups.items():
        if not va:
            raise ValueError(f"source {key!r} has train but no val instruction samples: nothing to select on")
        fits[key] = fit_vlm(tr, va, images, cfg, callback=_keyed(callback, key))
    result = RegimeResult(regime, fits)
    for i, name in enumerate(eval_splits):
        if split.get(name):
            result.splits[name] = score_split(fits, split[name], images, cfg, regime, cfg.seed + i)
    result.seconds = time.perf_counter() - start
    return result


def regime_table(results: Mapping[str, RegimeResult], specs: Sequence[TaskSpec], split: str = "test") -> pd.DataFrame:
    """One row per (source, task): each regime's macro-F1 (and AUROC for binary tasks) on ``split``."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for regime, result in results.items():
        scored = result.splits.get(split)
        if scored is None:
            continue
        report = scored.report(specs)
        for source in sorted({s.source for s in scored.samples}):
            tasks = sorted({s.task for s in scored.samples if s.source == source})
            for task in [*tasks, "mean"]:
                row = rows.setdefault((source, task), {"source": source, "task": task})
                n = report.get(f"source/{source}/{task}/n", row.get("n"))
                row["n"] = None if n is None else int(n)
                row[f"{regime}_macro_f1"] = report.get(f"source/{source}/{task}/macro_f1")
                if f"source/{source}/{task}/auroc" in report:
                    row[f"{regime}_auroc"] = report[f"source/{source}/{task}/auroc"]
    frame = pd.DataFrame(list(rows.values()))
    if "n" in frame:
        frame["n"] = frame["n"].astype("Int64")  # counts stay integers beside the missing "mean" rows
    return frame


def compare_regimes(samples: Sequence[InstructionSample], images: Images, cfg: VLMTrainConfig,
                    specs: Sequence[TaskSpec], callback: Any = None) -> tuple[pd.DataFrame, dict[str, RegimeResult]]:  # fmt: skip
    """Train the unified and the per-source regime on the same samples; their test table."""
    results = {r: train_regime(samples, images, cfg, r, ("test",), callback) for r in (UNIFIED, "per_source")}
    return regime_table(results, specs), results


def vlm_samples(memes: pd.DataFrame, tasks: Sequence[str]) -> tuple[list[InstructionSample], dict[str, str]]:
    """Instruction samples of ``tasks`` and the ``{task: reason}`` of those skipped."""
    return instruction_samples(memes, tasks), unsupported_tasks(tasks)


def _monitor(record: Mapping[str, float]) -> float:
    """An epoch's selection value (:func:`memeops.vlm.train.monitor_value`, stored as ``val_monitor``
    with the label head; the val answer loss without)."""
    return record.get("val_monitor", record["val_loss"])


def monitor_name(result: RegimeResult) -> str:
    """What the epochs and seeds of ``result`` were selected on."""
    heads = any("val_monitor" in h for f in result.fits.values() for h in f.history)
    return MONITOR_WITH_HEAD if heads else MONITOR


def _fit_summary(fit: VLMFit) -> dict[str, Any]:
    return {"best_epoch": fit.best_epoch, "val_best": min(_monitor(h) for h in fit.history), "epochs": len(fit.history),
            "fit_seconds": round(fit.seconds, 1), "train_tokens_per_s": round(fit.train_tokens_per_s)}  # fmt: skip


def seed_table(result: RegimeResult, memes: pd.DataFrame, specs: Sequence[TaskSpec], seed: int) -> pd.DataFrame:
    """One seed's per-meme predictions on every evaluation split in the layout of
    :func:`memeops.training.seed_runs.predictions_table` (unscored memes: uniform, no target)."""
    frames = []
    for split, scored in result.splits.items():
        ids = memes.loc[memes["split"] == split, "meme_id"].astype(str).tolist()
        frame = prediction_frame(scored, ids, specs)
        targets = [None if np.isnan(t) else json.dumps(int(t)) for t in frame["target"]]
        frames.append(pd.DataFrame({"split": split, "group": "train", "arm": "vlm", "seed": seed,
                                    "meme_id": frame["meme_id"], "task": frame["task"], "probs": frame["probs"],
                                    "target": targets}))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def seed_summary(table: pd.DataFrame, memes: pd.DataFrame, specs: Sequence[TaskSpec], n_boot: int,
                 seed: int) -> dict[str, dict[str, Any]]:  # fmt: skip
    """``{split: {metric: summary}}`` over the VLM's seeds (:func:`memeops.training.seed_runs.summarise_seeds`)."""
    by_name = {s.name: s for s in specs}
    out = {}
    for split in dict.fromkeys(table["split"]):
        ids = memes.loc[memes["split"] == split, "meme_id"].astype(str).tolist()
        runs = runs_from_table(table, split, by_name, ids, group="train")
        out[split] = {m: st.as_json() for m, st in summarise_seeds(runs, specs, n_boot=n_boot, seed=seed).items()}
    return out


def stage_report(result: RegimeResult, specs: Sequence[TaskSpec], summary: Mapping[str, Mapping[str, Any]],
                 skipped: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
    """``reports/metrics/vlm.json``: per split metrics of the selected seed (rounded), the seed
    summary with its intervals (over seeds and test memes), the fit."""
    out: dict[str, Any] = {
        "variant": "vlm",
        "regime": result.regime,
        "monitor": monitor_name(result),
        "models": {k: _fit_summary(f) for k, f in result.fits.items()},
        "primary_metric": {s.name: primary_metric(s) for s in specs},
        "skipped_tasks": dict(skipped),
        "seed_summary": dict(summary),
        "ci95": {split: {m: v["ci95"] for m, v in block.items()} for split, block in summary.items() if split != "val"},
    }
    for name, scored in result.splits.items():
        out[name] = rounded_metrics(scored.report(specs))
    if result.regime == UNIFIED:
        fit = result.fits[UNIFIED]
        out["best_epoch"], out["val_best"] = fit.best_epoch, out["models"][UNIFIED]["val_best"]
    return out


def prediction_frame(scored: ScoredSplit, meme_ids: Sequence[str], specs: Sequence[TaskSpec]) -> pd.DataFrame:
    """The split's predictions in the promotion format (:func:`memeops.tracking.promotion.predictions_frame`):
    one row per (meme of the split, task). The VLM scores only (meme, task) pairs that have a label;
    the others get a uniform row with a missing target, which every metric masks out, so a paired
    comparison with another model sees the same memes and the same labelled rows."""
    scored_rows = {(s.meme_id, s.task): (s.label_index, p) for s, p in zip(scored.samples, scored.probs)}
    rows: dict[str, list[Any]] = {c: [] for c in ("meme_id", "task", "kind", "target", "target_multi", "probs")}
    for spec in specs:
        uniform = [1.0 / spec.num_labels] * spec.num_labels
        for meme_id in meme_ids:
            target, probs = scored_rows.get((str(meme_id), spec.name), (None, None))
            rows["meme_id"].append(str(meme_id))
            rows["task"].append(spec.name)
            rows["kind"].append("single")
            rows["target"].append(float("nan") if target is None else float(target))
            rows["target_multi"].append(None)
            rows["probs"].append(uniform if probs is None else [float(v) for v in probs])
    return pd.DataFrame(rows)


def examples_frame(scored: ScoredSplit) -> pd.DataFrame:
    """The generated answers of a split beside their references (``reports/vlm/examples.csv``)."""
    from memeops.vlm.instructions import parse_answer

    rows = []
    for i, text in zip(scored.generated_idx, scored.generated):
        s = scored.samples[i]
        parsed = parse_answer(text, s.labels)
        p = scored.probs[i]
        rows.append({"meme_id": s.meme_id, "source": s.source, "language": s.language, "task": s.task,
                     "label": s.label, "scored_label": s.labels[int(np.argmax(p))], "scored_prob": round(float(p.max()), 4),
                     "generated_label": parsed.label, "valid": parsed.valid, "invalid_reason": parsed.reason,
                     "explanation": parsed.explanation, "reference_explanation": s.explanation})  # fmt: skip
    return pd.DataFrame(rows)


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as sorted JSON without its timings (:func:`memeops.timing.without_timings`:
    the files are DVC outs and must repeat byte for byte; the stage logs the timings to MLflow)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(without_timings(payload), indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def run_vlm_stage(cfg: VLMStageConfig, tasks: Sequence[str], encoder_cfg: Any, *, memes_path: Path, feature_dir: Path,
                  validation_report: Path, reports_dir: Path = Path("reports"), stage: str = "train_vlm",
                  predictions_path: Path = Path("data/train/vlm.parquet")) -> dict[str, Any]:  # fmt: skip
    """Stage ``train_vlm``: samples -> regime fit(s) -> scored splits -> reports, MLflow run, registry.

    Writes ``reports/metrics/vlm.json``, ``reports/plots/train/vlm.csv`` (answer loss per epoch),
    ``reports/vlm/examples.csv`` (generated answers on test) and the model folder ``cfg.model_dir``
    (unified: the folder itself; per-source: one sub-folder per source). Registers
    ``memeops-vlm`` (per-source: ``memeops-vlm-<source>``) with alias ``challenger``.
    """
    import mlflow

    from memeops.data.consolidate import read_memes
    from memeops.data.features import FeatureStore, content_keys
    from memeops.data.taxonomy import load_taxonomy
    from memeops.models.base import task_specs
    from memeops.models.clip import load_clip
    from memeops.tracking.promotion import log_prediction_frame
    from memeops.serving.pyfunc import log_pyfunc
    from memeops.tracking.registry import register_and_alias
    from memeops.tracking.runs import log_dataset, log_metrics, tracked_run
    from memeops.tracking.runs import file_md5
    from memeops.training.variant_stage import validation_passed
    from memeops.serving.vlm import save_vlm_dir

    memes = read_memes(memes_path)
    digest = file_md5(memes_path)
    encoder = load_clip(encoder_cfg)
    arrays = FeatureStore(feature_dir, encoder.spec_key).get(content_keys(memes))
    images = prefix_vectors(memes, arrays, cfg.with_text)
    samples, skipped = vlm_samples(memes, tasks)
    specs = task_specs(load_taxonomy(), [t for t in tasks if t not in skipped and any(s.task == t for s in samples)])
    params = {"variant": "vlm", "regime": cfg.regime, "with_text": cfg.with_text, "tasks": list(tasks),
              "trainer": cfg.trainer.model_dump(), "encoder": encoder_cfg.model_dump(), "feature_spec": encoder.spec_key}  # fmt: skip
    tags = {"memeops.validation_passed": validation_passed(validation_report), "memeops.feature_spec": encoder.spec_key,
            "memeops.vlm.regime": cfg.regime, "memeops.vlm.skipped_tasks": json.dumps(skipped)}  # fmt: skip
    history: list[dict[str, Any]] = []
    seeds = cfg.seeds or [cfg.trainer.seed]
    models = 1 if cfg.regime == UNIFIED else max(1, len({s.source for s in samples if s.split == "train"}))
    planned, started = len(seeds) * models * cfg.trainer.epochs, time.perf_counter()

    def on_epoch(key: str, epoch: int, record: Mapping[str, float]) -> None:
        history.append({"model": key, **record})
        # one progress line per epoch (an epoch is ~30 s on 2 cores): rate and ETA over the whole stage
        done, elapsed = len(history), time.perf_counter() - started
        eta = elapsed / done * max(0, planned - done)
        print(f"train_vlm {key} epoch {epoch}/{cfg.trainer.epochs}: train loss {record['train_loss']:.4f}, val loss "
              f"{record['val_loss']:.4f}; {done}/{planned} epochs in {elapsed:.0f} s, ETA {eta:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip
        prefix = "" if key == UNIFIED else f"{key}/"
        metrics = {f"{prefix}train/answer_loss": record["train_loss"], f"{prefix}val/answer_loss": record["val_loss"]}
        if "val_head_loss" in record:  # the label head's cross-entropy and the selection value
            metrics.update({f"{prefix}train/head_loss": record["train_head_loss"],
                            f"{prefix}val/head_loss": record["val_head_loss"],
                            f"{prefix}val/monitor": record["val_monitor"]})  # fmt: skip
        mlflow.log_metrics(metrics, step=epoch)

    with tracked_run(experiment=cfg.experiment, run_name="vlm", stage=stage, variant="vlm", seed=cfg.trainer.seed,
                     data_digest=digest, params=params, extra_tags=tags):  # fmt: skip
        for split in ("train", "val", "test"):
            log_dataset(memes[memes["split"] == split], name=f"memes-{split}", digest=digest, context=split)
        results = {}
        for seed in seeds:  # the curve logged is every seed's, one after the other (history has the model key)
            trainer = cfg.trainer.model_copy(update={"seed": seed})
            results[seed] = train_regime(samples, images, trainer, cfg.regime, cfg.eval_splits, on_epoch)
        val_loss = {seed: sum(min(_monitor(h) for h in f.history) for f in r.fits.values()) for seed, r in results.items()}
        chosen = select_seed(val_loss, mode="min")
        result = results[chosen]
        table = pd.concat([seed_table(r, memes, specs, seed) for seed, r in results.items()], ignore_index=True)
        predictions_path.parent.mkdir(parents=True, exist_ok=True)
        table[table["split"].str.startswith("test")].to_parquet(predictions_path, index=False)
        summary = seed_summary(table, memes, specs, cfg.bootstrap_samples, cfg.trainer.seed)
        report = stage_report(result, specs, summary, skipped)
        report["seeds"] = seeds
        if cfg.trainer.label_head:  # without the head the report keeps its old keys (candidate scoring)
            report["label_source"] = cfg.trainer.resolved_label_source
        report["selection"] = {"rule": SELECTION_RULE, "monitor": monitor_name(result), "selected_seed": chosen,
                               "val": {str(k): v for k, v in val_loss.items()}}  # fmt: skip
        mlflow.set_tags({"memeops.selection_rule": SELECTION_RULE, "memeops.selected_seed": str(chosen)})
        report["train_samples"] = sum(1 for s in samples if s.split == "train")
        report["seconds"] = round(result.seconds, 1)
        metrics_path = write_json(reports_dir / "metrics" / "vlm.json", report)
        curve = reports_dir / "plots" / "train" / "vlm.csv"
        curve.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{k: v for k, v in h.items() if not is_timing_key(k)} for h in history]).to_csv(curve, index=False)
        examples = reports_dir / "vlm" / "examples.csv"
        examples.parent.mkdir(parents=True, exist_ok=True)
        eval_split = "test" if "test" in result.splits else next(iter(result.splits), None)
        (examples_frame(result.splits[eval_split]) if eval_split else pd.DataFrame()).to_csv(examples, index=False)
        log_metrics({k: v for k, v in report.items() if k in result.splits})
        log_metrics(timings(report))  # seconds, fit_seconds, train_tokens_per_s: not in the DVC outs
        for name, scored in result.splits.items():  # per-meme predictions: what `memeops promote` compares
            ids = memes.loc[memes["split"] == name, "meme_id"].astype(str).tolist()
            log_prediction_frame(name, prediction_frame(scored, ids, specs))
        for path, where in ((metrics_path, "metrics"), (curve, "curves"), (examples, "examples")):
            mlflow.log_artifact(str(path), artifact_path=where)
        report["registered"] = _save_and_register(result, specs, cfg, encoder_cfg, save_vlm_dir, log_pyfunc,
                                                  register_and_alias)  # fmt: skip
    write_json(metrics_path, report)
    return report


def _save_and_register(result: RegimeResult, specs: Sequence[TaskSpec], cfg: VLMStageConfig, encoder_cfg: Any,
                       save_vlm_dir: Any, log_pyfunc: Any, register_and_alias: Any) -> list[dict[str, Any]]:  # fmt: skip
    import shutil
    import tempfile

    root = Path(cfg.model_dir)
    if root.exists():  # a previous run's folder (DVC removes it on repro)
        shutil.rmtree(root)
    registered = []
    with tempfile.TemporaryDirectory(prefix="memeops-vlm-") as tmp:
        clip_dir = Path(tmp) / "clip"  # the encoder as the packer reads it: clip_config.json + files
        clip_dir.mkdir()
        (clip_dir / "clip_config.json").write_text(encoder_cfg.model_dump_json(), encoding="utf-8")
        for key, fit in result.fits.items():
            folder = root if key == UNIFIED else root / key
            save_vlm_dir(folder, fit.model, fit.tokenizer, specs, clip_dir, cfg.trainer, cfg.with_text)
            if cfg.register_model:
                name = "memeops-vlm" if key == UNIFIED else f"memeops-vlm-{key}"
                info = log_pyfunc(folder, registered_model_name=name,
                                  name="model" if key == UNIFIED else f"model-{key}")  # fmt: skip
                version = register_and_alias(info, name, alias="challenger")
                registered.append({"name": name, "version": int(version), "alias": "challenger"})
    return registered
