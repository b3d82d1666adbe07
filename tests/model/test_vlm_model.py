"""The offline default VLM: tokenizer round trip, answer-only labels, training that learns, candidate
scoring, generation that parses, LoRA on the tiny decoder, save / load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from memeops.vlm.instructions import InstructionSample, build_prompt, build_target, parse_answer
from memeops.vlm.model import IGNORE, TinyVLM, TinyVLMConfig, apply_lora, encode_pairs, load_vlm, save_vlm, train_tokenizer
from memeops.vlm.train import VLMTrainConfig, fit_vlm, generate_answers, score_candidates


class _Task:
    name, kind, labels = "metaphor", "single", ("no", "yes")


def _samples(n: int, split: str) -> list[InstructionSample]:
    out = []
    for i in range(n):
        label = ("no", "yes")[i % 2]
        text = f"my boss is a {'snake' if label == 'yes' else 'person'} {i % 3}"
        expl = "The snake carries a figurative meaning." if label == "yes" else None
        out.append(InstructionSample(f"m{split}{i}", "synth", split, "en", "metaphor", ("no", "yes"), "x.jpg",
                                     build_prompt(_Task(), text, "en"), build_target(label, expl), label, expl))  # fmt: skip
    return out


def _images(samples: list[InstructionSample]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = {}
    for s in samples:
        v = rng.normal(size=8).astype(np.float32) + (2.0 if s.label == "yes" else -2.0)
        out[s.meme_id] = (v, v)
    return out


def test_tokenizer_round_trips_exact_text() -> None:
    tok = train_tokenizer(["Label: yes\nExplanation: a snake.", "卧槽，我太爱昆蒂人了", "Label: no"] * 3, 200)
    for text in ["Label: yes\nExplanation: a snake.", "Label: no", "我太爱 snake"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("\n") != tok.unk_token_id


def test_labels_cover_the_answer_only() -> None:
    tok = train_tokenizer(["prompt words here", "Label: yes"] * 3, 100)
    batch = encode_pairs(tok, ["prompt words here", "prompt"], ["Label: yes", "Label: yes"], 64)
    answer = len(tok("Label: yes", add_special_tokens=False)["input_ids"]) + 1  # + </s>
    assert (batch["labels"] != IGNORE).sum(1).tolist() == [answer, answer]
    assert batch["input_ids"][0, 0] == tok.bos_token_id
    truncated = encode_pairs(tok, ["prompt words here " * 20], ["Label: yes"], 12)
    assert truncated["input_ids"].shape[1] == 12 and int((truncated["labels"] != IGNORE).sum()) == answer


def test_fit_scores_generates_and_reloads(tmp_path: Path) -> None:
    train, val = _samples(48, "train"), _samples(8, "val")
    images = _images(train + val)
    cfg = VLMTrainConfig(epochs=30, batch_size=16, lr=3e-3, vocab_size=300, max_length=160,
                         model={"hidden": 64, "layers": 2, "heads": 2, "intermediate": 128, "prefix_tokens": 2})  # fmt: skip
    fit = fit_vlm(train, val, images, cfg)
    assert len(fit.history) == 30 and fit.history[-1]["train_loss"] < fit.history[0]["train_loss"]
    assert fit.best_epoch == int(np.argmin([h["val_loss"] for h in fit.history])) + 1
    probs = score_candidates(fit.model, fit.tokenizer, val, images, cfg)
    np.testing.assert_allclose([p.sum() for p in probs], 1.0, atol=1e-6)
    assert np.mean([int(np.argmax(p)) == s.label_index for p, s in zip(probs, val)]) >= 0.75
    answers = generate_answers(fit.model, fit.tokenizer, val, images, cfg)
    parsed = [parse_answer(a, s.labels) for a, s in zip(answers, val)]
    assert np.mean([p.valid for p in parsed]) >= 0.75, answers[:2]

    folder = save_vlm(fit.model, fit.tokenizer, tmp_path / "vlm")
    model, tok = load_vlm(folder)
    again = score_candidates(model, tok, val, images, cfg)
    np.testing.assert_allclose(np.stack(again), np.stack(probs), atol=1e-5)


def test_lora_trains_only_adapters_and_projector() -> None:
    model = apply_lora(TinyVLM(TinyVLMConfig(image_dim=8, vocab_size=50, hidden=32, layers=1, heads=2, intermediate=64)), 4, 8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projector.") for n in trainable)
    assert any("lora_" in n for n in trainable)
    batch = {"input_ids": torch.randint(4, 50, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    out = model(torch.randn(2, 8), **batch, labels=batch["input_ids"])
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_lora_model_scores_answer_positions() -> None:
    """The answer-only logits read the bare decoder through the peft wrapper too."""
    model = apply_lora(TinyVLM(TinyVLMConfig(image_dim=8, vocab_size=50, hidden=32, layers=1, heads=2, intermediate=64)), 4, 8)
    ids = torch.randint(4, 50, (2, 6))
    labels = ids.clone()
    labels[:, :3] = IGNORE
    logits, targets, answer = model.answer_logits(torch.randn(2, 8), ids, torch.ones(2, 6, dtype=torch.long), labels)
    assert logits.shape == (6, 50) and targets.tolist() == ids[:, 3:].flatten().tolist() and int(answer.sum()) == 6


def test_candidate_scores_match_the_full_forward() -> None:
    """score_candidates (vocabulary projection on answer positions only) equals the per-candidate
    length-normalised log-likelihood computed from the full forward's logits."""
    from memeops.vlm.scoring import label_probabilities

    torch.manual_seed(0)
    samples = _samples(6, "val")
    images = _images(samples)
    tok = train_tokenizer([t for s in samples for t in (s.prompt, s.target)], 200)
    cfg = VLMTrainConfig(vocab_size=200, max_length=160, eval_batch_size=5)  # batches cut across samples
    model = TinyVLM(TinyVLMConfig(image_dim=8, vocab_size=len(tok), hidden=32, layers=2, heads=2, intermediate=64,
                                  pad_id=tok.pad_token_id, bos_id=tok.bos_token_id, eos_id=tok.eos_token_id)).eval()  # fmt: skip
    ends = [tok.eos_token_id, tok.convert_tokens_to_ids("\n")]
    expected = []
    with torch.no_grad():
        for s in samples:
            loglik, count = [], []
            for label in s.labels:
                enc = encode_pairs(tok, [s.prompt], [f"Label: {label}"], cfg.max_length)
                image = torch.from_numpy(images[s.meme_id][0])[None]
                logits = model(image, enc["input_ids"], enc["attention_mask"]).logits[0]
                logp = logits[model.cfg.prefix_tokens - 1 : -1].float().log_softmax(-1)
                where = (enc["labels"][0] != IGNORE).nonzero().flatten().tolist()
                body = sum(float(logp[t, enc["input_ids"][0, t]]) for t in where[:-1])
                loglik.append(body + float(torch.logsumexp(logp[where[-1], ends], -1)))
                count.append(len(where))
            expected.append(label_probabilities(np.array([loglik]), np.array([count]))[0])
    got = score_candidates(model, tok, samples, images, cfg)
    np.testing.assert_allclose(np.stack(got), np.stack(expected), atol=1e-5)


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError):
        VLMTrainConfig(epoch=3)


def test_label_line_weighting() -> None:
    from memeops.vlm.train import answer_loss, label_line_mask

    labels = torch.tensor([[IGNORE, IGNORE, 7, 8, 4, 9, 9, 2], [IGNORE, 7, 8, 2, IGNORE, IGNORE, IGNORE, IGNORE]])
    mask = label_line_mask(labels, newline_id=4)
    assert mask.tolist() == [[False, False, True, True, True, False, False, False],
                             [False, True, True, True, False, False, False, False]]  # fmt: skip
    model = TinyVLM(TinyVLMConfig(image_dim=8, vocab_size=12, hidden=16, layers=1, heads=2, intermediate=32))
    batch = {"input_ids": labels.clamp_min(5), "attention_mask": torch.ones_like(labels), "labels": labels}
    image = torch.randn(2, 8)
    reference = model(image, **batch).loss
    hidden = model.token_hidden(image, batch["input_ids"], batch["attention_mask"])
    # weight 1 is the plain answer loss; a larger weight moves it towards the label line's own loss
    torch.testing.assert_close(answer_loss(model, hidden, labels, 1.0, 4), reference)
    only_label = {**batch, "labels": torch.where(mask, labels, torch.full_like(labels, IGNORE))}
    heavy = answer_loss(model, hidden, labels, 1e6, 4)
    torch.testing.assert_close(heavy, model(image, **only_label).loss, atol=1e-4, rtol=1e-4)
