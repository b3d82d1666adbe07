"""Benchmark: the whole default DVC pipeline from scratch, stage by stage, in a temp copy of the project.

``python -m benchmarks.pipeline [--workdir DIR] [--params-override JSON] [--stages T ...] [--keep]``
(part of ``make bench``, through ``benchmarks.run_all``; docs/bench.md).

1. Copies the project's code and configuration (``dvc.yaml``, ``params.yaml``, ``stages/``, ``src/``;
   no data, models, reports, MLflow store or DVC cache) into ``<workdir>/project`` and runs
   ``dvc init --no-scm`` there. ``--params-override`` deep-merges a JSON object into the copy's
   ``params.yaml`` (the tests use the end-to-end test's tiny sizes).
2. Asks DVC for the plan (:func:`flows.pipeline.plan_pipeline`, the order ``dvc repro`` uses, matrix
   stages expanded) and runs one ``dvc repro`` in the copy, as ``make repro`` does, with the
   project's runtime env pointed at the copy (MLflow store, DVC / Prefect / HF state: all inside the
   copy), recording each stage's wall seconds (from DVC's "Running stage" line to the next) and the
   total wall time. ``--per-stage`` runs ``dvc repro --single-item <stage>`` per stage instead (a log
   per stage, plus DVC's start-up each time: about 2 s a stage here).
3. Runs ``dvc repro`` once more and times it: the no-op run, which must run no stage (checked; a
   stage that re-ran makes the command fail after the results are written).
4. Reads the copy's outputs (:mod:`benchmarks.collect`): feature extraction images/s (the features
   stage's summary line in the logs), training samples/s per variant and the VLM's tokens/s (the
   copy's MLflow runs: the DVC outs hold no timings), and the MLflow registry (models, versions,
   aliases).

Merges the sections ``machine``, ``pipeline``, ``features``, ``training`` and ``registry`` into
``reports/bench.json`` (other keys kept) and prints the stage table. The budget (20 minutes for the
whole default pipeline) is judged only for a run of every stage at the default params; a run with
``--stages`` or ``--params-override`` records ``within_budget: null``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from benchmarks.collect import collect_features, collect_registry, collect_training, read_json, trained_variants
from memeops import runtime

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # flows.pipeline, whatever the current directory
    sys.path.insert(0, str(REPO_ROOT))
BENCH_FILE = REPO_ROOT / "reports" / "bench.json"
BUDGET_SECONDS = 1200  # the whole default pipeline, ablations included: 20 minutes on this machine
#: What a fresh project needs to run the pipeline (the e2e test's project_copy: no data, models,
#: reports, mlflow.db or .dvc cache).
COPY_ITEMS = ("dvc.yaml", "params.yaml", "stages", "src")
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
TAIL_LINES = 40
#: The line every stage prints last (stages.peak_memory_line).
PEAK_MEMORY = re.compile(r"stage \S+: peak memory (\d+) MiB \(stage process\), (\d+) MiB \(largest worker\)")


class BenchError(RuntimeError):
    """A stage failed, or the no-op run was not a no-op."""


# --------------------------------------------------------------------------- the project copy


def deep_update(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` merged into ``base`` (nested dicts merged, everything else replaced); returns base."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = json.loads(json.dumps(value)) if isinstance(value, Mapping) else value
    return base


def parse_override(text: str | None) -> dict[str, Any]:
    """``--params-override``: a JSON object, or ``@path`` to a JSON / YAML file holding one."""
    if not text:
        return {}
    raw = Path(text[1:]).read_text(encoding="utf-8") if text.startswith("@") else text
    value = yaml.safe_load(raw) if text.startswith("@") else json.loads(raw)
    if not isinstance(value, dict):
        raise TypeError("--params-override must be a JSON object")
    return value


def make_project_copy(
    dest: Path, overrides: Mapping[str, Any] | None = None, source: Path = REPO_ROOT
) -> Path:
    """Copy the project's code and config into ``dest`` (created), apply ``overrides`` to params.yaml."""
    dest.mkdir(parents=True, exist_ok=False)
    for name in COPY_ITEMS:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=COPY_IGNORE)
        else:
            shutil.copy2(src, dest / name)
    if overrides:
        params = yaml.safe_load((dest / "params.yaml").read_text(encoding="utf-8")) or {}
        (dest / "params.yaml").write_text(yaml.safe_dump(deep_update(params, overrides), sort_keys=False))
    return dest


def project_env(project: Path) -> dict[str, str]:
    """The environment the copy's stages run in: this environment with the offline switches, every
    tool's state and MLflow's store pointed inside ``project`` (as ``memeops env`` would there), and
    this interpreter's bin folder first on PATH (flows.pipeline's stage env)."""
    from flows.pipeline import _stage_env

    env = _stage_env()
    env.update(runtime.OFFLINE_SWITCHES)
    env.update(runtime.state_dirs(project))
    env["MLFLOW_TRACKING_URI"] = runtime.default_tracking_uri(project)
    env.pop("MLFLOW_REGISTRY_URI", None)  # the registry follows the tracking store (the copy's)
    return env


@contextmanager
def patched_environ(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` = ``env`` inside the block (DVC's in-process planner reads its state dirs)."""
    before = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


# --------------------------------------------------------------------------- running DVC


def _dvc(project: Path, env: Mapping[str, str], *args: str, log_path: Path | None = None,
         on_stage: Any = None) -> dict[str, Any]:  # fmt: skip
    """``python -m dvc <args>`` in ``project``; output to ``log_path`` and a tail. Returns the exit
    code, wall seconds, the stages it ran (``starts``: each with the perf_counter time DVC announced
    it) and flows.pipeline's outcome of the run. ``on_stage(name, t)`` is called at each announcement."""
    from flows.pipeline import _outcome, _pump

    cmd = [sys.executable, "-m", "dvc", *args]
    log = open(log_path, "w", encoding="utf-8") if log_path else None  # noqa: SIM115
    lock = threading.Lock()

    def write(line: str) -> None:
        if log is not None:
            with lock:
                log.write(line + "\n")

    out_tail: deque[str] = deque(maxlen=TAIL_LINES)
    err_tail: deque[str] = deque(maxlen=TAIL_LINES)
    flags: set[str] = set()
    ran: list[str] = []
    starts: list[tuple[str, float]] = []

    def out_log(line: str) -> None:
        match = re.match(r"Running stage '([^']+)'", line)
        if match:
            ran.append(match.group(1))
            starts.append((match.group(1), time.perf_counter()))
            if on_stage is not None:
                on_stage(*starts[-1])
        write(line)

    started = time.perf_counter()
    try:
        proc = subprocess.Popen(
            cmd, cwd=project, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, errors="replace",
        )  # fmt: skip
        readers = [
            threading.Thread(target=_pump, args=(proc.stdout, out_tail, flags, out_log), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, err_tail, flags, write), daemon=True),
        ]
        for reader in readers:
            reader.start()
        returncode = proc.wait()
        for reader in readers:
            reader.join()
    finally:
        if log is not None:
            log.close()
    return {
        "returncode": returncode,
        "seconds": time.perf_counter() - started,
        "ended": time.perf_counter(),
        "status": _outcome(flags),
        "ran": ran,
        "starts": starts,
        "tail": "\n".join(err_tail or out_tail),
    }


def peak_memory(log_text: str) -> dict[str, dict[str, int]]:
    """Each DVC stage's peak memory, from the log of a repro: the :data:`PEAK_MEMORY` line that
    follows its "Running stage" line (a matrix stage such as ``tune@x`` prints as ``tune``).
    ``{stage: {"stage_mib", "worker_mib"}}``; a stage without the line is absent."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in log_text.splitlines():
        started = re.match(r"Running stage '([^']+)'", line)
        if started:
            current = started.group(1)
            continue
        found = PEAK_MEMORY.search(line)
        if found and current is not None:
            out[current] = {"stage_mib": int(found.group(1)), "worker_mib": int(found.group(2))}
    return out


def _log_name(stage: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._-]+", "_", stage) + ".log"


def run_stages(project: Path, env: Mapping[str, str], order: tuple[str, ...], logs: Path,
               progress: bool = True) -> tuple[dict[str, dict[str, Any]], float]:  # fmt: skip
    """Every stage of ``order`` with ``dvc repro --single-item``; (per-stage results, total seconds)."""
    results: dict[str, dict[str, Any]] = {}
    width = max((len(s) for s in order), default=0)
    started = time.perf_counter()
    for i, stage in enumerate(order, 1):
        result = _dvc(project, env, "repro", "--single-item", stage, log_path=logs / _log_name(stage))
        results[stage] = result
        if progress:
            print(f"[{i:>2}/{len(order)}] {stage:<{width}}  {result['seconds']:8.1f} s  {result['status']}",
                  flush=True)  # fmt: skip
        if result["returncode"] != 0:
            raise BenchError(
                f"stage {stage!r} failed (dvc exit {result['returncode']}; log {logs / _log_name(stage)}):\n"
                f"{result['tail']}"
            )
    return results, time.perf_counter() - started


def run_pipeline_once(project: Path, env: Mapping[str, str], order: tuple[str, ...], logs: Path,
                      targets: list[str] | None = None, progress: bool = True,
                      ) -> tuple[dict[str, dict[str, Any]], float]:  # fmt: skip
    """One ``dvc repro`` (what ``make repro`` runs); a stage's seconds run from DVC's "Running stage"
    line to the next one (or the end), so DVC's own bookkeeping after a stage (hashing and caching
    its outputs, writing dvc.lock) counts towards it. (per-stage results, total seconds)."""
    width = max((len(s) for s in order), default=0)
    announced: list[tuple[str, float]] = []

    def show(name: str, t: float) -> None:
        if progress and announced:
            prev, t0 = announced[-1]
            print(f"[{len(announced):>2}/{len(order)}] {prev:<{width}}  {t - t0:8.1f} s  ran", flush=True)
        announced.append((name, t))

    result = _dvc(project, env, "repro", *(targets or []), log_path=logs / "repro.log", on_stage=show)
    if result["returncode"] != 0:
        failed = announced[-1][0] if announced else "?"
        raise BenchError(f"dvc repro failed in stage {failed!r} (exit {result['returncode']}; log "
                         f"{logs / 'repro.log'}):\n{result['tail']}")  # fmt: skip
    starts = result["starts"]
    ends = [t for _, t in starts[1:]] + [result["ended"]]
    results = {name: {"seconds": end - t, "status": "ran", "returncode": 0} for (name, t), end in zip(starts, ends)}
    if progress and starts:
        name, t = starts[-1]
        print(f"[{len(starts):>2}/{len(order)}] {name:<{width}}  {result['ended'] - t:8.1f} s  ran", flush=True)
    missing = [s for s in order if s not in results]
    if missing:
        raise BenchError(f"dvc repro did not run {missing} (a from-scratch copy must run every stage)")
    return {s: results[s] for s in order}, result["seconds"]


# --------------------------------------------------------------------------- what the run produced


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # read only: no index refresh
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    return None


def cpu_model() -> tuple[str | None, bool]:
    """The CPU's model name and whether it has AMX bf16 tiles (Linux ``/proc/cpuinfo``; ``(None,
    False)`` elsewhere): stage times move with both (bf16 matmuls, kernels chosen per instruction set)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, False
    names = re.findall(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return (names[0].strip() if names else None), " amx_bf16" in text


def machine_info(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """CPU model and count, torch threads, GPU (present, and whether training would use it), versions, git
    commit, date and the load average (other work on the machine skews every figure)."""
    import torch

    params = params or {}
    cuda = torch.cuda.is_available()
    trainer_device = str(((params.get("train") or {}).get("trainer") or {}).get("device", "auto"))
    detector_device = str((params.get("detector") or {}).get("device", "cpu"))
    status = _git("status", "--porcelain", "--untracked-files=no")
    cpu_name, cpu_amx_bf16 = cpu_model()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_name,
        "cpu_amx_bf16": cpu_amx_bf16,
        "cpus": os.cpu_count(),
        "cpus_usable": affinity,
        "memory_gib": _mem_total_gib(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": {
            "available": cuda,
            "name": torch.cuda.get_device_name(0) if cuda else None,
            "used_by_training": cuda and trainer_device in ("auto", "cuda"),
            "used_by_detector": cuda and detector_device in ("auto", "cuda"),
        },
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------- bench.json


def merge_sections(sections: Mapping[str, Any], path: Path = BENCH_FILE) -> dict[str, Any]:
    """Set each top-level section in the bench JSON, keeping every other key (read-merge-write)."""
    data = read_json(path) or {}
    data.update(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not sorted: pipeline.stages stays in DVC's order (pipeline.order has it too, should another
    # script rewrite the file sorted)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


# --------------------------------------------------------------------------- the benchmark


def run(
    workdir: Path | None = None, *, overrides: Mapping[str, Any] | None = None, targets: list[str] | None = None,
    keep: bool = False, bench_file: Path | None = BENCH_FILE, progress: bool = True, per_stage: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The benchmark (module docstring); returns the sections (and ``project``, the copy's path,
    when it was kept). ``bench_file`` None: nothing written."""
    from flows.pipeline import plan_pipeline

    made_tmp = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="memeops-bench-")) if workdir is None else Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    project, logs = workdir / "project", workdir / "logs"
    if project.exists():
        raise BenchError(f"{project} exists: give an empty or new --workdir")
    logs.mkdir(exist_ok=True)
    failed = True
    try:
        setup_start = time.perf_counter()
        make_project_copy(project, overrides)
        env = project_env(project)
        init = _dvc(project, env, "init", "--no-scm", "-q")
        if init["returncode"] != 0:
            raise BenchError(f"dvc init failed:\n{init['tail']}")
        with patched_environ(env):
            plan = plan_pipeline(project, targets)
        setup_seconds = time.perf_counter() - setup_start
        params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8")) or {}
        machine = machine_info(params)
        if progress:
            print(f"pipeline benchmark in {project}: {len(plan.order)} stages", flush=True)

        if per_stage:
            results, total = run_stages(project, env, plan.order, logs, progress)
        else:
            results, total = run_pipeline_once(project, env, plan.order, logs, targets, progress)
        noop = _dvc(project, env, "repro", *(targets or []), log_path=logs / "noop.log")
        if progress:
            print(f"no-op dvc repro: {noop['seconds']:.1f} s, ran {noop['ran'] or 'nothing'}", flush=True)
        if noop["returncode"] != 0:
            raise BenchError(f"the no-op dvc repro failed:\n{noop['tail']}")

        stage_seconds = {name: r["seconds"] for name, r in results.items()}
        memory: dict[str, dict[str, int]] = {}
        for log in sorted(logs.glob("*.log")):
            memory.update(peak_memory(log.read_text(encoding="utf-8", errors="replace")))
        complete = not targets and not overrides
        pipeline = {
            "stages": {name: round(s, 2) for name, s in stage_seconds.items()},
            "stage_status": {name: r["status"] for name, r in results.items()},
            "peak_memory_mib": {name: memory[name] for name in stage_seconds if name in memory},
            "order": list(plan.order),
            "total_seconds": round(total, 2),
            "sum_stage_seconds": round(sum(stage_seconds.values()), 2),
            "setup_seconds": round(setup_seconds, 2),
            "noop_seconds": round(noop["seconds"], 2),
            "noop_ran": noop["ran"],
            "budget_seconds": BUDGET_SECONDS,
            "within_budget": (total <= BUDGET_SECONDS) if complete else None,
            "targets": targets or None,
            "params_override": dict(overrides) if overrides else None,
            "runner": ("dvc repro --single-item <stage>, one subprocess per stage, in DVC's order" if per_stage
                       else "one dvc repro (as make repro); a stage = from its 'Running stage' line to the next"),
        }
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        sections = {
            "machine": machine,
            "pipeline": pipeline,
            "features": collect_features(project, stage_seconds.get("features"), logs),
            "training": collect_training(project, trained_variants(plan.order, project), stage_seconds),
            "registry": collect_registry(project),
        }
        if bench_file is not None:
            merge_sections(sections, Path(bench_file))
        if progress:
            print_summary(sections)
        if noop["ran"]:
            raise BenchError(f"the second dvc repro was not a no-op: it ran {noop['ran']}")
        failed = False
        if keep:
            sections["project"] = str(project)
        return sections
    finally:
        if failed:
            print(f"benchmark failed; the copy and stage logs are kept in {workdir}", file=sys.stderr)
        elif not keep:
            shutil.rmtree(project, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)
            if made_tmp:
                shutil.rmtree(workdir, ignore_errors=True)


def print_summary(sections: Mapping[str, Any]) -> None:
    from benchmarks import print_table

    pipe = sections["pipeline"]
    rows = [(name, f"{s:.1f} s", pipe["stage_status"][name]) for name, s in pipe["stages"].items()]
    rows.append(("TOTAL", f"{pipe['total_seconds']:.1f} s", f"budget {pipe['budget_seconds']} s: "
                 + {True: "within", False: "OVER", None: "not judged"}[pipe["within_budget"]]))  # fmt: skip
    rows.append(("no-op dvc repro", f"{pipe['noop_seconds']:.1f} s", f"ran {len(pipe['noop_ran'])} stages"))
    print_table("Pipeline stages (wall seconds)", rows)
    feats = sections.get("features") or {}
    if feats:
        print(
            f"\nfeature extraction: {feats.get('images_per_s')} images/s ({feats.get('computed')} computed)"
        )
    training = sections.get("training") or {}
    if training:
        print_table("Training throughput", [
            (v, f"{e.get('train_samples_per_s')} samples/s",
             f"{e['train_tokens_per_s']} tokens/s" if e.get("train_tokens_per_s") is not None else "")
            for v, e in training.items()
        ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the copy (<workdir>/project) and stage logs go (default: a new temp dir)",
    )
    parser.add_argument(
        "--params-override",
        default=None,
        metavar="JSON",
        help="JSON object deep-merged into the copy's params.yaml (or @file.json / @file.yaml)",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        metavar="STAGE",
        default=None,
        help="only these targets and their upstream stages (default: the whole pipeline)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the copy and the logs afterwards")
    parser.add_argument("--per-stage", action="store_true",
                        help="one `dvc repro --single-item` per stage (a log per stage; adds DVC's start-up per stage)")
    parser.add_argument(
        "--bench-file",
        type=Path,
        default=BENCH_FILE,
        help=f"the JSON to merge into (default {BENCH_FILE.relative_to(REPO_ROOT)})",
    )
    args = parser.parse_args(argv)  # fmt: skip
    try:
        sections = run(args.workdir, overrides=parse_override(args.params_override), targets=args.stages,
                       per_stage=args.per_stage,
                       keep=args.keep, bench_file=args.bench_file)  # fmt: skip
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.keep:
        print(f"\nkept: {sections['project']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
