"""Serving the offline VLM on raw memes: a self-contained model folder and its predictor.

Folder layout (the same ``memeops_model.json`` contract as the head models, so the one MLflow
pyfunc wrapper, :func:`memeops.serving.pyfunc.log_pyfunc` and ``memeops predict`` serve it)::

    <model_dir>/
      memeops_model.json   model {"name": "vlm", "config": {...}}, tasks, inputs {"kind": "vlm"}
      vlm/                 vlm_config.json, vlm.safetensors, tokenizer/   (memeops.vlm.model.save_vlm)
      encoder/             the frozen CLIP (as "clip_features" packs it)

Input: a DataFrame with ``image`` and ``text`` (and optionally ``language``, e.g. "en", "zh").
Output per task ``t``: ``t`` (the label with the highest probability: from candidate scoring, or
from the label head when the model has one -- the folder's ``label_source``), ``t_prob``,
``t_p_<positive>`` for binary tasks, and ``t_explanation`` (the generated explanation, parsed
strictly; empty when the model gave none) and ``t_valid`` (whether the generated answer parsed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd

from memeops.models.base import TaskSpec
from memeops.serving.folder import (
    ENCODER_DIR,
    ClipFeatureInputs,
    read_spec,
    staged_model_dir,
    task_specs,
    write_spec,
)
from memeops.serving.inputs import INPUT_COLUMNS, caption_text, check_input_frame, decode_image, example_frame
from memeops.vlm.instructions import InstructionSample, build_prompt, parse_answer
from memeops.vlm.model import TinyVLM, load_vlm, save_vlm
from memeops.vlm.train import LabelSource, VLMTrainConfig, generate_answers, label_probs

MODEL_NAME = "vlm"


def save_vlm_dir(directory: str | Path, model: TinyVLM, tokenizer: Any, specs: Sequence[TaskSpec],
                 clip_dir: str | Path, cfg: VLMTrainConfig, with_text: bool, *, verify: bool = True) -> Path:  # fmt: skip
    """Write the folder above (assembled beside ``directory``, renamed into place)."""
    directory = Path(directory)
    with staged_model_dir(directory) as staging:
        save_vlm(model, tokenizer, staging / "vlm")
        section = {**ClipFeatureInputs.pack(Path(clip_dir), staging / ENCODER_DIR), "kind": MODEL_NAME, "dir": ENCODER_DIR}
        config = {"with_text": with_text, "max_length": cfg.max_length, "max_new_tokens": cfg.max_new_tokens,
                  "eval_batch_size": cfg.eval_batch_size}  # fmt: skip
        if len(model.label_heads):  # a folder without heads keeps its old spec (candidate scoring)
            config["label_source"] = cfg.resolved_label_source
        write_spec(staging, MODEL_NAME, config, specs, section, [*INPUT_COLUMNS, "language"])
        if verify:
            VLMPredictor.from_dir(staging).predict(example_frame())
    return directory


def served_label_source(model: TinyVLM, config: Mapping[str, Any], specs: Sequence[TaskSpec]) -> LabelSource:
    """The folder's ``label_source``; absent (folders from before the label head): ``head`` when the
    model has label heads, else ``candidates``. A head source needs a head, with the spec's labels,
    for every served task."""
    heads = model.cfg.label_tasks
    source = config.get("label_source") or ("head" if heads else "candidates")
    if source not in get_args(LabelSource):
        raise ValueError(f"unknown label_source {source!r} in the model folder ({', '.join(get_args(LabelSource))})")
    if source != "candidates":
        for spec in specs:
            if tuple(heads.get(spec.name, ())) != tuple(spec.labels):
                raise ValueError(f"label_source {source!r}: the model has no label head for task {spec.name!r} "
                                 f"with labels {spec.labels} (heads: {dict(heads)})")  # fmt: skip
    return source  # type: ignore[return-value]


class VLMPredictor:
    """Raw memes -> per-task label, probability and explanation, from a VLM model folder."""

    def __init__(self, model: TinyVLM, tokenizer: Any, clip: Any, specs: Sequence[TaskSpec], config: Mapping[str, Any],
                 explain: bool = True):  # fmt: skip
        self.model, self.tokenizer, self.clip, self.specs = model.eval(), tokenizer, clip, list(specs)
        self.with_text = bool(config.get("with_text", False))
        self.cfg = VLMTrainConfig(max_length=int(config.get("max_length", 192)),
                                  max_new_tokens=int(config.get("max_new_tokens", 48)),
                                  eval_batch_size=int(config.get("eval_batch_size", 128)))  # fmt: skip
        self.explain = explain
        self.label_source = served_label_source(model, config, self.specs)

    @classmethod
    def from_dir(cls, folder: str | Path, *, device: str = "cpu", explain: bool = True, **_: Any) -> VLMPredictor:
        folder = Path(folder)
        spec = read_spec(folder)
        if spec["model"]["name"] != MODEL_NAME:
            raise ValueError(f"{folder} holds a {spec['model']['name']!r} model, not a VLM")
        model, tokenizer = load_vlm(folder / "vlm")
        clip = ClipFeatureInputs.load(folder / spec["inputs"].get("dir", "encoder"), spec["inputs"], device).encoder
        return cls(model, tokenizer, clip, task_specs(spec), spec["model"]["config"], explain)

    def _prefix(self, images: list[Any], texts: list[str]) -> np.ndarray:
        emb = self.clip.encode_images(images).numpy()
        if self.with_text:
            emb = np.concatenate([emb, self.clip.encode_texts(texts).numpy()], axis=1)
        return emb

    def predict(self, frame: Any) -> pd.DataFrame:
        frame = check_input_frame(frame)
        texts = [caption_text(t, i) for i, t in enumerate(frame["text"].tolist())]
        languages = [str(v) if isinstance(v, str) and v else None for v in frame.get("language", [None] * len(frame))]
        images = [decode_image(v, i) for i, v in enumerate(frame["image"].tolist())]
        prefix = self._prefix(images, texts)
        vectors = {str(i): (prefix[i], prefix[i]) for i in range(len(frame))}
        columns: dict[str, list[Any]] = {}
        for spec in self.specs:
            samples = [InstructionSample(str(i), "input", "serve", languages[i] or "", spec.name, spec.labels, "",
                                         build_prompt(spec, texts[i], languages[i]), "", spec.labels[0], None)
                       for i in range(len(frame))]  # fmt: skip
            probs = label_probs(self.model, self.tokenizer, samples, vectors, self.cfg, self.label_source) if samples else []
            best = [int(np.argmax(p)) for p in probs]
            columns[spec.name] = [spec.labels[b] for b in best]
            columns[f"{spec.name}_prob"] = [float(p[b]) for p, b in zip(probs, best)]
            if spec.is_binary:
                columns[f"{spec.name}_p_{spec.labels[1]}"] = [float(p[1]) for p in probs]
            if self.explain:
                parsed = [parse_answer(a, spec.labels) for a in generate_answers(self.model, self.tokenizer, samples,
                                                                                  vectors, self.cfg)]  # fmt: skip
                columns[f"{spec.name}_explanation"] = [p.explanation or "" for p in parsed]
                columns[f"{spec.name}_valid"] = [bool(p.valid) for p in parsed]
        return pd.DataFrame(columns, index=frame.index)
