"""A finished study's outputs: ``reports/tuning/<variant>.json`` (the overrides stage ``train``
merges through :func:`memeops.training.tuned.apply_tuned`, best vs default value, trial counts;
no timings, so retuning to the same result leaves ``train`` up to date), the per-trial history
CSV, Optuna's plots, and the best value / params logged to the study's MLflow parent run.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from optuna.trial import TrialState

from memeops.tracking.runs import flatten_metrics
from memeops.training.tune_config import trial_trainer_overrides
from memeops.training.tune_study import TuneJob, direction
from memeops.training.tuned import params_to_overrides


def rounded(value: Any) -> Any:
    """A float to 6 significant digits (NaN: None) for the JSON report; anything else as it is."""
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.6g}")
    return value


def tuning_report(job: TuneJob, study: Any) -> dict[str, Any]:
    """``reports/tuning/<variant>.json``: overrides to merge, best vs default value, trial counts."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        fails = [t.system_attrs.get("fail_reason", "") for t in trials if t.state == TrialState.FAIL]
        raise RuntimeError(f"tune {job.variant}: no trial completed ({len(trials)} run)"
                           + (f"; first failure: {fails[0]}" if fails else ""))  # fmt: skip
    best = study.best_trial
    default = next((t for t in trials if t.user_attrs.get("defaults")), None)
    default_value = default.value if default is not None and default.state == TrialState.COMPLETE else None
    maximize = direction(job) == "maximize"
    improvement = None
    if default_value is not None:
        improvement = (best.value - default_value) if maximize else (default_value - best.value)
    params = {k: rounded(v) for k, v in sorted(best.params.items())}
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    base = job.train.trainer_config(job.variant)
    return {
        "variant": job.variant,
        "tuned": True,
        "study": job.study_name,
        "monitor": base.monitor,
        "direction": direction(job),
        "overrides": params_to_overrides(params),
        "best_params": params,
        "best_value": rounded(best.value),
        "best_trial": best.number,
        "default_params": {k: rounded(v) for k, v in sorted((default.params if default else {}).items())},
        "default_value": rounded(default_value) if default_value is not None else None,
        "improvement": rounded(improvement) if improvement is not None else None,
        "n_trials": {"total": len(trials), **counts},
        "budget": {"epochs": trial_trainer_overrides(base, job.tune)["epochs"],
                   "patience": trial_trainer_overrides(base, job.tune)["patience"], "n_trials": job.tune.n_trials},
    }  # fmt: skip


def history_rows(study: Any) -> list[dict[str, Any]]:
    """One row per finished trial, by number: state, value (pruned: last reported), best so far."""
    maximize = study.direction.name == "MAXIMIZE"
    rows, best = [], None
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == TrialState.COMPLETE:
            value = t.value
            best = value if best is None or (value > best if maximize else value < best) else best
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        else:
            value = None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": rounded(value) if value is not None else None,
                     "best_value": rounded(best) if best is not None else None,
                     "epochs": max(t.intermediate_values) if t.intermediate_values else 0})  # fmt: skip
    return rows


def write_outputs(report: Mapping[str, Any], output: Path, plot_csv: Path | None = None,
                  rows: Sequence[Mapping[str, Any]] = ()) -> None:  # fmt: skip
    """Write the tuning report JSON to ``output`` and, when given, the trial history to ``plot_csv``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if plot_csv is not None:
        plot_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(plot_csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["trial", "state", "value", "best_value", "epochs"])
            writer.writeheader()
            writer.writerows(rows)


def study_plots(study: Any, folder: Path) -> dict[str, str]:
    """Optuna's matplotlib plots as PNGs: optimisation history, intermediate values and (with at
    least two complete trials) parameter importances. Returns ``{name: path or why skipped}``."""
    import matplotlib  # heavy; only when plots are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    n_complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    plots = {"optimization_history": ovm.plot_optimization_history, "intermediate_values": ovm.plot_intermediate_values,
             "param_importances": ovm.plot_param_importances}  # fmt: skip
    for name, plot in plots.items():
        if name == "param_importances" and n_complete < 2:
            out[name] = f"skipped: {n_complete} complete trial(s), importances need at least 2"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            out[name] = str(path)
        except Exception as exc:  # noqa: BLE001 - a plot must never fail the study
            out[name] = f"skipped: {' '.join(str(exc).split())[:200]}"
    return out


def finalize(job: TuneJob, study: Any, output: Path, plot_csv: Path | None = None, *,
             wall_s: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the tuning report (+ CSV); log plots, best value/params and the report to the parent run."""
    report = tuning_report(job, study)
    write_outputs(report, output, plot_csv, history_rows(study))
    if job.parent_run_id:
        client = mlflow.MlflowClient()
        metrics = {"best_value": report["best_value"], "default_value": report["default_value"],
                   "improvement": report["improvement"], "best_trial": report["best_trial"],
                   **{f"n_trials/{k}": v for k, v in report["n_trials"].items()},
                   **{f"best_params/{k}": v for k, v in report["best_params"].items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)},
                   **({"wall_s": wall_s} if wall_s is not None else {})}  # fmt: skip
        now = int(time.time() * 1000)
        flat = flatten_metrics({k: v for k, v in metrics.items() if v is not None})
        client.log_batch(job.parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in flat.items()], synchronous=True)
        client.set_tag(job.parent_run_id, "memeops.tune.best_params", json.dumps(report["best_params"], sort_keys=True))
        with tempfile.TemporaryDirectory(prefix="memeops-tune-plots-") as tmp:
            made = study_plots(study, Path(tmp) / "plots")
            for name, where in made.items():
                if where.startswith("skipped"):
                    client.set_tag(job.parent_run_id, f"memeops.tune.plot.{name}", where)
            client.log_artifacts(job.parent_run_id, str(Path(tmp) / "plots"), artifact_path="plots")
            client.log_artifact(job.parent_run_id, str(output), artifact_path="tuning")
            if plot_csv is not None:
                client.log_artifact(job.parent_run_id, str(plot_csv), artifact_path="tuning")
    return report
