"""VLM instruction samples, the strict answer parser, ROUGE-L, candidate probabilities, the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from memeops.data.taxonomy import load_taxonomy
from memeops.models.base import TaskSpec
from memeops.vlm.instructions import (
    ANSWER_FORMAT,
    InstructionSample,
    build_prompt,
    build_target,
    instruction_samples,
    length_buckets,
    parse_answer,
    unsupported_tasks,
)
from memeops.vlm.scoring import label_probabilities, rouge_l, vlm_report

TAX = load_taxonomy()


# --- prompts and targets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "text", "language"),
    [
        ("emotion", "When the build passes on the first try", "en"),
        ("sentiment", "卧槽，\n我他妈太爱昆蒂人了", "zh"),
    ],
)
def test_prompt_names_task_labels_and_text_verbatim(task: str, text: str, language: str) -> None:
    t = TAX.task(task)
    prompt = build_prompt(t, text, language)
    assert task in prompt
    assert all(label in prompt for label in t.labels)
    assert text in prompt
    assert ANSWER_FORMAT in prompt
    assert prompt.index(text) < prompt.index(ANSWER_FORMAT)
    assert build_prompt(t, text, language) == prompt  # deterministic


def test_target_with_and_without_explanation() -> None:
    assert build_target("yes", "It mocks a group.") == "Label: yes\nExplanation: It mocks a group."
    assert build_target("yes", None) == "Label: yes"
    assert build_target("no", "  ") == "Label: no"


# --- samples -------------------------------------------------------------------------------------


def _memes() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "meme_id": ["m1", "m2", "m3"],
            "source": ["synthmeme", "synthmeme", "memelens"],
            "split": ["train", "val", "test"],
            "language": ["en", "zh", "en"],
            "text": ["hello there", "你好世界", None],
            "source_root": ["data/a", "data/a", "data/b"],
            "image_path": ["images/1.jpg", "images/2.jpg", "en/x/images/3.png"],
            "explanations": [
                json.dumps({"hateful": "It names a group.", "sentiment": "Cheerful wording."}),
                "",
                json.dumps({"hateful": "Explained by the data set."}),
            ],
            "label_hateful": ["yes", None, "no"],
            "label_sentiment": ["positive", "negative", np.nan],
            "label_attack_type": [["mocking"], None, None],
        }
    )


def test_one_sample_per_labelled_meme_task_with_explanations() -> None:
    samples = instruction_samples(_memes(), ["hateful", "sentiment", "attack_type"], TAX)
    keys = [(s.meme_id, s.task) for s in samples]
    assert keys == [("m1", "hateful"), ("m1", "sentiment"), ("m2", "sentiment"), ("m3", "hateful")]
    by_key = {(s.meme_id, s.task): s for s in samples}
    m1 = by_key["m1", "hateful"]
    assert m1.explanation == "It names a group."
    assert m1.target == "Label: yes\nExplanation: It names a group."
    assert m1.labels == ("no", "yes") and m1.label == "yes"
    assert m1.image_path.replace("\\", "/") == "data/a/images/1.jpg"
    assert by_key["m1", "sentiment"].explanation == "Cheerful wording."
    m2 = by_key["m2", "sentiment"]
    assert m2.explanation is None and m2.target == "Label: negative"
    assert "你好世界" in m2.prompt and m2.language == "zh" and m2.split == "val"
    assert by_key["m3", "hateful"].explanation == "Explained by the data set."
    assert unsupported_tasks(["hateful", "attack_type"], TAX).keys() == {"attack_type"}


def test_no_samples_without_labels_and_missing_column_is_an_error() -> None:
    memes = _memes()
    memes["label_hateful"] = None
    memes["label_sentiment"] = None
    assert instruction_samples(memes, ["hateful", "sentiment"], TAX) == []
    with pytest.raises(KeyError):
        instruction_samples(memes, ["emotion"], TAX)


# --- strict parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "label", "explanation"),
    [
        ("Label: yes\nExplanation: it attacks a group", ("no", "yes"), "yes", "it attacks a group"),
        ("  LABEL:   No  \n", ("no", "yes"), "no", None),
        (
            "label: Very_Twisted\n\nexplanation:  two\nlines ",
            ("not_sarcastic", "very_twisted"),
            "very_twisted",
            "two\nlines",
        ),
        ("Label: 积极\nExplanation: 语气很开心", ("消极", "中性", "积极"), "积极", "语气很开心"),
    ],
)
def test_parse_answer_valid(text: str, labels: tuple[str, ...], label: str, explanation: str | None) -> None:
    parsed = parse_answer(text, labels)
    assert parsed.valid and parsed.reason is None
    assert parsed.label == label
    assert parsed.explanation == explanation


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("The meme is hateful because it mocks a group.", "no Label line"),
        ("yes", "no Label line"),
        ("Explanation: x\nLabel: yes", "no Label line"),
        ("Label: maybe\nExplanation: unsure", 'label "maybe" not in label set'),
        ("Label: very", 'label "very" not in label set'),  # substring of a label: never mapped
        ("Label: very twisted", 'label "very twisted" not in label set'),
        ("Label: yes.", 'label "yes." not in label set'),
        ("Label:", "empty label"),
        ("", "empty output"),
        (None, "empty output"),
    ],
)
def test_parse_answer_invalid_is_never_mapped(text: str | None, reason: str) -> None:
    parsed = parse_answer(text, ("no", "yes", "very_twisted"))
    assert not parsed.valid and parsed.label is None
    assert parsed.reason == reason


def test_invalid_answer_keeps_its_explanation() -> None:
    assert parse_answer("Label: maybe\nExplanation: unsure", ("no", "yes")).explanation == "unsure"


# --- ROUGE-L and candidate probabilities --------------------------------------------------------


def test_rouge_l_known_values() -> None:
    assert rouge_l("The cat sat.", "the cat, sat") == pytest.approx(1.0)
    assert rouge_l("red blue", "green yellow") == 0.0
    assert rouge_l("", "anything") == 0.0 and rouge_l("x", None) == 0.0
    # hyp 4 tokens, ref 5 tokens, LCS "the cat on mat" = 4 -> P = 1, R = 0.8, F = 2*0.8/1.8
    assert rouge_l("the cat on mat", "the cat sat on mat") == pytest.approx(2 * 0.8 / 1.8)
    # CJK by character: hyp 我爱猫 (3), ref 我很爱狗 (4), LCS 我爱 = 2 -> P 2/3, R 1/2, F 4/7
    assert rouge_l("我爱猫", "我很爱狗") == pytest.approx(4 / 7)
    # mixed: tokens [meme, 很, 好] vs [meme, 好] -> LCS 2, P 2/3, R 1 -> F 0.8
    assert rouge_l("meme很好", "Meme 好") == pytest.approx(0.8)


def test_label_probabilities_normalise_by_length() -> None:
    loglik = np.array([[-4.0, -3.0], [-1.0, -2.0], [-6.0, -6.0]])
    probs = label_probabilities(loglik, [4, 1])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # summed log-lik prefers label 1 in row 0 (-3 > -4), per token label 0 wins (-1 > -3)
    assert loglik[0].argmax() == 1 and probs[0].argmax() == 0
    per_row = label_probabilities(loglik, np.array([[1, 1], [1, 1], [2, 3]]))
    np.testing.assert_allclose(per_row[0], np.exp([-4, -3]) / np.exp([-4, -3]).sum())
    assert per_row[2].argmax() == 1
    with pytest.raises(ValueError):
        label_probabilities(loglik, [0, 1])


# --- report --------------------------------------------------------------------------------------

HATE = TaskSpec("hateful", "single", ("no", "yes"))
SENT = TaskSpec("sentiment", "single", ("negative", "neutral", "positive"))


def _sample(i: int, source: str, spec: TaskSpec, label: str, explanation: str | None) -> InstructionSample:
    return InstructionSample(
        f"m{i}",
        source,
        "test",
        "en",
        spec.name,
        spec.labels,
        f"img/{i}.jpg",
        "p",
        build_target(label, explanation),
        label,
        explanation,
    )


def test_vlm_report_matches_sklearn_and_counts_invalid() -> None:
    hate_y = ["no", "yes", "yes", "no", "yes"]
    hate_p = [0.2, 0.7, 0.4, 0.6, 0.9]
    sent_y = ["negative", "neutral", "positive", "positive"]
    sent_pred = [0, 2, 2, 1]
    samples, probs, generated = [], [], []
    for i, (y, p) in enumerate(zip(hate_y, hate_p)):
        samples.append(_sample(i, "a" if i < 3 else "b", HATE, y, "it mocks a group" if i % 2 == 0 else None))
        probs.append(np.array([1 - p, p]))
    for j, (y, k) in enumerate(zip(sent_y, sent_pred)):
        samples.append(_sample(10 + j, "a", SENT, y, None))
        row = np.full(3, 0.1)
        row[k] = 0.8
        probs.append(row)
    generated = [
        "Label: no\nExplanation: it mocks a group",  # valid, ROUGE 1
        "Label: yes",
        "Label: probably yes\nExplanation: group",  # invalid; ROUGE on its explanation
        "I think it is fine",  # invalid
        "label: YES",  # valid, no explanation -> ROUGE 0
        "Label: negative",
        "Label: positive",
        "Label: positive",
        "Label: neutral",
    ]
    report = vlm_report(samples, probs, generated, [HATE, SENT])

    y = [HATE.labels.index(v) for v in hate_y]
    pred = [int(p >= 0.5) for p in hate_p]
    assert report["hateful/accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert report["hateful/macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert report["hateful/weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    sy = [SENT.labels.index(v) for v in sent_y]
    assert report["sentiment/accuracy"] == pytest.approx(accuracy_score(sy, sent_pred))
    assert report["sentiment/macro_f1"] == pytest.approx(f1_score(sy, sent_pred, average="macro"))
    assert report["mean/macro_f1"] == pytest.approx(
        (f1_score(y, pred, average="macro") + f1_score(sy, sent_pred, average="macro")) / 2
    )
    assert "hateful/auroc" in report and not math.isnan(report["hateful/auroc"])
    assert not any(k.startswith("sentiment/auroc") or k.endswith("/sentiment/auroc") for k in report)
    assert report["hateful/n"] == 5 and report["sentiment/n"] == 4

    assert report["hateful/invalid_rate"] == pytest.approx(2 / 5)
    assert report["sentiment/invalid_rate"] == 0.0
    assert report["all/invalid_rate"] == pytest.approx(2 / 9)
    assert report["hateful/generated_accuracy"] == pytest.approx(3 / 5)  # m0, m1, m4 right; invalid = wrong
    # references on samples 0, 2, 4: exact (1), the invalid answer's "group" (partial), none (0)
    r2 = rouge_l("group", "it mocks a group")
    assert report["hateful/n_explained"] == 3
    assert report["hateful/rouge_l"] == pytest.approx((1.0 + r2 + 0.0) / 3)
    assert math.isnan(report["sentiment/rouge_l"])

    for key in (
        "source/a/hateful/macro_f1",
        "source/b/hateful/macro_f1",
        "source/a/sentiment/accuracy",
        "source/a/mean/macro_f1",
        "source/b/hateful/invalid_rate",
    ):
        assert key in report
    assert "source/b/sentiment/accuracy" not in report
    assert report["source/a/hateful/n"] == 3 and report["source/b/hateful/invalid_rate"] == pytest.approx(0.5)


def test_vlm_report_without_generation_and_bad_shapes() -> None:
    samples = [_sample(0, "a", HATE, "no", None), _sample(1, "a", HATE, "yes", None)]
    report = vlm_report(samples, [np.array([0.9, 0.1]), np.array([0.3, 0.7])], None, [HATE])
    assert report["hateful/accuracy"] == 1.0 and report["hateful/auroc"] == 1.0
    assert not any("invalid_rate" in k or "rouge_l" in k for k in report)
    with pytest.raises(ValueError):
        vlm_report(samples, [np.array([0.9, 0.1, 0.0])] * 2, None, [HATE])
    with pytest.raises(KeyError):
        vlm_report(samples, [np.array([0.9, 0.1])] * 2, None, [SENT])


# --- length buckets ------------------------------------------------------------------------------


def test_length_buckets_cover_once_deterministic_and_homogeneous() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.permutation(np.arange(100))
    batches = length_buckets(lengths, batch_size=10, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(100))
    assert all(isinstance(i, int) for b in batches for i in b)
    assert batches == length_buckets(lengths, batch_size=10, seed=3)
    assert batches != length_buckets(lengths, batch_size=10, seed=4)
    # one chunk holds everything, so each batch is a run of 10 consecutive lengths
    assert all(max(lengths[b]) - min(lengths[b]) == 9 for b in batches)
    # several chunks: still every index exactly once, ragged last batches allowed
    small = length_buckets(list(range(23)), batch_size=4, seed=1, chunk_batches=2)
    assert sorted(i for b in small for i in b) == list(range(23))
    assert all(1 <= len(b) <= 4 for b in small)
