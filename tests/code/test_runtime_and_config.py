"""The runtime switches and the typed params: one place each, failing loudly on bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memeops import runtime
from memeops.config import ConfigError, ConsolidateConfig, SynthConfig, load_params


def test_offline_switches_and_state_inside_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(runtime.state_dirs(tmp_path)) + ["MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE"]:
        monkeypatch.delenv(key, raising=False)
    applied = runtime.configure(tmp_path)
    for key, value in runtime.OFFLINE_SWITCHES.items():
        assert os.environ[key] == value == applied[key]
    for key in runtime.state_dirs(tmp_path):
        assert Path(os.environ[key]).resolve().is_relative_to(tmp_path.resolve()), key
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_user_tracking_uri_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    runtime.configure(tmp_path)
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"


def test_project_root_found_from_subdir(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert runtime.find_project_root(sub) == tmp_path.resolve()


def test_shell_exports_are_quoted(tmp_path: Path) -> None:
    text = runtime.shell_exports(tmp_path)
    assert "export HF_HUB_OFFLINE=1" in text and "export YOLO_CONFIG_DIR=" in text


def test_repo_params_parse(repo_root: Path) -> None:
    params = load_params(repo_root / "params.yaml")
    assert params.data.sources[0].format == "synthmeme"
    assert params.synth.output_dir == params.data.sources[0].path


@pytest.mark.parametrize(
    "text, fragment",
    [("data: {sources: []}", "data.sources"),
     ("data: {sources: [{name: a, format: x, path: p}], split: {train: 0.5, val: 0.1, test: 0.1}}", "sum to 1"),
     ("data: {sources: [{name: a, format: x, path: p}, {name: a, format: y, path: q}]}", "unique"),
     ("synth: {languages: {fr: 1.0}}\ndata: {sources: [{name: a, format: x, path: p}]}", "en and zh"),
     ("data: [unclosed", "not valid YAML")],
)
def test_bad_params_give_one_line_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


def test_configs_are_frozen() -> None:
    cfg = SynthConfig()
    with pytest.raises(Exception):
        cfg.n_memes = 5  # type: ignore[misc]
    assert ConsolidateConfig(sources=[{"name": "a", "format": "x", "path": "p"}]).sources[0].name == "a"
