"""Serving raw memes: a self-contained model folder, its MLflow pyfunc wrapper, and loading either.

Training runs on cached CLIP features, but a user has an image and a caption. A packed model
therefore carries its own input encoder next to the trained head::

    <model_dir>/
      memeops_model.json   format, head model name + config, task specs, input-encoder section
      head.safetensors     the trained head's weights (strictly loaded into build_model(...))
      encoder/             the input encoder's files; for "clip_features":
        clip.safetensors, tokenizer.json (corpus tokenizer), clip_config.json (relative paths)

:class:`MemePredictor` reads that folder with torch alone (no mlflow needed: a GPU box can
predict from it); :class:`MemePyfunc` is the same predictor as an ``mlflow.pyfunc`` model, the
folder logged as one artifact and the ``memeops`` package as ``code_paths`` so a fresh process
(or ``mlflow models serve``) can load it.

Input: a DataFrame with ``image`` (a file path, a base64 string — optionally a ``data:`` URL —
or raw bytes) and ``text`` (str; None/NaN means no caption). Through MLflow the signature types
``image`` as a string, so send base64 or paths there; raw bytes work with the local predictor.

Output: one row per input, per task ``t``:

* single-label: ``t`` = arg-max label, ``t_prob`` = its probability; binary tasks add
  ``t_p_<positive label>`` = P(label index 1), e.g. ``hateful_p_yes`` (the metrics' convention);
* multi-label: ``t`` = labels with P >= 0.5 joined by ``|`` ("" for none), ``t_prob`` = the
  probability of exactly that label set under the model's independent sigmoids, and
  ``t_p_<label>`` for every label.

Other model families plug in through :data:`INPUT_ENCODERS`: an input encoder turns decoded PIL
images + texts into the batch dict its head takes (MGMCF's will add region features, a VLM's
pixel values and tokens); ``memeops_model.json`` names which one a folder uses.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pydantic import BaseModel
from torch import Tensor, nn

from memeops.models.base import TaskSpec, probabilities
from memeops.models.clip import ClipEncoder, ClipEncoderConfig, load_clip

try:  # the folder-level predictor works without mlflow (e.g. on a bare GPU box)
    from mlflow.exceptions import MlflowException as _MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE as _INVALID_PARAMETER_VALUE
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover - mlflow is a project dependency
    _PythonModel = object  # type: ignore[assignment,misc]
    _MlflowException = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

FORMAT_VERSION = 1
SPEC_FILE = "memeops_model.json"
HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"
INPUT_COLUMNS = ("image", "text")
MULTI_SEP = "|"
MULTI_THRESHOLD = 0.5
ARTIFACT_KEY = "model_dir"
#: Distributions a loading environment needs, pinned to the versions installed when logging (local
#: version labels such as ``+cu128`` dropped: they are not installable from the registry).
REQUIREMENTS = (
    "mlflow", "torch", "torchvision", "open_clip_torch", "timm", "safetensors",
    "tokenizers", "numpy", "pandas", "pillow", "pydantic",
)  # fmt: skip
#: what an input encoder needs beyond REQUIREMENTS (MGMCF: the detector, HF text encoders)
EXTRA_REQUIREMENTS: dict[str, tuple[str, ...]] = {"mgmcf": ("ultralytics", "transformers"), "vlm": ("transformers",)}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
#: Limits on one image given to the MLflow pyfunc (``model_config`` keys ``max_image_bytes`` /
#: ``max_image_pixels``; 0 or None = no limit): the encoded size (decoded base64, file or bytes)
#: and width x height read from the header, checked before any image is decoded. The folder
#: predictors have no limit (Pillow's decompression-bomb guard only).
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


# --------------------------------------------------------------------------- decoding inputs


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class MemeInputError(ValueError):
    """A bad input meme or table: a one-line message naming the row (and the field)."""


if _MlflowException is not None:

    class ServedInputError(_MlflowException, MemeInputError):  # type: ignore[misc,valid-type]
        """:class:`MemeInputError` as MLflow's scoring server reports client errors: an
        ``MlflowException`` with ``INVALID_PARAMETER_VALUE`` (HTTP 400, ``{"error_code", "message"}``);
        still a ``ValueError`` for in-process pyfunc callers.

        The server re-sets ``message`` to ``"Failed to predict data '<the request table>'.\\nError: ..."``
        before answering; this keeps the first (one-line) message instead.
        """

        def __init__(self, message: str):
            super().__init__(message, error_code=_INVALID_PARAMETER_VALUE)

        @property  # type: ignore[override]
        def message(self) -> str:
            return self._line

        @message.setter
        def message(self, value: str) -> None:
            if not hasattr(self, "_line"):
                self._line = value

else:  # pragma: no cover - mlflow is a project dependency
    ServedInputError = MemeInputError  # type: ignore[assignment,misc]


def _open_image(source: str | Path | bytes, row: int, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            return im.convert("RGB")  # convert() loads the pixels, so the file can close
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MemeInputError(f"row {row}: {what} is not a readable image ({_one_line(exc)})") from None


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, with or without padding, whitespace ignored."""
    payload = "".join(text.split())
    if payload.startswith("data:"):
        payload = payload.partition(",")[2]
    if not payload:
        raise ValueError("empty")
    payload += "=" * (-len(payload) % 4)
    altchars = b"-_" if ("-" in payload or "_" in payload) else None
    try:
        return base64.b64decode(payload, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _pathlike(text: str) -> bool:
    return len(text) < 1024 and (
        Path(text).suffix.lower() in _IMAGE_SUFFIXES
        or text.startswith(("/", "./", "../", "~"))
        or os.sep in text
    )


def decode_image(value: Any, row: int = 0) -> Image.Image:
    """One ``image`` cell -> RGB PIL image, or a one-line ValueError naming the row.

    A string is an existing file path first; otherwise base64 (a ``data:`` URL prefix is fine).
    A string that looks like a path but is neither a file nor base64 image data is reported as a
    missing file.
    """
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _open_image(bytes(value), row, "image bytes")
    if isinstance(value, Path):
        if not value.is_file():
            raise MemeInputError(f"row {row}: image file not found: {str(value)!r}")
        return _open_image(value, row, f"image file {str(value)!r}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise MemeInputError(f"row {row}: image is missing")
    if not isinstance(value, str):
        # MemeInputError (a ValueError), not TypeError, for every bad input: one exception type for
        # callers (the CLI, MLflow's scoring server) to report as a user error.
        got = type(value).__name__
        raise MemeInputError(f"row {row}: image must be a file path, a base64 string or bytes, got {got}")
    text = value.strip()
    if not text:
        raise MemeInputError(f"row {row}: image is an empty string")
    if len(text) < 4096 and os.path.isfile(os.path.expanduser(text)):
        path = os.path.expanduser(text)
        return _open_image(path, row, f"image file {text!r}")
    try:
        data = _b64decode(text)
    except ValueError:
        if _pathlike(text):
            raise MemeInputError(f"row {row}: image file not found: {text!r}") from None
        raise MemeInputError(f"row {row}: image is neither an existing file path nor valid base64") from None
    try:
        return _open_image(data, row, "base64 image data")
    except ValueError:
        if _pathlike(text):
            raise MemeInputError(f"row {row}: image file not found: {text!r}") from None
        raise


def _text(value: Any, row: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, str):
        raise MemeInputError(f"row {row}: text must be a string, got {type(value).__name__}")
    return value


def check_input_frame(frame: Any) -> pd.DataFrame:
    """The input as a DataFrame with ``image`` and ``text`` columns, or a one-line ValueError."""
    if isinstance(frame, (Mapping, list)):
        try:
            frame = pd.DataFrame(frame)
        except (ValueError, TypeError) as exc:
            raise MemeInputError(f"input cannot be read as a table: {_one_line(exc)}") from None
    if not isinstance(frame, pd.DataFrame):
        got = type(frame).__name__
        raise MemeInputError(f"input must be a pandas DataFrame with columns image, text; got {got}")
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise MemeInputError(
            f"input is missing column(s) {', '.join(missing)}: expected 'image' (file path, base64 or bytes) "
            "and 'text' (str)"
        )
    return frame


def _limit(value: Any) -> int | None:
    """A ``max_image_*`` config value: a positive int, or None (0, None, "" = no limit)."""
    return int(value) if value not in (None, "", 0, "0") and int(value) > 0 else None


def _header_pixels(source: bytes | str) -> float | None:
    """width x height from the image header (nothing decoded), inf for a decompression bomb over
    Pillow's own limit, None when unreadable (left for :func:`decode_image` to report)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                width, height = im.size
        except Image.DecompressionBombError:
            return math.inf
        except (OSError, ValueError):
            return None
    return float(width) * float(height)


def check_image_limits(
    frame: pd.DataFrame, *, max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, base64_only: bool = False,
) -> pd.DataFrame:  # fmt: skip
    """Refuse oversized images before any is decoded (one-line :class:`MemeInputError`).

    Sizes: the encoded bytes (decoded base64, the file, raw bytes) against ``max_bytes``;
    width x height from the header against ``max_pixels``. With ``base64_only`` (a server: file
    paths would read the server's disk) every string must be base64 image data; it is decoded
    once here and handed on as bytes, so no file is ever opened. Cells of other types are left for
    :func:`decode_image` to accept or report. Returns ``frame`` (a copy when cells were replaced).
    """
    values = frame["image"].tolist()
    replaced: list[Any] = list(values)
    changed = False
    for row, value in enumerate(values):
        source: bytes | str | None = None
        if isinstance(value, Image.Image):
            pixels: float | None = float(value.width) * float(value.height)
            size = None
        else:
            if isinstance(value, (bytes, bytearray, memoryview)):
                source = bytes(value)
            elif isinstance(value, Path) and not base64_only:
                source = str(value) if value.is_file() else None
            elif isinstance(value, str) and value.strip():
                text = value.strip()
                if not base64_only and len(text) < 4096 and os.path.isfile(os.path.expanduser(text)):
                    source = os.path.expanduser(text)
                else:
                    try:
                        source = _b64decode(text)
                    except ValueError:
                        if base64_only:
                            raise MemeInputError(
                                f"row {row}: image is not valid base64 (send the image file's bytes base64-encoded; "
                                "file paths are not accepted here)"
                            ) from None
                    if base64_only:
                        replaced[row], changed = source, True
            if source is None:
                continue
            size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
            pixels = None
        if max_bytes is not None and size is not None and size > max_bytes:
            mib = f" ({max_bytes / 2**20:.3g} MiB)" if max_bytes >= 2**20 else ""
            raise MemeInputError(f"row {row}: image is {size} bytes, over the limit of {max_bytes} bytes{mib}")
        if source is not None and (max_pixels is not None or base64_only):
            pixels = _header_pixels(source)
            if pixels is None and base64_only:
                raise MemeInputError(f"row {row}: base64 image data is not a readable image")
        if max_pixels is not None and pixels is not None and pixels > max_pixels:
            shown = "more than Pillow's decompression-bomb limit" if math.isinf(pixels) else f"{int(pixels)}"
            raise MemeInputError(
                f"row {row}: image has {shown} pixels, over the limit of {max_pixels} pixels"
            )
    if not changed:
        return frame
    return frame.assign(image=pd.Series(replaced, index=frame.index, dtype=object))


def _in_scoring_server() -> bool:
    """Whether this process is MLflow's scoring server (``mlflow models serve`` sets the flag)."""
    try:
        from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
    except ImportError:  # pragma: no cover
        return False
    return bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())


# --------------------------------------------------------------------------- input encoders


class InputEncoder(Protocol):
    """Turns decoded memes into the batch dict a head model's ``forward`` takes.

    ``pack(source, dest)`` copies what the encoder needs into the model folder and returns its
    section of ``memeops_model.json``; ``load(folder, section, device)`` rebuilds it from there.
    """

    kind: ClassVar[str]

    @classmethod
    def pack(cls, source: Path, dest: Path) -> dict[str, Any]: ...

    @classmethod
    def load(cls, folder: Path, section: Mapping[str, Any], device: str) -> InputEncoder: ...

    def encode(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, Tensor]: ...


def _locate(source: Path, configured: str | None, default: str) -> Path:
    """A file named in a config (absolute, or by name in ``source``) or ``source/default``."""
    candidates = [source / default]
    if configured:
        candidates = [source / Path(configured).name, Path(configured), *candidates]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{default} not found in {source} (also looked for {configured!r})")


class ClipFeatureInputs:
    """The frozen CLIP the feature cache came from: ``{"image_emb", "text_emb"}`` ``[B, D]``.

    Packs from a ``pretrain_clip``-style folder (``clip_config.json`` + weights + ``tokenizer.json``).
    The packed config keeps file *names*; paths are resolved against the folder when loading, and
    since ``spec_key`` hashes content, not paths, the packed encoder has the same ``spec_key`` as
    the one that filled the feature cache (recorded in the section for lineage).
    """

    kind: ClassVar[str] = "clip_features"
    CONFIG_FILE: ClassVar[str] = "clip_config.json"
    TOKENIZER_FILE: ClassVar[str] = "tokenizer.json"

    def __init__(self, encoder: ClipEncoder):
        self.encoder = encoder

    @classmethod
    def pack(cls, source: Path, dest: Path) -> dict[str, Any]:
        config_path = source / cls.CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{source} has no {cls.CONFIG_FILE}: pass the pretrain_clip output folder "
                "(clip.safetensors, tokenizer.json, clip_config.json)"
            )
        cfg = ClipEncoderConfig.model_validate_json(config_path.read_text(encoding="utf-8"))
        if cfg.pretrained or not cfg.weights:
            raise ValueError("packing a CLIP needs a local weights file in clip_config.json (weights=...)")
        dest.mkdir(parents=True, exist_ok=True)
        weights = _locate(source, cfg.weights, "clip.safetensors")
        weights_name = "clip" + weights.suffix
        shutil.copyfile(weights, dest / weights_name)
        tokenizer_name = None
        if cfg.tokenizer == "corpus":
            tokenizer = _locate(weights.parent, cfg.tokenizer_path, cls.TOKENIZER_FILE)
            tokenizer_name = cls.TOKENIZER_FILE
            shutil.copyfile(tokenizer, dest / tokenizer_name)
        packed = cfg.model_copy(
            update={"weights": weights_name, "tokenizer_path": tokenizer_name, "cache_dir": None}
        )
        (dest / cls.CONFIG_FILE).write_text(packed.model_dump_json(indent=2), encoding="utf-8")
        encoder = cls._load_encoder(dest, "cpu")
        return {"kind": cls.kind, "spec_key": encoder.spec_key, "dim": encoder.dim}

    @classmethod
    def _load_encoder(cls, folder: Path, device: str) -> ClipEncoder:
        cfg = ClipEncoderConfig.model_validate_json((folder / cls.CONFIG_FILE).read_text(encoding="utf-8"))
        paths = {"weights": str(folder / (cfg.weights or "clip.safetensors"))}
        if cfg.tokenizer_path:
            paths["tokenizer_path"] = str(folder / cfg.tokenizer_path)
        return load_clip(cfg.model_copy(update=paths), device=device)

    @classmethod
    def load(cls, folder: Path, section: Mapping[str, Any], device: str) -> ClipFeatureInputs:
        return cls(cls._load_encoder(folder, device))

    def encode(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, Tensor]:
        return {"image_emb": self.encoder.encode_images(images), "text_emb": self.encoder.encode_texts(texts)}


#: kind in ``memeops_model.json`` -> input encoder class. MGMCF / the VLM add theirs here.
INPUT_ENCODERS: dict[str, type[InputEncoder]] = {ClipFeatureInputs.kind: ClipFeatureInputs}


#: input encoders living beside their model family, imported on first use.
LAZY_INPUT_ENCODERS: dict[str, str] = {"mgmcf": "memeops.data.mgmcf_inputs:MgmcfInputEncoder"}


def _input_encoder(kind: str) -> type[InputEncoder]:
    if kind not in INPUT_ENCODERS and kind in LAZY_INPUT_ENCODERS:
        import importlib

        module, name = LAZY_INPUT_ENCODERS[kind].split(":")
        INPUT_ENCODERS[kind] = getattr(importlib.import_module(module), name)
    try:
        return INPUT_ENCODERS[kind]
    except KeyError:
        raise ValueError(f"unknown input encoder {kind!r}; known: {', '.join(INPUT_ENCODERS)}") from None


# --------------------------------------------------------------------------- outputs


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


# --------------------------------------------------------------------------- the predictor


def _read_spec(folder: Path) -> dict[str, Any]:
    path = folder / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a memeops model folder (no {SPEC_FILE})")
    spec = json.loads(path.read_text(encoding="utf-8"))
    if spec.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {spec.get('format')!r} not supported (expected {FORMAT_VERSION})")
    return spec


def _specs(spec: Mapping[str, Any]) -> list[TaskSpec]:
    return [TaskSpec(t["name"], t["kind"], tuple(t["labels"])) for t in spec["tasks"]]


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
        from safetensors.torch import load_model

        from memeops.models.factory import build_model

        folder = Path(folder)
        spec = _read_spec(folder)
        specs = _specs(spec)
        head = build_model(spec["model"]["name"], spec["model"]["config"], specs)
        load_model(head, str(folder / HEAD_FILE), strict=True)
        section = spec["inputs"]
        inputs = _input_encoder(section["kind"]).load(
            folder / section.get("dir", ENCODER_DIR), section, device
        )
        return cls(inputs, head, specs, device=device, batch_size=batch_size)

    @torch.inference_mode()
    def predict_proba(self, frame: Any) -> dict[str, np.ndarray]:
        """``{task: float [N, L]}`` (softmax / sigmoid) for the rows of ``frame``, in order."""
        frame = check_input_frame(frame)
        images_col, texts_col = frame["image"].tolist(), frame["text"].tolist()
        texts = [_text(t, i) for i, t in enumerate(texts_col)]  # cheap: fail before any compute
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
    (:class:`memeops.vlm.serve.VLMPredictor`), by the folder's ``memeops_model.json``."""
    if _read_spec(Path(folder))["model"]["name"] == "vlm":
        from memeops.vlm.serve import VLMPredictor

        return VLMPredictor.from_dir(folder, device=device)
    return MemePredictor.from_dir(folder, device=device, batch_size=batch_size)


class MemePyfunc(_PythonModel):  # type: ignore[misc,valid-type]
    """``mlflow.pyfunc`` face of :class:`MemePredictor`; the folder is the ``model_dir`` artifact.

    ``model_config`` (at log time, ``mlflow.pyfunc.load_model(uri, model_config=...)``, or for a
    server the ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` JSON environment variable): ``device`` (default
    "cpu"), ``batch_size`` (default 32), ``max_image_bytes`` / ``max_image_pixels`` (defaults
    :data:`DEFAULT_MAX_IMAGE_BYTES` / :data:`DEFAULT_MAX_IMAGE_PIXELS`; 0 = no limit) and
    ``allow_image_paths`` (None = file paths are accepted except inside MLflow's scoring server,
    where ``image`` must be base64).

    Bad input raises :class:`ServedInputError`: a ``ValueError`` with the library's one-line
    message that is also an ``MlflowException`` (``INVALID_PARAMETER_VALUE``), so
    ``mlflow models serve`` answers HTTP 400 with that message.
    """

    def load_context(self, context: Any) -> None:
        cfg = dict(getattr(context, "model_config", None) or {})
        self.predictor = open_predictor(
            context.artifacts[ARTIFACT_KEY], device=str(cfg.get("device", "cpu")),
            batch_size=int(cfg.get("batch_size", 32)),
        )  # fmt: skip
        self.max_image_bytes = _limit(cfg.get("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES))
        self.max_image_pixels = _limit(cfg.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        self.allow_image_paths = cfg.get("allow_image_paths")

    # ``pd.DataFrame`` hints on purpose: MLflow 3 warns without hints and rejects most others
    # (``Any``); a DataFrame hint adds no conversion, the schema comes from the input example.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        paths = self.allow_image_paths
        base64_only = _in_scoring_server() if paths is None else not bool(paths)
        try:
            frame = check_image_limits(
                check_input_frame(model_input), max_bytes=self.max_image_bytes,
                max_pixels=self.max_image_pixels, base64_only=base64_only,
            )  # fmt: skip
            return self.predictor.predict(frame)
        except MemeInputError as exc:
            raise ServedInputError(str(exc)) from None


# --------------------------------------------------------------------------- packing and logging


def example_image_b64(image: str | Path | bytes | Image.Image | None = None, size: int = 32) -> str:
    """Base64 PNG for an input example: ``image`` (path, bytes or PIL), or a generated ``size``-px
    picture (a real decodable image, so MLflow's offline example validation runs the model)."""
    if image is None:
        grid = np.indices((size, size)).sum(axis=0)
        pixels = np.stack([grid * 4 % 256, grid * 7 % 256, np.full_like(grid, 128)], axis=-1)
        image = Image.fromarray(pixels.astype(np.uint8))
    elif not isinstance(image, Image.Image):
        image = decode_image(image if isinstance(image, bytes) else Path(image))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def example_frame(
    image: str | Path | bytes | Image.Image | None = None, text: str = "when the code works"
) -> pd.DataFrame:
    """A one-row input frame (base64 image + caption) for examples, signatures and smoke checks."""
    return pd.DataFrame({"image": [example_image_b64(image)], "text": [text]})


@contextmanager
def staged_model_dir(directory: str | Path) -> Iterator[Path]:
    """A staging folder beside ``directory`` that becomes ``directory`` when the block succeeds
    (never a half-written model) and is removed when it fails; a non-empty ``directory`` is refused."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"model folder {directory} exists and is not empty")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it owner-only; a model folder is meant to be shared
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_spec(
    folder: Path, model_name: str, config: Mapping[str, Any], specs: Sequence[TaskSpec], inputs: Mapping[str, Any],
    input_columns: Sequence[str] = INPUT_COLUMNS,
) -> dict[str, Any]:  # fmt: skip
    """Write ``memeops_model.json`` (the contract :func:`open_predictor` reads); returns it."""
    from memeops import __version__

    spec = {
        "format": FORMAT_VERSION,
        "memeops_version": __version__,
        "model": {"name": model_name, "config": dict(config)},
        "tasks": [{"name": s.name, "kind": s.kind, "labels": list(s.labels)} for s in specs],
        "inputs": dict(inputs),
        "input_columns": list(input_columns),
    }
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return spec


def save_model_dir(
    directory: str | Path, head_model: nn.Module, model_name: str, model_cfg: Mapping[str, Any] | BaseModel,
    specs: Sequence[TaskSpec], clip_dir: str | Path | None, *, verify: bool = True,
    inputs_packer: Callable[[Path], dict[str, Any]] | None = None,
) -> Path:  # fmt: skip
    """Write a self-contained model folder (layout in the module docstring); returns its path.

    The head's weights are loaded strictly into a fresh ``build_model(model_name, model_cfg,
    specs)`` first, so a folder whose spec does not rebuild its weights can never be written. The
    folder is assembled next to ``directory`` and renamed into place (no half-written model); an
    existing non-empty ``directory`` is refused. ``verify`` loads the result and predicts one
    example meme (catches, e.g., a head trained on a different CLIP width).

    The input encoder is the CLIP in ``clip_dir`` (``clip_features``) unless ``inputs_packer`` is
    given: ``inputs_packer(dest) -> section`` packs another family's encoder (MGMCF's) into ``dest``.
    """
    from safetensors.torch import save_model

    from memeops.models.factory import build_model, model_config_class

    directory = Path(directory)
    config = (
        model_cfg
        if isinstance(model_cfg, BaseModel)
        else model_config_class(model_name).model_validate(model_cfg)
    )
    config_json = config.model_dump(mode="json")
    fresh = build_model(model_name, config_json, list(specs))
    state = {k: v.detach().cpu() for k, v in head_model.state_dict().items()}
    try:
        fresh.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"head weights do not fit {model_name} with this config / task specs: {_one_line(exc)[:300]}"
        ) from None
    with staged_model_dir(directory) as staging:
        save_model(fresh, str(staging / HEAD_FILE))
        if inputs_packer is not None:
            section = {**inputs_packer(staging / ENCODER_DIR), "dir": ENCODER_DIR}
        elif clip_dir is not None:
            section = {**ClipFeatureInputs.pack(Path(clip_dir), staging / ENCODER_DIR), "dir": ENCODER_DIR}
        else:
            raise ValueError("save_model_dir needs clip_dir or inputs_packer")
        write_spec(staging, model_name, config_json, specs, section)
        if verify:
            try:
                MemePredictor.from_dir(staging).predict(example_frame())
            except RuntimeError as exc:  # e.g. a head trained on features of another width
                raise ValueError(
                    f"packed model fails on an example meme (does {model_name} fit this encoder, "
                    f"dim {section.get('dim')}?): {_one_line(exc)[:300]}"
                ) from None
    return directory


def pinned_requirements(names: Sequence[str] = REQUIREMENTS) -> list[str]:
    """``name==version`` for each installed distribution in ``names`` (missing ones skipped)."""
    pins = []
    for name in names:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        pins.append(f"{name}=={version.split('+')[0]}")
    return pins


def _stage_package(tmp: Path) -> Path:
    """A clean copy of the ``memeops`` package (no ``__pycache__``) to ship as ``code_paths``."""
    import memeops

    source = Path(memeops.__file__).parent
    dest = tmp / "memeops"
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
    return dest


# "Models from code": MLflow stores this script instead of a cloudpickle of the model object, so
# loading runs plain imports from the shipped package (no pickle, no cloudpickle version coupling).
_ENTRY_SCRIPT = """\
from mlflow.models import set_model

from memeops.tracking.pyfunc import MemePyfunc

set_model(MemePyfunc())
"""


def log_pyfunc(
    model_dir: str | Path, registered_model_name: str | None = None,
    input_example_image: str | Path | bytes | Image.Image | None = None, *,
    name: str = "model", model_config: Mapping[str, Any] | None = None,
) -> ModelInfo:  # fmt: skip
    """Log ``model_dir`` as an MLflow pyfunc model ``name`` (in the active run, if any).

    Signature inferred from a one-row example (a real base64 PNG: ``input_example_image`` or a
    generated one) and this predictor's own output for it; pinned ``pip_requirements`` (skips
    MLflow's slow inference); ``code_paths`` = a copy of the ``memeops`` package. With
    ``registered_model_name`` the model is also registered (version in
    ``info.registered_model_version``); aliases are :mod:`memeops.tracking.registry`'s job.
    """
    import mlflow
    from mlflow.models import infer_signature

    model_dir = Path(model_dir).resolve()
    spec = _read_spec(model_dir)
    example = example_frame(input_example_image)
    signature = infer_signature(example, open_predictor(model_dir).predict(example))
    with tempfile.TemporaryDirectory(prefix="memeops-code-") as tmp:
        entry = Path(tmp) / "memeops_pyfunc_entry.py"
        entry.write_text(_ENTRY_SCRIPT, encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(entry),
            artifacts={ARTIFACT_KEY: str(model_dir)},
            code_paths=[str(_stage_package(Path(tmp)))],
            signature=signature,
            input_example=example,
            pip_requirements=pinned_requirements(REQUIREMENTS + EXTRA_REQUIREMENTS.get(spec["inputs"]["kind"], ())),
            registered_model_name=registered_model_name,
            # MLflow only lets load_model(model_config=...) override keys logged here: log both.
            model_config={
                "device": "cpu",
                "batch_size": 32,
                "max_image_bytes": DEFAULT_MAX_IMAGE_BYTES,
                "max_image_pixels": DEFAULT_MAX_IMAGE_PIXELS,
                "allow_image_paths": None,
                **(model_config or {}),
            },
            metadata={
                "memeops_model": spec["model"]["name"],
                "tasks": [t["name"] for t in spec["tasks"]],
                "input_encoder": spec["inputs"]["kind"],
            },
        )


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
            import mlflow

            return mlflow.pyfunc.load_model(str(path), model_config={"device": device})
        raise ValueError(
            f"{path} is neither a memeops model folder ({SPEC_FILE}) nor an MLflow model (MLmodel)"
        )
    if _URI.match(text) and not re.match(r"^[A-Za-z]:[\\/]", text):
        import mlflow

        return mlflow.pyfunc.load_model(text, model_config={"device": device})
    raise FileNotFoundError(
        f"model {text!r} not found: give a model folder or an MLflow URI such as models:/NAME@ALIAS"
    )
