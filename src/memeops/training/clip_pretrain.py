"""Stage ``pretrain_clip``: a small CLIP trained contrastively on the TRAIN memes, offline.

No CLIP weights can be downloaded, so the default pipeline makes its own frozen encoder: the
corpus tokenizer (``models/text_tokenizer.py``) and ``memeops-tiny`` (``models/clip.py``) are
trained on the train split only (val/test images and captions never shape the encoder), with
open_clip's ``ClipLoss`` and a learnable logit scale, like open_clip's own training loop
(AdamW, no weight decay on gains/biases/logit scale, linear warm-up then cosine, logit scale
clamped at 100).

Pair texts (``text_source``): real CLIP learns from web alt-text that names what is pictured.
SynthMeme captions talk *about* a target and never name the pictured animal, so caption-only
pairs teach the image tower little about objects. With ``"caption+objects"`` (default) we append
an alt-text built from the meme's ground-truth objects in ``extra["objects"]``, e.g.
``"... with a snake, a tree"``; rows without objects (other sources) use the caption alone.
This uses object ground truth of TRAIN memes only, and only to shape the encoder: downstream
features still encode the caption alone (``data/features.py``), so no labels leak into them.

Determinism: fixed seeds, a seeded DataLoader generator and CPU kernels make two runs with the
same inputs produce identical weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from open_clip.loss import ClipLoss
from pydantic import BaseModel, ConfigDict
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from memeops.data.features import ImageFiles, image_paths
from memeops.models.clip import (
    ClipEncoderConfig,
    build_clip_model,
    encode_text,
    eval_transform,
    torch_threads,
)
from memeops.models.text_tokenizer import CorpusTokenizer

WEIGHTS_FILE, TOKENIZER_FILE, CONFIG_FILE = "clip.safetensors", "tokenizer.json", "clip_config.json"


class PretrainConfig(BaseModel):
    """Training knobs; defaults fit the 4-minute budget on the 2-core CPU for ~2000 train memes at 256 px."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = 12  # 1890 SynthMeme train memes: 175 s measured (~210 s at the slowest rate seen)
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 10
    seed: int = 0
    vocab_size: int = 4000
    text_source: Literal["caption", "caption+objects"] = "caption+objects"
    crop_scale: tuple[float, float] = (0.8, 1.0)  # "light" random-resized-crop
    # Decoding workers: 0 vs 2 were within noise here (fp32 84 vs 74 img/s, bf16 133 vs 142); 0 has
    # no worker start-up and leaves the spare core to whatever else runs.
    num_workers: int = 0
    eval_batch_size: int = 256
    # torch intra-op threads while training (restored afterwards); 0 keeps torch's default. On the
    # shared 2-core machine, OpenMP barriers stall whenever another process holds a core: a training
    # step took 6.6 s with 2 threads and 1.65 s with 1 (measured), so 1 is the safe default.
    threads: int = 1
    # "bf16" autocasts matmuls to bfloat16: 1.5x faster here (a CPU with AMX), but emulated and
    # slower on CPUs without bf16 units; "auto" picks bf16 only where /proc/cpuinfo lists amx_bf16.
    precision: Literal["auto", "fp32", "bf16"] = "auto"


# --- pair texts ------------------------------------------------------------------------------------


def _article(name: str) -> str:
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def objects_alt_text(extra: str | dict | None) -> str:
    """``"with a snake, a tree"`` from ``extra["objects"]`` (order kept, duplicates once); "" if none."""
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            return ""
    objects = (extra.get("objects") or []) if isinstance(extra, dict) else []
    names = list(dict.fromkeys(str(o["class"]).replace("_", " ") for o in objects if o.get("class")))
    return f"with {', '.join(_article(n) for n in names)}" if names else ""


def pair_texts(memes: pd.DataFrame, text_source: str) -> list[str]:
    """The text paired with each meme's image for contrastive training and recall."""
    captions = memes["text"].fillna("").astype(str).tolist()
    if text_source == "caption":
        return captions
    extras = memes["extra"].tolist() if "extra" in memes else [None] * len(memes)
    alts = map(objects_alt_text, extras)
    return [f"{cap} {alt}".strip() if alt else cap for cap, alt in zip(captions, alts)]


def train_transform(image_size: int, crop_scale: tuple[float, float]) -> T.Compose:
    """Light random-resized-crop + horizontal flip, then CLIP normalisation (bicubic, as at eval)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return T.Compose([
        T.RandomResizedCrop(image_size, scale=crop_scale, ratio=(0.9, 1.1),
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
    ])  # fmt: skip


def _loader(ds: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    drop = shuffle and len(ds) > batch_size  # a tiny last batch makes a noisy contrastive step
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop, num_workers=workers,
                      generator=gen, persistent_workers=workers > 0)  # fmt: skip


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on CPUs with AMX bf16 tiles (Linux), else ``fp32``."""
    if precision != "auto":
        return precision
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return "fp32"
    return "bf16" if " amx_bf16" in flags else "fp32"


# --- optimisation ------------------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's split: no decay on gains, biases and the logit scale (ndim < 2)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up to 1 over ``warmup`` steps, cosine to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _train_epoch(
    model: nn.Module, loader: DataLoader, tokens: Tensor, loss_fn: ClipLoss, opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler, precision: str,
) -> tuple[float, int]:  # fmt: skip
    """One pass; returns (mean loss, images seen).

    Attention runs on SDPA's math kernel: for these short sequences (65 image / <=48 text tokens)
    it was faster on CPU than the flash kernel, whose backward dominated the step.
    """
    losses, seen = [], 0
    for images, idx in loader:
        with sdpa_kernel(SDPBackend.MATH), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            img = model.encode_image(images, normalize=True)  # [B, D]
            txt = encode_text(model, tokens[idx], normalize=True)  # [B, D]
            loss = loss_fn(img.float(), txt.float(), model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        seen += len(idx)
    return (float(np.mean(losses)) if losses else float("nan")), seen


# --- evaluation ----------------------------------------------------------------------------------------


@torch.inference_mode()
def embed_pairs(
    model: nn.Module, paths: Sequence[Path], tokens: Tensor, preprocess: Any, batch_size: int, workers: int
) -> tuple[Tensor, Tensor]:
    """L2-normalised ``([N, D] image, [N, D] text)`` embeddings with the eval transform."""
    model.eval()
    imgs, txts = [], []
    for images, idx in _loader(ImageFiles(paths, preprocess), batch_size, False, workers, 0):
        imgs.append(model.encode_image(images, normalize=True))
        txts.append(encode_text(model, tokens[idx], normalize=True))
    return torch.cat(imgs).float(), torch.cat(txts).float()


def _ranks(sim: Tensor, correct: Tensor) -> Tensor:
    """Rank of the best correct item per row: how many wrong items score >= it (ties count against)."""
    best = sim.masked_fill(~correct, float("-inf")).max(dim=1, keepdim=True).values
    return ((sim >= best) & ~correct).sum(dim=1)


def retrieval_recall(
    img: Tensor, txt: Tensor, texts: Sequence[str], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Image→text and text→image recall@k over N pairs (chance recall@1 ≈ 1/N).

    Pairs with the *same* text are interchangeable (no model can tell them apart from the text
    side), so any of them counts as correct; ties with a wrong item count as misses, so a
    collapsed model (all embeddings equal) scores 0, not 1.
    """
    codes = pd.factorize(pd.Series(list(texts)))[0]
    same = torch.as_tensor(codes[:, None] == codes[None, :])  # [N, N] bool
    sim = img @ txt.T  # [N images, N texts]
    i2t, t2i = _ranks(sim, same), _ranks(sim.T, same)
    out: dict[str, float] = {}
    for k in ks:
        out[f"val_i2t_r{k}"] = float((i2t < k).float().mean())
        out[f"val_t2i_r{k}"] = float((t2i < k).float().mean())
    return out


# --- the stage ---------------------------------------------------------------------------------------


def _output_config(
    enc_cfg: ClipEncoderConfig, out_dir: Path, vocab_size: int, seed: int
) -> ClipEncoderConfig:
    if enc_cfg.pretrained or enc_cfg.tokenizer != "corpus":
        raise ValueError("pretrain_clip trains from scratch: unset pretrained and use tokenizer='corpus'")
    data = enc_cfg.model_dump()
    data.update(weights=str(out_dir / WEIGHTS_FILE), tokenizer_path=str(out_dir / TOKENIZER_FILE),
                vocab_size=vocab_size, init_seed=seed)  # fmt: skip
    return ClipEncoderConfig.model_validate(data)


def _save(model: nn.Module, tokenizer: CorpusTokenizer, cfg: ClipEncoderConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"arch": cfg.arch})
    tokenizer.save(out_dir / TOKENIZER_FILE)
    (out_dir / CONFIG_FILE).write_text(cfg.model_dump_json(indent=2), encoding="utf-8")


def pretrain_clip(
    memes: pd.DataFrame, cfg: PretrainConfig, enc_cfg: ClipEncoderConfig, out_dir: str | Path
) -> dict[str, Any]:
    """Train tokenizer + CLIP on the TRAIN split, report val recall, write the three files.

    Returns ``val_{i2t,t2i}_r{1,5}``, ``val_pairs``, ``chance_r1``, ``history`` (``train_loss``
    per epoch), ``images_per_s`` (training throughput), timings and sizes.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    train = memes[memes["split"] == "train"].reset_index(drop=True)
    val = memes[memes["split"] == "val"].reset_index(drop=True)
    if train.empty:
        raise ValueError("pretrain_clip needs TRAIN-split memes; none found")
    train_texts, val_texts = pair_texts(train, cfg.text_source), pair_texts(val, cfg.text_source)

    tokenizer = CorpusTokenizer.train(train_texts, cfg.vocab_size, enc_cfg.context_length)
    out_cfg = _output_config(enc_cfg, out_dir, tokenizer.vocab_size, cfg.seed)  # init from cfg.seed
    model = build_clip_model(out_cfg, tokenizer.vocab_size).train()

    loader = _loader(ImageFiles(image_paths(train), train_transform(out_cfg.image_size, cfg.crop_scale)),
                     cfg.batch_size, True, cfg.num_workers, cfg.seed)  # fmt: skip
    total_steps = max(1, cfg.epochs * len(loader))
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, total_steps))
    loss_fn, tokens = ClipLoss(), tokenizer(train_texts, out_cfg.context_length)

    precision = resolve_precision(cfg.precision)
    history, seen, t_train = [], 0, time.perf_counter()
    with torch_threads(cfg.threads):
        for _epoch in range(cfg.epochs):
            loss, n = _train_epoch(model, loader, tokens, loss_fn, opt, sched, precision)
            history.append(loss)
            seen += n
        train_s = time.perf_counter() - t_train
        metrics: dict[str, Any] = {f"val_{d}_r{k}": None for d in ("i2t", "t2i") for k in (1, 5)}
        if not val.empty:
            val_tokens = tokenizer(val_texts, out_cfg.context_length)
            preprocess = eval_transform(model, out_cfg.image_size)
            img, txt = embed_pairs(model, image_paths(val), val_tokens, preprocess, cfg.eval_batch_size,
                                   cfg.num_workers)  # fmt: skip
            metrics.update(retrieval_recall(img, txt, val_texts))
    _save(model, tokenizer, out_cfg, out_dir)
    metrics.update(
        val_pairs=len(val), chance_r1=(1.0 / len(val)) if len(val) else None, train_pairs=len(train),
        history={"train_loss": history}, images_per_s=seen / train_s if train_s > 0 else None,
        train_seconds=train_s, seconds=time.perf_counter() - start, steps=total_steps,
        vocab_size=tokenizer.vocab_size, precision=precision, logit_scale=model.logit_scale.exp().item(),
    )  # fmt: skip
    return metrics
