"""The benchmark harness (``make bench``: benchmarks/pipeline.py, benchmarks/run_all.py): structure only.

Speed is measured by the benchmark scripts, never asserted here. The slow test runs the pipeline
benchmark for real at the end-to-end test's tiny sizes, but only up to ``validate`` (synth, ocr,
consolidate, validate: DVC's plan for that target): the whole tiny pipeline is already run by
test_pipeline_e2e.py, and running it a second time here would double that cost for no new coverage
of the harness (the per-variant training and registry collectors are checked on fixture reports
below instead). Checks: every stage of DVC's plan is timed, in DVC's order; the total is about the
sum of the stages; the no-op ``dvc repro`` ran nothing; the budget is not judged for a partial or
overridden run; other keys of bench.json are kept; no network, nothing under ``$HOME``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_PARAMS

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import collect
from benchmarks import pipeline as bp
from benchmarks import run_all

VARIANTS = ["gatedclip", "gatedclip_mt", "text_only", "mgmcf", "vlm"]


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_trained_variants_from_plan() -> None:
    order = ("synth", "train_detector", "tune@gatedclip", "train@gatedclip", "train@text_only",
             "tune_mgmcf", "train_mgmcf", "train_vlm", "compare")  # fmt: skip
    assert collect.trained_variants(order) == ["gatedclip", "text_only", "mgmcf", "vlm"]


def test_trained_variants_of_the_one_process_train_stage(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"train": {"cmd": "python -m stages.train gatedclip concat"}}}), encoding="utf-8")  # fmt: skip
    order = ("features", "tune@gatedclip", "train", "train_mgmcf", "train_vlm")
    assert collect.trained_variants(order, tmp_path) == ["gatedclip", "concat", "mgmcf", "vlm"]
    assert collect.train_stage_variants(ROOT) == yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"][
        "cmd"].split()[3:]  # fmt: skip


def test_collectors_on_fixture_reports(tmp_path: Path) -> None:
    metrics, logs = tmp_path / "reports" / "metrics", tmp_path / "logs"
    logs.mkdir()
    # features computed nothing new: images_per_s is null and stays null (no division by zero)
    _write(metrics / "features.json", {"cached": 5, "computed": 0, "total": 5})
    assert collect.collect_features(tmp_path)["images_per_s"] is None
    _write(metrics / "features.json", {"cached": 0, "computed": 150, "total": 150})
    features = collect.collect_features(tmp_path, stage_seconds=6.5, logs=logs)  # no summary line: the stage's time
    assert features["images_per_s"] == 23.1 and features["stage_seconds"] == 6.5
    assert features["images_per_s_source"] == "computed / stage seconds"
    (logs / "repro.log").write_text("Running stage 'features':\nfeatures: 150 computed, 0 cached, 48.7 images/s\n")
    features = collect.collect_features(tmp_path, stage_seconds=6.5, logs=logs)
    assert features["images_per_s"] == 48.7 and features["images_per_s_source"] == "features stage summary line"
    for variant in ("gatedclip", "gatedclip_mt", "mgmcf"):
        _write(metrics / f"{variant}.json", {"epochs_run": 2, "best_epoch": 1})
    _write(metrics / "vlm.json", {"regime": "unified", "train_samples": 300, "models": {"unified": {"epochs": 2}}})
    timings = {"gatedclip": {"fit/train_samples_per_s": 1234.5678}, "gatedclip_mt": {"seed_run_seconds": 7.25},
               "vlm": {"models/unified/fit_seconds": 10.0, "models/unified/train_tokens_per_s": 5000.0}}  # fmt: skip
    stage_seconds = {"train@gatedclip": 3.0, "train_mgmcf": 9.0, "train_vlm": 12.0}
    training = collect.collect_training(tmp_path, VARIANTS, stage_seconds, timings)
    assert list(training) == VARIANTS
    assert training["gatedclip"] == {"train_samples_per_s": 1234.6, "epochs_run": 2, "best_epoch": 1,
                                     "stage_seconds": 3.0}  # fmt: skip
    assert training["mgmcf"]["stage_seconds"] == 9.0 and training["mgmcf"]["train_samples_per_s"] is None
    # a variant of the one-process stage train: no stage of its own, its MLflow run's wall time instead
    assert training["gatedclip_mt"]["seed_run_seconds"] == collect.rounded(7.25) and "stage_seconds" not in training[
        "gatedclip_mt"]  # fmt: skip
    assert training["text_only"] == {"missing": True}
    assert training["vlm"]["train_tokens_per_s"] == 5000 and training["vlm"]["train_samples_per_s"] == 60.0
    assert collect.run_timings(tmp_path) == {}  # no mlflow.db: no runs
    assert collect.collect_registry(tmp_path) == {}  # no mlflow.db: nothing registered


def test_merge_keeps_other_keys_and_markdown(tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    _write(bench, {"encoder_probe": {"image_to_object": 0.9}, "pipeline": {"old": True}})
    pipeline = {"stages": {"synth": 1.0, "train@gatedclip": 3.0}, "stage_status": {}, "total_seconds": 4.1,
                "noop_seconds": 0.5, "noop_ran": [], "budget_seconds": 1200, "within_budget": True}  # fmt: skip
    data = bp.merge_sections(
        {"pipeline": pipeline, "training": {"gatedclip": {"train_samples_per_s": 9.0}}}, bench
    )
    assert data["encoder_probe"] == {"image_to_object": 0.9} and data["pipeline"] == pipeline
    assert json.loads(bench.read_text()) == data
    serving = {
        "model_uri": "models:/m@challenger",
        "sequential": {"requests": 5, "p50_ms": 10.0, "p95_ms": 12.0, "throughput_rps": 90.0},
        "concurrent": {"clients": 4, "requests": 5, "p50_ms": 20.0, "p95_ms": 30.0, "throughput_rps": 150.0},
    }
    markdown = run_all.render_markdown(
        {**data, "serving": serving, "epoch_ratio": {"error": "no features\nmore"}}
    )
    assert "| `train@gatedclip` | 3.0 |" in markdown and "within budget" in markdown
    assert "concurrent (4 clients)" in markdown and "failed: no features" in markdown


def test_peak_memory_lines_map_to_dvc_stages(capsys: pytest.CaptureFixture[str]) -> None:
    from stages import run_stage

    assert run_stage("tune", lambda: 0) == 0  # a finished stage ends with its peak memory line
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert bp.PEAK_MEMORY.search(line) and line.startswith("stage tune: peak memory ")
    log = "\n".join([
        "Running stage 'synth':", "> python -m stages.synth", "stage synth: peak memory 812 MiB (stage process), "
        "403 MiB (largest worker)", "Running stage 'tune@concat':", "stage tune: peak memory 300 MiB (stage "
        "process), 0 MiB (largest worker)", "Running stage 'report':", "no line: absent",
    ])  # fmt: skip
    memory = bp.peak_memory(log)
    assert memory == {"synth": {"stage_mib": 812, "worker_mib": 403}, "tune@concat": {"stage_mib": 300, "worker_mib": 0}}
    pipeline = {"stages": {"synth": 1.0, "tune@concat": 2.0}, "total_seconds": 3.0, "peak_memory_mib": memory}
    markdown = run_all.render_markdown({"pipeline": pipeline})
    assert "| `synth` | 1.0 | 33.3% | 812 | 403 |" in markdown and "| `tune@concat` | 2.0 | 66.7% | 300 | – |" in markdown


def test_params_override_parsing(tmp_path: Path) -> None:
    assert bp.parse_override(None) == {}
    assert bp.parse_override('{"synth": {"n_memes": 30}}') == {"synth": {"n_memes": 30}}
    (tmp_path / "o.yaml").write_text("synth: {n_memes: 30}\n")
    assert bp.parse_override(f"@{tmp_path / 'o.yaml'}") == {"synth": {"n_memes": 30}}
    with pytest.raises(TypeError):
        bp.parse_override("[1, 2]")
    merged = bp.deep_update({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}, "e": {"f": 1}})
    assert merged == {"a": {"b": 5, "c": 2}, "d": 3, "e": {"f": 1}}


@pytest.mark.slow
def test_pipeline_benchmark_tiny_until_validate(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    _write(bench, {"train_epoch": {"recomputed_over_cached": 65.9}})  # another script's key: kept
    workdir = tmp_path / "work"
    cmd = [sys.executable, "-m", "benchmarks.pipeline", "--workdir", str(workdir), "--stages", "validate",
           "--params-override", json.dumps(TINY_PARAMS), "--bench-file", str(bench), "--keep"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env, capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = json.loads(bench.read_text())
    assert data["train_epoch"] == {"recomputed_over_cached": 65.9}
    assert {"machine", "pipeline", "features", "training", "registry"} <= set(data)
    machine = data["machine"]
    assert {"cpus", "torch_threads", "gpu", "python", "torch", "git_commit", "date"} <= set(machine)
    assert isinstance(machine["gpu"]["available"], bool)

    pipe = data["pipeline"]
    from flows.pipeline import plan_pipeline

    plan = plan_pipeline(workdir / "project", ["validate"])
    assert pipe["order"] == list(plan.order) == list(pipe["stages"])  # every stage of DVC's plan, in order
    assert {"synth", "validate"} <= set(plan.order)
    assert all(seconds > 0 for seconds in pipe["stages"].values())
    assert set(pipe["stage_status"].values()) == {"ran"}  # a fresh copy: every stage really ran
    total, summed = pipe["total_seconds"], pipe["sum_stage_seconds"]
    assert summed == pytest.approx(sum(pipe["stages"].values()), abs=0.05)
    # one dvc repro: the gap is DVC's start-up before it announces the first stage
    assert summed <= total + 0.05 and total - summed < max(10.0, 0.1 * total)
    assert pipe["runner"].startswith("one dvc repro")
    assert pipe["noop_ran"] == [] and pipe["noop_seconds"] > 0
    # every stage printed its peak memory (stages.run_stage), read back per DVC stage
    assert set(pipe["peak_memory_mib"]) == set(pipe["stages"])
    assert all(m["stage_mib"] > 0 for m in pipe["peak_memory_mib"].values())
    assert pipe["budget_seconds"] == 1200
    assert pipe["within_budget"] is None  # partial and overridden: not judged
    assert pipe["params_override"] == TINY_PARAMS and pipe["targets"] == ["validate"]
    # no training stage in this plan; the features stage did not run
    assert data["training"] == {} and data["features"] == {}
    # the copy kept its own tool state and stage logs
    assert (workdir / "project" / ".dvc").is_dir() and (workdir / "logs" / "repro.log").is_file()
    assert "Running stage 'validate'" in (workdir / "logs" / "repro.log").read_text()

    log = Path(subprocess_env["MEMEOPS_NETGUARD_LOG"])
    assert not log.exists() or log.read_text() == "", f"non-loopback network use: {log.read_text()}"
    written = list(Path(subprocess_env["HOME"]).rglob("*"))
    assert written == [], f"files written under HOME: {written[:10]}"
