"""Training and scoring the offline default VLM on instruction samples (see :mod:`memeops.vlm.model`).

* data: one :class:`~memeops.vlm.instructions.InstructionSample` per (meme, task with a label);
  the image side is the meme's cached CLIP embedding (its flip, at random, while training);
* batches by sequence length (:func:`~memeops.vlm.instructions.length_buckets`); the loss is on the
  answer tokens only;
* selection: the epoch with the lowest VALIDATION answer loss (test is never looked at here); with
  the label head, the lowest validation value of the training objective (answer loss +
  ``label_head_weight`` x the head's cross-entropy), see :func:`monitor_value`;
* labels (``label_source``): ``candidates`` scores every candidate of the task, ``Label: <candidate>``
  followed by its end (``\\n`` or ``</s>``), and the length-normalised log-likelihoods give
  probabilities (AUROC works); ``head`` reads them from the label head (RA-HMD: a linear classifier
  per task on the decoder's last hidden state at the last prompt token, trained jointly with the LM
  loss); ``mix`` averages the two;
* explanations: greedy generation for (a seeded sample of) the evaluation memes, parsed strictly.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from memeops.threads import torch_threads
from memeops.training.optim import lr_factor
from memeops.vlm.instructions import InstructionSample, length_buckets
from memeops.vlm.model import IGNORE, TinyVLM, TinyVLMConfig, apply_lora, encode_pairs, train_tokenizer


LabelSource = Literal["candidates", "head", "mix"]
MONITOR = "val/answer_loss"
MONITOR_WITH_HEAD = "val/answer_loss+label_head"


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
    # RA-HMD's route: a linear classifier per task on the decoder's hidden state at the last prompt
    # token, trained jointly (loss = answer LM loss + label_head_weight x its cross-entropy); it
    # gives the labels' probabilities in one forward per sample. Explanations stay generated.
    label_head: bool = False
    label_head_weight: float = Field(1.0, ge=0)
    # Where label probabilities come from: None = "head" with the label head, else "candidates";
    # "mix" = the mean of the head's softmax and the candidate-scoring probabilities.
    label_source: LabelSource | None = None
    model: dict[str, Any] = Field(default_factory=dict)  # TinyVLMConfig overrides

    @model_validator(mode="after")
    def _source_needs_head(self) -> VLMTrainConfig:
        if self.label_source in ("head", "mix") and not self.label_head:
            raise ValueError(f"label_source {self.label_source!r} needs label_head: true")
        if "label_tasks" in self.model:
            raise ValueError("model.label_tasks is set from the train samples (use label_head: true)")
        return self

    @property
    def resolved_label_source(self) -> LabelSource:
        """``label_source``, its default filled in (``head`` with the label head, else ``candidates``)."""
        return self.label_source or ("head" if self.label_head else "candidates")


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


def answer_loss(model: TinyVLM, hidden: Tensor, labels: Tensor, label_weight: float,
                newline_id: int | None) -> Tensor:  # fmt: skip
    """Token cross-entropy on the answer of :meth:`TinyVLM.token_hidden` states, label-line tokens
    weighted by ``label_weight`` (1: the plain mean over answer tokens)."""
    logits, targets = model.answer_vocab_logits(hidden, labels)
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    if label_weight == 1.0:
        return ce.mean()
    weights = 1.0 + (label_weight - 1.0) * label_line_mask(labels, newline_id)[labels != IGNORE].float()
    return (ce * weights).sum() / weights.sum().clamp_min(1.0)


def label_head_loss(model: TinyVLM, hidden: Tensor, labels: Tensor, samples: Sequence[InstructionSample],
                    reduction: str = "mean") -> Tensor:  # fmt: skip
    """Cross-entropy of the label heads on ``hidden`` (:meth:`TinyVLM.token_hidden` of prompt + answer
    rows) at each row's last prompt token, against each sample's label index (mean or sum over rows)."""
    state = hidden[torch.arange(len(labels)), model.answer_start(labels)]
    targets = torch.tensor([s.label_index for s in samples], dtype=torch.long)
    total = hidden.new_zeros((), dtype=torch.float32)
    for rows, logits in model.label_logits(state, [s.task for s in samples]).values():
        total = total + torch.nn.functional.cross_entropy(logits, targets[rows], reduction="sum")
    return total / len(samples) if reduction == "mean" else total


def validation_losses(model: TinyVLM, tokenizer: Any, samples: Sequence[InstructionSample],
                      images: Mapping[str, tuple[np.ndarray, np.ndarray]], cfg: VLMTrainConfig) -> dict[str, float]:  # fmt: skip
    """``val_loss``: mean per-token NLL of the reference answers; with label heads also
    ``val_head_loss`` (their mean cross-entropy per sample), from the same forward."""
    model.eval()
    total, count, head, heads = 0.0, 0, 0.0, len(model.label_heads) > 0
    with torch.no_grad():
        for start in range(0, len(samples), cfg.eval_batch_size):
            chunk = samples[start : start + cfg.eval_batch_size]
            batch = encode_pairs(
                tokenizer, [s.prompt for s in chunk], [s.target for s in chunk], cfg.max_length
            )
            hidden = model.token_hidden(_image_batch(chunk, images, None), batch["input_ids"], batch["attention_mask"])
            logits, targets = model.answer_vocab_logits(hidden, batch["labels"])
            total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            count += len(targets)
            if heads:
                head += float(label_head_loss(model, hidden, batch["labels"], chunk, reduction="sum"))
    out = {"val_loss": total / max(count, 1)}
    if heads:
        out["val_head_loss"] = head / max(len(samples), 1)
    return out


def monitor_value(record: Mapping[str, float], cfg: VLMTrainConfig) -> float:
    """The epoch-selection value of a history record: the val answer loss, plus
    ``label_head_weight`` x the val head loss when the model has label heads (the training objective on
    VALIDATION; the head term is what the served labels then come from)."""
    if "val_head_loss" in record:
        return record["val_loss"] + cfg.label_head_weight * record["val_head_loss"]
    return record["val_loss"]


def label_tasks_of(samples: Sequence[InstructionSample]) -> dict[str, tuple[str, ...]]:
    """``{task: labels}`` of the samples, in first-appearance order (one label list per task)."""
    out: dict[str, tuple[str, ...]] = {}
    for s in samples:
        if out.setdefault(s.task, tuple(s.labels)) != tuple(s.labels):
            raise ValueError(f"task {s.task!r} has two label lists: {out[s.task]} and {tuple(s.labels)}")
    return out


def fit_vlm(train: Sequence[InstructionSample], val: Sequence[InstructionSample],
            images: Mapping[str, tuple[np.ndarray, np.ndarray]], cfg: VLMTrainConfig,
            callback: Any = None) -> VLMFit:  # fmt: skip
    """Train on ``train``, keep the weights of the epoch with the lowest ``val`` answer loss (with the
    label head: answer loss + ``label_head_weight`` x head cross-entropy, :func:`monitor_value`)."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tokenizer = train_tokenizer([t for s in train for t in (s.prompt, s.target)], cfg.vocab_size)
    image_dim = len(next(iter(images.values()))[0])
    model_cfg = TinyVLMConfig.model_validate({"image_dim": image_dim, "vocab_size": len(tokenizer),
                                              "pad_id": tokenizer.pad_token_id, "bos_id": tokenizer.bos_token_id,
                                              "eos_id": tokenizer.eos_token_id, **cfg.model,
                                              "label_tasks": label_tasks_of(train) if cfg.label_head else {}})  # fmt: skip
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
            loss_sum, n_sum, head_sum = 0.0, 0, 0.0
            for batch_idx in batches:
                chunk = [train[int(idx[i])] for i in batch_idx]
                enc = encode_pairs(
                    tokenizer, [s.prompt for s in chunk], [s.target for s in chunk], cfg.max_length
                )
                flips = rng.random(len(chunk)) < 0.5
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(step, warmup, steps)
                hidden = model.token_hidden(_image_batch(chunk, images, flips), enc["input_ids"], enc["attention_mask"])
                loss = answer = answer_loss(model, hidden, enc["labels"], cfg.label_weight, newline)
                if cfg.label_head:
                    head = label_head_loss(model, hidden, enc["labels"], chunk)
                    loss = answer + cfg.label_head_weight * head
                    head_sum += float(head.detach()) * len(chunk)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                step += 1
                n = int((enc["labels"] != IGNORE).sum())
                loss_sum += float(answer.detach()) * n
                n_sum += n
                tokens += int(enc["attention_mask"].sum())
            losses = validation_losses(model, tokenizer, val, images, cfg)
            record = {"epoch": epoch, "train_loss": loss_sum / max(n_sum, 1), "val_loss": losses["val_loss"]}
            if cfg.label_head:
                record.update(train_head_loss=head_sum / max(len(idx), 1), val_head_loss=losses["val_head_loss"])
                record["val_monitor"] = monitor_value(record, cfg)
            fit.history.append(record)
            if callback is not None:
                callback(epoch, record)
            value = monitor_value(record, cfg)
            if value < best:
                best, fit.best_epoch = value, epoch
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


def head_probabilities(model: TinyVLM, tokenizer: Any, samples: Sequence[InstructionSample],
                       images: Mapping[str, tuple[np.ndarray, np.ndarray]], cfg: VLMTrainConfig) -> list[np.ndarray]:  # fmt: skip
    """Per sample, P(label) from its task's label head: one forward of the prompt alone (no
    vocabulary projection), the head on the state of its last token (where ``Label`` is predicted)."""
    model.eval()
    heads = model.cfg.label_tasks
    for s in samples:
        if s.task not in heads:
            raise KeyError(f"no label head for task {s.task!r} (heads: {sorted(heads)}); use label_source candidates")
        if tuple(heads[s.task]) != tuple(s.labels):
            raise ValueError(f"task {s.task!r}: head labels {heads[s.task]} != sample labels {s.labels}")
    out: list[np.ndarray] = [np.zeros(0)] * len(samples)
    with torch.no_grad(), torch_threads(cfg.threads):
        for start in range(0, len(samples), cfg.eval_batch_size):
            chunk = samples[start : start + cfg.eval_batch_size]
            enc = encode_pairs(tokenizer, [s.prompt for s in chunk], None, cfg.max_length)
            state = model.prompt_state(_image_batch(chunk, images, None), enc["input_ids"], enc["attention_mask"])
            for rows, logits in model.label_logits(state, [s.task for s in chunk]).values():
                probs = logits.double().softmax(-1).numpy()
                for r, p in zip(rows.tolist(), probs):
                    out[start + r] = p
    return out


def label_probs(model: TinyVLM, tokenizer: Any, samples: Sequence[InstructionSample],
                images: Mapping[str, tuple[np.ndarray, np.ndarray]], cfg: VLMTrainConfig,
                source: LabelSource | None = None) -> list[np.ndarray]:  # fmt: skip
    """Per sample, P(label) from ``source`` (default ``cfg.resolved_label_source``): ``candidates``
    (:func:`score_candidates`), ``head`` (:func:`head_probabilities`) or ``mix`` (their mean)."""
    source = source or cfg.resolved_label_source
    if source == "candidates":
        return score_candidates(model, tokenizer, samples, images, cfg)
    head = head_probabilities(model, tokenizer, samples, images, cfg)
    if source == "head":
        return head
    if source != "mix":
        raise ValueError(f"unknown label source {source!r} (candidates, head, mix)")
    scored = score_candidates(model, tokenizer, samples, images, cfg)
    return [(h + c) / 2.0 for h, c in zip(head, scored)]


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
