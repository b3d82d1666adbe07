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

Caption-preserving term (``caption_ssl_weight``): the image side cannot tell a caption's target
or frame (only its rendered pixels carry them), so the CLIP loss alone teaches the text tower to
attend to the alt-text object words and to *drop* what downstream tasks need. Measured on the
default SynthMeme: a linear probe decodes the caption's target from the caption embedding with
0.71 balanced accuracy at random init but 0.42 after CLIP-only pretraining. We therefore add a
SimCSE-style contrastive term on captions alone (two token-masked views of each caption are
positives, other captions in the batch negatives), which keeps captions distinguishable and
also trains the text tower on the caption-only inputs it sees at feature extraction.

Object-tag term (``object_tag_weight``): the same train-split object ground truth as the
alt-text, given to the image tower directly as a multi-label target of a linear head on its
(unnormalised) embedding, in the manner of tag-supervised image-text pretraining. Measured on the
default SynthMeme (12 epochs): with the contrastive loss alone, with the full or the one-object
alt-text and with a ViT or a ResNet tower, a linear probe read the small key object's family from
image embeddings at 0.35-0.37 balanced accuracy (chance 0.25), although retrieval recall rose;
the image tower matched memes by their large props. The head is discarded after training.

Determinism (docs/reproducibility.md): two runs with the same inputs and params on one machine
write byte-identical files, wherever their output folder is. Every generator is seeded
(:func:`memeops.training.seeding.seed_everything`, the DataLoader's generator and its workers, the
pair draw, the caption masks), torch runs deterministic algorithms, the intra-op thread count is
fixed by ``threads`` (float reductions are split by thread count, so a count taken from the
machine's cores would make the weights depend on the machine), the tokenizer's BPE training is
deterministic (ties broken by pair ids), and the files hold no time and no path: the config names
its weights and tokenizer relative to its own folder. Timings are returned under
:data:`TIMING_KEYS` so that callers can keep them out of outputs that must repeat.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from memeops.data.features import ImageFiles, image_paths
from memeops.data.image_cache import CachedImageFiles
from memeops.models.clip import (
    ClipEncoderConfig,
    build_clip_model,
    encode_text,
    eval_transform,
    torch_threads,
)
from memeops.models.text_tokenizer import CorpusTokenizer
from memeops.training.seeding import seed_everything, seed_worker

WEIGHTS_FILE, TOKENIZER_FILE, CONFIG_FILE = "clip.safetensors", "tokenizer.json", "clip_config.json"
TIMING_KEYS = ("seconds", "train_seconds", "images_per_s")
"""Keys of :func:`pretrain_clip`'s result that measure time: they differ on every run."""


class PretrainConfig(BaseModel):
    """Training knobs; defaults fit the 4-minute budget on the 2-core CPU for ~2000 train memes at 256 px."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = 12  # 1890 SynthMeme train memes: 175 s measured (~210 s at the slowest rate seen)
    batch_size: int = 128
    lr: float = 5e-4
    # Text tower + logit scale learning rate (None: ``lr``). The conv image tower wants a higher rate
    # than the transformer: at lr 2e-3 for both, the caption-target probe fell from ~0.88 to ~0.75.
    text_lr: float | None = None
    weight_decay: float = 0.1
    warmup_steps: int = 10
    seed: int = 0
    vocab_size: int = 4000
    text_source: Literal["caption", "caption+objects", "caption+object"] = "caption+object"
    crop_scale: tuple[float, float] = (0.8, 1.0)  # "light" random-resized-crop
    # Caption-preserving term (SimCSE-style, see ``caption_contrast_loss``): weight 0 turns it off.
    caption_ssl_weight: float = 0.5
    caption_token_mask: float = 0.15  # share of caption subwords masked (<unk>) in each of the two views
    caption_ssl_temperature: float = 0.05
    # Object-tag term (see ``ObjectTags``): weight 0 turns it off.
    object_tag_weight: float = 1.0
    # Decoding workers: 0 vs 2 were within noise here (fp32 84 vs 74 img/s, bf16 133 vs 142); 0 has
    # no worker start-up and leaves the spare core to whatever else runs.
    num_workers: int = 0
    eval_batch_size: int = 256
    # torch intra-op threads while training (restored afterwards). Always an explicit count (>= 1):
    # the weights depend on it (reductions are split per thread), not on the machine's load. On the
    # shared 2-core machine, OpenMP barriers stall whenever another process holds a core: a training
    # step took 6.6 s with 2 threads and 1.65 s with 1 (measured), so 1 is the safe default.
    threads: int = Field(default=1, ge=1)
    # "bf16" autocasts matmuls to bfloat16: 1.5x faster on a CPU with AMX, but emulated and slower on
    # CPUs without bf16 units; "auto" picks bf16 only where /proc/cpuinfo lists amx_bf16, so the
    # encoder (and every number after it) would depend on the CPU model: fp32 is the default.
    precision: Literal["auto", "fp32", "bf16"] = "fp32"


# --- pair texts ------------------------------------------------------------------------------------


def _article(name: str) -> str:
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def objects_alt_text(extra: str | dict | None) -> str:
    """``"with a snake, a tree"`` from ``extra["objects"]`` (order kept, duplicates once); "" if none."""
    names = _object_names(extra)
    return f"with {', '.join(_article(n) for n in names)}" if names else ""


def _object_names(extra: str | dict | None) -> list[str]:
    """Pictured object names from ``extra["objects"]`` (JSON or dict), order kept, duplicates once."""
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            return []
    objects = (extra.get("objects") or []) if isinstance(extra, dict) else []
    return list(dict.fromkeys(str(o["class"]).replace("_", " ") for o in objects if o.get("class")))


def pair_texts(memes: pd.DataFrame, text_source: str) -> list[str]:
    """One text per meme, for recall on val: ``caption`` alone or with the full object alt-text."""
    captions = memes["text"].fillna("").astype(str).tolist()
    if text_source == "caption":
        return captions
    extras = memes["extra"].tolist() if "extra" in memes else [None] * len(memes)
    alts = map(objects_alt_text, extras)
    return [f"{cap} {alt}".strip() if alt else cap for cap, alt in zip(captions, alts)]


def pair_candidates(memes: pd.DataFrame, text_source: str) -> list[list[str]]:
    """Per meme, the texts a training step may pair with its image (one is drawn per step).

    ``caption+object`` names ONE pictured object per text, drawn anew each step. Measured on the
    default SynthMeme: with the full list (``caption+objects``) the image tower matched memes by
    their large props and a linear probe read the small key object's family from image embeddings
    at only 0.36 balanced accuracy (chance 0.25); naming one object at a time means every object
    must be visible in the embedding, the small ones included.
    """
    if text_source != "caption+object":
        return [[t] for t in pair_texts(memes, text_source)]
    captions = memes["text"].fillna("").astype(str).tolist()
    extras = memes["extra"].tolist() if "extra" in memes else [None] * len(memes)
    out = []
    for cap, extra in zip(captions, extras):
        names = _object_names(extra)
        out.append([f"{cap} with {_article(n)}".strip() for n in names] or [cap])
    return out


@dataclass
class PairTokens:
    """Tokens of every candidate text, flattened, and a seeded draw of one candidate per meme."""

    tokens: Tensor  # [M, C] all candidates
    starts: Tensor  # [N] first candidate row of each meme
    counts: Tensor  # [N] number of candidates of each meme
    generator: torch.Generator

    @classmethod
    def build(cls, candidates: list[list[str]], tokenize: Callable[[list[str]], Tensor], seed: int) -> PairTokens:
        counts = torch.tensor([len(c) for c in candidates], dtype=torch.long)
        starts = torch.cumsum(counts, 0) - counts
        flat = [t for c in candidates for t in c]
        return cls(tokenize(flat), starts, counts, torch.Generator().manual_seed(seed))

    def draw(self, idx: Tensor) -> Tensor:
        """``[B, C]``: one candidate per meme in ``idx``."""
        pick = (torch.rand(len(idx), generator=self.generator) * self.counts[idx]).long()
        return self.tokens[self.starts[idx] + pick]


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
                      generator=gen, worker_init_fn=seed_worker, persistent_workers=workers > 0)  # fmt: skip


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


def param_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None, text_lr: float | None = None
) -> list[dict[str, Any]]:
    """open_clip's split: no decay on gains, biases and the logit scale (ndim < 2); with ``text_lr``
    set, everything outside the image tower (``visual.*``) gets that rate instead of ``lr``."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        is_text = text_lr is not None and not name.startswith("visual.")
        groups.setdefault((exclude, is_text), []).append(p)
    out = []
    for (exclude, is_text), params in sorted(groups.items()):
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0 if exclude else weight_decay}
        if is_text:
            group["lr"] = text_lr
        elif lr is not None:
            group["lr"] = lr
        out.append(group)
    return out


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up to 1 over ``warmup`` steps, cosine to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def mask_tokens(tokens: Tensor, share: float, unk_id: int, eot_id: int, generator: torch.Generator) -> Tensor:
    """A copy of ``[B, C]`` tokens with ~``share`` of the subwords (not <sot>/<eot>/<pad>) set to <unk>."""
    content = (tokens > unk_id) & (tokens != eot_id)
    drop = (torch.rand(tokens.shape, generator=generator) < share) & content
    return tokens.masked_fill(drop, unk_id)


def caption_contrast_loss(view_a: Tensor, view_b: Tensor, caption_ids: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between two views ``[B, D]`` (L2-normalised) of the same captions.

    Rows with the *same* caption (SynthMeme's image confounders repeat a caption) are not used as
    negatives: ``caption_ids[i] == caption_ids[j]`` masks them out of the denominator.
    """
    logits = view_a @ view_b.T / temperature  # [B, B]
    same = caption_ids[:, None] == caption_ids[None, :]
    eye = torch.eye(len(caption_ids), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(caption_ids), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@dataclass
class CaptionViews:
    """What the caption-preserving term needs: caption-only tokens and ids, and its settings."""

    tokens: Tensor  # [N, C] caption-only tokens of the train memes
    ids: Tensor  # [N] caption identity (equal captions share an id)
    weight: float
    share: float
    temperature: float
    unk_id: int
    eot_id: int
    generator: torch.Generator

    def loss(self, model: nn.Module, idx: Tensor) -> Tensor:
        cap = self.tokens[idx]
        masked = [mask_tokens(cap, self.share, self.unk_id, self.eot_id, self.generator) for _ in range(2)]
        # Both views in one text-tower pass: fewer, larger ops (~7% of a training step measured).
        views = encode_text(model, torch.cat(masked)).float()
        return caption_contrast_loss(views[: len(idx)], views[len(idx) :], self.ids[idx], self.temperature)


@dataclass
class ObjectTags:
    """Multi-hot object targets of the train memes and the linear head that predicts them."""

    targets: Tensor  # [N, K] float 0/1
    head: nn.Linear  # embed_dim -> K
    weight: float

    @classmethod
    def build(cls, memes: pd.DataFrame, embed_dim: int, weight: float) -> ObjectTags | None:
        names = [_object_names(e) for e in (memes["extra"] if "extra" in memes else [None] * len(memes))]
        vocab = sorted({n for row in names for n in row})
        if not vocab or weight <= 0:
            return None
        index = {n: i for i, n in enumerate(vocab)}
        targets = torch.zeros(len(names), len(vocab))
        for r, row in enumerate(names):
            targets[r, [index[n] for n in row]] = 1.0
        return cls(targets, nn.Linear(embed_dim, len(vocab)), weight)

    def loss(self, image_features: Tensor, idx: Tensor) -> Tensor:
        """Binary cross-entropy summed over tags (mean over the batch): with ~30 tags and 1-4 present,
        a per-tag mean would shrink each object's gradient ~30-fold next to the contrastive loss."""
        logits = self.head(image_features.float())
        return F.binary_cross_entropy_with_logits(logits, self.targets[idx], reduction="sum") / len(idx)


def _train_epoch(
    model: nn.Module, loader: DataLoader, tokens: PairTokens, loss_fn: ClipLoss, opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler, precision: str, captions: CaptionViews | None = None,
    tags: ObjectTags | None = None,
) -> tuple[float, int]:  # fmt: skip
    """One pass; returns (mean loss, images seen).

    Attention runs on SDPA's math kernel: for these short sequences (65 image / <=48 text tokens)
    it was faster on CPU than the flash kernel, whose backward dominated the step.
    """
    losses, seen = [], 0
    for images, idx in loader:
        images = images.contiguous(memory_format=torch.channels_last)  # matches the tower (see pretrain_clip)
        with sdpa_kernel(SDPBackend.MATH), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            raw = model.encode_image(images, normalize=False)  # [B, D]
            img = F.normalize(raw, dim=-1)
            txt = encode_text(model, tokens.draw(idx), normalize=True)  # [B, D]
            loss = loss_fn(img.float(), txt.float(), model.logit_scale.exp())
            if tags is not None:
                loss = loss + tags.weight * tags.loss(raw, idx)
            if captions is not None and captions.weight > 0:
                loss = loss + captions.weight * captions.loss(model, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        seen += len(idx)
    return (float(np.mean(losses)) if losses else float("nan")), seen


@dataclass(frozen=True)
class EpochStats:
    """One finished training epoch, as :func:`pretrain_clip` reports it to ``on_epoch_end``."""

    epoch: int  # 1-based
    epochs: int
    loss: float  # mean training loss of the epoch
    images: int  # images seen in the epoch
    seconds: float  # this epoch
    elapsed: float  # all epochs so far

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    @property
    def eta_s(self) -> float:
        """Seconds left for the remaining epochs at the mean rate so far (evaluation not included)."""
        return self.elapsed / self.epoch * (self.epochs - self.epoch)

    def line(self) -> str:
        eta_min, eta_s = divmod(round(self.eta_s), 60)
        rate = f"{self.images_per_s:.0f} img/s, {self.seconds:.1f} s"
        head = f"pretrain_clip epoch {self.epoch}/{self.epochs}: loss {self.loss:.4f}"
        return f"{head}, {rate}, ETA {eta_min}:{eta_s:02d}"


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


def _output_config(enc_cfg: ClipEncoderConfig, vocab_size: int, seed: int) -> ClipEncoderConfig:
    """The written config: file names relative to its folder (see ``load_encoder_config``), so the
    folder's bytes do not depend on where it was written and it can be moved as a whole."""
    if enc_cfg.pretrained or enc_cfg.tokenizer != "corpus":
        raise ValueError("pretrain_clip trains from scratch: unset pretrained and use tokenizer='corpus'")
    data = enc_cfg.model_dump()
    data.update(weights=WEIGHTS_FILE, tokenizer_path=TOKENIZER_FILE, vocab_size=vocab_size, init_seed=seed)
    return ClipEncoderConfig.model_validate(data)


def _save(model: nn.Module, tokenizer: CorpusTokenizer, cfg: ClipEncoderConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"arch": cfg.arch})
    tokenizer.save(out_dir / TOKENIZER_FILE)
    (out_dir / CONFIG_FILE).write_text(cfg.model_dump_json(indent=2), encoding="utf-8")


def pretrain_clip(
    memes: pd.DataFrame, cfg: PretrainConfig, enc_cfg: ClipEncoderConfig, out_dir: str | Path,
    on_epoch_end: Callable[[EpochStats], None] | None = None, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Train tokenizer + CLIP on the TRAIN split, report val recall, write the three files.

    Returns ``val_{i2t,t2i}_r{1,5}``, ``val_pairs``, ``chance_r1``, ``history`` (``train_loss``
    per epoch), ``images_per_s`` (training throughput), timings (:data:`TIMING_KEYS`) and sizes.
    ``on_epoch_end`` gets each epoch's :class:`EpochStats` as it ends (e.g. to log it live);
    ``progress`` prints its one-line summary to stderr (a run takes minutes).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    seed_everything(cfg.seed)  # the global generators drive the random crops and flips
    train = memes[memes["split"] == "train"].reset_index(drop=True)
    val = memes[memes["split"] == "val"].reset_index(drop=True)
    if train.empty:
        raise ValueError("pretrain_clip needs TRAIN-split memes; none found")
    train_texts, val_texts = pair_texts(train, cfg.text_source), pair_texts(val, cfg.text_source)

    candidates = pair_candidates(train, cfg.text_source)
    tokenizer = CorpusTokenizer.train(train_texts, cfg.vocab_size, enc_cfg.context_length)
    out_cfg = _output_config(enc_cfg, tokenizer.vocab_size, cfg.seed)  # init from cfg.seed
    model = build_clip_model(out_cfg, tokenizer.vocab_size).train()
    # NHWC convolutions: a training step of the conv tower took 0.48 vs 0.55 s (2-core CPU, measured);
    # the tower goes back to the default layout before evaluation and saving.
    model.visual.to(memory_format=torch.channels_last)

    # Decoded once, augmented every epoch: the same images and random draws as ImageFiles, no re-decoding.
    train_images = CachedImageFiles(image_paths(train), train_transform(out_cfg.image_size, cfg.crop_scale))
    loader = _loader(train_images, cfg.batch_size, True, cfg.num_workers, cfg.seed)
    total_steps = max(1, cfg.epochs * len(loader))
    tags = ObjectTags.build(train, out_cfg.embed_dim, cfg.object_tag_weight)
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.text_lr)
    if tags is not None:
        groups.append({"params": list(tags.head.parameters()), "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, total_steps))
    loss_fn = ClipLoss()
    tokens = PairTokens.build(candidates, lambda texts: tokenizer(texts, out_cfg.context_length), cfg.seed + 3)

    train_captions = train["text"].fillna("").astype(str)
    captions = CaptionViews(
        tokens=tokenizer(train_captions.tolist(), out_cfg.context_length),
        ids=torch.as_tensor(pd.factorize(train_captions)[0]), weight=cfg.caption_ssl_weight,
        share=cfg.caption_token_mask, temperature=cfg.caption_ssl_temperature, unk_id=tokenizer.unk_id,
        eot_id=tokenizer.eot_id, generator=torch.Generator().manual_seed(cfg.seed + 7),
    )  # fmt: skip

    precision = resolve_precision(cfg.precision)
    history, seen, t_train = [], 0, time.perf_counter()
    with torch_threads(cfg.threads):
        for epoch in range(1, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            loss, n = _train_epoch(model, loader, tokens, loss_fn, opt, sched, precision, captions, tags)
            history.append(loss)
            seen += n
            now = time.perf_counter()
            stats = EpochStats(epoch, cfg.epochs, loss, n, now - t_epoch, now - t_train)
            if progress:
                print(stats.line(), file=sys.stderr, flush=True)
            if on_epoch_end is not None:
                on_epoch_end(stats)
        train_s = time.perf_counter() - t_train
        model.visual.to(memory_format=torch.contiguous_format)  # evaluate as downstream stages will
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
