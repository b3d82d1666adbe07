"""Prefect flow: one variant's Optuna study tuned by several worker processes that share it.

``python -m flows.tune <variant> [--workers 2] [--n-trials N] [--storage URL]``

1. the flow (coordinator) creates a fresh study in a storage every process can reach and enqueues
   the variant's untuned defaults as trial 0, then opens the study's MLflow parent run
   (stage ``tune@<variant>``, the usual lineage tags);
2. it splits ``N = tune.n_trials`` (or ``--n-trials``) over the workers and runs each worker as a
   Prefect task that launches its own process (``python -m memeops.training.tune --job … --n-trials k``):
   separate interpreters, so the trials really run in parallel and one crash cannot take the
   others down. Optuna hands out trial numbers and TPE suggestions through the shared storage
   (the TPE sampler's ``constant_liar`` keeps concurrent workers from proposing the same point);
3. every trial logs an MLflow child run under the parent (by id, from whichever process ran it);
4. when all workers are done, the flow writes ``reports/tuning/<variant>.json`` +
   ``reports/plots/tune/<variant>.csv`` and the plots on the parent run, like the DVC stage.

Storage. ``--storage`` (or ``tune.storage``) may be an RDB server URL (``postgresql://…``,
``mysql+pymysql://…``: workers on several machines). When it is the default sqlite file, the flow
switches to ``journal:.cache/optuna/<variant>.journal`` (JournalStorage + JournalFileBackend):
Optuna's own docs never recommend SQLite for parallel optimisation (writers lock the whole file),
and the journal file backend is its recommended multi-process storage on one machine's file
system. Pass ``--storage sqlite:///…`` explicitly to force sqlite (it works for two local workers,
each waits up to 60 s on a lock). The parallel run is not bit-reproducible (which worker gets
which suggestion depends on timing); the sequential DVC stage is.
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, task

from memeops.stage_context import StageContext
from memeops.training.tune import run_parallel, worker_command
from memeops.training.tune_stage import tune_job

PARALLEL_FILE_STORAGE = "journal:.cache/optuna/{variant}.journal"


@task(name="tune-worker", retries=0)
def tune_worker(job_file: str, n_trials: int, log: str, worker: int = 0) -> int:
    """One worker process: ``n_trials`` trials of the shared study; its exit code (output in ``log``)."""
    with open(log, "w", encoding="utf-8") as out:
        code = subprocess.run(worker_command(Path(job_file), n_trials, worker), stdout=out, stderr=subprocess.STDOUT,
                              check=False).returncode  # fmt: skip
    if code:
        tail = Path(log).read_text(encoding="utf-8")[-1500:]
        raise RuntimeError(f"tune worker ({n_trials} trials) exited {code}:\n{tail}")
    return code


def _prefect_launcher(job_file: Path, shares: Sequence[int], log_dir: Path) -> list[int]:
    futures = [tune_worker.submit(str(job_file), k, str(log_dir / f"worker{i}.log"), i) for i, k in enumerate(shares)]
    return [f.result() for f in futures]  # raises the first failed worker's error


def parallel_storage(requested: str | None, configured: str) -> str:
    """The storage the workers share: the requested one, else the configured one unless it is the
    single-process sqlite default, which becomes a journal file (see the module docstring)."""
    if requested:
        return requested
    return PARALLEL_FILE_STORAGE if configured.startswith("sqlite:") else configured


@flow(name="tune", log_prints=True)
def tune_flow(
    variant: str,
    n_workers: int = 2,
    n_trials: int | None = None,
    storage: str | None = None,
    params_path: str = "params.yaml",
    output_dir: str = "reports/tuning",
    plots_dir: str = "reports/plots/tune",
) -> dict[str, Any]:
    """Tune ``variant`` with ``n_workers`` processes on one shared study; returns the tuning report."""
    job = tune_job(variant, StageContext(params_path=Path(params_path)))
    tune = job.tune.model_copy(update={"n_trials": n_trials} if n_trials else {})
    job = job.with_(tune=tune, storage=parallel_storage(storage, tune.storage))
    report = run_parallel(job, n_workers=n_workers, output=Path(output_dir) / f"{variant}.json",
                          plot_csv=Path(plots_dir) / f"{variant}.csv", launcher=_prefect_launcher)  # fmt: skip
    n = report["n_trials"]
    print(f"tune {variant} ({n_workers} workers): best {report['monitor']} {report['best_value']} vs defaults "
          f"{report['default_value']}; {n['complete']} complete, {n['pruned']} pruned, {n['fail']} failed")  # fmt: skip
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("variant")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n-trials", type=int, default=None, help="total trials (default: tune.n_trials)")
    parser.add_argument("--storage", default=None, help="shared Optuna storage (RDB URL or journal:<file>)")
    parser.add_argument("--output-dir", default="reports/tuning")
    parser.add_argument("--plots-dir", default="reports/plots/tune")
    args = parser.parse_args(argv)
    tune_flow(args.variant, n_workers=args.workers, n_trials=args.n_trials, storage=args.storage,
              output_dir=args.output_dir, plots_dir=args.plots_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
