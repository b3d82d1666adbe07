"""Packing a model folder and serving it as an MLflow pyfunc model.

:func:`save_model_dir` writes a head model's self-contained folder (layout in
:mod:`memeops.serving.folder`); :class:`MemePyfunc` is :func:`~memeops.serving.predictor.open_predictor`
as an ``mlflow.pyfunc`` model, and :func:`log_pyfunc` logs a folder as one artifact with the
``memeops`` package as ``code_paths``, so a fresh process (or ``mlflow models serve``) can load it.

Models logged before the serving re-cut name ``memeops.tracking.pyfunc.MemePyfunc`` in their
entry script; :mod:`memeops.tracking.pyfunc` keeps that name importable.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import BaseModel
from safetensors.torch import save_model
from torch import nn

from memeops.models.base import TaskSpec
from memeops.models.factory import build_model, model_config_class
from memeops.serving.folder import (
    ENCODER_DIR,
    HEAD_FILE,
    ClipFeatureInputs,
    read_spec,
    staged_model_dir,
    task_specs,
    write_spec,
)
from memeops.serving.inputs import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    MemeInputError,
    check_image_limits,
    check_input_frame,
    example_frame,
    image_limit,
    one_line,
)
from memeops.serving.predictor import MemePredictor, format_predictions, open_predictor

try:  # the folder-level predictor works without mlflow (e.g. on a bare GPU box)
    from mlflow.exceptions import MlflowException as _MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE as _INVALID_PARAMETER_VALUE
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover - mlflow is a project dependency
    _PythonModel = object  # type: ignore[assignment,misc]
    _MlflowException = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

ARTIFACT_KEY = "model_dir"
#: Distributions a loading environment needs, pinned to the versions installed when logging (local
#: version labels such as ``+cu128`` dropped: they are not installable from the registry).
REQUIREMENTS = (
    "mlflow", "torch", "torchvision", "open_clip_torch", "timm", "safetensors",
    "tokenizers", "numpy", "pandas", "pillow", "pydantic",
)  # fmt: skip
#: what an input encoder needs beyond REQUIREMENTS (MGMCF: the detector, HF text encoders)
EXTRA_REQUIREMENTS: dict[str, tuple[str, ...]] = {"mgmcf": ("ultralytics", "transformers"), "vlm": ("transformers",)}


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


def _in_scoring_server() -> bool:
    """Whether this process is MLflow's scoring server (``mlflow models serve`` sets the flag)."""
    try:
        from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
    except ImportError:  # pragma: no cover
        return False
    return bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())


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
        self.max_image_bytes = image_limit(cfg.get("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES))
        self.max_image_pixels = image_limit(cfg.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
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


def save_model_dir(
    directory: str | Path, head_model: nn.Module, model_name: str, model_cfg: Mapping[str, Any] | BaseModel,
    specs: Sequence[TaskSpec], clip_dir: str | Path | None, *, verify: bool = True,
    inputs_packer: Callable[[Path], dict[str, Any]] | None = None,
) -> Path:  # fmt: skip
    """Write a self-contained model folder (layout in :mod:`memeops.serving.folder`); returns its path.

    The head's weights are loaded strictly into a fresh ``build_model(model_name, model_cfg,
    specs)`` first, so a folder whose spec does not rebuild its weights can never be written. The
    folder is assembled next to ``directory`` and renamed into place (no half-written model); an
    existing non-empty ``directory`` is refused. ``verify`` loads the result and predicts one
    example meme (catches, e.g., a head trained on a different CLIP width).

    The input encoder is the CLIP in ``clip_dir`` (``clip_features``) unless ``inputs_packer`` is
    given: ``inputs_packer(dest) -> section`` packs another family's encoder (MGMCF's) into ``dest``.
    """
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
            f"head weights do not fit {model_name} with this config / task specs: {one_line(exc)[:300]}"
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
                    f"dim {section.get('dim')}?): {one_line(exc)[:300]}"
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


def example_output(model_dir: Path, spec: Mapping[str, Any], example: pd.DataFrame) -> pd.DataFrame:
    """An answer of the folder's predictor to ``example``, for the signature (its columns and types).

    A head model's table is fixed by its task specs (:func:`format_predictions`'s columns and
    dtypes), so it is built from placeholder probabilities without loading the model: the folder
    was verified on an example meme when packed, and MLflow runs the logged model on the example
    when logging it. Other predictors (the VLM's) are run on the example.
    """
    if spec["model"]["name"] == "vlm":
        return open_predictor(model_dir).predict(example)
    specs = task_specs(spec)
    return format_predictions({s.name: np.full((len(example), s.num_labels), 0.5) for s in specs}, specs)


# "Models from code": MLflow stores this script instead of a cloudpickle of the model object, so
# loading runs plain imports from the shipped package (no pickle, no cloudpickle version coupling).
_ENTRY_SCRIPT = """\
from mlflow.models import set_model

from memeops.serving.pyfunc import MemePyfunc

set_model(MemePyfunc())
"""


def log_pyfunc(
    model_dir: str | Path, registered_model_name: str | None = None,
    input_example_image: str | Path | bytes | Image.Image | None = None, *,
    name: str = "model", model_config: Mapping[str, Any] | None = None,
) -> ModelInfo:  # fmt: skip
    """Log ``model_dir`` as an MLflow pyfunc model ``name`` (in the active run, if any).

    Signature inferred from a one-row example (a real base64 PNG: ``input_example_image`` or a
    generated one) and the predictor's output table for it (:func:`example_output`); pinned ``pip_requirements`` (skips
    MLflow's slow inference); ``code_paths`` = a copy of the ``memeops`` package. With
    ``registered_model_name`` the model is also registered (version in
    ``info.registered_model_version``); aliases are :mod:`memeops.tracking.registry`'s job.
    """
    import mlflow  # here, not on top: this module imports without mlflow (the try above)
    from mlflow.models import infer_signature

    model_dir = Path(model_dir).resolve()
    spec = read_spec(model_dir)
    example = example_frame(input_example_image)
    signature = infer_signature(example, example_output(model_dir, spec, example))
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
