"""The self-contained model folder: its layout and ``memeops_model.json`` contract, atomic
writing, and the default input encoder (the packed frozen CLIP of GatedCLIP and the baselines).

Training runs on cached CLIP features, but a user has an image and a caption. A packed model
therefore carries its own input encoder next to the trained head::

    <model_dir>/
      memeops_model.json   format, head model name + config, task specs, input-encoder section
      head.safetensors     the trained head's weights (strictly loaded into build_model(...))
      encoder/             the input encoder's files; for "clip_features":
        clip.safetensors, tokenizer.json (corpus tokenizer), clip_config.json (relative paths),
        text_encoder/ (only with ``encoders.text`` kind path: the sentence encoder's folder; kind
        package names the installed package instead, which must be installed where it is served)

An input encoder (:class:`InputEncoder`) turns decoded PIL images + texts into the batch dict its
head takes; ``memeops_model.json`` names which one a folder uses (``inputs.kind``). MGMCF's lives
in :mod:`memeops.serving.mgmcf`, the VLM's folder in :mod:`memeops.serving.vlm`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

from PIL import Image
from torch import Tensor

from memeops.config.encoders import SentenceEncoderConfig
from memeops.models.base import TaskSpec
from memeops.models.clip import ClipEncoder, ClipEncoderConfig, load_clip
from memeops.serving.inputs import INPUT_COLUMNS

FORMAT_VERSION = 1
SPEC_FILE = "memeops_model.json"
HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"


# --------------------------------------------------------------------------- the spec file


def read_spec(folder: Path) -> dict[str, Any]:
    """``memeops_model.json`` of a model folder; a one-line error for a missing file or another format."""
    path = folder / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a memeops model folder (no {SPEC_FILE})")
    spec = json.loads(path.read_text(encoding="utf-8"))
    if spec.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {spec.get('format')!r} not supported (expected {FORMAT_VERSION})")
    return spec


def task_specs(spec: Mapping[str, Any]) -> list[TaskSpec]:
    """The task specs recorded in a folder's spec (the heads' output order)."""
    return [TaskSpec(t["name"], t["kind"], tuple(t["labels"])) for t in spec["tasks"]]


def write_spec(
    folder: Path, model_name: str, config: Mapping[str, Any], specs: Sequence[TaskSpec], inputs: Mapping[str, Any],
    input_columns: Sequence[str] = INPUT_COLUMNS,
) -> dict[str, Any]:  # fmt: skip
    """Write ``memeops_model.json`` (the contract :func:`read_spec` reads back); returns it."""
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
    TEXT_ENCODER_DIR: ClassVar[str] = "text_encoder"

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
        update: dict[str, Any] = {"weights": weights_name, "tokenizer_path": tokenizer_name, "cache_dir": None}
        if cfg.text_encoder is not None and cfg.text_encoder.kind == "path":
            update["text_encoder"] = cls._pack_text_folder(cfg.text_encoder, source, dest)
        packed = cfg.model_copy(update=update)
        (dest / cls.CONFIG_FILE).write_text(packed.model_dump_json(indent=2), encoding="utf-8")
        encoder = cls._load_encoder(dest, "cpu")
        return {"kind": cls.kind, "spec_key": encoder.spec_key, **encoder.widths}

    @classmethod
    def _pack_text_folder(cls, text: SentenceEncoderConfig, source: Path, dest: Path) -> SentenceEncoderConfig:
        """Copy a user-supplied sentence encoder folder into the model folder (self-contained, and the
        spec key hashes content, so the copy keys the same features); its path becomes relative.
        A relative path is the project's (cwd), or the source folder's when that is a packed one."""
        folder = Path(str(text.path))
        if not folder.is_absolute() and (source / folder).is_dir():
            folder = source / folder
        shutil.copytree(folder, dest / cls.TEXT_ENCODER_DIR)
        return text.model_copy(update={"path": cls.TEXT_ENCODER_DIR})

    @classmethod
    def _load_encoder(cls, folder: Path, device: str) -> ClipEncoder:
        cfg = ClipEncoderConfig.model_validate_json((folder / cls.CONFIG_FILE).read_text(encoding="utf-8"))
        paths: dict[str, Any] = {"weights": str(folder / (cfg.weights or "clip.safetensors"))}
        if cfg.tokenizer_path:
            paths["tokenizer_path"] = str(folder / cfg.tokenizer_path)
        text = cfg.text_encoder
        if text is not None and text.path and not Path(text.path).is_absolute():
            paths["text_encoder"] = text.model_copy(update={"path": str(folder / text.path)})
        return load_clip(cfg.model_copy(update=paths), device=device)

    @classmethod
    def load(cls, folder: Path, section: Mapping[str, Any], device: str) -> ClipFeatureInputs:
        return cls(cls._load_encoder(folder, device))

    def encode(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, Tensor]:
        return {"image_emb": self.encoder.encode_images(images), "text_emb": self.encoder.encode_texts(texts)}
