"""Same machine, same params, two clean copies: the same bytes in every DVC out (issue 13, item 3).

Runs the pipeline's front, ``synth`` .. ``features`` plus ``validate``, ``train_detector`` and
``regions``, with ``dvc repro`` in two fresh tiny copies of the project (conftest's
``tiny_project``), one after the other, and requires the two ``dvc.lock`` files to record the same
md5 for every out, metrics and plots files included. Timings, dates, run ids and absolute paths in
an out, an unseeded draw or a thread count taken from the machine make it fail
(docs/reproducibility.md).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save

from memeops.safetensors_io import canonical_header, save_tensors
from memeops.timing import timings, without_run_ids, without_timings
from memeops.vision.yolo import RUN_ONLY_KEYS, canonical_checkpoint

#: The stages both copies run (dvc repro pulls in their upstream stages: synth, ocr, consolidate,
#: pretrain_clip).
TARGETS = ("features", "validate", "regions")


def lock_outs(lock_path: Path) -> dict[tuple[str, str], str | None]:
    """``{(stage, out path): md5}`` of every out in a ``dvc.lock`` (metrics and plots are outs there)."""
    stages = yaml.safe_load(lock_path.read_text(encoding="utf-8"))["stages"]
    return {(name, out["path"]): out.get("md5") for name, stage in stages.items() for out in stage.get("outs", [])}


def repro(project: Path, env: dict[str, str]) -> dict[tuple[str, str], str | None]:
    """``dvc init`` + ``dvc repro`` of :data:`TARGETS` in ``project``; the outs its lock records."""
    for cmd in (["dvc", "init", "--no-scm", "-q"], ["dvc", "repro", *TARGETS]):
        done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return lock_outs(project / "dvc.lock")


def test_timings_leave_the_payload_at_any_depth() -> None:
    report = {"images": 3, "seconds": 1.5, "views": {"grid": {"regions": 4, "regions_per_s": 9.0}},
              "train/epoch_seconds": 2.0, "rows": [{"fit_seconds": 1.0, "epochs": 2}], "memes_per_second": 5}  # fmt: skip
    assert without_timings(report) == {"images": 3, "views": {"grid": {"regions": 4}}, "rows": [{"epochs": 2}]}
    assert timings(report) == {"seconds": 1.5, "views/grid/regions_per_s": 9.0, "train/epoch_seconds": 2.0,
                               "memes_per_second": 5.0}  # fmt: skip


def test_run_ids_leave_the_payload_at_any_depth() -> None:
    report = {"variants": {"a": {"versions": {"challenger": {"version": 2, "run_id": "f00", "run": "a-seed1"}}}},
              "rows": [{"run_id": "b4r", "n": 1}]}  # fmt: skip
    assert without_run_ids(report) == {"variants": {"a": {"versions": {"challenger": {"version": 2, "run": "a-seed1"}}}},
                                       "rows": [{"n": 1}]}  # fmt: skip


def test_safetensors_metadata_order_does_not_change_the_bytes(tmp_path: Path) -> None:
    tensors = {"b": torch.arange(3, dtype=torch.float32), "a": torch.ones(2, 2)}
    one = canonical_header(save(tensors, metadata={"keys": "[1, 2]", "spec_key": "s"}))
    other = canonical_header(save(tensors, metadata={"spec_key": "s", "keys": "[1, 2]"}))
    assert one == other and int.from_bytes(one[:8], "little") % 8 == 0  # the header stays 8-byte aligned
    save_tensors(tensors, tmp_path / "x.safetensors", metadata={"spec_key": "s", "keys": "[1, 2]"})
    assert (tmp_path / "x.safetensors").read_bytes() == one
    loaded = load_file(str(tmp_path / "x.safetensors"))
    assert torch.equal(loaded["b"], tensors["b"]) and torch.equal(loaded["a"], tensors["a"])


class TinyDetector(torch.nn.Module):
    """Stands in for ultralytics' model object: a module with an ``args`` dict and a ``yaml`` spec."""

    def __init__(self, project: str) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.args = {"model": f"{project}/detector.yaml", "data": f"{project}/data.yaml", "imgsz": 64}
        self.yaml = {"yaml_file": f"{project}/detector.yaml", "nc": 3}


def ultralytics_like_checkpoint(path: Path, project: str, commit: str, date: str) -> None:
    torch.manual_seed(0)
    ckpt = {"model": TinyDetector(project), "date": date, "git": {"root": project, "commit": commit},
            "train_results": {"time": [1.5, 3.2]}, "epoch": -1,
            "train_args": {"project": f"{project}/runs", "save_dir": f"{project}/runs/train", "epochs": 3}}  # fmt: skip
    torch.save(ckpt, path)


def test_detector_checkpoint_keeps_the_model_and_drops_the_run(tmp_path: Path) -> None:
    """Two trainings of the same weights in other folders, at other commits and times: the same bytes."""
    one, other = tmp_path / "one.pt", tmp_path / "other.pt"
    ultralytics_like_checkpoint(one, "/tmp/memeops-detector-aaa", "1111", "2026-12-06T10:00:00")
    ultralytics_like_checkpoint(other, "/tmp/memeops-detector-bbb", "2222", "2026-12-07T11:00:00")
    for path in (one, other):
        canonical_checkpoint(path)
    assert one.read_bytes() == other.read_bytes()
    ckpt = torch.load(one, map_location="cpu", weights_only=False)
    assert not set(RUN_ONLY_KEYS) & set(ckpt) and ckpt["epoch"] == -1
    assert ckpt["train_args"] == {"project": "runs", "save_dir": "train", "epochs": 3}
    assert ckpt["model"].args["model"] == "detector.yaml" and ckpt["model"].yaml["yaml_file"] == "detector.yaml"
    assert isinstance(ckpt["model"].conv, torch.nn.Conv2d)


def test_lock_outs_compares_every_out(tmp_path: Path) -> None:
    """The comparison sees metrics and plots outs too (a cache: false file is an out in dvc.lock)."""
    lock = {"schema": "2.0", "stages": {"synth": {"outs": [{"path": "data/synthmeme", "md5": "a.dir"},
                                                           {"path": "reports/synthmeme.json", "md5": "b"}]},
                                        "ocr": {"deps": [{"path": "x", "md5": "c"}]}}}  # fmt: skip
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock), encoding="utf-8")
    assert lock_outs(tmp_path / "dvc.lock") == {("synth", "data/synthmeme"): "a.dir",
                                                 ("synth", "reports/synthmeme.json"): "b"}  # fmt: skip


@pytest.mark.slow
def test_two_copies_write_identical_outs(tmp_path: Path, tiny_project: Callable[[Path], Path],
                                         subprocess_env: dict[str, str]) -> None:  # fmt: skip
    first = repro(tiny_project(Path(tmp_path / "a")), subprocess_env)
    second = repro(tiny_project(Path(tmp_path / "b")), subprocess_env)
    stages = {stage for stage, _ in first}
    assert {"synth", "ocr", "consolidate", "validate", "pretrain_clip", "features", "train_detector",
            "regions"} <= stages, sorted(stages)  # fmt: skip
    differ = sorted(f"{stage}:{path}" for stage, path in first.keys() | second.keys()
                    if first.get((stage, path)) != second.get((stage, path)))  # fmt: skip
    assert not differ, f"outs that differ between two runs: {differ}"
