"""Training and scoring the offline default VLM on instruction samples (see :mod:`memeops.vlm.model`).

* data: one :class:`~memeops.vlm.instructions.InstructionSample` per (meme, task with a label);
  the image side is the meme's cached CLIP embedding (its flip, at random, while training);
* batches by sequence length (:func:`~memeops.vlm.instructions.length_buckets`); the loss is on the
  answer tokens only;
* selection: the epoch with the lowest VALIDATION answer loss (test is never looked at here);
* labels: every candidate of the task is scored, ``Label: <candidate>`` followed by its end
  (``\\n`` or ``</s>``), and the length-normalised log-likelihoods give probabilities (AUROC works);
* explanations: greedy generation for (a seeded sample of) the evaluation memes, parsed strictly.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from memeops.threads import torch_threads
from memeops.training.optim import lr_factor
from memeops.vlm.instructions import InstructionSample, length_buckets
from memeops.vlm.model import IGNORE, TinyVLM, TinyVLMConfig, apply_lora, encode_pairs, train_tokenizer


class VLMTrainConfig(BaseModel):
    """``train.variants.vlm.trainer``-style settings of the offline VLM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(2, ge=1)
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    max_length: int = 192
    max_train_samples: int | None = None  # per epoch, seeded subset (None: all)
    vocab_size: int = 4000
    seed: int = 0
    threads: int = 1
    lora: bool = False  # offline default trains fully; True exercises the LoRA path on the tiny model
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    eval_batch_size: int = 128
    generate_samples: int = 200  # evaluation samples that also get a generated explanation
    max_new_tokens: int = 48
    # Weight of the "Label: <x>" line's tokens in the loss (the explanation's count 1): the label is a
    # few of ~20 answer tokens, and with weight 1 a short CPU run learns fluent explanations first.
    label_weight: float = Field(1.0, ge=0)
    model: dict[str, Any] = Field(default_factory=dict)  # TinyVLMConfig overrides


@dataclass
class VLMFit:
    model: TinyVLM
    tokenizer: Any
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    train_tokens_per_s: float = 0.0


def _image_batch(samples: Sequence[InstructionSample], images: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 flips: np.ndarray | None) -> Tensor:  # fmt: skip
    rows = [images[s.meme_id][1 if flips is not None and flips[i] else 0] for i, s in enumerate(samples)]
    return torch.from_numpy(np.stack(rows)).float()


def label_line_mask(labels: Tensor, newline_id: int | None) -> Tensor:
    """Bool ``[B, T]``: the answer tokens up to and including the first ``\n`` (the label line)."""
    answer = labels != IGNORE
    if newline_id is None:
        return answer
    after = ((labels == newline_id) & answer).long().cumsum(1)
    first_nl = (labels == newline_id) & answer & (after == 1)
    return answer & ((after == 0) | first_nl)


def weighted_answer_loss(model: TinyVLM, image_emb: Tensor, batch: Mapping[str, Tensor], label_weight: float,
                         newline_id: int | None) -> Tensor:  # fmt: skip
    """Token cross-entropy on the answer, label-line tokens weighted by ``label_weight``."""
    labels = batch["labels"]
    logits, targets, answer = model.answer_logits(image_emb, batch["input_ids"], batch["attention_mask"], labels)
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    if label_weight == 1.0:
        return ce.mean()
    weights = 1.0 + (label_weight - 1.0) * label_line_mask(labels, newline_id)[answer].float()
    return (ce * weights).sum() / weights.sum().clamp_min(1.0)


def answer_loss(model: TinyVLM, tokenizer: Any, samples: Sequence[InstructionSample],
                images: Mapping[str, tuple[np.ndarray, np.ndarray]], cfg: VLMTrainConfig) -> float:  # fmt: skip
    """Mean per-token NLL of the reference answers (the validation selection metric)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(samples), cfg.eval_batch_size):
            chunk = samples[start : start + cfg.eval_batch_size]
            batch = encode_pairs(
                tokenizer, [s.prompt for s in chunk], [s.target for s in chunk], cfg.max_length
            )
            logits, targets, _ = model.answer_logits(_image_batch(chunk, images, None), **batch)
            total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            count += len(targets)
    return total / max(count, 1)


def fit_vlm(train: Sequence[InstructionSample], val: Sequence[InstructionSample],
            images: Mapping[str, tuple[np.ndarray, np.ndarray]], cfg: VLMTrainConfig,
            callback: Any = None) -> VLMFit:  # fmt: skip
    """Train on ``train``, keep the weights of the epoch with the lowest ``val`` answer loss."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tokenizer = train_tokenizer([t for s in train for t in (s.prompt, s.target)], cfg.vocab_size)
    image_dim = len(next(iter(images.values()))[0])
    model_cfg = TinyVLMConfig.model_validate({"image_dim": image_dim, "vocab_size": len(tokenizer),
                                              "pad_id": tokenizer.pad_token_id, "bos_id": tokenizer.bos_token_id,
                                              "eos_id": tokenizer.eos_token_id, **cfg.model})  # fmt: skip
    model = TinyVLM(model_cfg)
    if cfg.lora:
        apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lengths = [len(s.prompt) + len(s.target) for s in train]  # characters: a cheap proxy for tokens
    per_epoch = min(len(train), cfg.max_train_samples or len(train))
    steps = cfg.epochs * math.ceil(per_epoch / cfg.batch_size)
    warmup = round(cfg.warmup_fraction * steps)
    fit = VLMFit(model, tokenizer)
    newline = next((t for t in _terminators(tokenizer) if t != tokenizer.eos_token_id), None)
    best, best_state, step, tokens = math.inf, None, 0, 0
    with torch_threads(cfg.threads):
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            idx = (
                np.arange(len(train))
                if per_epoch == len(train)
                else rng.choice(len(train), per_epoch, replace=False)
            )
            batches = length_buckets([lengths[i] for i in idx], cfg.batch_size, cfg.seed + epoch)
            loss_sum, n_sum = 0.0, 0
            for batch_idx in batches:
                chunk = [train[int(idx[i])] for i in batch_idx]
                enc = encode_pairs(
                    tokenizer, [s.prompt for s in chunk], [s.target for s in chunk], cfg.max_length
                )
                flips = rng.random(len(chunk)) < 0.5
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(step, warmup, steps)
                loss = weighted_answer_loss(model, _image_batch(chunk, images, flips), enc, cfg.label_weight, newline)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                step += 1
                n = int((enc["labels"] != IGNORE).sum())
                loss_sum += float(loss.detach()) * n
                n_sum += n
                tokens += int(enc["attention_mask"].sum())
            val_loss = answer_loss(model, tokenizer, val, images, cfg)
            record = {"epoch": epoch, "train_loss": loss_sum / max(n_sum, 1), "val_loss": val_loss}
            fit.history.append(record)
            if callback is not None:
                callback(epoch, record)
            if val_loss < best:
                best, fit.best_epoch = val_loss, epoch
                best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    fit.seconds = time.perf_counter() - start
    fit.train_tokens_per_s = tokens / max(fit.seconds, 1e-9)
    return fit


def _terminators(tokenizer: Any) -> list[int]:
    newline = tokenizer.convert_tokens_to_ids("\n")
    ends = [tokenizer.eos_token_id]
    if isinstance(newline, int) and newline != tokenizer.unk_token_id:
        ends.append(newline)
    return ends


def _answer_logliks(model: TinyVLM, image_emb: Tensor, input_ids: Tensor, attention_mask: Tensor,
                    is_answer: Tensor, ends: Sequence[int]) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Per row, the log-likelihood of its answer tokens with the last one (``</s>``) replaced by the
    probability mass of every terminator, and the number of terms. The vocabulary projection runs on
    the answer positions only: in a decoder this small it costs more than the layers, and the prompt
    is most of each row."""
    hidden = model.token_hidden(image_emb, input_ids, attention_mask)
    logp = model.vocab_logits(hidden[is_answer]).log_softmax(-1)  # [N, V], rows in mask order
    token_lp = logp.gather(-1, input_ids[is_answer].unsqueeze(-1)).squeeze(-1)
    rows = torch.arange(len(input_ids))
    last = is_answer.long().cumsum(1).argmax(1)  # position of </s> (the last answer label)
    is_last = torch.zeros_like(is_answer)
    is_last[rows, last] = True
    is_last = is_last[is_answer]  # one per row, in row order
    end_lp = torch.logsumexp(logp[is_last][:, list(ends)], dim=-1)
    body_rows = rows.unsqueeze(1).expand_as(is_answer)[is_answer][~is_last]
    body = torch.zeros(len(input_ids), dtype=token_lp.dtype).index_add_(0, body_rows, token_lp[~is_last])
    return body + end_lp, is_answer.sum(1)


def score_candidates(model: TinyVLM, tokenizer: Any, samples: Sequence[InstructionSample],
                     images: Mapping[str, tuple[np.ndarray, np.ndarray]], cfg: VLMTrainConfig) -> list[np.ndarray]:  # fmt: skip
    """Per sample, P(label) over its task's candidates from length-normalised log-likelihoods of
    ``Label: <candidate>`` plus its end (``\\n`` before an explanation, or ``</s>``)."""
    from memeops.vlm.scoring import label_probabilities

    model.eval()
    ends = _terminators(tokenizer)
    rows = [(i, c) for i, s in enumerate(samples) for c in range(len(s.labels))]
    loglik = [np.zeros(len(s.labels)) for s in samples]
    count = [np.zeros(len(s.labels)) for s in samples]
    with torch.no_grad(), torch_threads(cfg.threads):
        for start in range(0, len(rows), cfg.eval_batch_size):
            part = rows[start : start + cfg.eval_batch_size]
            answers = [f"Label: {samples[i].labels[c]}" for i, c in part]
            enc = encode_pairs(tokenizer, [samples[i].prompt for i, _ in part], answers, cfg.max_length)
            is_answer = enc["labels"] != IGNORE  # answer tokens + the closing </s>
            embeds_img = _image_batch([samples[i] for i, _ in part], images, None)
            sums, lens = _answer_logliks(model, embeds_img, enc["input_ids"], enc["attention_mask"], is_answer, ends)
            for (i, c), v, n in zip(part, sums.tolist(), lens.tolist()):
                loglik[i][c], count[i][c] = v, n
    return [label_probabilities(ll[None, :], n[None, :])[0] for ll, n in zip(loglik, count)]


def generate_answers(model: TinyVLM, tokenizer: Any, samples: Sequence[InstructionSample],
                     images: Mapping[str, tuple[np.ndarray, np.ndarray]], cfg: VLMTrainConfig) -> list[str]:  # fmt: skip
    """Greedy answers (``Label: ...\\nExplanation: ...``) for ``samples``."""
    model.eval()
    out: list[str] = []
    tokenizer.padding_side = "left"
    with torch.no_grad(), torch_threads(cfg.threads):
        for start in range(0, len(samples), cfg.eval_batch_size):
            chunk = samples[start : start + cfg.eval_batch_size]
            prompts = [tokenizer.bos_token + s.prompt + "\n" for s in chunk]
            enc = tokenizer(prompts, add_special_tokens=False, padding=True, truncation=True,
                            max_length=cfg.max_length, return_tensors="pt")  # fmt: skip
            ids = model.generate(_image_batch(chunk, images, None), enc["input_ids"], enc["attention_mask"],
                                 cfg.max_new_tokens)  # fmt: skip
            out.extend(tokenizer.batch_decode(ids, skip_special_tokens=True))
    tokenizer.padding_side = "right"
    return out
