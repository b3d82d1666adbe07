"""The retrieval model (RGCL / RA-HMD style): shapes, the contrastive loss against a plain loop, the
kNN mixture on a hand-made index, the index surviving state-dict / safetensors / model-folder round
trips, and train_variant building the index over TRAIN."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_model, save_file, save_model

from memeops.config import TrainStageConfig
from memeops.data.features import FeatureStore
from memeops.models.base import IGNORE_INDEX, TaskSpec, probabilities
from memeops.models.factory import build_model
from memeops.models.retrieval import Retrieval, contrastive_loss

SPECS = [
    TaskSpec("hateful", "single", ("no", "yes")),
    TaskSpec("sentiment", "single", ("negative", "neutral", "positive")),
    TaskSpec("target", "multi", ("religion", "race", "gender")),
]
DIM, B = 16, 8
SMALL = {"image_dim": DIM, "text_dim": DIM, "hidden": 12, "embed_dim": 6, "interaction": "none"}
LEXICAL = {**SMALL, "interaction": "lowrank", "lexical_dim": 10, "object_classes": 5, "rank": 3}


def _batch(b: int = B, seed: int = 0, targets: bool = True, lexical: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"image_emb": torch.randn(b, DIM, generator=g), "text_emb": torch.randn(b, DIM, generator=g)}
    if lexical:
        out["caption_ngrams"] = torch.rand(b, 10, generator=g)
        out["object_tags"] = (torch.rand(b, 5, generator=g) > 0.5).float()
    if targets:
        out["targets"] = {
            "hateful": torch.randint(0, 2, (b,), generator=g),
            "sentiment": torch.randint(0, 3, (b,), generator=g),
            "target": (torch.rand(b, 3, generator=g) > 0.5).float(),
        }
    return out


def _build(seed: int = 0, **config) -> Retrieval:
    torch.manual_seed(seed)
    return build_model("retrieval", {**SMALL, **config}, SPECS)


def _probs(model: Retrieval, batch: dict) -> dict[str, torch.Tensor]:
    out = model(batch)
    return {s.name: probabilities(out.logits[s.name], s) for s in SPECS}


@pytest.mark.parametrize("config", [SMALL, LEXICAL], ids=["concat", "lowrank"])
def test_shapes_embedding_and_aux(config) -> None:
    model, batch = _build(**config), _batch(lexical=config is LEXICAL)
    out = model(batch)
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {"hateful": (B, 2), "sentiment": (B, 3), "target": (B, 3)}
    assert out.aux_loss is not None and out.aux_loss.ndim == 0 and torch.isfinite(out.aux_loss)
    assert out.extras == {}  # the embedding is model.embed(batch), not a prediction-table extra
    e = model.embed(batch)
    assert e.shape == (B, 6)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(B))
    assert model.index_embeddings.shape == (0, 6) and model.index_labels.shape == (0, 2)  # empty until built
    if config is LEXICAL:  # f = [h; z]: W_e reads hidden + rank
        assert model.embedding.in_features == 12 + 3


def test_lowrank_needs_the_lexical_inputs() -> None:
    with pytest.raises(ValidationError, match="object_classes"):
        build_model("retrieval", {**SMALL, "interaction": "lowrank"}, SPECS)


def _loop_loss(e: torch.Tensor, y: torch.Tensor, tau: float) -> float:
    """The documented L_t, term by term."""
    rows = [i for i in range(len(y)) if y[i] != IGNORE_INDEX]
    terms = []
    for i in rows:
        pos = [j for j in rows if j != i and y[j] == y[i]]
        neg = [j for j in rows if y[j] != y[i]]
        if not pos:
            continue
        s = {j: float(e[i] @ e[j]) / tau for j in rows}
        z = sum(math.exp(s[n]) for n in neg)
        w = {n: len(neg) * math.exp(s[n]) / z for n in neg}
        denom_neg = sum(w[n] * math.exp(s[n]) for n in neg)
        terms.append(np.mean([-math.log(math.exp(s[p]) / (math.exp(s[p]) + denom_neg)) for p in pos]))
    return float(np.mean(terms))


def test_contrastive_loss_is_the_documented_formula_and_skips_unlabelled_rows() -> None:
    g = torch.Generator().manual_seed(1)
    e = torch.nn.functional.normalize(torch.randn(9, 4, generator=g), dim=1)
    y = torch.tensor([0, 1, 0, 2, 1, IGNORE_INDEX, 0, 2, IGNORE_INDEX])  # label 2: one anchor pair; rows 5, 8 unlabelled
    loss = contrastive_loss(e, y, 0.5)
    assert loss == pytest.approx(_loop_loss(e, y, 0.5), rel=1e-5)
    keep = y != IGNORE_INDEX
    assert float(contrastive_loss(e[keep], y[keep], 0.5)) == pytest.approx(float(loss), rel=1e-6)
    # no row has a positive: nothing to learn; one label only: no negatives, −log 1 = 0
    assert contrastive_loss(e[:2], torch.tensor([0, 1]), 0.5) is None
    alike = e[:3].clone().requires_grad_(True)
    zero = contrastive_loss(alike, torch.tensor([1, 1, 1]), 0.5)
    assert float(zero.detach()) == pytest.approx(0.0, abs=1e-6)
    zero.backward()  # rows without negatives: finite (zero) gradients, no NaN
    assert torch.isfinite(alike.grad).all()
    # hardness weighting: a harder (more similar) negative raises the loss
    anchor = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    easy = contrastive_loss(torch.cat([anchor, torch.tensor([[-1.0, 0.0], [0.0, 1.0]])]), torch.tensor([0, 0, 1, 1]), 0.5)
    hard = contrastive_loss(torch.cat([anchor, torch.tensor([[0.8, 0.6], [0.0, 1.0]])]), torch.tensor([0, 0, 1, 1]), 0.5)
    assert float(hard) > float(easy)


def test_contrastive_training_decreases_it_and_switch_off_removes_it(torch_globals) -> None:
    model, batch = _build(dropout=0.0), _batch(b=32, seed=3)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        aux = model(batch).aux_loss
        losses.append(float(aux.detach()))
        opt.zero_grad()
        aux.backward()
        opt.step()
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]
    for off in (_build(contrastive=False).train(), _build(contrastive_weight=0.0).train()):
        aux = off(batch).aux_loss  # no interaction, no contrastive term: a zero that keeps W_e in the graph
        assert float(aux.detach()) == 0.0
        aux.backward()
        assert off.embedding.weight.grad is not None and not off.embedding.weight.grad.any()
    assert _build()(_batch(targets=False)).aux_loss is None  # serving batches carry no labels


def test_a_batch_without_positives_still_reaches_the_embedding() -> None:
    model = _build().train()
    batch = _batch(b=2)
    batch["targets"] = {"hateful": torch.tensor([0, 1]), "sentiment": torch.tensor([0, 2])}
    aux = model(batch).aux_loss
    assert float(aux.detach()) == 0.0
    aux.backward()  # DDP without find_unused_parameters needs W_e in the graph
    assert model.embedding.weight.grad is not None


def _hand_index(model: Retrieval, queries: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Index rows: the queries themselves plus random ones; sentiment unlabelled on the queries' copies."""
    g = torch.Generator().manual_seed(7)
    other = torch.nn.functional.normalize(torch.randn(10, 6, generator=g), dim=1)
    emb = torch.cat([queries, other])
    n = len(emb)
    hateful = torch.randint(0, 2, (n,), generator=g)
    sentiment = torch.randint(0, 3, (n,), generator=g)
    sentiment[: len(queries)] = IGNORE_INDEX
    return emb, {"hateful": hateful, "sentiment": sentiment}


def _expected_q(e: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor, k: int, temp: float, n_labels: int) -> np.ndarray:
    out = np.zeros((len(e), n_labels))
    for i in range(len(e)):
        rows = [j for j in range(len(emb)) if labels[j] != IGNORE_INDEX]
        sims = sorted(((float(e[i] @ emb[j]), j) for j in rows), reverse=True)[:k]
        w = np.exp(np.array([s for s, _ in sims]) / temp)
        w /= w.sum()
        for wj, (_, j) in zip(w, sims):
            out[i, int(labels[j])] += wj
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_eval_probabilities_are_the_documented_mixture(alpha: float) -> None:
    k, temp = 3, 0.2
    model = _build(k=k, temperature=temp, retrieval_weight=alpha).eval()
    batch = _batch(b=4, seed=5)
    with torch.no_grad():
        classifier = _probs(model, batch)  # empty index: the classifier alone
        e = model.embed(batch)
        emb, targets = _hand_index(model, e)
        model.build_index(emb, targets)
        mixed = _probs(model, batch)
    assert model.index_embeddings.shape == (14, 6) and model.index_labels.shape == (14, 2)
    for name, n_labels in (("hateful", 2), ("sentiment", 3)):
        q = _expected_q(e, emb, targets[name], k, temp, n_labels)
        expected = (1 - alpha) * classifier[name].numpy() + alpha * q
        np.testing.assert_allclose(mixed[name].numpy(), expected, atol=1e-6)
    # hateful: each query's nearest row is itself, labelled; with k=1, α=1 the prediction is that label
    model1 = _build(k=1, retrieval_weight=1.0).eval()
    model1.load_state_dict(model.state_dict())
    with torch.no_grad():
        p = _probs(model1, batch)["hateful"]
    np.testing.assert_allclose(p.numpy(), np.eye(2)[targets["hateful"][:4].numpy()], atol=1e-6)
    torch.testing.assert_close(mixed["target"], classifier["target"])  # multi-label: classifier only


def test_retrieval_off_train_mode_and_unlabelled_tasks_give_the_classifier() -> None:
    model = _build(retrieval_weight=1.0).eval()
    batch = _batch(seed=2)
    with torch.no_grad():
        classifier = _probs(model, batch)
        model.build_index(model.embed(batch), {"hateful": torch.randint(0, 2, (B,))})  # sentiment: no labels
        mixed = _probs(model, batch)
        off = _build(retrieval=False, retrieval_weight=1.0).eval()
        off.load_state_dict(model.state_dict())
        assert len(off.index_embeddings) == B
        torch.testing.assert_close(_probs(off, batch)["hateful"], classifier["hateful"])
        model.train()
        model.trunk[2].p = 0.0  # no dropout: train-mode logits comparable
        torch.testing.assert_close(_probs(model, batch)["hateful"], classifier["hateful"])
    assert not torch.allclose(mixed["hateful"], classifier["hateful"])
    torch.testing.assert_close(mixed["sentiment"], classifier["sentiment"])
    assert (model.index_labels[:, 1] == IGNORE_INDEX).all()


def test_index_survives_state_dict_and_safetensors_round_trips(tmp_path: Path) -> None:
    model, batch = _build(**LEXICAL).eval(), _batch(lexical=True)
    with torch.no_grad():
        model.build_index(model.embed(_batch(b=20, seed=9, lexical=True)), _batch(b=20, seed=9)["targets"])
        expected = _probs(model, batch)
    fresh = _build(seed=1, **LEXICAL).eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(fresh.index_embeddings, model.index_embeddings)
    assert torch.equal(fresh.index_labels, model.index_labels) and fresh.index_labels.dtype == torch.long
    with torch.no_grad():
        for name, p in _probs(fresh, batch).items():
            torch.testing.assert_close(p, expected[name])
    save_model(model, str(tmp_path / "head.safetensors"))  # what save_model_dir / MemePredictor.from_dir use
    served = _build(seed=2, **LEXICAL).eval()
    load_model(served, str(tmp_path / "head.safetensors"), strict=True)
    assert served.index_embeddings.shape == (20, 6)
    with torch.no_grad():
        torch.testing.assert_close(_probs(served, batch)["hateful"], expected["hateful"])
    empty = _build(**LEXICAL)
    empty.load_state_dict(_build(seed=3, **LEXICAL).state_dict(), strict=True)  # an empty index loads too
    assert empty.index_embeddings.shape == (0, 6)


def test_model_folder_carries_the_index(tmp_path: Path) -> None:
    from memeops.models.clip import ClipEncoderConfig, build_clip_model
    from memeops.models.text_tokenizer import CorpusTokenizer
    from memeops.serving.predictor import MemePredictor
    from memeops.serving.pyfunc import save_model_dir

    clip = tmp_path / "clip"
    clip.mkdir()
    tok = CorpusTokenizer.train(["cats made my week", "nobody: teachers:", "pure sunshine"] * 4, vocab_size=200,
                                context_length=16)  # fmt: skip
    tok.save(clip / "tokenizer.json")
    cfg = ClipEncoderConfig(embed_dim=DIM, image_size=32, patch_size=16, vision_width=32, vision_layers=1,
                            vision_heads=2, text_width=32, text_layers=1, text_heads=2, context_length=16,
                            weights=str(clip / "clip.safetensors"), tokenizer_path=str(clip / "tokenizer.json"),
                            vocab_size=tok.vocab_size)  # fmt: skip
    save_file({k: v.contiguous() for k, v in build_clip_model(cfg, tok.vocab_size).state_dict().items()},
              str(clip / "clip.safetensors"))  # fmt: skip
    (clip / "clip_config.json").write_text(cfg.model_dump_json(), encoding="utf-8")
    model = _build()
    with torch.no_grad():
        model.build_index(model.eval().embed(_batch(b=12)), _batch(b=12)["targets"])
    folder = save_model_dir(tmp_path / "model", model, "retrieval", SMALL, SPECS, clip)  # verify=True predicts
    head = MemePredictor.from_dir(folder).head
    torch.testing.assert_close(head.index_embeddings, model.index_embeddings)
    assert torch.equal(head.index_labels, model.index_labels)


def test_train_variant_builds_the_index_over_train(tmp_path: Path, cached_features, torch_globals) -> None:
    from memeops.training.experiment import train_variant

    rng = np.random.default_rng(0)
    n = 60
    image, text = rng.normal(size=(n, DIM)).astype(np.float32), rng.normal(size=(n, DIM)).astype(np.float32)
    hateful = np.where(image[:, 0] > 0, "yes", "no")
    splits = np.array(["train"] * 30 + ["val"] * 10 + ["test"] * 10 + ["test_unseen"] * 10)
    memes = pd.DataFrame({"meme_id": [f"m{i}" for i in range(n)], "split": splits, "text": [f"t{i}" for i in range(n)],
                          "image_sha256": [f"{i:064x}" for i in range(n)], "label_hateful": hateful})  # fmt: skip
    cached_features(tmp_path / "features", memes, image, text)
    cfg = TrainStageConfig.model_validate({
        "tasks": ["hateful"], "seed": 3, "bootstrap_samples": 10,
        "variants": {"retrieval": {"model": "retrieval", "config": {"hidden": 8, "embed_dim": 4, "interaction": "none"}}},
        "trainer": {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "patience": 5},
    })  # fmt: skip
    result = train_variant("retrieval", memes, FeatureStore(tmp_path / "features", "spec"), DIM, cfg, tmp_path / "run")
    model = result.model
    assert model.index_embeddings.shape == (30, 4)
    assert model.index_labels[:, 0].tolist() == [int(h == "yes") for h in hateful[:30]]
    assert set(result.predictions) == {"val", "test", "test_unseen"}
    p = result.predictions["test"].probs["hateful"]
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
