"""Instruction samples for the MemeLens-style VLM: prompts, targets, the strict answer parser, batching.

One sample per (meme, single-label task that carries a label on that meme). The prompt is a hybrid
instruction (MemeLens): an English instruction naming the task and its closed label set, then the
meme's text verbatim in its own language, then the answer format. The target is
``Label: <label>\\nExplanation: <explanation>`` (``Label: <label>`` alone when the meme has no
explanation for the task).

Design choices:
- **Multi-label tasks are not turned into samples** (misogyny_type, protected_category,
  attack_type). A generated label set would need its own parser, ordering convention and set
  metrics; the candidate-scoring evaluation (:mod:`memeops.vlm.scoring`) scores exactly one label per
  sample. :func:`unsupported_tasks` says which requested tasks were skipped and why, so a caller can
  log it instead of losing them silently.
- **Explanations** come from the table's ``explanations`` column, a JSON object ``{task: text}``:
  SynthMeme writes its rule explanations there and the MemeLens-format loader puts each row's
  ``explanation`` field under its dataset's task (``native_explanation`` stays in ``native``: it is
  the native-language variant and not a target). Blank explanations count as none.
- **Parsing is strict** (:func:`parse_answer`): no fuzzy or substring mapping of free text to a
  label; anything that is not ``Label: <one of the labels>`` on the first line is invalid and is
  reported as such (the invalid-output rate is a metric of its own).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

# Kept short on purpose: the instruction is ~3/4 of every sample's tokens and is the same for every
# meme of a task, so each word here is paid for on every training step (docs/vlm.md).
ANSWER_FORMAT = 'Answer "Label: <one label>", then "Explanation: <why>".'

# Short English task descriptions, used when the taxonomy carries none (taxonomy.yaml has no
# description field today; a ``description`` attribute on a task wins when it exists).
TASK_DESCRIPTIONS: dict[str, str] = {
    "hateful": "Decide whether the meme is hateful.",
    "harmful": "Decide how harmful the meme is.",
    "offensive": "Decide whether the meme is offensive.",
    "offensiveness_level": "Decide how offensive the meme is.",
    "misogynous": "Decide whether the meme is misogynous.",
    "misogyny_type": "Decide which kinds of misogyny the meme shows.",
    "propaganda": "Decide whether the meme uses propaganda techniques.",
    "harm_target": "Decide who the meme's harm is directed at.",
    "protected_category": "Decide which protected categories the meme attacks.",
    "attack_type": "Decide which kinds of attack the meme makes.",
    "metaphor": "Decide whether the meme uses a metaphor.",
    "metaphor_type": "Decide whether the meme's metaphor is carried by the image, the text, or both.",
    "intention": "Decide the intention behind the meme.",
    "sarcasm": "Decide how sarcastic the meme is.",
    "humour": "Decide whether the meme is humorous.",
    "motivational": "Decide whether the meme is motivational.",
    "stance": "Decide the stance the meme takes.",
    "sentiment": "Decide the overall sentiment of the meme.",
    "emotion": "Decide the main emotion the meme expresses.",
    "emotion_intensity": "Decide how intense the emotion expressed by the meme is.",
}

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "zh": "Chinese",
    "ar": "Arabic",
    "bn": "Bengali",
    "de": "German",
    "es": "Spanish",
    "fr": "French",
    "hi": "Hindi",
    "it": "Italian",
    "ta": "Tamil",
    "ml": "Malayalam",
    "ru": "Russian",
    "ja": "Japanese",
    "ko": "Korean",
    "pt": "Portuguese",
    "tr": "Turkish",
}


class TaskLike(Protocol):
    """What prompts need of a task: a Taxonomy ``Task`` or a ``TaskSpec`` both qualify."""

    name: str
    kind: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class InstructionSample:
    """One (meme, task) instruction: prompt and target text, plus what evaluation needs."""

    meme_id: str
    source: str
    split: str
    language: str
    task: str
    labels: tuple[str, ...]  # the task's candidate labels, in taxonomy order
    image_path: str  # source_root / image_path
    prompt: str
    target: str
    label: str
    explanation: str | None

    @property
    def label_index(self) -> int:
        return self.labels.index(self.label)


@dataclass(frozen=True)
class ParsedAnswer:
    """A generated answer after :func:`parse_answer`; ``label`` is the canonical label or None."""

    label: str | None
    explanation: str | None
    valid: bool
    reason: str | None


# --- prompts and targets -------------------------------------------------------------------------


def task_description(task: TaskLike) -> str:
    """The taxonomy's description when the task has one, else the built-in English one."""
    described = getattr(task, "description", None)
    if isinstance(described, str) and described.strip():
        return described.strip()
    return TASK_DESCRIPTIONS.get(task.name, f"Classify the meme for the task {task.name!r}.")


def build_prompt(task: TaskLike, meme_text: str | None, language: str | None) -> str:
    """Hybrid instruction: English task + label set, the meme text verbatim, the answer format."""
    labels = ", ".join(task.labels)
    code = (language or "").strip()
    lang = LANGUAGE_NAMES.get(code, code or "unknown language")
    lang = f"{lang} ({code})" if code and lang != code else lang
    text = "" if _blank(meme_text) else str(meme_text)
    lines = [
        f"Task: {task.name}. {task_description(task)}",
        f"Labels: {labels}",
        f"Meme text ({lang}):",
        text if text else "(no text)",
        ANSWER_FORMAT,
    ]
    return "\n".join(lines)


def build_target(label: str, explanation: str | None) -> str:
    """``Label: <label>\\nExplanation: <explanation>``, or ``Label: <label>`` without an explanation."""
    if _blank(explanation):
        return f"Label: {label}"
    return f"Label: {label}\nExplanation: {str(explanation).strip()}"


# --- samples -------------------------------------------------------------------------------------


def unsupported_tasks(tasks: Sequence[str | TaskLike], taxonomy: Any = None) -> dict[str, str]:
    """``{task: reason}`` for requested tasks that :func:`instruction_samples` skips (multi-label)."""
    out = {}
    for task in _resolve(tasks, taxonomy):
        if task.kind != "single":
            out[task.name] = (
                "multi-label task: the generative format answers one label per sample, and the "
                "candidate-scoring evaluation scores one label; not turned into instruction samples"
            )
    return out


def instruction_samples(
    memes: pd.DataFrame, tasks: Sequence[str | TaskLike], taxonomy: Any = None
) -> list[InstructionSample]:
    """One sample per (meme, requested single-label task that has a label on that meme).

    Row order of ``memes``, then task order of ``tasks``. Multi-label tasks are skipped (see
    :func:`unsupported_tasks`). ``taxonomy`` defaults to the project's taxonomy.
    """
    resolved = [t for t in _resolve(tasks, taxonomy) if t.kind == "single"]
    if len(memes) == 0 or not resolved:
        return []
    for task in resolved:
        if f"label_{task.name}" not in memes:
            raise KeyError(f"meme table has no column label_{task.name} for task {task.name!r}")
    # Same cell rules as memeops.data.features.meme_labels / image_paths, which are not imported:
    # that module pulls in torch and open_clip (seconds), and building prompts needs neither.
    labels = {t.name: [_single_label(v) for v in memes[f"label_{t.name}"].tolist()] for t in resolved}
    paths = [Path(str(r)) / str(p) for r, p in zip(memes["source_root"], memes["image_path"])]
    cols = {c: memes[c].tolist() for c in ("meme_id", "source", "split", "language", "text")}
    expl_col = memes["explanations"].tolist() if "explanations" in memes else [None] * len(memes)
    out: list[InstructionSample] = []
    for i in range(len(memes)):
        meme_id = str(cols["meme_id"][i])
        explanations = _explanations(expl_col[i], meme_id)
        language = "" if _blank(cols["language"][i]) else str(cols["language"][i])
        text = "" if _blank(cols["text"][i]) else str(cols["text"][i])
        for task in resolved:
            label = labels[task.name][i]
            if label is None:
                continue
            if label not in task.labels:
                raise ValueError(f"meme {meme_id}: label {label!r} is not a label of task {task.name!r}")
            explanation = explanations.get(task.name)
            explanation = None if _blank(explanation) else str(explanation).strip()
            out.append(
                InstructionSample(
                    meme_id=meme_id,
                    source=str(cols["source"][i]),
                    split=str(cols["split"][i]),
                    language=language,
                    task=task.name,
                    labels=tuple(task.labels),
                    image_path=str(paths[i]),
                    prompt=build_prompt(task, text, language),
                    target=build_target(label, explanation),
                    label=label,
                    explanation=explanation,
                )
            )
    return out


def _resolve(tasks: Sequence[str | TaskLike], taxonomy: Any) -> list[TaskLike]:
    if taxonomy is None and any(isinstance(t, str) for t in tasks):
        from memeops.data.taxonomy import load_taxonomy

        taxonomy = load_taxonomy()
    return [taxonomy.task(t) if isinstance(t, str) else t for t in tasks]


def _explanations(value: Any, meme_id: str) -> dict[str, Any]:
    """The ``explanations`` cell as a dict (JSON string, dict, or blank -> {})."""
    if isinstance(value, dict):
        return value
    if _blank(value):
        return {}
    try:
        parsed = json.loads(str(value))
    except json.JSONDecodeError as exc:
        raise ValueError(f"meme {meme_id}: explanations is not JSON: {exc}") from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise TypeError(
            f"meme {meme_id}: explanations must be a JSON object {{task: text}}, got {type(parsed).__name__}"
        )
    return parsed


def _single_label(value: Any) -> str | None:
    """A single-label table cell -> label or None (None / NaN / pandas NA are missing)."""
    if value is None or (not isinstance(value, (list, tuple, np.ndarray)) and pd.isna(value)):
        return None
    return str(value)


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


# --- strict answer parsing -----------------------------------------------------------------------


def parse_answer(text: str | None, labels: Sequence[str]) -> ParsedAnswer:
    """Strictly parse ``Label: X`` (first non-blank line) and an optional ``Explanation: ...`` line.

    The prefix ``label:`` is case-insensitive; X is trimmed and must equal one of ``labels`` after
    case-folding (the canonical spelling from ``labels`` is returned). No fuzzy or substring
    mapping: anything else is invalid with a reason. The explanation is everything after the first
    later line starting with ``explanation:`` (case-insensitive), stripped; it is extracted even when
    the label is invalid, so explanation quality can be scored separately.
    """
    if text is None or not str(text).strip():
        return ParsedAnswer(None, None, False, "empty output")
    lines = str(text).strip().splitlines()
    first = lines[0].strip()
    explanation = _explanation(lines[1:])
    if not first.casefold().startswith("label:"):
        return ParsedAnswer(None, explanation, False, "no Label line")
    raw = first[len("label:") :].strip()
    if not raw:
        return ParsedAnswer(None, explanation, False, "empty label")
    wanted = raw.casefold()
    for label in labels:
        if label.strip().casefold() == wanted:
            return ParsedAnswer(label, explanation, True, None)
    return ParsedAnswer(None, explanation, False, f'label "{raw}" not in label set')


def _explanation(lines: list[str]) -> str | None:
    for j, line in enumerate(lines):
        stripped = line.strip()
        if stripped.casefold().startswith("explanation:"):
            rest = [stripped[len("explanation:") :], *lines[j + 1 :]]
            body = "\n".join(rest).strip()
            return body or None
    return None


# --- length-bucketed batching --------------------------------------------------------------------


def length_buckets(
    lengths: Sequence[int], batch_size: int, seed: int, chunk_batches: int = 50
) -> list[list[int]]:
    """Batches of indices of similar length: less padding, still a random order.

    Indices are shuffled, cut into chunks of ``chunk_batches * batch_size``, sorted by length
    within each chunk (stable), cut into batches of ``batch_size`` (the last of a chunk may be
    smaller), and the batch order is shuffled. Same ``seed`` -> same batches.
    """
    if batch_size < 1 or chunk_batches < 1:
        raise ValueError("batch_size and chunk_batches must be >= 1")
    lengths = np.asarray(lengths)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend([int(i) for i in part[b : b + batch_size]] for b in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]
