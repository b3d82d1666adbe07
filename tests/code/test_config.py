"""The typed ``train`` section: a bad key fails at load on one line naming it, the merged trainer
settings layer in one order, and the config package stays torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from memeops.cli import app
from memeops.config import ConfigError, Params, TrainConfig, TrainerOverrides, TrainStageConfig, load_params
from memeops.training.tuned import apply_tuned

DATA = {"sources": [{"name": "a", "format": "synthmeme", "path": "p"}]}
TRAIN: dict[str, Any] = {
    "tasks": ["hateful"],
    "seed": 5,
    "trainer": {"epochs": 10, "lr": 0.01, "patience": 3, "grad_clip": 2.0},
    "variants": {"gatedclip": {"model": "gatedclip", "trainer": {"lr": 0.001, "epochs": 4}},
                 "text_only": {"model": "text_only"}},
}  # fmt: skip


def write_params(tmp_path: Path, train: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": DATA, "train": train}), encoding="utf-8")
    return path


def with_variant_trainer(name: str, trainer: dict[str, Any]) -> dict[str, Any]:
    variants = {**TRAIN["variants"], name: {**TRAIN["variants"][name], "trainer": trainer}}
    return {**TRAIN, "variants": variants}


# --------------------------------------------------------------------------- errors at load


@pytest.mark.parametrize(
    "train, key",
    [({**TRAIN, "trainer": {"lrr": 0.1}}, "train.trainer.lrr"),
     (with_variant_trainer("gatedclip", {"lr": 0.1, "epochz": 3}), "train.variants.gatedclip.trainer.epochz"),
     (with_variant_trainer("text_only", {"epochs": 0}), "train.variants.text_only.trainer.epochs"),
     (with_variant_trainer("text_only", {"monitor_mode": "up"}), "train.variants.text_only.trainer.monitor_mode"),
     ({**TRAIN, "seeds": [1, 1]}, "train.seeds"),
     ({**TRAIN, "bootstrap_sample": 10}, "train.bootstrap_sample")],
)  # fmt: skip
def test_a_bad_train_key_fails_at_load_on_one_line_naming_it(tmp_path: Path, train: dict[str, Any], key: str) -> None:
    path = write_params(tmp_path, train)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: {key}: "), message


def test_memeops_params_rejects_a_trainer_typo_and_prints_the_typed_train_section(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["params", "--path", str(write_params(tmp_path, with_variant_trainer("gatedclip", {"lrr": 1})))])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [
        f"{tmp_path / 'params.yaml'}: train.variants.gatedclip.trainer.lrr: Extra inputs are not permitted"
    ]
    good = runner.invoke(app, ["params", "--path", str(write_params(tmp_path, TRAIN))])
    assert good.exit_code == 0, good.output
    train = json.loads(good.output)["train"]
    assert train["trainer"] == TRAIN["trainer"]  # only the keys given: unset overrides are not printed as null
    assert train["variants"]["gatedclip"]["trainer"] == {"lr": 0.001, "epochs": 4}
    assert train["seeds"] == [0, 1, 2] and train["variants"]["text_only"]["trainer"] == {}


def test_the_repo_params_have_a_typed_train_section(repo_root: Path) -> None:
    params = load_params(repo_root / "params.yaml")
    assert isinstance(params.train, TrainStageConfig)
    assert params.section("train", TrainStageConfig) is params.train  # not dumped and re-validated
    for name in params.train.variants:
        assert isinstance(params.train.trainer_config(name), TrainConfig)


# --------------------------------------------------------------------------- the merged trainer settings


def test_merged_trainer_config_layers_shared_then_variant_then_seed() -> None:
    cfg = TrainStageConfig.model_validate(TRAIN)
    shared_only = cfg.trainer_config("text_only")
    assert (shared_only.epochs, shared_only.lr, shared_only.patience, shared_only.seed) == (10, 0.01, 3, 5)
    assert shared_only.batch_size == TrainConfig().batch_size  # neither layer sets it: TrainConfig's default
    variant = cfg.trainer_config("gatedclip")
    assert (variant.epochs, variant.lr, variant.patience, variant.grad_clip, variant.seed) == (4, 0.001, 3, 2.0, 5)
    assert cfg.trainer_config("gatedclip", seed=9).seed == 9  # the seed argument wins over everything
    own_seed = TrainStageConfig.model_validate(with_variant_trainer("text_only", {"seed": 7}))
    assert own_seed.trainer_config("text_only").seed == 7 and own_seed.trainer_config("text_only", 8).seed == 8
    no_clip = TrainStageConfig.model_validate(with_variant_trainer("text_only", {"grad_clip": None}))
    assert no_clip.trainer_config("text_only").grad_clip is None  # an explicit null overrides the shared 2.0


def test_cross_field_rules_are_checked_on_the_merged_settings() -> None:
    # warm-up 6 is fine for the shared 10 epochs, not for gatedclip's 4: caught when its config is built
    cfg = TrainStageConfig.model_validate({**TRAIN, "trainer": {**TRAIN["trainer"], "warmup_epochs": 6}})
    assert cfg.trainer_config("text_only").warmup_epochs == 6
    with pytest.raises(ValidationError, match="warmup_epochs"):
        cfg.trainer_config("gatedclip")


def test_tuned_trainer_overrides_are_typed_too() -> None:
    cfg = TrainStageConfig.model_validate(TRAIN)
    tuned = apply_tuned(cfg, "gatedclip", {"trainer": {"weight_decay": 0.2}})
    assert tuned.variant("gatedclip").trainer.settings() == {"lr": 0.001, "epochs": 4, "weight_decay": 0.2}
    with pytest.raises(ValidationError, match="weight_decayy"):
        apply_tuned(cfg, "gatedclip", {"trainer": {"weight_decayy": 0.2}})


def test_a_dumped_train_section_validates_back_to_the_same_config() -> None:
    params = Params.model_validate({"data": DATA, "train": TRAIN})
    assert TrainStageConfig.model_validate(params.model_dump()["train"]) == params.train
    assert TrainStageConfig.model_validate(json.loads(params.model_dump_json())["train"]) == params.train
    assert TrainerOverrides() != TrainerOverrides(grad_clip=None)  # left out vs an explicit null


def test_trainer_overrides_mirror_every_trainer_setting() -> None:
    """Each TrainConfig field can be overridden, with the same type and bounds (plus None)."""
    assert list(TrainerOverrides.model_fields) == list(TrainConfig.model_fields)
    for name, field in TrainConfig.model_fields.items():
        partial = TrainerOverrides.model_fields[name]
        assert partial.annotation == (field.annotation | None), name
        assert partial.metadata == field.metadata, name
        assert partial.default is None, name


# --------------------------------------------------------------------------- torch-free


IMPORT_CONFIG = """
import importlib, json, pkgutil, sys
import memeops.config
names = ["memeops.config"] + [f"memeops.config.{m.name}" for m in pkgutil.iter_modules(memeops.config.__path__)]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "heavy": sorted(m for m in ("torch", "sklearn", "mlflow") if m in sys.modules)}))
"""


def test_the_config_package_imports_no_torch_sklearn_or_mlflow(subprocess_env: dict[str, str], repo_root: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", IMPORT_CONFIG], env=subprocess_env, cwd=repo_root,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"memeops.config.params", "memeops.config.data", "memeops.config.train"} <= set(found["modules"])
    assert found["heavy"] == []
