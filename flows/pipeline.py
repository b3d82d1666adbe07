"""The whole DVC pipeline as one Prefect flow.

Each DVC stage (matrix items expanded: ``tune@gatedclip``, ...) is one Prefect task, named after the
stage, that runs ``dvc repro --single-item <stage>`` in the project. DVC stays the single source of
truth: it decides whether a stage is up to date, caches the outputs and writes ``dvc.lock``. The
stage list and its order come from DVC itself (the same ``plan_repro`` that ``dvc repro`` uses), so a
sequential flow run leaves the same ``dvc.lock`` as ``dvc repro``, byte for byte.

Transient failures (the DVC repository lock or a path lock held by another DVC process, a stage or
``dvc`` itself killed by a signal) are retried with exponential backoff; a real stage failure fails
at once with the last lines of the stage's stderr. After the run, a Markdown artifact and a table
artifact summarise every stage (ran / skipped, seconds, attempts) and the headline metrics from
``dvc metrics show --json``.

    python -m flows.pipeline                              # the whole default pipeline
    python -m flows.pipeline --stages validate tune@gatedclip   # these targets and their upstream
    python -m flows.pipeline --parallel 2                 # independent stages two at a time (docs/scaleout.md)
    python -m flows.pipeline --serve --cron "0 3 * * *"   # a served deployment on a schedule

Concurrency findings (details in docs/scaleout.md): DVC 3 releases the repository lock while a
stage's command runs and guards the stage's deps (read) and outs (write) with per-path locks, so two
``dvc repro --single-item`` of *independent* stages do run at the same time; a stage whose dep is
being written fails with "'<path>' is busy, it is being blocked by: ...", and the short locked phases
before and after each command make a second process fail with "Unable to acquire lock" after ~3 s
unless ``dvc --wait-for-lock`` is used. The default here is sequential, in DVC's order.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Offline switches and in-project tool state (PREFECT_HOME, ...) before prefect is imported.
from memeops import runtime

# isort: split
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

FLOW_NAME = "memeops-pipeline"
ARTIFACT_KEY = "memeops-pipeline"  # artifact keys: lowercase letters, digits and dashes
TABLE_KEY = "memeops-pipeline-stages"
DEFAULT_RETRIES = 3
DEFAULT_RETRY_DELAY_S = 10.0  # first retry after ~10 s, then 20 s, 40 s (exponential backoff)
TAIL_LINES = 25

#: DVC output that marks a failure worth retrying: someone else holds a lock, or a process was killed.
TRANSIENT_PATTERNS = (
    re.compile(r"Unable to acquire lock"),  # the repository lock (.dvc/tmp/lock) is held
    re.compile(r"is busy, it is being blocked by"),  # a path lock (.dvc/tmp/rwlock) is held
    # the stage's command killed by SIGKILL / SIGTERM / SIGHUP (negative: exec'd; 128+n: through a shell)
    re.compile(r"exited with (-9|-15|-1|137|143|129)\b"),
)
#: Headline metrics per metrics file (dotted paths into the JSON); files matching none of them show
#: their first top-level scalars instead.
HEADLINE_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"^test\.mean/macro_f1$",
        r"^test\.hateful/auroc$",
        r"^test\.all/invalid_rate$",
        r"^test\.(map50|key_map50)$",
        r"^val_[it]2[it]_r1$",
        r"\.overall\.cer_raw$",
        r"^total\.(kept|quarantined)$",
        r"^success$",
        r"^(images|computed|cached)$",
    )
)
MAX_HEADLINES = 4


class TransientStageError(RuntimeError):
    """A DVC failure that a later attempt can get past (a held lock, a killed process)."""


class StageFailed(RuntimeError):
    """The stage itself failed (its command or DVC's checks); retrying would not help."""


@dataclass(frozen=True)
class Plan:
    """The stages to run, in DVC's own order, and each stage's upstream stages within the plan."""

    order: tuple[str, ...]
    upstream: dict[str, tuple[str, ...]]


def plan_pipeline(project_dir: Path | str, targets: list[str] | None = None) -> Plan:
    """Ask DVC for the stage graph and the order ``dvc repro [targets]`` would use.

    Matrix / foreach stages come back expanded (``tune@gatedclip``); frozen stages are cut from
    their dependencies as DVC does. ``targets`` are stage names (or ``dvc.yaml`` paths); their
    upstream stages are included, like ``dvc repro <targets>``.
    """
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    root = Path(project_dir).resolve()
    dvcfile = root / "dvc.yaml"
    # "<path to dvc.yaml>:<stage>" so the targets do not depend on the current directory
    wanted = [t if (":" in t or t.endswith(".yaml")) else f"{dvcfile}:{t}" for t in (targets or [])]
    with Repo(str(root)) as repo:
        stages = collect_stages(repo, wanted or [str(dvcfile)])
        graph = get_active_graph(repo.index.graph)
        steps = plan_repro(graph, stages)
        names = tuple(_address(stage, root) for stage in steps)
        in_plan = set(names)
        upstream = {
            _address(stage, root): tuple(
                _address(d, root) for d in graph.successors(stage) if _address(d, root) in in_plan
            )
            for stage in steps
        }
    return Plan(order=names, upstream=upstream)


def _address(stage: Any, root: Path) -> str:
    """The stage's name as ``dvc repro`` takes it from the project root (DVC's own ``addressing``
    is relative to the current directory): ``tune@gatedclip``, or ``sub/dvc.yaml:name``."""
    dvcfile = Path(stage.dvcfile.path).resolve()
    name = getattr(stage, "name", None)
    if not name:  # a .dvc file stage
        return os.path.relpath(dvcfile, root)
    if dvcfile == root / "dvc.yaml":
        return name
    return f"{os.path.relpath(dvcfile, root)}:{name}"


def _stage_env() -> dict[str, str]:
    """The flow's environment, with this interpreter's bin folder first on PATH (as the Makefile
    does), so the stages' ``python -m stages.<name>`` run in the same virtual environment."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _pump(stream: Any, tail: deque[str], flags: set[str], log: Any) -> None:
    for raw in iter(stream.readline, ""):
        line = raw.rstrip("\n")
        tail.append(line)
        for pattern in TRANSIENT_PATTERNS:
            if pattern.search(line):
                flags.add(pattern.pattern)
        for marker in ("Running stage", "is cached - skipping run", "didn't change, skipping"):
            if marker in line:
                flags.add(marker)
        log(line)
    stream.close()


def _outcome(flags: set[str]) -> str:
    if "Running stage" in flags:
        return "ran"
    if "is cached - skipping run" in flags:
        return "restored from run cache"
    if "didn't change, skipping" in flags:
        return "skipped"
    return "checked"


def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: only transient DVC failures go to the retry policy."""
    try:
        state.result()
    except TransientStageError:
        return True
    except BaseException:  # noqa: BLE001 - anything else is a real failure: fail fast
        return False
    return False


@task(
    cache_policy=NO_CACHE,  # DVC decides what is up to date, not Prefect
    persist_result=False,
    retries=DEFAULT_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=DEFAULT_RETRY_DELAY_S),
    retry_jitter_factor=0.2,
    retry_condition_fn=_retry_if_transient,
)
def run_dvc_stage(stage: str, project_dir: str, wait_for_lock: bool = False) -> dict[str, Any]:
    """``dvc repro --single-item <stage>`` in ``project_dir``; its output goes to the task's log."""
    from prefect.runtime import task_run

    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc"]
    if wait_for_lock:
        cmd.append("--wait-for-lock")
    cmd += ["repro", "--single-item", stage]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=project_dir, env=_stage_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, bufsize=1, errors="replace",
    )  # fmt: skip
    out_tail: deque[str] = deque(maxlen=TAIL_LINES)
    err_tail: deque[str] = deque(maxlen=TAIL_LINES)
    flags: set[str] = set()
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, out_tail, flags, logger.info), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err_tail, flags, logger.warning), daemon=True),
    ]
    for reader in readers:
        reader.start()
    returncode = proc.wait()
    for reader in readers:
        reader.join()
    seconds = round(time.monotonic() - started, 2)
    attempt = int(task_run.run_count or 1)
    if returncode != 0:
        tail = "\n".join(err_tail or out_tail)
        transient = returncode < 0 or any(p.pattern in flags for p in TRANSIENT_PATTERNS)
        if transient:
            raise TransientStageError(
                f"stage {stage!r}: transient DVC failure (exit {returncode}, attempt {attempt}):\n{tail}"
            )
        raise StageFailed(f"stage {stage!r} failed (dvc exit {returncode}):\n{tail}")
    return {"stage": stage, "status": _outcome(flags), "seconds": seconds, "attempts": attempt}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, bool))


def headline_metrics(project_dir: Path | str) -> list[dict[str, Any]]:
    """``dvc metrics show --json`` reduced to a few headline numbers per metrics file."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "show", "--json"],
        cwd=project_dir, env=_stage_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    shown = json.loads(proc.stdout)
    workspace = shown.get("workspace", next(iter(shown.values()), {}))  # "" without git
    rows: list[dict[str, Any]] = []
    for path, entry in sorted((workspace.get("data") or {}).items()):
        flat = {k: v for k, v in _flatten(entry.get("data") or {}).items() if _scalar(v)}
        picked = [k for k in flat if any(p.search(k) for p in HEADLINE_PATTERNS)]
        if not picked:
            picked = [k for k in flat if "." not in k]
        for key in picked[:MAX_HEADLINES]:
            value = flat[key]
            rows.append(
                {"file": path, "metric": key, "value": round(value, 4) if isinstance(value, float) else value}
            )
    return rows


def _summary_markdown(plan: Plan, results: dict[str, dict[str, Any]], metrics: list[dict[str, Any]],
                      error: BaseException | None) -> str:  # fmt: skip
    lines = ["# memeops pipeline", ""]
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
    lines.append(
        f"**{'failed' if error else 'completed'}**: {len(results)}/{len(plan.order)} stages finished ({detail})."
    )
    if error is not None:
        lines += ["", "```", str(error)[-3000:], "```"]
    lines += ["", "| # | stage | status | seconds | attempts |", "|---|---|---|---|---|"]
    for i, name in enumerate(plan.order, 1):
        r = results.get(name)
        status, seconds, attempts = (r["status"], r["seconds"], r["attempts"]) if r else ("not run", "", "")
        lines.append(f"| {i} | `{name}` | {status} | {seconds} | {attempts} |")
    if metrics:
        lines += [
            "",
            "## Headline metrics (`dvc metrics show`)",
            "",
            "| file | metric | value |",
            "|---|---|---|",
        ]
        lines += [f"| `{m['file']}` | `{m['metric']}` | {m['value']} |" for m in metrics]
    return "\n".join(lines) + "\n"


def _publish(root: Path, plan: Plan, results: dict[str, dict[str, Any]], error: BaseException | None) -> str:
    metrics = headline_metrics(root)
    markdown = _summary_markdown(plan, results, metrics, error)
    create_markdown_artifact(
        key=ARTIFACT_KEY, markdown=markdown, description="memeops pipeline: stages and metrics"
    )
    table = [
        {"stage": name, **{k: v for k, v in results.get(name, {"status": "not run"}).items() if k != "stage"}}
        for name in plan.order
    ]
    create_table_artifact(key=TABLE_KEY, table=table, description="memeops pipeline: one row per DVC stage")
    return markdown


def _run_parallel(plan: Plan, root: str, max_workers: int, stage_task: Any) -> dict[str, dict[str, Any]]:
    """Independent stages at most ``max_workers`` at a time; a stage starts once its upstream
    stages have finished. ``dvc --wait-for-lock`` waits out the sibling processes' short locked
    phases instead of failing after 3 s."""
    from prefect.task_runners import ThreadPoolTaskRunner

    results: dict[str, dict[str, Any]] = {}
    first_error: BaseException | None = None
    with ThreadPoolTaskRunner(max_workers=max_workers) as runner:
        futures: dict[str, Any] = {}
        for name in plan.order:
            futures[name] = runner.submit(
                stage_task(name),
                parameters={"stage": name, "project_dir": root, "wait_for_lock": True},
                wait_for=[futures[u] for u in plan.upstream[name]],
            )
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except BaseException as exc:  # noqa: BLE001 - report the first failure after all settle
                first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return results


@flow(name=FLOW_NAME, log_prints=True)
def pipeline(
    stages: list[str] | None = None,
    project_dir: str | None = None,
    parallel: int = 1,
    retries: int = DEFAULT_RETRIES,
    retry_delay_seconds: float = DEFAULT_RETRY_DELAY_S,
) -> list[dict[str, Any]]:
    """Run the DVC pipeline stage by stage (``stages``: targets, with their upstream stages; default:
    every stage). ``parallel`` > 1 runs independent stages concurrently (see docs/scaleout.md)."""
    logger = get_run_logger()
    root = Path(project_dir or runtime.find_project_root()).resolve()
    plan = plan_pipeline(root, stages)
    logger.info("DVC plan for %s (%d stages): %s", root, len(plan.order), ", ".join(plan.order))

    def stage_task(name: str) -> Any:
        return run_dvc_stage.with_options(
            name=name,
            task_run_name=name,
            retries=retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_seconds) if retries else 0,
        )

    results: dict[str, dict[str, Any]] = {}
    error: BaseException | None = None
    try:
        if parallel <= 1:
            for name in plan.order:
                results[name] = stage_task(name)(name, str(root))
        else:
            results = _run_parallel(plan, str(root), parallel, stage_task)
    except BaseException as exc:
        error = exc
        raise
    finally:
        markdown = _publish(root, plan, results, error)
        logger.info("summary:\n%s", markdown)
    return [results[name] for name in plan.order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stages", nargs="+", metavar="STAGE", help="targets (with their upstream); default: all"
    )
    parser.add_argument(
        "--project-dir", default=None, help="the DVC project (default: the one around the cwd)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="stages at a time (default 1: sequential)")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries of transient failures")
    parser.add_argument("--retry-delay", type=float, default=DEFAULT_RETRY_DELAY_S,
                        help="first retry delay in seconds; doubles each retry")  # fmt: skip
    parser.add_argument("--serve", action="store_true", help="serve as a deployment (needs a Prefect server)")
    parser.add_argument("--cron", default=None, help='schedule for --serve, e.g. "0 3 * * *"')
    parser.add_argument("--name", default="memeops-pipeline-scheduled", help="deployment name for --serve")
    args = parser.parse_args(argv)

    root = Path(args.project_dir).resolve() if args.project_dir else runtime.find_project_root()
    runtime.configure(root)
    parameters: dict[str, Any] = {
        "stages": args.stages,
        "project_dir": str(root),
        "parallel": args.parallel,
        "retries": args.retries,
        "retry_delay_seconds": args.retry_delay,
    }
    if args.serve:
        pipeline.serve(name=args.name, cron=args.cron, parameters=parameters)
        return 0
    try:
        pipeline(**parameters)
    except (StageFailed, TransientStageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
