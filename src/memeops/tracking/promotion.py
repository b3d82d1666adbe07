"""Guarded model promotion: the registry's ``challenger`` becomes ``champion`` only when it earns it.

``memeops promote <variant>`` (and ``python -m flows.promote <variant>``) call
:func:`promote_variant`. For ``memeops-<variant>`` it compares the version behind ``challenger``
with the one behind ``champion`` and moves ``champion`` only when all of these hold:

1. the challenger's run passed the validation stage (run tag ``memeops.validation_passed`` is
   ``true``; ``false`` or ``unknown`` refuse);
2. both runs were scored on the same evaluation data (run tag ``memeops.data_digest`` equal, and
   the same memes with the same labels in the compared split's prediction artifacts);
3. the challenger's statistic — the mean over the compared tasks of each task's primary metric
   (AUROC for binary tasks, macro-F1 otherwise; :func:`memeops.stats.primary_statistic`)
   — beats the champion's by at least ``margin``, and a paired bootstrap (memes resampled jointly
   for both models and all tasks) gives a one-sided p-value below ``1 - confidence`` for
   "the improvement is at most ``margin``".

A variant without a champion promotes its first (validated) challenger directly. Otherwise the
challenger is ``kept`` (not better enough) or ``refused`` (a guard failed), and the reason is
recorded. Every decision is written as ``memeops.promotion.*`` tags on the challenger's model
version (decision, reason, both models' metrics, p-value, git commit, UTC time, settings); when the
decision is ``promoted`` the alias switch is the very last step, so a failure before it leaves the
old champion in place (the version is then tagged ``failed``). Promotions of one registered model
are serialised by a file lock in the project's runtime state dir and re-read both aliases inside
it, so concurrent calls cannot interleave. ``dry_run`` computes and returns the decision and writes
nothing (no tags, no alias, no lock).

Why the VALIDATION split by default (``promotion.split: val``): promotion is a model-selection
decision. The project selects on val only and scores the test splits once, for reporting; choosing
the champion by test metrics would turn test into a selection set and bias every later test
number. The split is a param so a project with a dedicated held-out "promotion" split (e.g.
``val_unseen``) can use it.

The paired test needs every model's per-meme predictions: :func:`log_eval_predictions` writes
them as the run artifact ``predictions/<split>.parquet`` (stage ``train`` logs one per evaluation
split), :func:`load_eval_predictions` reads them back.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from memeops.evaluation.metrics import Predictions
from memeops.models.base import IGNORE_INDEX, MISSING_MULTI, TaskSpec
from memeops.stats import TaskArrays, mean_primary, one_sided_p, primary_value

if TYPE_CHECKING:
    import pandas as pd

PREDICTIONS_DIR = "predictions"
PREDICTION_COLUMNS = ("meme_id", "task", "kind", "target", "target_multi", "probs")

TAG_VALIDATION = "memeops.validation_passed"
TAG_PREFIX = "memeops.promotion."
TAG_DECISION = TAG_PREFIX + "decision"
TAG_REASON = TAG_PREFIX + "reason"
TAG_P_VALUE = TAG_PREFIX + "p_value"

PROMOTED, KEPT, REFUSED, FAILED = "promoted", "kept", "refused", "failed"
CHALLENGER, CHAMPION = "challenger", "champion"


class PromotionError(ValueError):
    """A promotion that cannot be decided at all (unknown variant, no challenger, lock timeout);
    a guard that fails is a ``refused`` decision, not an error."""


class PromotionConfig(BaseModel):
    """``params.promotion``: the promotion rule's settings (all optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    margin: float = Field(0.005, ge=0.0, description="minimum improvement of the mean primary metric")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="promote when p < 1 - confidence")
    n_boot: int = Field(1000, ge=10, description="paired bootstrap resamples")
    seed: int = 0
    split: str = Field("val", description="evaluation split compared (never test: see module docstring)")
    tasks: dict[str, list[str]] = Field(
        default_factory=dict, description="variant -> tasks whose primary metrics count (default: all shared)"
    )
    lock_timeout_s: float = Field(300.0, gt=0.0, description="how long to wait for a concurrent promotion")

    @field_validator("split")
    @classmethod
    def _not_train(cls, split: str) -> str:
        if split == "train":
            raise ValueError("promotion on the train split compares fit, not generalisation; use val")
        return split

    def tasks_for(self, variant: str) -> list[str] | None:
        tasks = self.tasks.get(variant)
        return list(tasks) if tasks else None


# --------------------------------------------------------------------------- prediction artifacts


def _spec_kind(task: str, predictions: Predictions, specs: Mapping[str, TaskSpec]) -> str:
    if task in specs:
        return specs[task].kind
    targets = predictions.targets.get(task)
    if targets is not None:
        return "multi" if np.asarray(targets).ndim == 2 else "single"
    try:  # no targets: the taxonomy knows the task's kind
        from memeops.data.taxonomy import load_taxonomy

        return load_taxonomy().task(task).kind
    except Exception:  # noqa: BLE001 - an unknown task name: single-label is the common case
        return "single"


def predictions_frame(
    meme_ids: Sequence[str], predictions: Predictions, specs: Sequence[TaskSpec] | None = None
) -> pd.DataFrame:
    """Long table of per-meme predictions: one row per (meme, task).

    Columns: ``meme_id``; ``task``; ``kind`` (single / multi); ``target`` (single-label tasks: the
    label index as float, NaN when the meme is unlabelled for the task; NaN for multi-label tasks);
    ``target_multi`` (multi-label tasks: the 0/1 label vector, None when unlabelled or single-label);
    ``probs`` (the model's probabilities, a list of floats in label order).
    """
    import pandas as pd

    ids = [str(m) for m in meme_ids]
    by_name = {s.name: s for s in specs or ()}
    rows: dict[str, list[Any]] = {c: [] for c in PREDICTION_COLUMNS}
    for task, probs in predictions.probs.items():
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or len(probs) != len(ids):
            raise ValueError(f"{task}: probs {probs.shape} do not fit {len(ids)} meme ids")
        kind = _spec_kind(task, predictions, by_name)
        targets = predictions.targets.get(task)
        targets = None if targets is None else np.asarray(targets)
        for i, meme_id in enumerate(ids):
            target, multi = math.nan, None
            if targets is not None and kind == "single" and int(targets[i]) != IGNORE_INDEX:
                target = float(targets[i])
            elif targets is not None and kind == "multi" and (targets[i] != MISSING_MULTI).any():
                multi = [float(v) for v in targets[i]]
            rows["meme_id"].append(meme_id)
            rows["task"].append(task)
            rows["kind"].append(kind)
            rows["target"].append(target)
            rows["target_multi"].append(multi)
            rows["probs"].append(probs[i].tolist())
    return pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))


def log_eval_predictions(
    split: str, meme_ids: Sequence[str], predictions: Predictions, specs: Sequence[TaskSpec] | None = None,
    *, run_id: str | None = None,
) -> str:  # fmt: skip
    """Log ``predictions/<split>.parquet`` (see :func:`predictions_frame`) to the active run (or
    ``run_id``); ``meme_ids`` are the memes of ``predictions``' rows, in order. Returns the
    artifact path. ``specs`` is optional: without it the task kinds come from the targets' shape."""
    return log_prediction_frame(split, predictions_frame(meme_ids, predictions, specs), run_id=run_id)


def log_prediction_frame(split: str, frame: pd.DataFrame, *, run_id: str | None = None) -> str:
    """Log an already built :func:`predictions_frame`-shaped table as ``predictions/<split>.parquet``."""
    import mlflow

    if not re.fullmatch(r"[A-Za-z0-9_\-]+", split):
        raise ValueError(f"split name {split!r} is not usable as a file name")
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"predictions frame lacks columns {missing}")
    with tempfile.TemporaryDirectory(prefix="memeops-preds-") as tmp:
        path = Path(tmp) / f"{split}.parquet"
        frame.to_parquet(path, index=False)
        if run_id is None:
            mlflow.log_artifact(str(path), artifact_path=PREDICTIONS_DIR)
        else:
            mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_path=PREDICTIONS_DIR)
    return f"{PREDICTIONS_DIR}/{split}.parquet"


def load_eval_predictions(run_id: str, split: str) -> pd.DataFrame | None:
    """The run's ``predictions/<split>.parquet`` as a DataFrame, or None when it has none."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="memeops-preds-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{PREDICTIONS_DIR}/{split}.parquet", dst_path=tmp
            )
        except (MlflowException, OSError):
            return None
        return pd.read_parquet(local)


def frame_arrays(frame: pd.DataFrame, meme_ids: Sequence[str]) -> dict[str, TaskArrays]:
    """Per-task arrays of a predictions frame, rows ordered as ``meme_ids`` (each must be present)."""
    order = {m: i for i, m in enumerate(meme_ids)}
    out: dict[str, TaskArrays] = {}
    for task, group in frame.groupby("task", sort=False):
        group = group.drop_duplicates("meme_id")
        pos = group["meme_id"].astype(str).map(order)
        if pos.isna().any() or len(group) != len(order):
            raise ValueError(f"task {task}: predictions do not cover the same memes")
        group = group.iloc[np.argsort(pos.to_numpy(dtype=np.int64))]
        probs = np.asarray(group["probs"].tolist(), dtype=np.float64)
        kind = str(group["kind"].iloc[0])
        spec = TaskSpec(str(task), kind, tuple(str(i) for i in range(probs.shape[1])))  # type: ignore[arg-type]
        if kind == "multi":
            targets = np.array(
                [
                    np.full(probs.shape[1], MISSING_MULTI) if t is None else np.asarray(t, dtype=np.float64)
                    for t in group["target_multi"]
                ]
            ).reshape(len(group), probs.shape[1])
            mask = (targets != MISSING_MULTI).any(axis=1)
        else:
            raw = group["target"].to_numpy(dtype=np.float64)
            mask = ~np.isnan(raw)
            targets = np.where(mask, np.nan_to_num(raw), IGNORE_INDEX).astype(np.int64)
        out[str(task)] = TaskArrays(spec, probs, targets, mask)
    return out


# --------------------------------------------------------------------------- the paired bootstrap


@dataclass
class BootstrapResult:
    challenger: float  # mean primary metric over the tasks, full split
    champion: float
    challenger_tasks: dict[str, float]
    champion_tasks: dict[str, float]
    p_value: float  # one-sided: P*(delta <= margin) over the resamples
    n_valid: int  # resamples where every task's metric was defined

    @property
    def delta(self) -> float:
        return self.challenger - self.champion


def paired_bootstrap(
    challenger: Mapping[str, TaskArrays], champion: Mapping[str, TaskArrays], tasks: Sequence[str],
    *, margin: float, n_boot: int, seed: int,
) -> BootstrapResult:  # fmt: skip
    """Paired bootstrap of ``mean over tasks(primary metric)``, challenger minus champion
    (:func:`memeops.stats.mean_primary` on the same resamples for both models).

    Memes are resampled with replacement, the same draws for both models and every task (a meme
    labelled for several tasks stays one unit); each task then uses the labelled rows among them.
    The p-value is :func:`memeops.stats.one_sided_p` of "delta <= margin":
    ``(1 + #{resamples with delta <= margin}) / (1 + #valid resamples)``, small when the
    challenger's advantage over the margin is stable. Resamples where a metric is undefined
    (e.g. AUROC on a one-class resample) are skipped.
    """
    per_c, boot_c = mean_primary(challenger, tasks, n_boot=n_boot, seed=seed)
    per_h, boot_h = mean_primary(champion, tasks, n_boot=n_boot, seed=seed)
    deltas = boot_c - boot_h
    deltas = deltas[~np.isnan(deltas)]
    obs_c, obs_h = float(np.mean(list(per_c.values()))), float(np.mean(list(per_h.values())))
    return BootstrapResult(obs_c, obs_h, per_c, per_h, one_sided_p(deltas, margin), len(deltas))


# --------------------------------------------------------------------------- the decision


@dataclass
class PromotionDecision:
    """What :func:`promote_variant` decided (and, unless ``dry_run``, recorded and applied)."""

    variant: str
    model_name: str
    decision: str  # promoted | kept | refused
    reason: str
    challenger_version: str
    champion_version: str | None  # the champion before this decision
    split: str
    margin: float
    confidence: float
    n_boot: int
    seed: int
    tasks: list[str] = field(default_factory=list)
    challenger_metric: float | None = None
    champion_metric: float | None = None
    challenger_task_metrics: dict[str, float] = field(default_factory=dict)
    champion_task_metrics: dict[str, float] = field(default_factory=dict)
    p_value: float | None = None
    git_commit: str = "unknown"
    time: str = ""
    dry_run: bool = False
    applied: bool = False  # tags written (and, when promoted, the alias switched)

    @property
    def champion_after(self) -> str | None:
        return self.challenger_version if self.decision == PROMOTED else self.champion_version

    @property
    def delta(self) -> float | None:
        if self.challenger_metric is None or self.champion_metric is None:
            return None
        return self.challenger_metric - self.champion_metric

    def tags(self) -> dict[str, str]:
        """The ``memeops.promotion.*`` tags: the searchable facts one tag each, the settings and
        per-task metrics in one JSON ``details`` tag (each tag is one registry write). Every key is
        always written ("none" when not applicable), so a later decision overwrites the record."""

        def num(v: float | None) -> str:
            return "none" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"

        def rounded(values: Mapping[str, float]) -> dict[str, float | None]:
            return {k: None if math.isnan(v) else round(v, 6) for k, v in values.items()}

        details = {
            "split": self.split, "tasks": self.tasks, "delta": self.delta, "margin": self.margin,
            "confidence": self.confidence, "n_boot": self.n_boot, "seed": self.seed,
            "challenger_task_metrics": rounded(self.challenger_task_metrics),
            "champion_task_metrics": rounded(self.champion_task_metrics),
        }  # fmt: skip
        values = {
            "decision": self.decision,
            "reason": self.reason,
            "champion_version": self.champion_version or "none",
            "challenger_metric": num(self.challenger_metric),
            "champion_metric": num(self.champion_metric),
            "p_value": num(self.p_value),
            "git_commit": self.git_commit,
            "time": self.time,
            "details": json.dumps(details, sort_keys=True),
        }
        return {TAG_PREFIX + k: v[:5000] for k, v in values.items()}

    def summary(self) -> str:
        """One line: decision, versions, metrics, p-value, reason."""
        head = f"{'dry run: ' if self.dry_run else ''}{self.decision}: {self.model_name} v{self.challenger_version}"
        against = f" vs champion v{self.champion_version}" if self.champion_version else ""
        parts = [f"{head}{against} on {self.split}"]
        if self.challenger_metric is not None and self.champion_metric is not None:
            parts.append(f"{self.challenger_metric:.4f} vs {self.champion_metric:.4f} "
                         f"(delta {self.delta:+.4f}, margin {self.margin:g}"
                         + (f", p={self.p_value:.4f}" if self.p_value is not None else "") + ")")  # fmt: skip
        elif self.challenger_metric is not None:
            parts.append(f"{self.challenger_metric:.4f}")
        parts.append(self.reason)
        after = self.champion_after
        parts.append(f"champion -> v{after}" if after else "no champion")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The decision as plain JSON-able values (NaN -> None)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return clean({**asdict(self), "delta": self.delta, "champion_after": self.champion_after})


def lock_path(model_name: str, lock_dir: str | Path | None = None) -> Path:
    """The lock file serialising promotions of ``model_name`` against this tracking store: under
    the runtime state dir (``$XDG_CACHE_HOME``, which :mod:`memeops.runtime` points at
    ``<project>/.cache``, or a temp dir in tests), never the home directory."""
    import mlflow

    from memeops.runtime import find_project_root

    base = (
        Path(lock_dir)
        if lock_dir
        else Path(os.environ.get("XDG_CACHE_HOME") or find_project_root() / ".cache")
    )
    store = hashlib.sha256(mlflow.get_tracking_uri().encode()).hexdigest()[:10]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name)
    return base / "memeops" / "locks" / f"promote-{safe}-{store}.lock"


@contextmanager
def _promotion_lock(model_name: str, timeout: float, lock_dir: str | Path | None) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path = lock_path(model_name, lock_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise PromotionError(
            f"another promotion of {model_name} holds {path} (waited {timeout:g} s)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _run_of_version(client: Any, mv: Any) -> Any:
    run_id = getattr(mv, "run_id", None)
    if not run_id and getattr(mv, "model_id", None):
        run_id = client.get_logged_model(mv.model_id).source_run_id
    if not run_id:
        return None
    return client.get_run(run_id)


def _decide(
    variant: str, name: str, cfg: PromotionConfig, client: Any, challenger_v: str, champion_v: str | None,
    record: dict[str, Any],
) -> PromotionDecision:  # fmt: skip
    """The decision for challenger vs champion (reads only; the caller applies it)."""
    from memeops.tracking.runs import TAG_DATA_DIGEST

    def decision(kind: str, reason: str, **extra: Any) -> PromotionDecision:
        return PromotionDecision(variant, name, kind, reason, challenger_v, champion_v, **record, **extra)

    if champion_v == challenger_v:
        return decision(KEPT, f"challenger v{challenger_v} already is the champion")
    run_c = _run_of_version(client, client.get_model_version(name, challenger_v))
    if run_c is None:
        return decision(REFUSED, f"challenger v{challenger_v} has no source run to check")
    validation = run_c.data.tags.get(TAG_VALIDATION, "missing")
    if validation != "true":
        return decision(
            REFUSED,
            f"validation did not pass for the challenger's training data ({TAG_VALIDATION}={validation})",
        )
    frame_c = load_eval_predictions(run_c.info.run_id, cfg.split)
    if champion_v is None:
        extra: dict[str, Any] = {}
        if frame_c is not None:  # record its metric when it has predictions; not a requirement
            ids = list(dict.fromkeys(frame_c["meme_id"].astype(str)))
            arrays = frame_arrays(frame_c, ids)
            tasks = [t for t in (cfg.tasks_for(variant) or list(arrays)) if t in arrays]
            per = {t: primary_value(arrays[t].spec, arrays[t].probs[arrays[t].mask], arrays[t].targets[arrays[t].mask])
                   for t in tasks}  # fmt: skip
            defined = [v for v in per.values() if not math.isnan(v)]
            extra = {"tasks": tasks, "challenger_task_metrics": per,
                     "challenger_metric": float(np.mean(defined)) if defined else None}  # fmt: skip
        return decision(PROMOTED, "first model of the variant: no champion yet", **extra)

    run_h = _run_of_version(client, client.get_model_version(name, champion_v))
    if run_h is None:
        return decision(REFUSED, f"champion v{champion_v} has no source run to compare with")
    digest_c, digest_h = run_c.data.tags.get(TAG_DATA_DIGEST), run_h.data.tags.get(TAG_DATA_DIGEST)
    if not digest_c or digest_c != digest_h:
        return decision(
            REFUSED,
            f"different evaluation data: challenger {TAG_DATA_DIGEST}={digest_c}, champion {digest_h}",
        )
    frame_h = load_eval_predictions(run_h.info.run_id, cfg.split)
    missing = [who for who, f in ((CHALLENGER, frame_c), (CHAMPION, frame_h)) if f is None]
    if missing:
        return decision(
            REFUSED, f"no {PREDICTIONS_DIR}/{cfg.split}.parquet artifact for the {' and '.join(missing)}"
        )
    assert frame_c is not None and frame_h is not None
    ids = list(dict.fromkeys(frame_c["meme_id"].astype(str)))
    if set(ids) != set(frame_h["meme_id"].astype(str)):
        return decision(REFUSED, f"different evaluation sets: the {cfg.split} memes of the two runs differ")
    try:
        arrays_c, arrays_h = frame_arrays(frame_c, ids), frame_arrays(frame_h, ids)
    except ValueError as exc:
        return decision(REFUSED, f"predictions not comparable: {exc}")
    wanted = cfg.tasks_for(variant)
    shared = [t for t in arrays_c if t in arrays_h]
    if wanted:
        absent = [t for t in wanted if t not in shared]
        if absent:
            return decision(REFUSED, f"tasks {absent} (promotion.tasks) missing from a model's predictions")
        tasks = wanted
    else:
        tasks = shared
    for task in list(tasks):
        a, b = arrays_c[task], arrays_h[task]
        if a.spec.kind != b.spec.kind or a.probs.shape != b.probs.shape:
            return decision(REFUSED, f"task {task}: the models predict different label sets")
        if not (np.array_equal(a.mask, b.mask) and np.array_equal(a.targets[a.mask], b.targets[b.mask])):
            return decision(REFUSED, f"different evaluation sets: task {task} labels differ between the runs")
    # a task whose metric is undefined on the full split (e.g. one-class AUROC) cannot be compared
    tasks = [t for t in tasks if not any(math.isnan(primary_value(x.spec, x.probs[x.mask], x.targets[x.mask]))
                                         for x in (arrays_c[t], arrays_h[t]))]  # fmt: skip
    if not tasks:
        return decision(REFUSED, f"no task with a defined primary metric on {cfg.split} in both models")

    boot = paired_bootstrap(arrays_c, arrays_h, tasks, margin=cfg.margin, n_boot=cfg.n_boot, seed=cfg.seed)
    extra = {"tasks": tasks, "challenger_metric": boot.challenger, "champion_metric": boot.champion,
             "challenger_task_metrics": boot.challenger_tasks, "champion_task_metrics": boot.champion_tasks,
             "p_value": boot.p_value}  # fmt: skip
    alpha = 1.0 - cfg.confidence
    if boot.delta < cfg.margin:
        return decision(KEPT, f"improvement {boot.delta:+.4f} is below the margin {cfg.margin:g}", **extra)
    if not boot.p_value < alpha:
        return decision(KEPT, f"improvement {boot.delta:+.4f} is not significant (p={boot.p_value:.4f} >= {alpha:.3g})",
                        **extra)  # fmt: skip
    return decision(PROMOTED, f"improvement {boot.delta:+.4f} >= margin {cfg.margin:g} with p={boot.p_value:.4f} < {alpha:.3g}",
                    **extra)  # fmt: skip


def _apply(client: Any, decision: PromotionDecision) -> None:
    """Write the decision tags on the challenger version, then (promoted only) switch ``champion``:
    the alias switch is the last step, so a failure before it leaves the old champion."""
    from memeops.tracking.registry import CHAMPION_ALIAS, alias_version

    name, version = decision.model_name, decision.challenger_version
    try:
        for key, value in decision.tags().items():
            client.set_model_version_tag(name, version, key, value)
        if decision.decision == PROMOTED:
            client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    except BaseException as exc:
        # best effort: do not leave "promoted" on a version the alias never reached
        try:
            if alias_version(name, CHAMPION_ALIAS) != version or decision.decision != PROMOTED:
                client.set_model_version_tag(name, version, TAG_DECISION, FAILED)
                client.set_model_version_tag(name, version, TAG_REASON,
                                             f"recording {decision.decision} failed: {type(exc).__name__}: {exc}"[:5000])  # fmt: skip
        except Exception:  # noqa: BLE001, S110 - the original error is the one to report
            pass
        raise
    decision.applied = True


def promote_variant(
    variant: str, cfg: PromotionConfig | None = None, *, dry_run: bool = False, lock_dir: str | Path | None = None,
) -> PromotionDecision:  # fmt: skip
    """Decide (and unless ``dry_run`` record and apply) challenger -> champion for
    ``memeops-<variant>``; see the module docstring for the rule. Raises :class:`PromotionError`
    when there is nothing to decide (no such registered model, no challenger)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from memeops.tracking.registry import CHAMPION_ALIAS, DEFAULT_ALIAS, alias_version, registered_model_name
    from memeops.tracking.runs import git_commit

    cfg = cfg or PromotionConfig()
    name = registered_model_name(variant)
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise PromotionError(
            f"no registered model {name}: unknown variant {variant!r} or never trained"
        ) from None
    record = {"split": cfg.split, "margin": cfg.margin, "confidence": cfg.confidence, "n_boot": cfg.n_boot,
              "seed": cfg.seed, "git_commit": git_commit(), "dry_run": dry_run}  # fmt: skip

    def decide() -> PromotionDecision:
        challenger_v = alias_version(name, DEFAULT_ALIAS)  # both aliases read inside the lock
        if challenger_v is None:
            raise PromotionError(f"{name} has no {DEFAULT_ALIAS!r} alias: nothing to promote")
        champion_v = alias_version(name, CHAMPION_ALIAS)
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return _decide(variant, name, cfg, client, challenger_v, champion_v, {**record, "time": now})

    if dry_run:
        return decide()
    with _promotion_lock(name, cfg.lock_timeout_s, lock_dir):
        decision = decide()
        if decision.decision == KEPT and decision.champion_version == decision.challenger_version:
            return decision  # nothing to record: its own promotion record stays
        _apply(client, decision)
        return decision
