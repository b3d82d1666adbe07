"""Frozen text encoders that give a global text feature *and* per-token states (MGMCF's inputs).

* ``clip`` (default): the pipeline's CLIP text tower. Tokens are the final-layer states after
  ``ln_final`` projected by ``text_projection`` (the same space as the pooled embedding); the
  global feature is the pooled, L2-normalised embedding (identical to the feature cache's).
* ``hf``: a Hugging Face encoder (e.g. multilingual BERT or XLM-R, as the released MGMCF code uses
  for bilingual MET-MEME) from a local folder: ``AutoTokenizer`` + ``AutoModel`` with
  ``local_files_only=True``; tokens are ``last_hidden_state``; the global feature is the [CLS]
  state (``pooling="cls"``) or the masked mean (``"mean"``). ``trust_remote_code`` stays off
  unless the config sets it.

``encode(texts) -> TextFeatures(global_ [B, D], tokens [B, T, D], mask [B, T])`` with T =
``max_length`` exactly (padded / truncated), so batches of any texts stack.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor


class TextEncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["clip", "hf"] = "clip"
    path: str | None = None  # hf: local folder with config, weights and tokenizer
    max_length: int = Field(24, ge=1)  # T (SynthMeme's longest caption: 19 corpus tokens)
    pooling: Literal["cls", "mean"] = "cls"  # hf only
    trust_remote_code: bool = False  # hf only; never on by default
    batch_size: int = 256

    @model_validator(mode="after")
    def _check(self) -> TextEncoderConfig:
        if self.kind == "hf" and not self.path:
            raise ValueError("text_encoder.kind=hf needs path (a local Hugging Face model folder)")
        return self


@dataclass
class TextFeatures:
    global_: Tensor  # float32 [B, D]
    tokens: Tensor  # float32 [B, T, D]
    mask: Tensor  # bool [B, T]


class TextTokenEncoder(Protocol):
    dim: int
    spec_key: str
    config: TextEncoderConfig

    def encode(self, texts: Sequence[str]) -> TextFeatures: ...


def _fit_length(tokens: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Zero the masked positions, then pad (zeros, mask False) or truncate the token axis to exactly
    ``length``: padding never carries values, whatever the encoder computed there."""
    tokens = tokens * mask.unsqueeze(-1).to(tokens.dtype)
    t = tokens.shape[1]
    if t >= length:
        return tokens[:, :length], mask[:, :length]
    pad = length - t
    return F.pad(tokens, (0, 0, 0, pad)), F.pad(mask, (0, pad), value=False)


class ClipTextTokens:
    """Token states of an open_clip ``CLIP`` text tower (causal mask, <eot> pooling)."""

    def __init__(self, encoder: object, cfg: TextEncoderConfig):
        import open_clip

        model = encoder.model  # type: ignore[attr-defined]
        if not isinstance(model, open_clip.CLIP) or getattr(model, "text_pool_type", None) not in ("argmax", "eos"):
            raise ValueError("text_encoder.kind=clip needs an open_clip CLIP text tower with <eot> pooling")
        self.encoder = encoder
        self.config = cfg
        self.dim = int(encoder.dim)  # type: ignore[attr-defined]
        self.spec_key = f"clip-{encoder.spec_key}-T{cfg.max_length}"  # type: ignore[attr-defined]

    def _encode_chunk(self, chunk: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        model = self.encoder.model  # type: ignore[attr-defined]
        ids = self.encoder.tokenize(chunk).to(self.encoder.device)  # type: ignore[attr-defined]
        last = ids.argmax(dim=-1) if model.text_pool_type == "argmax" else (ids == model.text_eos_id).int().argmax(-1)
        n = int(last.max()) + 1  # states up to the last <eot> never see later padding (causal mask)
        ids = ids[:, :n]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(ids).to(cast) + model.positional_embedding[:n].to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
        states = (x @ model.text_projection).float()  # [B, n, D]
        pooled = F.normalize(states[torch.arange(len(chunk)), last], dim=-1)
        return pooled, states, torch.arange(n, device=ids.device)[None, :] <= last[:, None]

    def encode(self, texts: Sequence[str]) -> TextFeatures:
        return encode_in_chunks(self, texts)


class HFTextTokens:
    """A local Hugging Face encoder (BERT / XLM-R style), frozen, in eval mode."""

    def __init__(self, cfg: TextEncoderConfig, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = Path(str(cfg.path))
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder folder {path} not found (text_encoder.path)")
        kwargs = {"local_files_only": True, "trust_remote_code": cfg.trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        self.device = torch.device(device)
        self.model = AutoModel.from_pretrained(str(path), **kwargs).to(self.device).eval().requires_grad_(False)
        self.config = cfg
        self.dim = int(self.model.config.hidden_size)
        digest = hashlib.sha256()
        for name in sorted(p.name for p in path.iterdir() if p.is_file()):
            digest.update(name.encode())
            digest.update((path / name).read_bytes())
        payload = json.dumps(cfg.model_dump(exclude={"path", "batch_size"}), sort_keys=True).encode()
        self.spec_key = f"hf-{hashlib.sha256(digest.digest() + payload).hexdigest()[:16]}"

    def _encode_chunk(self, chunk: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        enc = self.tokenizer([t or "" for t in chunk], padding="max_length", truncation=True,
                             max_length=self.config.max_length, return_tensors="pt").to(self.device)  # fmt: skip
        states = self.model(**enc).last_hidden_state.float()  # [B, T, H]
        mask = enc["attention_mask"].bool()
        if self.config.pooling == "cls":
            return states[:, 0], states, mask
        m = mask.unsqueeze(-1).float()
        return (states * m).sum(1) / m.sum(1).clamp_min(1.0), states, mask

    def encode(self, texts: Sequence[str]) -> TextFeatures:
        return encode_in_chunks(self, texts)


@torch.inference_mode()
def encode_in_chunks(encoder: ClipTextTokens | HFTextTokens, texts: Sequence[str]) -> TextFeatures:
    """Run ``encoder._encode_chunk`` over ``config.batch_size`` texts at a time; tokens padded or
    truncated to exactly ``config.max_length``; everything on CPU."""
    cfg = encoder.config
    out_g, out_t, out_m = [], [], []
    for start in range(0, len(texts), cfg.batch_size):
        pooled, states, mask = encoder._encode_chunk(list(texts[start : start + cfg.batch_size]))
        tokens, mask = _fit_length(states, mask, cfg.max_length)
        out_g.append(pooled.cpu())
        out_t.append(tokens.cpu())
        out_m.append(mask.cpu())
    if not out_g:
        return TextFeatures(torch.zeros(0, encoder.dim), torch.zeros(0, cfg.max_length, encoder.dim),
                            torch.zeros(0, cfg.max_length, dtype=torch.bool))  # fmt: skip
    return TextFeatures(torch.cat(out_g), torch.cat(out_t), torch.cat(out_m))


def load_text_encoder(cfg: TextEncoderConfig, clip_encoder: object | None = None, device: str = "cpu") -> TextTokenEncoder:
    """The configured encoder; ``clip`` needs the loaded pipeline CLIP."""
    if cfg.kind == "hf":
        return HFTextTokens(cfg, device)
    if clip_encoder is None:
        raise ValueError("text_encoder.kind=clip needs the pipeline's CLIP encoder")
    return ClipTextTokens(clip_encoder, cfg)
