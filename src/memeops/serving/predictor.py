"""Predictors: a model folder -> raw memes in, one row of per-task predictions out.

:class:`MemePredictor` serves the head models (GatedCLIP, the baselines, MGMCF) with torch alone
(no mlflow: a GPU box can predict from a folder); :func:`open_predictor` picks it or the VLM's
predictor by the folder's ``memeops_model.json``; :func:`load_predictor` also takes MLflow URIs.

Output: one row per input, per task ``t``:

* single-label: ``t`` = arg-max label, ``t_prob`` = its probability; binary tasks add
  ``t_p_<positive label>`` = P(label index 1), e.g. ``hateful_p_yes`` (the metrics' convention);
* multi-label: ``t`` = labels with P >= 0.5 joined by ``|`` ("" for none), ``t_prob`` = the
  probability of exactly that label set under the model's independent sigmoids, and
  ``t_p_<label>`` for every label.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_model
from torch import nn

from memeops.models.base import TaskSpec, probabilities
from memeops.models.factory import build_model
from memeops.serving.folder import (
    ENCODER_DIR,
    HEAD_FILE,
    SPEC_FILE,
    ClipFeatureInputs,
    InputEncoder,
    read_spec,
    task_specs,
)
from memeops.serving.inputs import caption_text, check_input_frame, decode_image

MULTI_SEP = "|"
MULTI_THRESHOLD = 0.5

#: kind in ``memeops_model.json`` -> input encoder class (filled on first use from the table below).
INPUT_ENCODERS: dict[str, type[InputEncoder]] = {ClipFeatureInputs.kind: ClipFeatureInputs}
#: input encoders of other families, imported on first use: MGMCF's pulls in the detector and
#: the text encoders, which a GatedCLIP folder never needs.
LAZY_INPUT_ENCODERS: dict[str, str] = {"mgmcf": "memeops.serving.mgmcf:MgmcfInputEncoder",
                                       "lexical": "memeops.serving.lexical:LexicalInputEncoder"}


def input_encoder_class(kind: str) -> type[InputEncoder]:
    """The input encoder class a folder's ``inputs.kind`` names; a one-line error for an unknown one."""
    if kind not in INPUT_ENCODERS and kind in LAZY_INPUT_ENCODERS:
        module, name = LAZY_INPUT_ENCODERS[kind].split(":")
        INPUT_ENCODERS[kind] = getattr(importlib.import_module(module), name)
    try:
        return INPUT_ENCODERS[kind]
    except KeyError:
        raise ValueError(f"unknown input encoder {kind!r}; known: {', '.join(INPUT_ENCODERS)}") from None


def format_predictions(probs: Mapping[str, np.ndarray], specs: Sequence[TaskSpec]) -> pd.DataFrame:
    """Per-task probability arrays -> the output table described in the module docstring."""
    columns: dict[str, Any] = {}
    for spec in specs:
        p = np.asarray(probs[spec.name], dtype=np.float64)
        name = spec.name
        if spec.kind == "single":
            idx = p.argmax(axis=1)
            columns[name] = [spec.labels[i] for i in idx]
            columns[f"{name}_prob"] = p[np.arange(len(p)), idx]
            if spec.is_binary:
                columns[f"{name}_p_{spec.labels[1]}"] = p[:, 1]
        else:
            chosen = p >= MULTI_THRESHOLD
            columns[name] = [MULTI_SEP.join(lab for lab, on in zip(spec.labels, row) if on) for row in chosen]
            columns[f"{name}_prob"] = np.where(chosen, p, 1.0 - p).prod(axis=1)
            for j, label in enumerate(spec.labels):
                columns[f"{name}_p_{label}"] = p[:, j]
    return pd.DataFrame(columns)


class MemePredictor:
    """Raw memes -> per-task predictions, from a model folder; torch only."""

    def __init__(
        self, inputs: InputEncoder, head: nn.Module, specs: Sequence[TaskSpec], *,
        device: str = "cpu", batch_size: int = 32,
    ):  # fmt: skip
        self.inputs = inputs
        self.head = head.to(device).eval()
        self.specs = list(specs)
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))

    @classmethod
    def from_dir(cls, folder: str | Path, *, device: str = "cpu", batch_size: int = 32) -> MemePredictor:
        folder = Path(folder)
        spec = read_spec(folder)
        specs = task_specs(spec)
        head = build_model(spec["model"]["name"], spec["model"]["config"], specs)
        load_model(head, str(folder / HEAD_FILE), strict=True)
        section = spec["inputs"]
        inputs = input_encoder_class(section["kind"]).load(folder / section.get("dir", ENCODER_DIR), section, device)
        return cls(inputs, head, specs, device=device, batch_size=batch_size)

    @torch.inference_mode()
    def predict_proba(self, frame: Any) -> dict[str, np.ndarray]:
        """``{task: float [N, L]}`` (softmax / sigmoid) for the rows of ``frame``, in order."""
        frame = check_input_frame(frame)
        images_col, texts_col = frame["image"].tolist(), frame["text"].tolist()
        texts = [caption_text(t, i) for i, t in enumerate(texts_col)]  # cheap: fail before any compute
        out: dict[str, list[np.ndarray]] = {s.name: [] for s in self.specs}
        for start in range(0, len(frame), self.batch_size):
            stop = min(start + self.batch_size, len(frame))
            images = [decode_image(images_col[i], i) for i in range(start, stop)]
            batch = {k: v.to(self.device) for k, v in self.inputs.encode(images, texts[start:stop]).items()}
            logits = self.head(batch).logits
            for spec in self.specs:
                out[spec.name].append(probabilities(logits[spec.name], spec).cpu().numpy())
        return {
            s.name: np.concatenate(v) if v else np.zeros((0, s.num_labels), np.float32) for s, v in
            ((s, out[s.name]) for s in self.specs)
        }  # fmt: skip

    def predict(self, frame: Any) -> pd.DataFrame:
        """The output table (see module docstring), one row per input row."""
        return format_predictions(self.predict_proba(frame), self.specs)


def open_predictor(folder: str | Path, *, device: str = "cpu", batch_size: int = 32) -> Any:
    """The predictor for a memeops model folder: a head model (:class:`MemePredictor`) or the VLM
    (:class:`memeops.serving.vlm.VLMPredictor`), by the folder's ``memeops_model.json``."""
    if read_spec(Path(folder))["model"]["name"] == "vlm":
        # the VLM's modules (its tokenizer, generation) are imported only for a VLM folder
        from memeops.serving.vlm import VLMPredictor

        return VLMPredictor.from_dir(folder, device=device)
    return MemePredictor.from_dir(folder, device=device, batch_size=batch_size)


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:/")


def load_predictor(uri_or_dir: str | Path, *, device: str = "cpu") -> Any:
    """Something with ``.predict(frame) -> DataFrame`` for a local memeops model folder, a local
    MLflow model folder (with ``MLmodel``) or an MLflow URI (``models:/memeops-gatedclip@champion``,
    ``runs:/<id>/model``, ``models:/m-...``). Local folders do not need mlflow."""
    text = str(uri_or_dir)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / SPEC_FILE).is_file():
            return open_predictor(path, device=device)
        if (path / "MLmodel").is_file():
            import mlflow  # lazy: a memeops folder is served without mlflow

            return mlflow.pyfunc.load_model(str(path), model_config={"device": device})
        raise ValueError(
            f"{path} is neither a memeops model folder ({SPEC_FILE}) nor an MLflow model (MLmodel)"
        )
    if _URI.match(text) and not re.match(r"^[A-Za-z]:[\\/]", text):
        import mlflow  # lazy: a memeops folder is served without mlflow

        return mlflow.pyfunc.load_model(text, model_config={"device": device})
    raise FileNotFoundError(
        f"model {text!r} not found: give a model folder or an MLflow URI such as models:/NAME@ALIAS"
    )
