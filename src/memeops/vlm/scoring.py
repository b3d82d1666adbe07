"""Scoring the VLM: candidate-label probabilities, explanation ROUGE-L and the evaluation report.

Classification is scored by *candidate scoring*: the model's summed log-likelihood of each
candidate target ``Label: <label>`` is length-normalised (mean log-prob per token) and
soft-maxed over the task's labels (:func:`label_probabilities`). Those probabilities go through
:func:`memeops.evaluation.metrics.all_metrics`, so accuracy / macro-F1 / weighted-F1 / AUROC follow
the project's conventions exactly (arg-max prediction, AUROC on label index 1 for binary tasks).

Free generation is scored separately: the invalid-output rate (answers that
:func:`~memeops.vlm.instructions.parse_answer` rejects), the accuracy of the parsed label (invalid
counts as wrong) and ROUGE-L of the parsed explanation against the reference explanation.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from memeops.evaluation.metrics import Predictions, all_metrics
from memeops.models.base import TaskSpec
from memeops.vlm.instructions import InstructionSample, parse_answer

# CJK ideographs (incl. extension A/B and compatibility) and Japanese kana: one token per character.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\U00020000-\U0002a6df"
_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+")


def rouge_tokens(text: str | None) -> list[str]:
    """Lower-cased word tokens split at whitespace/punctuation; each CJK character is its own token."""
    if not text:
        return []
    return _TOKEN.findall(str(text).lower())


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str | None, reference: str | None) -> float:
    """ROUGE-L F1 (beta = 1) from the token LCS; 0.0 when either side has no tokens."""
    hyp, ref = rouge_tokens(hypothesis), rouge_tokens(reference)
    if not hyp or not ref:
        return 0.0
    lcs = _lcs(hyp, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 2 * p * r / (p + r)


def label_probabilities(loglik: np.ndarray, lengths: np.ndarray | Sequence[int]) -> np.ndarray:
    """Softmax over candidates of the mean log-prob per token: ``[N, L]`` rows summing to 1.

    ``loglik[n, l]``: summed log-likelihood of candidate ``l``'s tokens for sample ``n``;
    ``lengths``: token counts ``[N, L]`` or ``[L]`` (same tokenisation for every sample), all > 0.
    """
    loglik = np.asarray(loglik, dtype=np.float64)
    if loglik.ndim != 2:
        raise ValueError(f"loglik must be [N, L], got shape {loglik.shape}")
    lengths = np.broadcast_to(np.asarray(lengths, dtype=np.float64), loglik.shape)
    if (lengths <= 0).any():
        raise ValueError("candidate token counts must be > 0")
    scores = loglik / lengths
    scores = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(scores)
    return exp / exp.sum(axis=1, keepdims=True)


def vlm_report(
    samples: Sequence[InstructionSample],
    probs: Sequence[np.ndarray],
    generated: Sequence[str] | None,
    specs: Sequence[TaskSpec],
) -> dict[str, float]:
    """Flat ``{key: value}`` report of the VLM on ``samples``.

    Keys, for each task ``t`` with samples (``{prefix}`` is ``""`` for all sources pooled and
    ``"source/<source>/"`` per source):
    - ``{prefix}t/accuracy|macro_f1|weighted_f1|weighted_precision|weighted_recall|n`` and
      ``{prefix}t/auroc`` for binary tasks: :func:`all_metrics` on the candidate-scoring ``probs``;
    - ``{prefix}mean/macro_f1`` (all_metrics' mean over tasks; MemeLens's primary average),
      ``{prefix}mean/accuracy`` and ``{prefix}mean/weighted_f1`` (means over tasks with rows);
    - with ``generated``: ``{prefix}t/invalid_rate``, ``{prefix}t/generated_accuracy`` (parsed label
      == gold; invalid counts as wrong), ``{prefix}t/rouge_l`` (mean over samples with a reference
      explanation; a missing parsed explanation scores 0; NaN when none has a reference),
      ``{prefix}t/n_explained``; and pooled ``{prefix}all/invalid_rate``, ``{prefix}all/rouge_l``,
      ``{prefix}all/n``.
    """
    if len(probs) != len(samples):
        raise ValueError(f"{len(probs)} probability rows for {len(samples)} samples")
    if generated is not None and len(generated) != len(samples):
        raise ValueError(f"{len(generated)} generated texts for {len(samples)} samples")
    by_name = {s.name: s for s in specs}
    for i, sample in enumerate(samples):
        spec = by_name.get(sample.task)
        if spec is None:
            raise KeyError(f"sample {i} ({sample.meme_id}): task {sample.task!r} has no spec")
        if spec.kind != "single" or tuple(sample.labels) != tuple(spec.labels):
            raise ValueError(
                f"sample {i} ({sample.meme_id}): labels do not match the single-label spec {spec.name!r}"
            )
        if np.shape(probs[i]) != (spec.num_labels,):
            raise ValueError(
                f"sample {i} ({sample.meme_id}): probs shape {np.shape(probs[i])} != ({spec.num_labels},)"
            )

    parsed = None if generated is None else [parse_answer(g, s.labels) for g, s in zip(generated, samples)]
    out = _group_report(range(len(samples)), samples, probs, parsed, specs, prefix="")
    sources = sorted({s.source for s in samples})
    for source in sources:
        idx = [i for i, s in enumerate(samples) if s.source == source]
        out.update(_group_report(idx, samples, probs, parsed, specs, prefix=f"source/{source}/"))
    return out


def _group_report(
    indices: Any,
    samples: Sequence[InstructionSample],
    probs: Sequence[np.ndarray],
    parsed: list[Any] | None,
    specs: Sequence[TaskSpec],
    prefix: str,
) -> dict[str, float]:
    by_task: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        by_task[samples[i].task].append(i)
    used = [s for s in specs if s.name in by_task]
    preds = Predictions(
        probs={
            t: np.stack([np.asarray(probs[i], dtype=np.float64) for i in idx]) for t, idx in by_task.items()
        },
        targets={
            t: np.array([samples[i].label_index for i in idx], dtype=np.int64) for t, idx in by_task.items()
        },
    )
    metrics = all_metrics(preds, used)
    out = {f"{prefix}{k}": v for k, v in metrics.items()}
    for name in ("accuracy", "weighted_f1"):
        values = [metrics[f"{s.name}/{name}"] for s in used if metrics[f"{s.name}/n"] > 0]
        out[f"{prefix}mean/{name}"] = float(np.mean(values)) if values else math.nan
    if parsed is None:
        return out
    all_invalid: list[bool] = []
    all_rouge: list[float] = []
    for spec in used:
        idx = by_task[spec.name]
        invalid = [not parsed[i].valid for i in idx]
        correct = [parsed[i].valid and parsed[i].label == samples[i].label for i in idx]
        rouge = [
            rouge_l(parsed[i].explanation, samples[i].explanation) for i in idx if samples[i].explanation
        ]
        out[f"{prefix}{spec.name}/invalid_rate"] = float(np.mean(invalid))
        out[f"{prefix}{spec.name}/generated_accuracy"] = float(np.mean(correct))
        out[f"{prefix}{spec.name}/rouge_l"] = float(np.mean(rouge)) if rouge else math.nan
        out[f"{prefix}{spec.name}/n_explained"] = float(len(rouge))
        all_invalid.extend(invalid)
        all_rouge.extend(rouge)
    out[f"{prefix}all/invalid_rate"] = float(np.mean(all_invalid)) if all_invalid else math.nan
    out[f"{prefix}all/rouge_l"] = float(np.mean(all_rouge)) if all_rouge else math.nan
    out[f"{prefix}all/n"] = float(len(all_invalid))
    return out
