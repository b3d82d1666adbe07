"""Hyper-parameter tuning of one ``train.variants`` entry with Optuna: the library side of stage ``tune``.

One Optuna study per variant:

* **search space** from ``params.tune.spaces`` (``<variant>`` or ``default``): keys address the
  variant's trainer overrides (``trainer.lr``) or its model config (``config.dropout``); values are
  ``{type: float|int|categorical, low, high, log, step, choices}`` (:class:`ParamSpec`);
* **seeded TPE** (``TPESampler(seed=tune.sampler_seed)``) and a **MedianPruner** fed the per-epoch
  VALIDATION monitor metric (``train.trainer.monitor``) by a trainer callback;
* **trial 0 is the untuned defaults** (``study.enqueue_trial``), trained on the same budget as
  every other trial, so "tuning beats the defaults" compares like with like;
* each trial trains through the one trainer (:func:`memeops.training.trainer.fit`) on the cached
  features with the variant's own epochs / patience (or the optional caps ``tune.epochs`` /
  ``tune.patience``) and returns its best validation value. The test splits are never built, let
  alone scored;
* **storage**: a sqlite file inside the project by default (``.cache/optuna/<variant>.db``); any
  SQLAlchemy URL (``postgresql://…``, ``mysql://…``) for workers on several machines, or
  ``journal:<file>`` (Optuna's JournalStorage + JournalFileBackend: its recommended multi-process
  file storage) for several local worker processes (flows/tune.py);
* **MLflow**: one parent run per study (:func:`memeops.tracking.runs.tracked_run`: lineage tags,
  stage ``tune@<variant>``) holding the optimisation-history / parameter-importance / intermediate
  value plots and the best value and params; every trial is a child run (tags
  ``memeops.tune.trial_number`` / ``memeops.tune.state``, its params, its per-epoch val curve, its
  value). Workers in other processes attach their child runs to the same parent by id;
* **output** ``reports/tuning/<variant>.json`` (:func:`tuning_report`): the best params as a nested
  override dict (``{"trainer": {...}, "config": {...}}``) that stage ``train`` merges with
  :func:`memeops.training.tuned.apply_tuned` (the one merge), the best and the default
  validation value, trial counts. The file holds no
  timings, so retuning to the same result leaves ``train`` up to date.

Without caps a trial is the very run stage ``train`` will make with its params, so the best val
value is the tuned model's; an optional cap only makes the search cheaper and is biased towards
fast-learning settings (measured in docs/tuning.md). Epochs, patience, the monitor and the seed are
the budget and the selection rule, so they cannot be searched.

Modules: :mod:`~memeops.training.tune_config` (``params.tune``, search spaces),
:mod:`~memeops.training.tune_study` (the job, data, storage, study),
:mod:`~memeops.training.tune_trials` (objective, one trial), :mod:`~memeops.training.tune_report`
(outputs, plots), :mod:`~memeops.training.tuned` (merging tuned params); this module runs a study
in one process or over worker processes (``python -m memeops.training.tune`` is one worker).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from memeops.tracking.runs import tracked_run
from memeops.training.tune_config import trial_trainer_overrides
from memeops.training.tune_report import finalize, write_outputs
from memeops.training.tune_study import TuneData, TuneJob, create_study, load_data, load_study, prepare, redact
from memeops.training.tune_trials import TAG_STUDY, run_trials, trial_lineage
from memeops.training.tuned import untuned_report


def _parent_params(job: TuneJob) -> dict[str, Any]:
    """The study's parameters logged on its MLflow parent run (storage redacted)."""
    base = job.train.trainer_config(job.variant)
    return {"variant": job.variant, "study": job.study_name, "storage": redact(job.storage),
            "n_trials": job.tune.n_trials, "sampler": {"kind": "tpe", "seed": job.tune.sampler_seed,
                                                      "n_startup_trials": job.tune.n_startup_trials},
            "pruner": job.tune.pruner.model_dump(), "trial_budget": trial_trainer_overrides(base, job.tune),
            "monitor": base.monitor, "space": {k: v.model_dump(exclude_none=True) for k, v in job.tune.space_for(job.variant).items()}}  # fmt: skip


def tune_variant(job: TuneJob, *, output: Path, plot_csv: Path | None = None, data: TuneData | None = None) -> dict[str, Any]:
    """Stage ``tune@<variant>`` in one process: a fresh study, ``tune.n_trials`` trials, outputs.

    A variant not in ``tune.variants`` just gets :func:`untuned_report`. Runs under one MLflow
    parent run (tracked_run: lineage tags, stage ``tune@<variant>``) that the trials nest under.
    """
    if job.variant not in job.tune.variants:
        job.train.variant(job.variant)
        write_outputs(untuned_report(job.variant), output, plot_csv)  # header-only CSV: the DVC plot exists
        return untuned_report(job.variant)
    start = time.perf_counter()
    job, data = prepare(job, data)
    create_study(job, fresh=True)
    with tracked_run(experiment=job.experiment, run_name=f"tune-{job.variant}", stage=job.stage or f"tune@{job.variant}",
                     variant=job.variant, seed=job.tune.sampler_seed, data_digest=data.digest, params=_parent_params(job),
                     extra_tags={TAG_STUDY: job.study_name, "memeops.feature_spec": data.feature_spec},
                     system_metrics=False) as parent:  # fmt: skip
        job = job.with_(parent_run_id=parent.info.run_id)
        study = run_trials(job, data, job.tune.n_trials, trial_lineage(job, data))
        return finalize(job, study, output, plot_csv, wall_s=time.perf_counter() - start)


def split_trials(n_trials: int, n_workers: int) -> list[int]:
    """``n_trials`` over ``n_workers`` as evenly as possible (workers with 0 trials are dropped)."""
    if n_workers < 1:
        raise ValueError("n_workers must be >= 1")
    base, extra = divmod(n_trials, n_workers)
    return [base + (i < extra) for i in range(n_workers) if base + (i < extra) > 0]


def worker_command(job_file: Path, n_trials: int, worker: int = 0) -> list[str]:
    """The command line of one worker process (:func:`worker_main`)."""
    return [sys.executable, "-m", "memeops.training.tune", "--job", str(job_file), "--n-trials", str(n_trials),
            "--worker-index", str(worker)]  # fmt: skip


def launch_worker(job_file: Path, n_trials: int, *, worker: int = 0, env: Mapping[str, str] | None = None,
                  cwd: str | Path | None = None, log: Path | None = None) -> subprocess.Popen:  # fmt: skip
    """Start one worker process on the shared study (stdout/stderr to ``log`` when given)."""
    out = open(log, "w", encoding="utf-8") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(worker_command(job_file, n_trials, worker), env=dict(env) if env else None, cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    finally:
        if log is not None:
            out.close()  # the child holds its own descriptor


def start_parallel(job: TuneJob, data: TuneData | None = None) -> tuple[TuneJob, TuneData]:
    """Coordinator, before the workers: a fresh study with the defaults enqueued."""
    job, data = prepare(job, data)
    create_study(job, fresh=True)
    return job, data


def launch_local(job_file: Path, shares: Sequence[int], *, env: Mapping[str, str] | None = None,
                 log_dir: Path | None = None) -> list[int]:  # fmt: skip
    """Start one worker process per share at once, wait for all; their exit codes."""
    procs = [launch_worker(job_file, k, worker=i, env=env, log=(log_dir / f"worker{i}.log") if log_dir else None)
             for i, k in enumerate(shares)]  # fmt: skip
    return [p.wait() for p in procs]


def run_parallel(job: TuneJob, *, n_workers: int, output: Path, plot_csv: Path | None = None,
                 env: Mapping[str, str] | None = None, work_dir: Path | None = None,
                 data: TuneData | None = None, launcher: Any = None) -> dict[str, Any]:  # fmt: skip
    """``tune.n_trials`` trials over ``n_workers`` worker processes sharing one study and one MLflow
    parent run (the plain-Python core of flows/tune.py). Storage must be multi-process safe:
    ``journal:<file>`` (local processes), an RDB server URL (any machine), or sqlite for a couple of
    local workers. ``launcher(job_file, shares, log_dir) -> exit codes`` runs the workers
    (default :func:`launch_local`; the Prefect flow passes one that runs them as tasks)."""
    start = time.perf_counter()
    job, data = start_parallel(job, data)
    with tracked_run(experiment=job.experiment, run_name=f"tune-{job.variant}", stage=job.stage or f"tune@{job.variant}",
                     variant=job.variant, seed=job.tune.sampler_seed, data_digest=data.digest, params=_parent_params(job),
                     extra_tags={TAG_STUDY: job.study_name, "memeops.tune.workers": str(n_workers)},
                     system_metrics=False) as parent:  # fmt: skip
        job = job.with_(parent_run_id=parent.info.run_id)
        with tempfile.TemporaryDirectory(prefix="memeops-tune-job-", dir=work_dir) as tmp:
            job_file = Path(tmp) / "job.json"
            job_file.write_text(job.model_dump_json(), encoding="utf-8")
            shares = split_trials(job.tune.n_trials, n_workers)
            if launcher is None:
                codes = launch_local(job_file, shares, env=env, log_dir=Path(tmp))
            else:
                codes = list(launcher(job_file, shares, Path(tmp)))
            if any(codes):
                logs = sorted(Path(tmp).glob("worker*.log"))
                tail = logs[-1].read_text(encoding="utf-8")[-2000:] if logs else ""
                raise RuntimeError(f"tune {job.variant}: worker exit codes {codes}; last worker output:\n{tail}")
        study = load_study(job)
        return finalize(job, study, output, plot_csv, wall_s=time.perf_counter() - start)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``python -m memeops.training.tune --job job.json --n-trials k``: one worker process."""
    parser = argparse.ArgumentParser(prog="python -m memeops.training.tune", description=worker_main.__doc__)
    parser.add_argument("--job", required=True, type=Path)
    parser.add_argument("--n-trials", required=True, type=int)
    parser.add_argument("--worker-index", type=int, default=0, help="offsets the sampler seed")
    args = parser.parse_args(argv)
    job = TuneJob.model_validate_json(args.job.read_text(encoding="utf-8"))
    if not job.study_name or not job.storage:
        raise ValueError("worker job needs study_name and a resolved storage (run the coordinator first)")
    data = load_data(job)
    study = run_trials(job, data, args.n_trials, trial_lineage(job, data), worker=args.worker_index)
    print(f"worker {os.getpid()}: {args.n_trials} trials on {job.study_name} ({len(study.trials)} in the study)")
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
