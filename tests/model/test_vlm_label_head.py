"""The VLM's label head (RA-HMD's classifier on the decoder's hidden state): where it reads, its
logits, its loss term, the label sources head / mix, its round trip through the model folder and the
serving loader, and that the default (no head) is the plain LM as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_model

from memeops.models.base import TaskSpec
from memeops.vlm.instructions import InstructionSample, build_prompt, build_target
from memeops.vlm.model import TinyVLM, TinyVLMConfig, encode_pairs, load_vlm, save_vlm, train_tokenizer
from memeops.vlm.train import (
    VLMTrainConfig,
    answer_loss,
    fit_vlm,
    head_probabilities,
    label_head_loss,
    label_probs,
    monitor_value,
    score_candidates,
)

SPECS = (TaskSpec("metaphor", "single", ("no", "yes")), TaskSpec("sentiment", "single", ("negative", "neutral", "positive")))
TINY_MODEL = {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64, "prefix_tokens": 2}


def _samples(n: int, split: str) -> list[InstructionSample]:
    out = []
    for i in range(n):
        spec = SPECS[i % 2]
        label = spec.labels[(i // 2) % len(spec.labels)]
        expl = f"It reads as {label}." if i % 3 else None
        out.append(InstructionSample(f"m{split}{i}", "synth", split, "en", spec.name, spec.labels, "x.jpg",
                                     build_prompt(spec, f"the boss is a {label} {i % 4}", "en"),
                                     build_target(label, expl), label, expl))  # fmt: skip
    return out


def _images(samples: list[InstructionSample]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = {}
    for s in samples:
        v = rng.normal(size=8).astype(np.float32) + s.label_index
        out[s.meme_id] = (v, v + 0.1)
    return out


def _model(tok, label_tasks=None, image_dim: int = 8) -> TinyVLM:
    torch.manual_seed(0)
    return TinyVLM(TinyVLMConfig(image_dim=image_dim, vocab_size=len(tok), pad_id=tok.pad_token_id, bos_id=tok.bos_token_id,
                                 eos_id=tok.eos_token_id, label_tasks=label_tasks or {}, **TINY_MODEL)).eval()  # fmt: skip


@pytest.fixture(scope="module")
def data():
    samples = _samples(12, "val")
    tok = train_tokenizer([t for s in samples for t in (s.prompt, s.target)], 200)
    return samples, _images(samples), tok


def test_head_logits_have_one_column_per_label(data) -> None:
    samples, images, tok = data
    model = _model(tok, {s.name: s.labels for s in SPECS})
    assert {n for n, _ in model.named_parameters() if n.startswith("label_heads.")} == {
        "label_heads.metaphor.weight", "label_heads.metaphor.bias",
        "label_heads.sentiment.weight", "label_heads.sentiment.bias"}  # fmt: skip
    state = torch.randn(5, 32)
    tasks = ["metaphor", "sentiment", "metaphor", "sentiment", "sentiment"]
    out = model.label_logits(state, tasks)
    assert out["metaphor"][0].tolist() == [0, 2] and out["metaphor"][1].shape == (2, 2)
    assert out["sentiment"][0].tolist() == [1, 3, 4] and out["sentiment"][1].shape == (3, 3)
    with pytest.raises(KeyError, match="no label head"):
        model.label_logits(state[:1], ["hateful"])


def test_head_reads_the_last_prompt_token(data) -> None:
    """Training (prompt + answer rows, first answer index in token_hidden) and scoring (prompt-only
    rows, last attended token) read the same state: the one that predicts ``Label``."""
    samples, images, tok = data
    model = _model(tok, {s.name: s.labels for s in SPECS})
    chunk = samples[:4]
    image = torch.from_numpy(np.stack([images[s.meme_id][0] for s in chunk]))
    both = encode_pairs(tok, [s.prompt for s in chunk], [s.target for s in chunk], 160)
    prompt_only = encode_pairs(tok, [s.prompt for s in chunk], None, 160)
    start = model.answer_start(both["labels"])
    assert start.tolist() == prompt_only["attention_mask"].sum(1).tolist()  # <s> prompt \n, then the answer
    first = [tok(s.target, add_special_tokens=False)["input_ids"][0] for s in chunk]  # "Label" as encode_pairs tokenises it
    assert both["input_ids"][torch.arange(4), start].tolist() == first and tok.decode(first[:1]).startswith("Label")
    with torch.no_grad():
        trained = model.token_hidden(image, both["input_ids"], both["attention_mask"])[torch.arange(4), start]
        scored = model.prompt_state(image, prompt_only["input_ids"], prompt_only["attention_mask"])
    torch.testing.assert_close(trained, scored, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="answer token"):
        model.answer_start(prompt_only["labels"])


def test_loss_includes_the_head_term(data) -> None:
    samples, images, tok = data
    model = _model(tok, {s.name: s.labels for s in SPECS})
    chunk = samples[:6]
    image = torch.from_numpy(np.stack([images[s.meme_id][0] for s in chunk]))
    enc = encode_pairs(tok, [s.prompt for s in chunk], [s.target for s in chunk], 160)
    hidden = model.token_hidden(image, enc["input_ids"], enc["attention_mask"])
    head = label_head_loss(model, hidden, enc["labels"], chunk)
    # by hand: the head of each row's task on the state at its first answer position
    start = model.answer_start(enc["labels"])
    by_hand = torch.stack([torch.nn.functional.cross_entropy(
        model.label_heads[s.task](hidden[i, start[i]])[None], torch.tensor([s.label_index])) for i, s in enumerate(chunk)]).mean()  # fmt: skip
    torch.testing.assert_close(head, by_hand)
    # the head's gradient reaches the decoder and the projector (joint training), not only the heads
    (answer_loss(model, hidden, enc["labels"], 1.0, None) + 0.5 * head).backward()
    assert model.label_heads["metaphor"].weight.grad is not None and model.projector[0].weight.grad.abs().sum() > 0

    train, val = _samples(24, "train"), _samples(6, "val")
    cfg = VLMTrainConfig(epochs=2, batch_size=8, vocab_size=200, max_length=160, label_head=True,
                         label_head_weight=2.0, model=TINY_MODEL)  # fmt: skip
    fit = fit_vlm(train, val, _images(train + val), cfg)
    record = fit.history[-1]
    assert {"train_head_loss", "val_head_loss", "val_monitor"} <= set(record)
    assert record["val_monitor"] == pytest.approx(record["val_loss"] + 2.0 * record["val_head_loss"])
    assert monitor_value(record, cfg) == record["val_monitor"]
    assert fit.best_epoch == int(np.argmin([h["val_monitor"] for h in fit.history])) + 1
    assert dict(fit.model.cfg.label_tasks) == {s.name: s.labels for s in SPECS}


def test_head_and_mix_give_distributions(data) -> None:
    samples, images, tok = data
    model = _model(tok, {s.name: s.labels for s in SPECS})
    cfg = VLMTrainConfig(vocab_size=200, max_length=160, eval_batch_size=5, label_head=True)
    assert cfg.resolved_label_source == "head"
    head = label_probs(model, tok, samples, images, cfg)
    cands = score_candidates(model, tok, samples, images, cfg)
    mix = label_probs(model, tok, samples, images, cfg, "mix")
    for s, h, c, m in zip(samples, head, cands, mix):
        for p in (h, m):
            assert p.shape == (len(s.labels),) and (p >= 0).all() and p.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(m, (h + c) / 2)
    # batches cut across tasks give the same numbers as one sample at a time
    one = [head_probabilities(model, tok, [s], images, cfg)[0] for s in samples]
    np.testing.assert_allclose(np.concatenate(head), np.concatenate(one), atol=1e-6)


def test_config_switches() -> None:
    assert VLMTrainConfig().resolved_label_source == "candidates"
    assert VLMTrainConfig(label_head=True, label_source="candidates").resolved_label_source == "candidates"
    assert VLMTrainConfig(label_head=True, label_source="mix").resolved_label_source == "mix"
    with pytest.raises(ValueError, match="needs label_head"):
        VLMTrainConfig(label_source="head")
    with pytest.raises(ValueError):
        VLMTrainConfig(label_head=True, label_source="vote")
    with pytest.raises(ValueError, match="label_tasks"):
        VLMTrainConfig(model={"label_tasks": {"x": ["a", "b"]}})
    with pytest.raises(ValueError):
        TinyVLMConfig(label_tasks={"a.b": ("x", "y")})


def test_head_model_round_trips_through_the_folder(data, tmp_path: Path) -> None:
    samples, images, tok = data
    model = _model(tok, {s.name: s.labels for s in SPECS})
    cfg = VLMTrainConfig(vocab_size=200, max_length=160, label_head=True)
    folder = save_vlm(model, tok, tmp_path / "vlm")
    again, tok2 = load_vlm(folder)
    assert dict(again.cfg.label_tasks) == dict(model.cfg.label_tasks)
    for source in ("head", "mix"):
        np.testing.assert_array_equal(np.concatenate(label_probs(again, tok2, samples, images, cfg, source)),
                                      np.concatenate(label_probs(model, tok, samples, images, cfg, source)))  # fmt: skip


def test_default_is_the_plain_model(data, tmp_path: Path) -> None:
    """No head: no extra parameters, the same initial weights, an old-style config and folder."""
    samples, images, tok = data
    plain, with_head = _model(tok), _model(tok, {s.name: s.labels for s in SPECS})
    assert not len(plain.label_heads)
    shared = {k: v for k, v in with_head.state_dict().items() if not k.startswith("label_heads.")}
    assert shared.keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in shared.items())
    # a folder written before the heads existed: its config has no label_tasks key
    folder = save_vlm(plain, tok, tmp_path / "old")
    config = json.loads((folder / "vlm_config.json").read_text())
    config.pop("label_tasks")
    (folder / "vlm_config.json").write_text(json.dumps(config))
    old, tok2 = load_vlm(folder)
    assert not len(old.label_heads)
    cfg = VLMTrainConfig(vocab_size=200, max_length=160)
    np.testing.assert_array_equal(np.concatenate(label_probs(old, tok2, samples, images, cfg)),
                                  np.concatenate(score_candidates(plain, tok, samples, images, cfg)))  # fmt: skip
    train, val = _samples(16, "train"), _samples(4, "val")
    fit = fit_vlm(train, val, _images(train + val), VLMTrainConfig(epochs=1, batch_size=8, vocab_size=200, model=TINY_MODEL))
    assert set(fit.history[0]) == {"epoch", "train_loss", "val_loss"}


# --- serving -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory):
    from memeops.models.clip import ClipEncoderConfig, load_clip

    root = tmp_path_factory.mktemp("clip")
    clip = load_clip(ClipEncoderConfig(tokenizer="open_clip", embed_dim=8, image_size=32, vision_width=8,
                                       text_width=32, text_layers=1, text_heads=2, context_length=24),
                     allow_random=True)  # fmt: skip
    save_model(clip.model, str(root / "clip.safetensors"))
    (root / "clip_config.json").write_text(clip.config.model_copy(update={"weights": "clip.safetensors"}).model_dump_json())
    return root, clip


def _frame(tmp_path: Path, n: int = 4) -> dict[str, list]:
    from PIL import Image

    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"m{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    return {"image": [str(p) for p in paths], "text": [f"the boss is a snake {i}" for i in range(n)], "language": ["en"] * n}


def test_served_head_model_predicts_with_the_head(data, clip_dir, tmp_path: Path) -> None:
    from PIL import Image

    from memeops.serving.predictor import open_predictor
    from memeops.serving.vlm import VLMPredictor, save_vlm_dir

    _, _, tok = data
    root, clip = clip_dir
    model = _model(tok, {s.name: s.labels for s in SPECS}, image_dim=16)  # [image; text] CLIP prefix, 8 + 8
    cfg = VLMTrainConfig(vocab_size=200, max_length=160, max_new_tokens=4, label_head=True)
    folder = save_vlm_dir(tmp_path / "model", model, tok, SPECS, root, cfg, with_text=True)
    spec = json.loads((folder / "memeops_model.json").read_text())
    assert spec["model"]["config"]["label_source"] == "head"
    predictor = open_predictor(folder)
    assert isinstance(predictor, VLMPredictor) and predictor.label_source == "head"
    frame = _frame(tmp_path)
    table = predictor.predict(frame)
    # the same numbers from the training-side function on the same prefix vectors
    emb = np.concatenate([clip.encode_images([Image.open(p).convert("RGB") for p in frame["image"]]).numpy(),
                          clip.encode_texts(frame["text"]).numpy()], axis=1)  # fmt: skip
    vectors = {str(i): (emb[i], emb[i]) for i in range(len(emb))}
    for task in SPECS:
        served = [InstructionSample(str(i), "input", "serve", "en", task.name, task.labels, "",
                                    build_prompt(task, frame["text"][i], "en"), "", task.labels[0], None)
                  for i in range(len(emb))]  # fmt: skip
        direct = head_probabilities(model, tok, served, vectors, cfg)
        np.testing.assert_allclose(table[f"{task.name}_prob"], [p.max() for p in direct], atol=1e-5)
        assert table[task.name].tolist() == [task.labels[int(np.argmax(p))] for p in direct]
        if task.is_binary:
            np.testing.assert_allclose(table[f"{task.name}_p_yes"], [p[1] for p in direct], atol=1e-5)
    # reloaded through the folder loader: identical probabilities
    again = VLMPredictor.from_dir(folder, explain=False).predict(frame)
    np.testing.assert_array_equal(again["sentiment_prob"].to_numpy(), table["sentiment_prob"].to_numpy())

    # an old folder (no label_source in its spec) with a head model still serves with the head;
    # one without heads serves by candidate scoring
    spec["model"]["config"].pop("label_source")
    (folder / "memeops_model.json").write_text(json.dumps(spec))
    assert VLMPredictor.from_dir(folder, explain=False).label_source == "head"
    plain = save_vlm_dir(tmp_path / "plain", _model(tok, image_dim=16), tok, SPECS, root, VLMTrainConfig(), True)
    assert "label_source" not in json.loads((plain / "memeops_model.json").read_text())["model"]["config"]
    assert VLMPredictor.from_dir(plain, explain=False).label_source == "candidates"


def test_served_head_source_needs_a_head_per_task(data) -> None:
    from memeops.serving.vlm import served_label_source

    _, _, tok = data
    model = _model(tok, {"metaphor": ("no", "yes")})
    assert served_label_source(model, {}, SPECS[:1]) == "head"
    assert served_label_source(model, {"label_source": "candidates"}, SPECS) == "candidates"
    with pytest.raises(ValueError, match="no label head for task 'sentiment'"):
        served_label_source(model, {"label_source": "mix"}, SPECS)
    assert served_label_source(_model(tok), {}, SPECS) == "candidates"


def test_regime_with_the_head_scores_with_it_and_says_its_monitor() -> None:
    from memeops.vlm.experiment import monitor_name, stage_report, train_regime
    from memeops.vlm.train import MONITOR, MONITOR_WITH_HEAD

    samples = [s for split, n in (("train", 24), ("val", 6), ("test", 6)) for s in _samples(n, split)]
    images = _images(samples)
    cfg = VLMTrainConfig(epochs=2, batch_size=8, vocab_size=200, generate_samples=2, max_new_tokens=8,
                         label_head=True, label_head_weight=0.5, model=TINY_MODEL)  # fmt: skip
    result = train_regime(samples, images, cfg, "unified", ("test",))
    fit, test = result.fits["unified"], result.splits["test"]
    np.testing.assert_allclose(np.concatenate(test.probs),
                               np.concatenate(head_probabilities(fit.model, fit.tokenizer, test.samples, images, cfg)))  # fmt: skip
    assert monitor_name(result) == MONITOR_WITH_HEAD
    report = stage_report(result, list(SPECS), {}, {})
    assert report["monitor"] == MONITOR_WITH_HEAD
    assert report["val_best"] == pytest.approx(min(h["val_loss"] + 0.5 * h["val_head_loss"] for h in fit.history))
    plain = train_regime(samples, images, cfg.model_copy(update={"label_head": False}), "unified", ())
    assert monitor_name(plain) == MONITOR
