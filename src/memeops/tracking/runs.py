"""MLflow runs the memeops way: one context manager, flattened params, lineage tags, a trainer callback.

Every stage that logs to MLflow goes through :func:`tracked_run`, so all runs carry the same
lineage tags (``memeops.git_commit``, ``memeops.dvc_stage``, ``memeops.data_digest``,
``memeops.variant``, ``memeops.seed``) and can be compared or traced back to code and data.

Tracking goes wherever ``MLFLOW_TRACKING_URI`` points (``memeops.runtime`` defaults it to
``sqlite:///<project>/mlflow.db``; the tests point it at a temp dir). MLflow's own default artifact
root is ``./mlruns`` *relative to the current directory*, so a stage run from another folder would
scatter artifacts; :func:`ensure_experiment` therefore creates experiments with their artifacts
next to the sqlite file (``<db dir>/mlartifacts/<experiment>``).

mlflow is imported inside functions: model and training code import nothing from here at import
time, and a GPU box without mlflow can still import ``memeops.tracking.plots``.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from memeops.runtime import find_project_root

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import ActiveRun, RunOperations

    from memeops.training.fit_types import FitResult

# MLflow's limits (mlflow.utils.validation); copied so this module imports without mlflow.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
#: Seconds between system-metric samples. MLflow's default (10 s) records nothing for a run shorter
#: than that: the monitor publishes a sample only after waiting one full interval.
SYSTEM_METRICS_INTERVAL_S = 1.0
#: Columns :func:`log_dataset` keeps: enough to see what a run trained on, small enough to profile.
DATASET_COLUMNS = ("meme_id", "split", "language", "text")

TAG_GIT_COMMIT = "memeops.git_commit"
TAG_STAGE = "memeops.dvc_stage"
TAG_DATA_DIGEST = "memeops.data_digest"
TAG_VARIANT = "memeops.variant"
TAG_SEED = "memeops.seed"


# --------------------------------------------------------------------------- small helpers


def flatten_params(params: Mapping[str, Any] | Any, prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Nested mappings (and pydantic models) -> ``{"a.b.c": "value"}`` with str values.

    MLflow params are flat strings; dotted keys keep the YAML structure searchable
    (``params."train.lr" = '0.001'``). Lists and other leaves are ``str()``-ed; characters MLflow
    rejects in keys become ``_``, and keys and values are truncated to MLflow's limits, so odd
    params can never fail a run at start-up.
    """
    if hasattr(params, "model_dump"):
        params = params.model_dump(mode="json")
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name, sep))
        else:
            out[_param_key(name)] = str(value)[:MAX_PARAM_VALUE_LENGTH]
    return out


def _param_key(name: str) -> str:
    return re.sub(r"[^\w.\- /]", "_", name)[:MAX_KEY_LENGTH]


def file_md5(path: str | Path) -> str:
    """The md5 DVC records for a file: a run's data digest, matched against dvc.lock."""
    import hashlib

    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def metric_name(name: str) -> str:
    """A valid MLflow metric key: keeps ``/`` (the UI groups on it), replaces anything else MLflow
    rejects (or that is not portable, such as ``:``) with ``_``, and drops empty path segments."""
    cleaned = re.sub(r"[^\w.\- /]", "_", str(name))
    parts = [p if p not in (".", "..") else "_" for p in cleaned.split("/") if p]
    return "/".join(parts)[:MAX_KEY_LENGTH] or "_"


def _numeric(value: Any) -> float | None:
    """float for ints, floats, bools (as 0/1) and 0-d numpy/torch scalars; None for the rest."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        try:
            out = item()
        except (TypeError, ValueError):
            return None
        return float(out) if isinstance(out, (int, float)) else None
    return None


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dicts -> ``{"a/b/c": float}`` (``/``-joined, the trainer's convention); non-numeric
    leaves are skipped; NaN / inf are kept (an undefined AUROC is information, not an error)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, name))
            continue
        number = _numeric(value)
        if number is not None:
            out[metric_name(name)] = number
    return out


def git_commit(root: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the project, ``+dirty`` when tracked or untracked (not ignored)
    files differ from it, ``"unknown"`` when there is no git, no repo or no commit. Never raises:
    lineage must not be able to fail a training run. ``GIT_OPTIONAL_LOCKS=0`` keeps ``git status``
    from taking the index lock while someone else is using the worktree."""
    cwd = Path(root) if root else find_project_root()
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str, timeout: int) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    try:
        head = git("rev-parse", "HEAD", timeout=10)
        if head.returncode != 0:
            return "unknown"
        status = git("status", "--porcelain", timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = head.stdout.strip() or "unknown"
    dirty = status.returncode != 0 or bool(status.stdout.strip())
    return f"{commit}+dirty" if dirty and commit != "unknown" else commit


def default_artifact_location(experiment: str, tracking_uri: str | None = None) -> str | None:
    """``<db dir>/mlartifacts/<experiment>`` for a sqlite tracking URI; None (MLflow decides,
    e.g. a server's artifact root) for anything else."""
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    db = Path(unquote(uri[len("sqlite:///") :].split("?")[0])) if uri.startswith("sqlite:///") else None
    if db is None or str(db) in ("", ":memory:"):
        return None
    folder = re.sub(r"[^\w.\-]+", "_", experiment).strip(".") or "default"
    return (db.parent.resolve() / "mlartifacts" / folder).as_uri()


def ensure_experiment(name: str) -> str:
    """The experiment id for ``name``, creating it (artifacts next to the db) when missing."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(name))
    except MlflowException:  # created concurrently by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@contextmanager
def _sampling_interval(seconds: float | None) -> Iterator[None]:
    """Set MLflow's sampling-interval env var while a run starts (the monitor reads it in its
    constructor), unless the user already set it; restore afterwards so nothing leaks."""
    key = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
    if seconds is None or key in os.environ:
        yield
        return
    os.environ[key] = str(seconds)
    try:
        yield
    finally:
        os.environ.pop(key, None)


# --------------------------------------------------------------------------- runs


def log_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flatten and log ``params`` to the active run in batches (mlflow chunks by 100); returns them."""
    import mlflow

    flat = flatten_params(params)
    if flat:
        mlflow.log_params(flat)
    return flat


def lineage_tags(
    *, stage: str, variant: str | None, seed: int | None, data_digest: str, root: str | Path | None = None
) -> dict[str, str]:
    """The memeops lineage tags (None-valued ones are left out rather than faked)."""
    tags = {TAG_GIT_COMMIT: git_commit(root), TAG_STAGE: stage, TAG_DATA_DIGEST: data_digest}
    if variant is not None:
        tags[TAG_VARIANT] = str(variant)
    if seed is not None:
        tags[TAG_SEED] = str(seed)
    return tags


@contextmanager
def tracked_run(
    *,
    experiment: str,
    run_name: str,
    stage: str,
    variant: str | None,
    seed: int | None,
    data_digest: str,
    params: Mapping[str, Any],
    extra_tags: Mapping[str, Any] | None = None,
    system_metrics: bool = True,
    system_metrics_interval: float | None = SYSTEM_METRICS_INTERVAL_S,
    nested: bool = False,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[ActiveRun]:
    """Start an MLflow run with lineage tags and flattened params; end it FINISHED or FAILED.

    ``parent_run_id`` nests the run under a run of another process (a seed worker's run under its
    variant's); ``nested`` alone nests it under this process's active run. ``run_id`` resumes a run
    :func:`open_run` created with these same arguments (its tags and params are already there).

    ``system_metrics`` turns on MLflow's CPU / memory / disk / network (and GPU when present)
    sampler, every ``system_metrics_interval`` seconds (None: MLflow's setting; an exported
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` always wins). Pass ``False`` in tests and sweeps
    of very short runs: the sampler is a thread that costs one join at the end of the run.
    """
    import mlflow

    with _sampling_interval(system_metrics_interval if system_metrics else None):
        if run_id is not None:
            active = mlflow.start_run(run_id=run_id, nested=nested, log_system_metrics=system_metrics)
        else:
            active = mlflow.start_run(
                experiment_id=ensure_experiment(experiment), run_name=run_name, nested=nested,
                tags=run_tags(stage=stage, variant=variant, seed=seed, data_digest=data_digest, extra_tags=extra_tags),
                parent_run_id=parent_run_id, log_system_metrics=system_metrics,
            )  # fmt: skip
    with active:  # ActiveRun.__exit__ ends the run: FINISHED, or FAILED on an exception
        if run_id is None:
            log_params(params)
        yield active


def run_tags(*, stage: str, variant: str | None, seed: int | None, data_digest: str,
             extra_tags: Mapping[str, Any] | None = None) -> dict[str, str]:  # fmt: skip
    """The lineage tags plus ``extra_tags`` (values cut to MLflow's tag length)."""
    tags = lineage_tags(stage=stage, variant=variant, seed=seed, data_digest=data_digest)
    tags.update({str(k): str(v)[:MAX_TAG_VALUE_LENGTH] for k, v in (extra_tags or {}).items()})
    return tags


def open_run(*, experiment: str, run_name: str, stage: str, variant: str | None, seed: int | None,
             data_digest: str, params: Mapping[str, Any], extra_tags: Mapping[str, Any] | None = None) -> str:
    """Create a run (tags and params as :func:`tracked_run` logs them) without making it active;
    returns its id. It stays RUNNING until ``tracked_run(..., run_id=<id>)`` resumes and ends it, or
    :func:`fail_runs` ends it. Why: runs of other processes can nest under it before this process
    gets to it (stage ``train`` queues every variant's seeds at once)."""
    import mlflow
    from mlflow.entities import Param
    from mlflow.tracking.context.registry import resolve_tags  # what start_run adds: user, source, ...

    client = mlflow.MlflowClient()
    tags = resolve_tags(run_tags(stage=stage, variant=variant, seed=seed, data_digest=data_digest,
                                 extra_tags=extra_tags))  # fmt: skip
    run = client.create_run(ensure_experiment(experiment), tags=tags, run_name=run_name)
    # log_batch splits into MLflow's 100-params batches itself
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flatten_params(params).items()])
    return run.info.run_id


def fail_runs(run_ids: Sequence[str]) -> None:
    """End the runs of ``run_ids`` that are still RUNNING as FAILED (a stage stopped before them)."""
    import mlflow

    client = mlflow.MlflowClient()
    for run_id in run_ids:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="FAILED")


def log_metrics(metrics: Mapping[str, Any], *, prefix: str = "", step: int | None = None) -> dict[str, float]:
    """Log a (nested) metrics dict from a non-training stage (evaluation, benchmarks) to the
    active run: keys ``/``-joined, non-numeric values skipped. Returns what was logged."""
    import mlflow

    flat = flatten_metrics(metrics, prefix)
    if flat:
        mlflow.log_metrics(flat, step=step)
    return flat


def log_dataset(df: pd.DataFrame, name: str, digest: str, context: str, *, source: str | None = None) -> None:
    """Record which meme table a run used (``mlflow.log_input``), under the pipeline's own digest.

    Only light columns go into the dataset profile: ``meme_id, split, language, text`` and the
    ``label_*`` columns (multi-label lists joined with ``|`` so MLflow can infer a schema). The data
    itself is not uploaded; DVC versions it, ``digest`` ties the two together.
    """
    import mlflow
    import pandas as pd

    keep = [c for c in DATASET_COLUMNS if c in df.columns]
    keep += [c for c in df.columns if str(c).startswith("label_") or c == "labels"]
    light = df.loc[:, keep].copy()
    for col in light.columns:
        if light[col].dtype == object:
            light[col] = light[col].map(_cell_text)
    light = pd.DataFrame(light).reset_index(drop=True)
    dataset = mlflow.data.from_pandas(light, source=source, name=name, digest=digest)
    mlflow.log_input(dataset, context=context)


def _cell_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if hasattr(value, "__iter__"):
        return "|".join(str(v) for v in value)
    return str(value)


# --------------------------------------------------------------------------- trainer callback


class MlflowCallback:
    """Trainer callback (see :class:`memeops.training.fit_types.Callback`) logging to an MLflow run.

    * ``on_epoch_end``: every numeric metric of the epoch with ``step=epoch`` (1-based), names made
      MLflow-safe by :func:`metric_name`. The trainer may re-report an epoch after a crash; MLflow
      keeps both points and shows the latest, which is the same value. Logged with MLflow's
      asynchronous logging (``log_batch(..., synchronous=False)``), so training does not wait for
      the store's commit (tens of ms on sqlite, as much as a small model's epoch), and batched:
      the first epoch at once, then the epochs of every ``flush_every_s`` seconds in one call (one
      sqlite commit for many points: the per-epoch commits of the heads' ~0.1 s epochs cost a core
      a third of its time). The UI's curve is live, at most ``flush_every_s`` behind.
    * ``on_fit_start``: when training resumed from a checkpoint, replays the finished epochs so a
      fresh run still has the whole curve, and tags ``memeops.resumed_from``.
    * ``on_fit_end``: first waits until every epoch point is stored (a failed one raises here);
      then ``best/epoch``, ``best/<monitor>``, ``fit/*`` summary metrics; with ``log_artifacts``
      also ``history.csv`` and ``training_curve.png`` under ``artifact_dir``. Points of a fit that
      fails before its end are still written: MLflow drains its queue when the process exits.

    ``run_id`` None means the run active at each call, so the callback may be built before
    :func:`tracked_run` starts.
    """

    def __init__(
        self, run_id: str | None = None, *, log_artifacts: bool = True, artifact_dir: str = "training",
        flush_every_s: float = 2.0,
    ):  # fmt: skip
        self.run_id = run_id
        self.log_artifacts = log_artifacts
        self.artifact_dir = artifact_dir
        self.flush_every_s = flush_every_s
        self._pending: list[RunOperations] = []  # asynchronous epoch logs not yet waited for
        self._buffer: list[Any] = []  # epoch points not yet sent (mlflow Metric entities)
        self._last_send: float | None = None  # monotonic time of the last send; None: nothing sent yet

    def _run_id(self) -> str:
        import mlflow

        if self.run_id:
            return self.run_id
        active = mlflow.active_run()
        if active is None:
            raise RuntimeError("MlflowCallback: no run_id given and no active MLflow run (use tracked_run)")
        return active.info.run_id

    @staticmethod
    def _points(metrics: Mapping[str, Any], step: int) -> list[Any]:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        return [Metric(key=k, value=v, timestamp=now, step=step) for k, v in flatten_metrics(metrics).items()]

    def _send(self, points: list[Any], *, wait: bool) -> None:
        """One ``log_batch`` call; ``wait=False`` queues it (MLflow's async logging) and keeps the
        future for :meth:`flush`."""
        import time

        import mlflow

        self._last_send = time.monotonic()
        if not points:
            return
        operations = mlflow.MlflowClient().log_batch(self._run_id(), metrics=points, synchronous=wait)
        if operations is not None:
            self._pending.append(operations)

    def _log(self, metrics: Mapping[str, Any], step: int, *, wait: bool = True) -> None:
        """Log ``metrics`` at ``step`` now (after any buffered epoch points)."""
        self._send(self._take_buffer() + self._points(metrics, step), wait=wait)

    def _take_buffer(self) -> list[Any]:
        points, self._buffer = self._buffer, []
        return points

    def _buffer_epoch(self, metrics: Mapping[str, Any], step: int) -> None:
        """Buffer an epoch's points; send the buffer on the first epoch and then every ``flush_every_s``."""
        import time

        self._buffer.extend(self._points(metrics, step))
        due = self._last_send is None or time.monotonic() - self._last_send >= self.flush_every_s
        if due:
            self._send(self._take_buffer(), wait=False)

    def flush(self) -> None:
        """Send the buffered epoch points and block until every queued one is in the tracking
        store; raise if one failed."""
        self._send(self._take_buffer(), wait=False)
        pending, self._pending = self._pending, []
        for operations in pending:
            operations.wait()

    def on_fit_start(self, resumed_from: int | None, history: list[dict[str, float]]) -> None:
        if not resumed_from:
            return
        import mlflow

        mlflow.MlflowClient().set_tag(self._run_id(), "memeops.resumed_from", str(resumed_from))
        for i, record in enumerate(history, start=1):
            epoch = int(record.get("epoch", i))
            self._buffer.extend(self._points({k: v for k, v in record.items() if k != "epoch"}, epoch))
        self._send(self._take_buffer(), wait=False)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self._buffer_epoch(metrics, epoch)

    def on_fit_end(self, result: FitResult) -> None:
        self.flush()
        summary = {
            "best/epoch": result.best_epoch,
            f"best/val/{result.monitor}": result.best_value,
            "fit/epochs_run": result.epochs_run,
            "fit/stopped_early": result.stopped_early,
            "fit/train_samples_per_s": result.train_samples_per_s,
        }
        self._log(summary, result.epochs_run)
        if self.log_artifacts and result.history:
            self._log_history_artifacts(result)

    def _log_history_artifacts(self, result: FitResult) -> None:
        import tempfile

        import mlflow

        from memeops.tracking.plots import plot_training_curve, write_history_csv

        with tempfile.TemporaryDirectory(prefix="memeops-history-") as tmp:
            write_history_csv(result.history, Path(tmp) / "history.csv")
            plot_training_curve(result.history, f"val/{result.monitor}", Path(tmp) / "training_curve.png")
            mlflow.MlflowClient().log_artifacts(self._run_id(), tmp, artifact_path=self.artifact_dir)
