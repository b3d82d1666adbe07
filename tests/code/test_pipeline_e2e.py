"""End to end: ``dvc repro`` at a tiny size in a temp copy of the project, under the socket guard.

Checks the pipeline runs, the datasheet reconciles, every variant is trained, reported and registered
(``memeops-<variant>@challenger``), the registered GatedCLIP predicts from an image file in a fresh
process, a second ``dvc repro`` is a no-op, a params change to one variant retrains that variant only
(the feature cache is reused), no non-loopback connection was attempted, and nothing was written to
``$HOME``.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

VARIANTS = ("gatedclip", "gatedclip_mt", "text_only", "image_only", "average", "concat", "align", "cross", "mgmcf",
            "bilinear", "bilinear_hateful", "gatedclip_bilinear", "retrieval")


# {variant: [status of its run, number of seed runs nested in it]} of the train / train_mgmcf stage runs
TRAIN_RUNS = """
import json
from memeops import runtime
runtime.configure()
import mlflow
runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`memeops.run_kind` = 'model'")
parents = runs[runs["tags.memeops.seed"].isna() & runs["tags.memeops.dvc_stage"].isin(["train", "train_mgmcf"])]
children = runs["tags.mlflow.parentRunId"].value_counts()
print(json.dumps({r["tags.memeops.variant"]: [r["status"], int(children.get(r["run_id"], 0))]
                  for _, r in parents.iterrows()}))
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=840)


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory, tiny_project: Callable[..., Path]) -> Path:
    return tiny_project(tmp_path_factory.mktemp("e2e") / "project")


def test_dvc_repro_tiny_pipeline(project_copy: Path, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    env = subprocess_env
    init = _run(["dvc", "init", "--no-scm", "-q"], project_copy, env)
    assert init.returncode == 0, init.stderr

    first = _run(["dvc", "repro"], project_copy, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # progress while the long stages run (pretrain_clip, the VLM: a line per epoch with an ETA), and
    # every stage's peak memory as it ends (stages.run_stage; make bench reads it)
    assert re.search(r"train_vlm unified epoch 1/\d+: .* ETA \d+ s", first.stderr), first.stderr[-3000:]
    assert first.stderr.count("peak memory") >= first.stdout.count("Running stage"), first.stderr[-3000:]

    sheet = json.loads((project_copy / "reports" / "datasheet.json").read_text())
    for name, counts in sheet["sources"].items():
        assert counts["read"] == counts["kept"] + counts["quarantined"], name
    assert sheet["total"]["kept"] > 0
    assert set(sheet["splits"]) == {"train", "val", "test", "test_unseen"}
    validation = json.loads((project_copy / "reports" / "validation.json").read_text())
    assert validation["success"] is True
    recall = json.loads((project_copy / "reports" / "metrics" / "pretrain_clip.json").read_text())
    assert {"val_i2t_r1", "val_t2i_r5"} <= set(recall)
    features = json.loads((project_copy / "reports" / "metrics" / "features.json").read_text())
    assert features["computed"] == sheet["total"]["kept"] and features["cached"] == 0
    ocr = json.loads((project_copy / "reports" / "metrics" / "ocr.json").read_text())
    assert 0.0 <= ocr["cer"]["synthmeme"]["overall"]["cer_raw"] <= 1.0, ocr
    detector = json.loads((project_copy / "reports" / "metrics" / "detector.json").read_text())
    assert {"map50", "map50_95", "key_map50"} <= set(detector["test"]) and "at_4" in detector["test"]["key_recall"], detector
    regions = json.loads((project_copy / "reports" / "metrics" / "regions.json").read_text())
    assert regions["images"] > 0
    assert set(regions["views"]) >= {"detector", "grid"}

    for variant in VARIANTS:  # every variant over both seeds; the registered one chosen on val only
        report = json.loads((project_copy / "reports" / "metrics" / f"{variant}.json").read_text())
        assert "hateful/auroc" in report["test"] and "hateful/auroc" in report["ci95"]["test"], variant
        assert report["seeds"] == [0, 1] and report["seed_summary"]["test"]["hateful/auroc"]["n_seeds"] == 2
        # the file is a DVC out: the registered version (registry state, not a function of the deps) is not in it
        assert report["selection"]["rule"] == "median-val" and report["selection"]["selected_seed"] in (0, 1), variant
        assert "registered" not in report and report["selected"]["test"], variant
        assert (project_copy / "reports" / "plots" / "train" / f"{variant}.csv").is_file()
        table = pd.read_parquet(project_copy / "data" / "train" / f"{variant}.parquet")
        assert set(table["seed"]) == {0, 1} and set(table["split"]) == {"test", "test_unseen"}, variant
    # every variant's run (opened when its seeds were queued on the workers) ended FINISHED, its seeds nested in it
    runs = _run(["python", "-c", TRAIN_RUNS], project_copy, env)
    assert runs.returncode == 0, runs.stderr[-2000:]
    assert json.loads(runs.stdout) == {v: ["FINISHED", 2] for v in VARIANTS}, runs.stdout
    with (project_copy / "reports" / "comparison.csv").open(encoding="utf-8") as fh:
        comparison = list(csv.DictReader(fh))
    hateful = [r for r in comparison if r["task"] == "hateful" and r["metric"] == "auroc"]
    assert {r["variant"] for r in hateful} >= {"gatedclip", "mgmcf", "vlm", "concat"}, hateful
    assert all(float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) for r in hateful), hateful
    assert {r["n_seeds"] for r in hateful if r["variant"] != "vlm"} == {"2"}
    image = next((project_copy / "data" / "synthmeme" / "images").glob("*.jpg"))
    predicted = _run(["memeops", "predict", "--model", "models:/memeops-gatedclip@challenger", str(image),
                      "--text", "my boss be like", "--json"], project_copy, env)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = json.loads(predicted.stdout)
    assert len(rows) == 1 and "hateful" in json.dumps(rows)
    # MGMCF from the registry in a fresh process: it runs the packed YOLO detector on the raw image
    predicted = _run(["memeops", "predict", "--model", "models:/memeops-mgmcf@challenger", str(image),
                      "--text", "my boss be like", "--json"], project_copy, env)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert "metaphor" in json.dumps(json.loads(predicted.stdout))

    tuning = json.loads((project_copy / "reports" / "tuning" / "gatedclip_mt.json").read_text())
    assert tuning["tuned"] and tuning["n_trials"]["total"] == 2 and tuning["default_value"] is not None, tuning
    # the VLM: trained in the pipeline, scored on every split, registered, served from the registry
    vlm = json.loads((project_copy / "reports" / "metrics" / "vlm.json").read_text())
    assert {"val", "test", "test_unseen"} <= set(vlm) and "hateful/auroc" in vlm["ci95"]["test"], vlm.keys()
    assert 0.0 <= vlm["test"]["all/invalid_rate"] <= 1.0 and vlm["registered"][0]["name"] == "memeops-vlm"
    predicted = _run(["memeops", "predict", "--model", "models:/memeops-vlm@challenger", str(image),
                      "--text", "my boss be like", "--json"], project_copy, env)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    served = json.loads(predicted.stdout)[0]["predictions"]
    assert {"label", "probability", "explanation", "valid"} <= set(served["hateful"]), served["hateful"]

    evaluation = json.loads((project_copy / "reports" / "evaluation.json").read_text())
    for variant in (*VARIANTS, "vlm"):  # the challengers, scored from the predictions logged at training
        test = evaluation["variants"][variant]["versions"]["challenger"]["splits"]["test"]
        assert test["status"] == "ok" and test["overall"] and test["ece"], (variant, test.get("notes"))
    page = (project_copy / "reports" / "index.html").read_text(encoding="utf-8")
    assert 'id="leaderboard"' in page and 'id="attention"' in page and 'src="http' not in page
    with (project_copy / "reports" / "ablations.csv").open(encoding="utf-8") as fh:
        ablations = list(csv.DictReader(fh))  # every arm of every group, each over the two tiny seeds
    assert {r["group"] for r in ablations} == {"mgmcf", "gatedclip", "interaction"} and len(ablations) == 24, ablations
    assert all(r["n_seeds"] == "2" for r in ablations), ablations
    assert "ablation chart" in page and (project_copy / "data" / "ablate" / "predictions.parquet").is_file()
    assert (project_copy / "reports" / "ablations.md").read_text(encoding="utf-8").count("Protocol: every arm") == 3
    # the arms that are stage train's seeds are read (same settings and seed), not retrained
    runs_csv = pd.read_csv(project_copy / "reports" / "ablate" / "runs.csv")
    reused = runs_csv[runs_csv["trained_in"] == "train"]
    assert sorted(set(zip(reused["group"], reused["arm"]))) == [
        ("gatedclip", "concat"), ("gatedclip", "cross"), ("gatedclip", "image_only"), ("gatedclip", "text_only"),
        ("interaction", "full"), ("interaction", "gatedclip"), ("interaction", "gatedclip_bilinear"),
        ("interaction", "retrieval")] and len(reused) == 16, runs_csv
    ablated = pd.read_parquet(project_copy / "data" / "ablate" / "predictions.parquet")
    trained = pd.read_parquet(project_copy / "data" / "train" / "text_only.parquet").query("split == 'test'")
    arm = ablated.query("group == 'gatedclip' and arm == 'text_only'")
    assert len(arm) == len(trained) and sorted(map(tuple, arm["probs"])) == sorted(map(tuple, trained["probs"]))
    second = _run(["dvc", "repro"], project_copy, env)
    assert second.returncode == 0, second.stderr
    assert "Running stage" not in second.stdout, second.stdout
    status = _run(["dvc", "status"], project_copy, env)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout

    params = yaml.safe_load((project_copy / "params.yaml").read_text())
    params["train"]["variants"]["text_only"]["trainer"] = {"lr": 0.002}
    (project_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run(["dvc", "repro"], project_copy, env)
    assert third.returncode == 0, third.stderr
    ran = sorted(line.split("'")[1] for line in third.stdout.splitlines() if line.startswith("Running stage"))
    # stage train (every head variant: one process), tune@text_only (text_only is not tuned by default: it
    # rewrites its empty file quickly), the summaries that read its metrics, and ablate (text_only is a
    # baseline arm); nothing upstream, no other tuning, not MGMCF or the VLM
    assert ran == ["ablate", "compare", "evaluate", "report", "train", "tune@text_only"], third.stdout

    log = Path(env["MEMEOPS_NETGUARD_LOG"])
    assert not log.exists() or log.read_text() == "", f"non-loopback network use: {log.read_text()}"
    written = [p for p in Path(env["HOME"]).rglob("*")]
    assert written == [], f"files written under HOME: {written[:10]}"


def test_netguard_blocks_outside_connections(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """The guard itself must fail closed, or the end-to-end test above proves nothing."""
    code = "import socket; socket.create_connection(('198.51.100.7', 80), timeout=1)"
    result = _run(["python", "-c", code], tmp_path, subprocess_env)
    assert result.returncode != 0
    assert "netguard" in result.stderr
    assert "198.51.100.7" in Path(subprocess_env["MEMEOPS_NETGUARD_LOG"]).read_text()
