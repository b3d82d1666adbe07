"""The Prefect pipeline flow (flows/pipeline.py) on a tiny DVC project, under Prefect's test harness.

The tiny project (``dvc init --no-scm`` in a temp dir) has a generator, a two-item matrix stage, a
report stage with a metrics file, and an independent stage. Checks: every stage runs as its own task
(run name = stage name) in dependency order, ``dvc status`` is clean afterwards, ``dvc.lock`` is
byte-identical to the one ``dvc repro`` writes in a copy of the project, a second run skips every
stage, a killed stage and a held DVC lock are retried, a real failure fails fast with the stage's
stderr, and the summary artifact carries the stage table and metrics. Plus: the real repository's
dvc.yaml expands into the expected stage order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from prefect.settings import PREFECT_API_URL

from flows import pipeline as fp

TINY_ORDER = ["gen", "power@a", "power@b", "report"]

SCRIPTS = {
    # every stage appends its name to ran.log (not tracked by DVC), so the test sees the run order
    "log.py": "import sys\nwith open('ran.log', 'a') as fh:\n    fh.write(sys.argv[1] + '\\n')\n",
    "gen.py": (
        "import pathlib, yaml\n"
        "n = yaml.safe_load(open('params.yaml'))['gen']['n']\n"
        "pathlib.Path('data').mkdir(exist_ok=True)\n"
        "pathlib.Path('data/raw.txt').write_text('\\n'.join(str(i) for i in range(n)) + '\\n')\n"
    ),
    "power.py": (
        "import pathlib, sys, yaml\n"
        "name = sys.argv[1]\n"
        "p = yaml.safe_load(open('params.yaml'))['power'][name]\n"
        "xs = [int(x) for x in pathlib.Path('data/raw.txt').read_text().split()]\n"
        "pathlib.Path('out').mkdir(exist_ok=True)\n"
        "pathlib.Path(f'out/{name}.txt').write_text(' '.join(str(x ** p) for x in xs) + '\\n')\n"
    ),
    "report.py": (
        "import json, pathlib\n"
        "a = [int(x) for x in pathlib.Path('out/a.txt').read_text().split()]\n"
        "b = [int(x) for x in pathlib.Path('out/b.txt').read_text().split()]\n"
        "pathlib.Path('reports').mkdir(exist_ok=True)\n"
        "json.dump({'sum_a': sum(a), 'sum_b': sum(b), 'detail': {'n': len(a)}},"
        " open('reports/metrics.json', 'w'))\n"
    ),
    # killed by SIGKILL on its first run only (a marker file remembers), like an OOM-killed stage
    "flaky.py": (
        "import os, pathlib, signal\n"
        "marker = pathlib.Path('flaky.marker')\n"
        "if not marker.exists():\n"
        "    marker.write_text('killed once')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "pathlib.Path('flaky.txt').write_text('ok\\n')\n"
    ),
}

DVC_YAML = {
    "stages": {
        "gen": {"cmd": "python log.py gen && python gen.py", "deps": ["gen.py"], "params": ["gen.n"],
                "outs": ["data/raw.txt"]},
        "power": {
            "matrix": {"name": ["a", "b"]},
            "cmd": "python log.py power@${item.name} && python power.py ${item.name}",
            "deps": ["power.py", "data/raw.txt"],
            "params": ["power.${item.name}"],
            "outs": ["out/${item.name}.txt"],
        },
        "report": {"cmd": "python log.py report && python report.py", "deps": ["report.py", "out/a.txt", "out/b.txt"],
                   "metrics": [{"reports/metrics.json": {"cache": False}}]},
    }
}  # fmt: skip
PARAMS = {"gen": {"n": 6}, "power": {"a": 2, "b": 3}}


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    return subprocess.run([sys.executable, "-m", "dvc", *args], check=False, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def make_project(dest: Path, extra_stages: dict | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in SCRIPTS.items():
        (dest / name).write_text(text)
    spec = json.loads(json.dumps(DVC_YAML))
    spec["stages"].update(extra_stages or {})
    (dest / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (dest / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    init = _dvc(["init", "--no-scm", "-q"], dest)
    assert init.returncode == 0, init.stderr
    return dest


def ran_log(project: Path) -> list[str]:
    path = project / "ran.log"
    return path.read_text().split() if path.exists() else []


@pytest.fixture(scope="module", autouse=True)
def harness(tmp_path_factory: pytest.TempPathFactory, prefect_harness):
    """One temporary Prefect API (sqlite in a temp dir) for the module; PREFECT_HOME in tmp too;
    the stages' Python subprocesses load the socket guard."""
    home = tmp_path_factory.mktemp("prefect-home")
    log = tmp_path_factory.mktemp("netguard") / "netguard.log"
    netguard_dir = Path(__file__).resolve().parents[1] / "netguard"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "MEMEOPS_NETGUARD_LOG")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(netguard_dir), saved["PYTHONPATH"]]))
    os.environ["MEMEOPS_NETGUARD_LOG"] = str(log)
    try:
        with prefect_harness(home, server_startup_timeout=60):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert not log.exists() or log.read_text() == "", f"non-loopback network use: {log.read_text()}"


def _task_run_names(state) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=100,
        )
    return sorted(run.name for run in runs)


def test_real_repo_stage_order(tmp_path: Path) -> None:
    """The project's own dvc.yaml, matrix expanded, in DVC's order (a copy: no data needed)."""
    shutil.copy2(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    assert _dvc(["init", "--no-scm", "-q"], tmp_path).returncode == 0
    plan = fp.plan_pipeline(tmp_path)
    order = list(plan.order)
    tuned = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["tune"]["matrix"]["variant"]
    assert {f"tune@{v}" for v in tuned} <= set(order) and "tune" not in order  # a matrix comes back expanded
    assert "train" in order  # the heads: one stage, one process
    assert len(order) == len(set(order))
    pos = order.index
    for before, after in [("synth", "ocr"), ("ocr", "consolidate"), ("synth", "consolidate"),
                          ("consolidate", "validate"), ("pretrain_clip", "features"),
                          ("train_detector", "regions"), ("regions", "region_features"),
                          ("region_features", "train_mgmcf"), ("features", "train_vlm"),
                          ("train_mgmcf", "compare"), ("train_vlm", "compare")]:  # fmt: skip
        assert pos(before) < pos(after), (before, after, order)
    for variant in tuned:
        assert pos(f"tune@{variant}") < pos("train")
    assert pos("validate") < pos("train") and pos("features") < pos("train") < pos("compare")
    # every upstream edge points backwards in the order
    for stage, ups in plan.upstream.items():
        assert all(pos(u) < pos(stage) for u in ups), stage
    assert set(plan.upstream["compare"]) >= {"train", "train_mgmcf", "train_vlm"}
    # a target brings its upstream stages, nothing downstream
    sub = fp.plan_pipeline(tmp_path, ["validate"]).order
    assert sub == ("synth", "ocr", "consolidate", "validate")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny project after a plain ``dvc repro``: what the flow must reproduce."""
    project = make_project(tmp_path_factory.mktemp("reference") / "project")
    repro = _dvc(["repro"], project)
    assert repro.returncode == 0, repro.stderr
    assert ran_log(project) == TINY_ORDER
    return project


def _artifact(key: str, state: Any) -> dict[str, Any]:
    """The flow run's artifact with this key, straight from the REST API (this Prefect client's
    ``read_artifacts`` sends nulls the server rejects, and empty run filters drop flow-level artifacts)."""
    body = {
        "artifacts": {
            "key": {"any_": [key]},
            "flow_run_id": {"any_": [str(state.state_details.flow_run_id)]},
        },
        "sort": "UPDATED_DESC",
        "limit": 1,
        "offset": 0,
    }
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body, timeout=30)
    response.raise_for_status()
    found = response.json()
    assert len(found) == 1, found
    return found[0]


def test_flow_runs_pipeline_like_dvc_repro(tmp_path: Path, reference: Path) -> None:
    project = make_project(tmp_path / "flow")
    state = fp.pipeline(project_dir=str(project), retry_delay_seconds=0.1, return_state=True)
    assert state.is_completed(), state
    results = state.result()
    assert [r["stage"] for r in results] == TINY_ORDER
    assert all(r["status"] == "ran" and r["attempts"] == 1 for r in results), results
    assert ran_log(project) == TINY_ORDER  # dependency order: gen, the matrix items, then report
    assert _task_run_names(state) == sorted(TINY_ORDER)  # one task run per stage, named after it

    status = _dvc(["status"], project)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    assert (project / "dvc.lock").read_bytes() == (reference / "dvc.lock").read_bytes()
    for out in ("data/raw.txt", "out/a.txt", "out/b.txt", "reports/metrics.json"):
        assert (project / out).read_bytes() == (reference / out).read_bytes(), out

    markdown = _artifact(fp.ARTIFACT_KEY, state)
    assert markdown is not None and "`power@b`" in markdown["data"] and "| ran |" in markdown["data"]
    assert "sum_b" in markdown["data"] and "| 225 |" in markdown["data"]  # 0..5 cubed
    table = _artifact(fp.TABLE_KEY, state)
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert [row["stage"] for row in rows] == TINY_ORDER

    # a second run: DVC finds everything up to date, no stage command runs, dvc.lock untouched
    lock_before = (project / "dvc.lock").read_bytes()
    again = fp.pipeline(project_dir=str(project), retry_delay_seconds=0.1)
    assert [r["status"] for r in again] == ["skipped"] * len(TINY_ORDER), again
    assert ran_log(project) == TINY_ORDER
    assert (project / "dvc.lock").read_bytes() == lock_before


def test_parallel_mode_matches_dvc_repro_content(tmp_path: Path, reference: Path) -> None:
    project = make_project(tmp_path / "parallel")
    results = fp.pipeline(project_dir=str(project), parallel=2, retry_delay_seconds=0.1)
    assert sorted(r["stage"] for r in results) == sorted(TINY_ORDER)
    log = ran_log(project)
    assert sorted(log) == sorted(TINY_ORDER)
    assert log[0] == "gen" and log[-1] == "report"
    # same entries; with concurrency the order of first-time entries in dvc.lock may differ
    assert yaml.safe_load((project / "dvc.lock").read_text()) == yaml.safe_load(
        (reference / "dvc.lock").read_text()
    )


def test_killed_stage_is_retried(tmp_path: Path) -> None:
    project = make_project(tmp_path / "flaky", {"flaky": {"cmd": "python flaky.py", "outs": ["flaky.txt"]}})
    results = fp.pipeline(project_dir=str(project), stages=["flaky"], retries=2, retry_delay_seconds=0.1)
    assert results == [{"stage": "flaky", "status": "ran", "seconds": results[0]["seconds"], "attempts": 2}]
    assert (project / "flaky.txt").read_text() == "ok\n"


def test_held_dvc_lock_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the DVC repository lock: DVC gives up after ~3 s with 'Unable to
    acquire lock'; the task backs off, and the next attempt succeeds once the lock is free."""
    from dvc.repo import Repo

    project = make_project(tmp_path / "locked")
    repo = Repo(str(project))
    repo.lock.lock()
    seen: list[str] = []

    def release_then_decide(task, task_run, state) -> bool:  # the lock holder finishes meanwhile
        try:
            state.result()
        except Exception as exc:  # noqa: BLE001
            seen.append(str(exc))
        if repo.lock.is_locked:
            repo.lock.unlock()
        return fp._retry_if_transient(task, task_run, state)

    monkeypatch.setattr(
        fp, "run_dvc_stage", fp.run_dvc_stage.with_options(retry_condition_fn=release_then_decide)
    )
    try:
        results = fp.pipeline(project_dir=str(project), stages=["gen"], retries=2, retry_delay_seconds=0.1)
    finally:
        if repo.lock.is_locked:
            repo.lock.unlock()
        repo.close()
    assert results[0]["status"] == "ran" and results[0]["attempts"] == 2, results
    assert len(seen) == 1 and "transient" in seen[0] and "Unable to acquire lock" in seen[0], seen


def test_real_failure_fails_fast_with_stderr(tmp_path: Path) -> None:
    cmd = "python -c \"import sys; open('attempts.log', 'a').write('x'); sys.exit('boom: malformed input row 7')\""
    project = make_project(tmp_path / "broken", {"broken": {"cmd": cmd, "outs": ["broken.txt"]}})
    state = fp.pipeline(project_dir=str(project), stages=["broken"], retries=3, retry_delay_seconds=0.1,
                        return_state=True)  # fmt: skip
    assert state.is_failed()
    with pytest.raises(fp.StageFailed) as info:
        state.result()
    message = str(info.value)
    assert "stage 'broken' failed" in message and "boom: malformed input row 7" in message, message
    assert (project / "attempts.log").read_text() == "x"  # a real failure is not retried
    markdown = _artifact(fp.ARTIFACT_KEY, state)
    assert "**failed**" in markdown["data"] and "boom: malformed input row 7" in markdown["data"]
