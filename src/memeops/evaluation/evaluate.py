"""Stage ``evaluate``: the registered ``challenger`` and ``champion`` of every variant, on the test splits.

Test data is scored ONCE per final model, by its training stage, which logs the per-meme
predictions as the run artifact ``predictions/<split>.parquet``
(:func:`memeops.tracking.promotion.log_eval_predictions`). This module never runs a model: for each
variant it resolves the versions behind the aliases of ``memeops-<variant>``
(:mod:`memeops.tracking.registry`), finds each version's source run, reads its logged predictions
of every requested split, joins them with the meme table on ``meme_id`` and computes

* per task: accuracy, macro-F1, weighted F1 / precision / recall (single-label; multi-label tasks
  get micro / macro / weighted F1 and subset accuracy), AUROC for binary tasks, ``n`` -- the point
  values from :func:`memeops.evaluation.metrics.task_metrics` (sklearn, the project's conventions);
* a seeded percentile-bootstrap 95% interval of every one of those metrics and of the task's
  expected calibration error (labelled rows resampled, as
  a per-resample loop would, but all resamples at once from
  resample-weighted confusion counts: :func:`memeops.stats.task_intervals`), plus an interval of
  the mean primary metric over tasks from memes resampled jointly for all tasks
  (:func:`memeops.stats.mean_primary`);
* top-label expected calibration error (:mod:`memeops.evaluation.calibration`) per task and pooled
  over tasks, and the pooled reliability bins (drawn by
  :func:`memeops.reporting.evaluation.plot_reliability`);
* the same per-task metrics by ``source``, by ``language`` and by image style (SynthMeme's
  background style, ``extra["style"]`` of the meme table: see
  :mod:`memeops.data.loaders.synthmeme`); a group whose labelled rows for a task number fewer than
  ``min_group_size`` keeps its ``n`` and ``small: true`` but no metrics (noise, not information).

What cannot be evaluated is said, never guessed: a variant never registered, no champion yet (the
challenger alone is evaluated), champion and challenger the same version (evaluated once), a run
without the predictions artifact (a version that predates the logging: retrain it). Predictions
whose memes are missing from the meme table, or sit in another split there, are refused with one
line (:class:`EvaluationError`): the table changed since the run, so its numbers would be wrong.

A split of the meme table with memes flagged as duplicates of an earlier-split meme (``leak_of``,
kept in an official split by ``data.leakage.policy: auto``) is reported twice: as is (comparable
with published numbers) and as ``<split>_clean`` without them (:mod:`memeops.evaluation.leakage_subset`);
a split without flagged memes is reported once, exactly as before.

Output (:func:`evaluate_variants`): one JSON-able dict, ``variants -> <variant> -> versions ->
<alias> -> splits -> <split> -> {overall, summary, by_source, by_language, by_style, ece, notes}``;
:func:`memeops.reporting.evaluation.markdown_report` renders it, :func:`headline_metrics` flattens
its summaries.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from memeops.evaluation.calibration import (
    DEFAULT_BINS,
    ReliabilityBins,
    ece_from_confidence,
    reliability_bins,
    task_confidence,
)
from memeops import stats
from memeops.evaluation import leakage_subset as subsets
from memeops.evaluation.metrics import primary_metric, task_metrics
from memeops.models.base import TaskSpec
from memeops.stats import TaskArrays

if TYPE_CHECKING:
    import pandas as pd

CHALLENGER, CHAMPION = "challenger", "champion"
ALIASES = (CHALLENGER, CHAMPION)
BREAKDOWNS = ("source", "language", "style")
MISSING, REFUSED = "missing", "refused"


class EvaluationError(ValueError):
    """Predictions that cannot be evaluated against the meme table (one-line message)."""


class EvaluateConfig(BaseModel):
    """``params.evaluate``: which registered models, which splits, and the statistics' settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variants: list[str] | None = Field(
        None, description="variants (registered as memeops-<variant>); None: every train variant + vlm"
    )
    splits: list[str] = Field(default_factory=lambda: ["test", "test_unseen"])
    n_boot: int = Field(1000, ge=0, description="bootstrap resamples per interval (0: no intervals)")
    seed: int = 0
    ece_bins: int = Field(DEFAULT_BINS, ge=1, le=1000)
    min_group_size: int = Field(
        20, ge=1, description="breakdown groups with fewer labelled rows get no metrics"
    )

    @field_validator("splits")
    @classmethod
    def _evaluation_splits(cls, splits: list[str]) -> list[str]:
        if not splits:
            raise ValueError("at least one split")
        if "train" in splits:
            raise ValueError("the train split measures fit, not generalisation")
        if len(set(splits)) != len(splits):
            raise ValueError(f"duplicate splits in {splits}")
        return splits

    def variants_or(self, default: Sequence[str]) -> list[str]:
        return list(self.variants) if self.variants else list(default)


# --------------------------------------------------------------------------- the meme table side


def meme_attributes(memes: pd.DataFrame) -> pd.DataFrame:
    """``meme_id``-indexed ``split, source, language, style, leak_of`` of the consolidated meme
    table; ``style`` is ``extra["style"]`` (a JSON column; SynthMeme's image background style), None
    where a source has none; ``leak_of`` the earlier-split meme a flagged meme duplicates, else None."""
    import pandas as pd

    def style(extra: Any) -> str | None:
        if extra is None or (isinstance(extra, float) and math.isnan(extra)):
            return None
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except ValueError:
                return None
        value = extra.get("style") if isinstance(extra, Mapping) else None
        return None if value is None or value == "" else str(value)

    missing = [c for c in ("meme_id", "split") if c not in memes.columns]
    if missing:
        raise EvaluationError(f"the meme table lacks columns {missing}")
    out = pd.DataFrame({
        "split": memes["split"].astype(str).to_numpy(),
        "source": memes["source"].astype(str).to_numpy() if "source" in memes else "unknown",
        "language": memes["language"].astype(str).to_numpy() if "language" in memes else "unknown",
        "style": memes["extra"].map(style).to_numpy() if "extra" in memes else None,
        subsets.LEAK_COLUMN: subsets.leak_values(memes),
    }, index=pd.Index(memes["meme_id"].astype(str), name="meme_id"))  # fmt: skip
    return out[~out.index.duplicated(keep="first")]


def check_split(attrs: pd.DataFrame, meme_ids: Sequence[str], split: str, what: str) -> None:
    """Refuse (one line) predictions whose memes are not in the table or not in ``split`` there."""
    ids = list(meme_ids)
    known = attrs.index.isin(ids)
    absent = len(set(ids)) - int(known.sum())
    if absent:
        example = next(m for m in ids if m not in attrs.index)
        raise EvaluationError(
            f"{what}: {absent} of {len(set(ids))} predicted memes are not in the meme table (e.g. {example}); "
            "the table changed since that run: retrain it or restore the data"
        )
    actual = attrs.loc[ids, "split"]
    wrong = actual[actual != split]
    if len(wrong):
        found = ", ".join(f"{s} ({c})" for s, c in wrong.value_counts().items())
        raise EvaluationError(
            f"{what}: {len(wrong)} of {len(ids)} memes are not in split {split!r} of the meme table but in {found}; "
            "refusing: the memes were re-split since that run (retrain it)"
        )


# --------------------------------------------------------------------------- intervals (memeops.stats)


def _rounded(interval: tuple[float, float]) -> list[float] | None:
    low, high = interval
    return None if math.isnan(low) else [round(low, 6), round(high, 6)]


def bootstrap_task_cis(
    spec: TaskSpec, probs: np.ndarray, targets: np.ndarray, *, n_boot: int, seed: int, n_bins: int,
    metrics: Sequence[str] | None = None,
) -> dict[str, list[float] | None]:  # fmt: skip
    """Seeded percentile-bootstrap 95% intervals of the task's metrics (``metrics``: a subset;
    None: all, and ``ece``) on its labelled rows: :func:`memeops.stats.task_intervals` (the
    resamples of a textbook one-resample-at-a-time loop with the same seed)."""
    calibration = (*task_confidence(probs, targets, spec.kind), n_bins)
    cis = stats.task_intervals(spec, probs, targets, n_boot=n_boot, seed=seed, metrics=metrics,
                               calibration=calibration)  # fmt: skip
    return {name: _rounded(ci) for name, ci in cis.items()}


def bootstrap_mean_primary(
    arrays: Mapping[str, TaskArrays], rows: np.ndarray, *, n_boot: int, seed: int
) -> list[float] | None:
    """95% interval of the mean over tasks of each task's primary metric, memes (``rows`` of the
    arrays) resampled jointly for all tasks (:func:`memeops.stats.mean_primary`, the statistic
    promotion compares)."""
    return _rounded(stats.mean_primary_interval(arrays, rows, n_boot=n_boot, seed=seed))


# --------------------------------------------------------------------------- one split of one model


def _clean(value: Any) -> Any:
    """JSON-able: numpy scalars -> float, NaN -> None, rounded."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else round(float(value), 6)
    return value


def fast_task_metrics(spec: TaskSpec, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """:func:`memeops.evaluation.metrics.task_metrics` (same keys, same values: tested) from the
    weighted counts of :mod:`memeops.stats`, ~20x faster than sklearn's; used for the many small
    breakdown groups."""
    return stats.point_statistics(probs, targets, spec)


def task_block(
    spec: TaskSpec, probs: np.ndarray, targets: np.ndarray, cfg: EvaluateConfig, *, ci: str = "all",
    fast: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One task on labelled rows: point metrics (:func:`task_metrics`, or :func:`fast_task_metrics`
    with ``fast``), ``n``, ``primary``, ``ece`` and ``ci95`` (``ci``: ``all`` metrics, ``primary``
    only, or ``none``)."""
    if not len(targets):
        metrics: dict[str, float] = {"n": 0.0}
    else:
        metrics = fast_task_metrics(spec, probs, targets) if fast else task_metrics(probs, targets, spec)
    conf, correct = task_confidence(probs, targets, spec.kind)
    out: dict[str, Any] = {k: v for k, v in metrics.items() if k != "n"}
    out["ece"] = ece_from_confidence(conf, correct, cfg.ece_bins) if len(conf) else math.nan
    out["n"] = len(targets)
    out["primary"] = primary_metric(spec)
    if ci != "none" and len(targets):
        wanted = None if ci == "all" else [primary_metric(spec)]
        out["ci95"] = bootstrap_task_cis(spec, probs, targets, n_boot=cfg.n_boot, seed=cfg.seed,
                                         n_bins=cfg.ece_bins, metrics=wanted)  # fmt: skip
    return out


def _summary(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    primaries = [t[t["primary"]] for t in tasks.values() if "primary" in t and not _nan(t.get(t["primary"]))]
    macro = [t["macro_f1"] for t in tasks.values() if not _nan(t.get("macro_f1"))]
    return {"mean_primary": float(np.mean(primaries)) if primaries else math.nan,
            "mean_macro_f1": float(np.mean(macro)) if macro else math.nan,
            "tasks": len(tasks)}  # fmt: skip


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass
class SplitResult:
    """One split of one model version: the JSON block and the pooled reliability bins."""

    block: dict[str, Any]
    bins: ReliabilityBins | None = None


def evaluate_split(
    frame: pd.DataFrame, attrs: pd.DataFrame, split: str, cfg: EvaluateConfig, *, what: str = "predictions",
) -> SplitResult:  # fmt: skip
    """Every number of one logged predictions frame (:data:`PREDICTION_COLUMNS`) on ``split``.

    ``attrs``: :func:`meme_attributes` of the meme table; the frame's memes must all be in it and in
    ``split`` (else :class:`EvaluationError`)."""
    from memeops.tracking.promotion import frame_arrays

    ids = list(dict.fromkeys(frame["meme_id"].astype(str)))
    check_split(attrs, ids, split, what)
    try:
        arrays = frame_arrays(frame, ids)
    except ValueError as exc:
        raise EvaluationError(f"{what}: {exc}") from None
    meta = attrs.loc[ids]
    notes: list[str] = []
    in_split = int((attrs["split"] == split).sum())
    if in_split != len(ids):
        notes.append(f"the predictions cover {len(ids)} of the {in_split} {split} memes of the meme table")
    all_rows = np.arange(len(ids))

    overall, conf_parts, ok_parts = {}, [], []
    ece_tasks: dict[str, float] = {}
    for task, a in arrays.items():
        p, t = a.probs[a.mask], a.targets[a.mask]
        overall[task] = task_block(a.spec, p, t, cfg, ci="all")
        ece_tasks[task] = overall[task]["ece"]
        conf, ok = task_confidence(p, t, a.spec.kind)
        conf_parts.append(conf)
        ok_parts.append(ok)
    bins = reliability_bins(np.concatenate(conf_parts) if conf_parts else np.empty(0),
                            np.concatenate(ok_parts) if ok_parts else np.empty(0, dtype=bool), cfg.ece_bins)  # fmt: skip
    summary = _summary(overall)
    summary["mean_primary_ci95"] = bootstrap_mean_primary(arrays, all_rows, n_boot=cfg.n_boot, seed=cfg.seed)
    summary["ece_pooled"] = bins.ece
    summary["n_memes"] = len(ids)

    breakdowns: dict[str, dict[str, Any]] = {}
    for column in BREAKDOWNS:
        values = meta[column].to_numpy(dtype=object)
        has = np.array([v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values])
        groups: dict[str, Any] = {}
        if not has.any():
            notes.append(f"by_{column}: skipped, no meme of this split has a {column}")
        else:
            if not has.all():
                without = sorted(set(meta.loc[~has, "source"].astype(str)))
                notes.append(
                    f"by_{column}: {int((~has).sum())} memes without a {column} (sources {', '.join(without)}) left out"
                )
            for value in sorted({str(v) for v in values[has]}):
                rows = np.flatnonzero(has & (values == value))
                groups[value] = _group_block(arrays, rows, cfg)
        breakdowns[f"by_{column}"] = groups

    block = {"status": "ok", "n_memes": len(ids), "summary": summary, "overall": overall, **breakdowns,
             "ece": {"pooled": bins.ece, "per_task": ece_tasks, "n_bins": cfg.ece_bins, "bins": bins.to_dict()},
             "notes": notes}  # fmt: skip
    return SplitResult(_clean(block), bins)


def _group_block(arrays: Mapping[str, TaskArrays], rows: np.ndarray, cfg: EvaluateConfig) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    small: list[str] = []
    for task, a in arrays.items():
        sel = rows[a.mask[rows]]
        if len(sel) < cfg.min_group_size:
            tasks[task] = {"n": len(sel), "small": True, "primary": primary_metric(a.spec)}
            small.append(task)
            continue
        tasks[task] = {
            **task_block(a.spec, a.probs[sel], a.targets[sel], cfg, ci="primary", fast=True),
            "small": False,
        }
    measured = {k: v for k, v in tasks.items() if not v["small"]}
    summary = _summary(measured)
    if measured:
        summary["mean_primary_ci95"] = bootstrap_mean_primary(
            {k: arrays[k] for k in measured}, rows, n_boot=cfg.n_boot, seed=cfg.seed)  # fmt: skip
    return {"n_memes": len(rows), "small": len(small) == len(tasks), "small_tasks": small,
            "summary": summary, "tasks": tasks}  # fmt: skip


# --------------------------------------------------------------------------- registry side


@dataclass
class VersionRef:
    """A registered version and the aliases pointing at it."""

    version: str
    aliases: list[str]
    run_id: str | None
    run_tags: dict[str, str] = field(default_factory=dict)


def _source_run_id(client: Any, mv: Any) -> str | None:
    run_id = getattr(mv, "run_id", None)
    if not run_id and getattr(mv, "model_id", None):
        try:
            run_id = client.get_logged_model(mv.model_id).source_run_id
        except Exception:  # noqa: BLE001 - reported as "no source run"
            run_id = None
    return run_id or None


def resolve_versions(variant: str, client: Any | None = None) -> tuple[list[VersionRef], list[str]]:
    """The distinct versions behind ``challenger`` / ``champion`` of ``memeops-<variant>`` (one
    entry when both name the same version) and notes on what is absent."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from memeops.tracking.registry import registered_model_name

    client = client or mlflow.MlflowClient()
    name = registered_model_name(variant)
    try:
        client.get_registered_model(name)
    except MlflowException:
        return [], [f"no registered model {name}: the variant was never trained with registration on"]
    refs: dict[str, VersionRef] = {}
    notes: list[str] = []
    for alias in ALIASES:
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            notes.append(
                f"no {alias} yet: {'only the challenger is evaluated' if alias == CHAMPION else 'nothing to evaluate'}"
            )
            continue
        version = str(mv.version)
        if version in refs:
            refs[version].aliases.append(alias)
            notes.append(
                f"{alias} is the same version as {refs[version].aliases[0]} (v{version}): evaluated once"
            )
            continue
        run_id = _source_run_id(client, mv)
        tags: dict[str, str] = {}
        if run_id:
            try:
                tags = dict(client.get_run(run_id).data.tags)
            except MlflowException:
                notes.append(f"{alias} v{version}: its source run {run_id} is gone")
                run_id = None
        refs[version] = VersionRef(version, [alias], run_id, tags)
    return list(refs.values()), notes


PredictionLoader = Callable[[str, str], "pd.DataFrame | None"]
PARENT_TAG = "mlflow.parentRunId"


def sibling_seed_runs(client: Any, run_id: str) -> list[tuple[int, str]]:
    """``(seed, run id)`` of every seed run of the training stage that made ``run_id`` (the nested
    runs under its parent run, each tagged ``memeops.seed``); ``[]`` for a run with no parent."""
    from memeops.tracking.runs import TAG_SEED

    run = client.get_run(run_id)
    parent = run.data.tags.get(PARENT_TAG)
    if not parent:
        return []
    found = client.search_runs([run.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
                               max_results=1000)  # fmt: skip
    return sorted((int(r.data.tags[TAG_SEED]), r.info.run_id) for r in found if TAG_SEED in r.data.tags)


def seed_block(seed_runs: Sequence[tuple[int, str]], split: str, loader: PredictionLoader,
               cfg: EvaluateConfig) -> dict[str, Any]:  # fmt: skip
    """The version's training seeds on ``split``: per metric mean, std over seeds and the 95% interval
    over seeds and memes (:func:`memeops.stats.summarise_seeds`), from each seed run's logged predictions."""
    from memeops.evaluation.metrics import Predictions
    from memeops.tracking.promotion import frame_arrays

    frames = {seed: loader(run_id, split) for seed, run_id in seed_runs}
    missing = [seed for seed, frame in frames.items() if frame is None or len(frame) == 0]
    if missing:
        return {"status": MISSING, "note": f"seeds {missing} logged no predictions for {split}"}
    ids = list(dict.fromkeys(next(iter(frames.values()))["meme_id"].astype(str)))
    runs, specs = [], {}
    for seed, frame in frames.items():
        arrays = frame_arrays(frame, ids)
        specs = {task: a.spec for task, a in arrays.items()}
        preds = Predictions(probs={t: a.probs for t, a in arrays.items()},
                            targets={t: a.targets for t, a in arrays.items()}, meme_ids=ids)  # fmt: skip
        runs.append(stats.ArmRun("evaluate", "version", seed, preds, {}, 0, 0.0))
    summary = stats.summarise_seeds(runs, list(specs.values()), n_boot=max(cfg.n_boot, 1), seed=cfg.seed)
    return {"status": "ok", "seeds": [seed for seed, _ in seed_runs],
            "metrics": {m: st.as_json() for m, st in summary.items()}}  # fmt: skip


def evaluate_item(
    frame: pd.DataFrame, attrs: pd.DataFrame, item: subsets.EvalSplit, cfg: EvaluateConfig, *,
    what: str = "predictions",
) -> SplitResult:  # fmt: skip
    """:func:`evaluate_split` of one planned entry: the official split as is (with a note and a
    ``leakage`` key when it holds flagged memes), or its leakage-clean subset (``item.clean``)."""
    flagged = subsets.flagged_count(attrs, item.split)
    if not item.clean:
        result = evaluate_split(frame, attrs, item.split, cfg, what=what)
        if flagged:
            result.block["notes"].append(subsets.official_note(attrs, item.split))
            result.block["leakage"] = {"flagged": flagged, "clean_split": subsets.clean_twin(attrs, item.split)}
        return result
    subset = subsets.clean_frame(frame, attrs)
    if subset is None or not len(subset):
        return SplitResult({"status": MISSING, "note": f"the predictions cover no leakage-clean {item.split} meme"})
    result = evaluate_split(subset, subsets.clean_attributes(attrs), item.split, cfg, what=what)
    result.block["notes"].append(subsets.clean_note(attrs, item.split))
    result.block["leakage"] = {"subset_of": item.split, "flagged_left_out": flagged}
    return result


def _item_loader(loader: PredictionLoader, attrs: pd.DataFrame, item: subsets.EvalSplit) -> PredictionLoader:
    """The loader of a planned entry: a clean subset's frames lose the flagged memes."""
    if not item.clean:
        return loader
    return lambda run_id, split: subsets.clean_frame(loader(run_id, split), attrs)


def evaluate_variant(
    variant: str, attrs: pd.DataFrame, cfg: EvaluateConfig, *, data_digest: str | None = None,
    client: Any | None = None, loader: PredictionLoader | None = None,
) -> tuple[dict[str, Any], dict[str, ReliabilityBins]]:  # fmt: skip
    """One variant: ``(JSON block, {"<alias> v<version> · <split>": pooled reliability bins})``."""
    from memeops.tracking.promotion import PREDICTIONS_DIR, load_eval_predictions
    from memeops.tracking.registry import registered_model_name
    from memeops.tracking.runs import TAG_DATA_DIGEST

    import mlflow

    loader = loader or load_eval_predictions
    client = client or mlflow.MlflowClient()
    refs, notes = resolve_versions(variant, client)
    name = registered_model_name(variant)
    versions: dict[str, Any] = {}
    curves: dict[str, ReliabilityBins] = {}
    plan = subsets.evaluation_splits(attrs, cfg.splits)  # cfg.splits, each with a leakage-clean twin if flagged
    for ref in refs:
        primary_alias = ref.aliases[0]
        entry: dict[str, Any] = {"version": ref.version, "aliases": list(ref.aliases), "run_id": ref.run_id,
                                 "run": ref.run_tags.get("mlflow.runName"), "stage": ref.run_tags.get("memeops.dvc_stage"),
                                 "data_digest": ref.run_tags.get(TAG_DATA_DIGEST), "notes": [], "splits": {}}  # fmt: skip
        if data_digest and entry["data_digest"] and entry["data_digest"] != data_digest:
            entry["notes"].append(f"trained on another meme table (data digest {entry['data_digest']}, now "
                                  f"{data_digest}); its memes are still checked against the table")  # fmt: skip
        if ref.run_id is None:
            entry["notes"].append("no source run: nothing to read")
        seed_runs = sibling_seed_runs(client, ref.run_id) if ref.run_id is not None and client is not None else []
        if len(seed_runs) > 1:  # trained over several seeds: the variant's figures over all of them
            entry["selection_rule"] = ref.run_tags.get("memeops.selection_rule")
            entry["seeds"] = {item.name: seed_block(seed_runs, item.split, _item_loader(loader, attrs, item), cfg)
                              for item in plan}  # fmt: skip
        frames: dict[str, Any] = {}
        for item in plan:
            split = item.split
            if ref.run_id is None:
                entry["splits"][item.name] = {"status": MISSING, "note": "no source run"}
                continue
            if split not in frames:  # a clean subset reuses its split's frame
                frames[split] = loader(ref.run_id, split)
            frame = frames[split]
            if frame is None or len(frame) == 0:
                entry["splits"][item.name] = {"status": MISSING, "note": (
                    f"run {ref.run_id} logged no {PREDICTIONS_DIR}/{split}.parquet (a version that predates "
                    "the prediction logging, or a split it was not scored on): retrain to evaluate it")}  # fmt: skip
                continue
            what = f"{name} v{ref.version} ({'/'.join(ref.aliases)}) {PREDICTIONS_DIR}/{split}.parquet"
            result = evaluate_item(frame, attrs, item, cfg, what=what)
            entry["splits"][item.name] = result.block
            if result.bins is not None and result.bins.n:
                curves[f"{'+'.join(ref.aliases)} v{ref.version} · {item.name}"] = result.bins
        for alias in ref.aliases:
            versions[alias] = (
                entry if alias == primary_alias else {"version": ref.version, "same_as": primary_alias}
            )
    for alias in ALIASES:
        if alias not in versions:
            versions[alias] = {"status": "absent", "note": f"{name} has no {alias} alias"}
    block = {"registered_model": name, "notes": notes, "versions": versions}
    return _clean(block), curves


def evaluate_variants(
    variants: Sequence[str], memes: pd.DataFrame, cfg: EvaluateConfig, *, data_digest: str | None = None,
    client: Any | None = None, loader: PredictionLoader | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, ReliabilityBins]]]:  # fmt: skip
    """Every variant: ``(report, {variant: reliability curves})``; the report is JSON-able."""
    attrs = meme_attributes(memes)
    out: dict[str, Any] = {}
    curves: dict[str, dict[str, ReliabilityBins]] = {}
    for variant in variants:
        out[variant], curves[variant] = evaluate_variant(variant, attrs, cfg, data_digest=data_digest,
                                                         client=client, loader=loader)  # fmt: skip
    report = {"settings": cfg.model_dump(mode="json") | {"variants": list(variants)},
              "data_digest": data_digest, "variants": out}  # fmt: skip
    return report, curves


# --------------------------------------------------------------------------- outputs


def evaluated_splits(report: Mapping[str, Any]) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """``(variant, alias label, version, split, block)`` for every evaluated split (status ok)."""
    rows = []
    for variant, vb in report.get("variants", {}).items():
        for alias, entry in vb.get("versions", {}).items():
            if "splits" not in entry:
                continue
            label = "+".join(entry.get("aliases") or [alias])
            for split, block in entry["splits"].items():
                if block.get("status") == "ok":
                    rows.append((variant, label, str(entry["version"]), split, block))
    return rows


def headline_metrics(report: Mapping[str, Any]) -> dict[str, dict[str, dict[str, dict[str, float | None]]]]:
    """``{variant: {alias: {split: {mean_primary, mean_macro_f1, ece, n_memes}}}}`` (the DVC metrics
    file; an alias shared by two versions appears under both names)."""
    out: dict[str, Any] = {}
    for variant, vb in report.get("variants", {}).items():
        for alias, entry in vb.get("versions", {}).items():
            source = vb["versions"].get(entry.get("same_as"), entry) if "same_as" in entry else entry
            for split, block in (source.get("splits") or {}).items():
                if block.get("status") != "ok":
                    continue
                s = block["summary"]
                out.setdefault(variant, {}).setdefault(alias, {})[split] = {
                    "version": int(source["version"]) if str(source["version"]).isdigit() else source["version"],
                    "mean_primary": s["mean_primary"], "mean_macro_f1": s["mean_macro_f1"],
                    "ece": s["ece_pooled"], "n_memes": s["n_memes"]}  # fmt: skip
    return out
