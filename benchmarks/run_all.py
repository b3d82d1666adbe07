"""``make bench``: every benchmark on one fresh run of the pipeline -> reports/bench.json + reports/bench.md.

``python -m benchmarks.run_all [--workdir DIR] [--params-override JSON] [--keep] [--bench-file PATH]``

1. :mod:`benchmarks.pipeline`: the whole default pipeline from scratch in a temp copy of the project,
   stage by stage (wall seconds per stage, total, the no-op ``dvc repro``), feature and training
   throughput, the registry; the copy is kept for the next steps.
2. :mod:`benchmarks.train_epoch` in the copy: a GatedCLIP epoch on cached features vs. recomputing
   the frozen encoders (``epoch_ratio``), and :mod:`benchmarks.encoder_probe` (linear probes).
3. :mod:`benchmarks.serve_latency` against the copy's registry (``--model``, default
   ``models:/memeops-gatedclip@challenger``): p50 / p95 latency and throughput, sequential and with
   concurrent clients.

Everything is merged into ``reports/bench.json`` (sections ``machine``, ``pipeline``, ``features``,
``training``, ``registry``, ``epoch_ratio``, ``serving``, plus ``train_epoch`` / ``encoder_probe``
as those scripts write them; other keys kept) and summarised in ``reports/bench.md``. The copy is
removed afterwards unless ``--keep``. ``--project DIR`` skips step 1 and measures steps 2-3 on an
existing project instead (e.g. ``--project .`` after ``make repro``). A failed step 2 or 3 is
recorded as ``{"error": ...}`` and makes the exit status 1; the other figures are still written.
See docs/bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks import pipeline as bench_pipeline
from benchmarks.pipeline import BENCH_FILE, REPO_ROOT, BenchError, merge_sections, parse_override, project_env

DEFAULT_MODEL = "models:/memeops-gatedclip@challenger"


def _module_env(project: Path) -> dict[str, str]:
    """The copy's runtime env, with the repository root importable (``benchmarks`` lives there)."""
    env = project_env(project)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _run_module(project: Path, module: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=project, env=_module_env(project),
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"python -m {module} failed (exit {proc.returncode}):\n{tail}")
    return proc


def _project_bench(project: Path, key: str) -> dict[str, Any]:
    """What a benchmark script merged into the project's own reports/bench.json under ``key``."""
    path = project / "reports" / "bench.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if key not in data:
        raise RuntimeError(f"{path} has no {key!r} entry")
    return data[key]


def epoch_benchmark(project: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(epoch_ratio section, the full train_epoch entry) from ``benchmarks.train_epoch`` in ``project``."""
    _run_module(project, "benchmarks.train_epoch")
    entry = _project_bench(project, "train_epoch")
    section = {
        "recomputed_over_cached": entry["recomputed_over_cached"],
        "cached_seconds": entry["cached"]["seconds"],
        "recomputed_seconds": entry["recomputed"]["seconds"],
        "cached_samples_per_s": entry["cached"]["samples_per_s"],
        "recomputed_samples_per_s": entry["recomputed"]["samples_per_s"],
        "samples": entry["samples"],
        "variant": entry["variant"],
        "threads": entry["threads"],
    }
    return section, entry


def probe_benchmark(project: Path) -> dict[str, Any]:
    """The ``encoder_probe`` entry from ``benchmarks.encoder_probe`` in ``project``."""
    _run_module(project, "benchmarks.encoder_probe")
    return _project_bench(project, "encoder_probe")


def serving_benchmark(project: Path, model: str, requests: int, clients: int, log: Path) -> dict[str, Any]:
    """``benchmarks.serve_latency --model`` in ``project`` (its registry, a SynthMeme image)."""
    proc = _run_module(
        project, "benchmarks.serve_latency", "--model", model, "-n", str(requests), "-k", str(clients),
        "--image", str(project / "data" / "synthmeme" / "images"), "--server-log", str(log), timeout=1200,
    )  # fmt: skip
    start = proc.stdout.find("{\n")
    result = json.loads(proc.stdout[max(start, 0) :])
    return {
        "model_uri": result["model_uri"],
        "server_start_s": result["server_start_s"],
        "image": Path(result["image"]).name,
        "request_bytes": result["request_bytes"],
        "rows_per_request": result["rows_per_request"],
        "warmup_requests": result["warmup_requests"],
        "sequential": result["sequential"],
        "concurrent": result["concurrent"],
    }


# --------------------------------------------------------------------------- bench.md


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        value = f"{value:,.{digits}f}"
    return f"{value}{unit}"


def render_markdown(bench: Mapping[str, Any]) -> str:
    """The short table of reports/bench.md from the bench JSON (missing sections left out)."""
    lines = ["# memeops benchmarks (`make bench`)", ""]
    m = bench.get("machine") or {}
    if m:
        gpu = (m.get("gpu") or {}).get("name") or "no GPU"
        commit = f"`{(m.get('git_commit') or '?')[:10]}`{' (dirty)' if m.get('git_dirty') else ''}"
        lines += [
            (f"Measured {m.get('date')} on {m.get('cpus')} CPUs ({m.get('cpu_model') or 'CPU model unknown'}"
             f"{', AMX bf16' if m.get('cpu_amx_bf16') else ''}; {m.get('torch_threads')} torch threads), "
             f"{gpu}; Python {m.get('python')}, torch {m.get('torch')}; commit {commit}; "
             f"load average {m.get('loadavg_start')} -> {m.get('loadavg_end')}."),
            "",
        ]  # fmt: skip
    p = bench.get("pipeline") or {}
    if p:
        verdict = {
            True: "**within budget**",
            False: "**OVER budget**",
            None: "budget not judged (partial or overridden run)",
        }
        lines += [
            "## Pipeline (fresh copy)", "", f"Runner: {p.get('runner') or 'unknown'}.", "",
            (f"Total **{_fmt(p.get('total_seconds'), ' s')}** for {len(p.get('stages') or {})} stages, "
             f"budget {p.get('budget_seconds')} s: {verdict[p.get('within_budget')]}. No-op `dvc repro`: "
             f"{_fmt(p.get('noop_seconds'), ' s', 2)} (ran {len(p.get('noop_ran') or [])} stages)."),
            "", ("Peak memory: the stage's own process, and the largest of its worker processes (seed or arm "
                 "workers; two side by side held up to twice that)."),
            "", "| stage | seconds | share | peak MiB (stage) | peak MiB (worker) |", "|---|---:|---:|---:|---:|",
        ]  # fmt: skip
        total = p.get("total_seconds") or 0
        stages = p.get("stages") or {}
        memory = p.get("peak_memory_mib") or {}
        order = [name for name in p.get("order") or [] if name in stages]
        for name in order + [s for s in stages if s not in order]:  # DVC's order, whatever the JSON's
            seconds, mem = stages[name], memory.get(name) or {}
            share = f"{100 * seconds / total:.1f}%" if total else "–"
            lines.append(f"| `{name}` | {seconds:.1f} | {share} | {_fmt(mem.get('stage_mib'), digits=0)} | "
                         f"{_fmt(mem.get('worker_mib') or None, digits=0)} |")  # fmt: skip
        lines.append(f"| **total** | **{_fmt(total)}** | | | |")
        lines.append("")
    f = bench.get("features") or {}
    if f:
        lines += [(f"Feature extraction: **{_fmt(f.get('images_per_s'), ' images/s')}** "
                   f"({f.get('computed')} images computed, each with its flip and caption)."), ""]  # fmt: skip
    t = bench.get("training") or {}
    if t:
        lines += ["## Training throughput", "",
                  ("Seconds: the variant's own stage, or (\u2020) the mean wall time of one of its seed runs inside "
                   "stage `train` (the seeds of every variant queued on the stage's worker processes)."), "",
                  "| variant | samples/s | tokens/s | epochs | seconds |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for variant, e in t.items():
            seconds = _fmt(e.get("stage_seconds")) if e.get("stage_seconds") is not None else (
                f"{_fmt(e.get('seed_run_seconds'))} \u2020" if e.get("seed_run_seconds") is not None else _fmt(None))
            lines.append(
                f"| `{variant}` | {_fmt(e.get('train_samples_per_s'))}{' ≈' if e.get('kind') == 'vlm' else ''} | "
                f"{_fmt(e.get('train_tokens_per_s'), digits=0)} | {_fmt(e.get('epochs_run'))} | {seconds} |"
            )
        lines.append("")
    r = bench.get("epoch_ratio") or {}
    if r:
        lines += ["## GatedCLIP epoch: cached features vs. recomputed encoders", ""]
        if "error" in r:
            lines += [f"failed: {r['error'].splitlines()[0]}", ""]
        else:
            cached, recomputed = (
                _fmt(r.get("cached_seconds"), " s", 3),
                _fmt(r.get("recomputed_seconds"), " s", 2),
            )
            lines += [(f"{cached} cached vs. {recomputed} recomputed over {r.get('samples')} samples: "
                       f"**{r.get('recomputed_over_cached')}x**."), ""]  # fmt: skip
    s = bench.get("serving") or {}
    if s:
        lines += [f"## Serving (`{s.get('model_uri', '?')}`, one meme per request)", ""]
        if "error" in s:
            lines += [f"failed: {s['error'].splitlines()[0]}", ""]
        else:
            lines += ["| mode | requests | p50 ms | p95 ms | requests/s |", "|---|---:|---:|---:|---:|"]
            for mode in ("sequential", "concurrent"):
                q = s.get(mode) or {}
                label = f"concurrent ({q.get('clients')} clients)" if mode == "concurrent" else mode
                lines.append(f"| {label} | {q.get('requests')} | {_fmt(q.get('p50_ms'))} | {_fmt(q.get('p95_ms'))} | "
                             f"{_fmt(q.get('throughput_rps'), digits=2)} |")  # fmt: skip
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- the whole run


def run_all(
    *, workdir: Path | None = None, overrides: Mapping[str, Any] | None = None, keep: bool = False,
    bench_file: Path = BENCH_FILE, project: Path | None = None, model: str = DEFAULT_MODEL,
    requests: int = 50, clients: int = 4,
) -> tuple[dict[str, Any], bool]:  # fmt: skip
    """Every benchmark; (the merged bench JSON, whether every step succeeded)."""
    bench_file = Path(bench_file).resolve()
    remove: list[Path] = []  # what goes afterwards unless --keep
    if project is None:
        made_tmp = workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="memeops-bench-")) if made_tmp else Path(workdir).resolve()
        bench_pipeline.run(workdir, overrides=overrides, keep=True, bench_file=bench_file)
        project, logs = workdir / "project", workdir / "logs"
        remove = [workdir] if made_tmp else [project, logs]
    else:
        project = Path(project).resolve()
        logs = Path(tempfile.mkdtemp(prefix="memeops-bench-logs-"))
        remove = [logs]
    ok = True
    sections: dict[str, Any] = {}
    try:
        print("\n== GatedCLIP epoch: cached vs recomputed", flush=True)
        try:
            sections["epoch_ratio"], sections["train_epoch"] = epoch_benchmark(project)
        except (RuntimeError, KeyError, subprocess.TimeoutExpired) as exc:
            ok, sections["epoch_ratio"] = False, {"error": str(exc)}
        print("== encoder probes", flush=True)
        try:
            sections["encoder_probe"] = probe_benchmark(project)
        except (RuntimeError, KeyError, subprocess.TimeoutExpired) as exc:
            ok = False
            print(f"encoder probe failed: {exc}", file=sys.stderr)
        print(f"== serving latency: {model}", flush=True)
        try:
            sections["serving"] = serving_benchmark(project, model, requests, clients, logs / "serve.log")
        except (RuntimeError, KeyError, ValueError, subprocess.TimeoutExpired) as exc:
            ok, sections["serving"] = False, {"model_uri": model, "error": str(exc)}
        bench = merge_sections(sections, bench_file)
        markdown = render_markdown(bench)
        bench_file.with_suffix(".md").write_text(markdown, encoding="utf-8")
        print("\n" + markdown)
        print(f"wrote {bench_file} and {bench_file.with_suffix('.md')}")
        if keep:
            print(f"kept: {project} (logs: {logs})")
    finally:
        for path in remove if not keep else []:
            shutil.rmtree(path, ignore_errors=True)
    return bench, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the pipeline copy goes (default: temp)"
    )
    parser.add_argument(
        "--params-override",
        default=None,
        metavar="JSON",
        help="JSON object deep-merged into the copy's params.yaml (or @file)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the copy and the logs afterwards")
    parser.add_argument(
        "--bench-file",
        type=Path,
        default=BENCH_FILE,
        help="the JSON to merge into; the Markdown table goes next to it (.md)",
    )
    parser.add_argument(
        "--project",
        type=Path,
        default=None,
        help="skip the pipeline benchmark; measure epoch and serving on this existing project",
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model URI to serve (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "-n", "--requests", type=int, default=50, help="serving requests per phase (default 50)"
    )
    parser.add_argument("-k", "--clients", type=int, default=4, help="concurrent serving clients (default 4)")
    args = parser.parse_args(argv)  # fmt: skip
    try:
        _, ok = run_all(
            workdir=args.workdir, overrides=parse_override(args.params_override), keep=args.keep,
            bench_file=args.bench_file, project=args.project, model=args.model, requests=args.requests,
            clients=args.clients,
        )  # fmt: skip
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
