"""MGMCF blocks: shapes, masking (labels and inputs), gradients to every block, seeded
determinism, attention that sums to one, and every ablation switch."""

from __future__ import annotations

import pytest
import torch

from memeops.models.base import IGNORE_INDEX, TaskSpec, probabilities
from memeops.models.factory import build_model
from memeops.models.mgmcf import (
    MGMCF,
    CAPBlock,
    MGMCFConfig,
    RegionEncoder,
    attention_layout,
    box_features,
    combine_heads,
    info_nce,
)
from memeops.training.seeding import seed_everything
from memeops.training.optim import compute_loss

SPECS = [
    TaskSpec("metaphor", "single", ("no", "yes")),
    TaskSpec("sentiment", "single", ("negative", "neutral", "positive")),
    TaskSpec("harm_target", "multi", ("individual", "community", "organization")),
]
DI, DT, DK, DR, T, K, G = 12, 10, 6, 14, 7, 3, 2


def _cfg(**over: object) -> MGMCFConfig:
    base = dict(image_dim=DI, text_dim=DT, token_dim=DK, region_dim=DR, text_len=T, max_regions=K, patch_grid=G,
                d_model=16, heads=2, cap_layers=2, context_tokens=3, dropout=0.0, head_dropout=0.0)
    return MGMCFConfig(**{**base, **over})  # type: ignore[arg-type]


def _batch(b: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.arange(T)[None, :] < torch.tensor([7, 3, 1, 5, 2][:b] + [4] * max(0, b - 5))[:, None]
    region_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0]][:b] + [[1, 0, 0]] * max(0, b - 5)).bool()
    return {
        "image_emb": torch.randn(b, DI, generator=g),
        "text_emb": torch.randn(b, DT, generator=g),
        "text_tokens": torch.randn(b, T, DK, generator=g),
        "text_mask": text_mask,
        "region_feats": torch.randn(b, K, G * G, DR, generator=g),
        "region_boxes": torch.rand(b, K, 4, generator=g).sort(-1).values[..., [0, 1, 2, 3]],
        "region_scores": torch.rand(b, K, generator=g),
        "region_mask": region_mask,
        "region_classes": torch.randint(-1, 5, (b, K), generator=g),
        "targets": {
            "metaphor": torch.tensor([0, 1, IGNORE_INDEX, 1, 0][:b] + [0] * max(0, b - 5)),
            "sentiment": torch.tensor([2, IGNORE_INDEX, 0, 1, 1][:b] + [0] * max(0, b - 5)),
            "harm_target": torch.tensor([[1.0, 0, 0], [-1, -1, -1], [0, 1, 1], [0, 0, 0], [-1, -1, -1]][:b]
                                        + [[0.0, 0, 0]] * max(0, b - 5)),
        },
    }


def _model(**over: object) -> MGMCF:
    seed_everything(0)
    return build_model("mgmcf", _cfg(**over), SPECS)  # type: ignore[return-value]


def test_shapes_through_every_block() -> None:
    cfg = _cfg()
    batch = _batch()
    regions = RegionEncoder(DR, G, 16)(batch["region_feats"], batch["region_boxes"], batch["region_scores"])
    assert regions.shape == (5, K, 16)
    assert box_features(batch["region_boxes"], batch["region_scores"]).shape == (5, K, 8)
    block = CAPBlock(16, 2, 2, 0.0)
    ctx, loc, w = block(torch.randn(5, 3, 16), torch.randn(5, cfg.local_tokens, 16), torch.ones(5, cfg.local_tokens, dtype=torch.bool))
    assert (ctx.shape, loc.shape, w.shape) == ((5, 3, 16), (5, T + 1 + K, 16), (5, 3, T + 1 + K))
    out = _model().eval()(batch)
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {"metaphor": (5, 2), "sentiment": (5, 3), "harm_target": (5, 3)}
    assert out.extras["attention"].shape == (5, T + 1 + K)
    assert attention_layout(cfg) == {"text": (0, T), "image": (T, T + 1), "regions": (T + 1, T + 1 + K)}


def test_region_encoder_rejects_a_different_patch_grid() -> None:
    with pytest.raises(ValueError, match="patches per region"):
        RegionEncoder(DR, 3, 16)(torch.randn(2, K, 4, DR), torch.rand(2, K, 4), torch.rand(2, K))


def test_attention_sums_to_one_and_ignores_masked_tokens() -> None:
    model = _model().eval()
    batch = _batch()
    with torch.no_grad():
        att = model(batch).extras["attention"]
    torch.testing.assert_close(att.sum(-1), torch.ones(5))
    valid = torch.cat([batch["text_mask"], torch.ones(5, 1, dtype=torch.bool), batch["region_mask"]], dim=1)
    assert float(att[~valid].abs().max()) == 0.0
    assert bool((att[valid] > 0).all())


@pytest.mark.parametrize("over", [{}, {"region_class_embedding": True, "region_class_vocab": 5}])
def test_masked_inputs_do_not_change_predictions(over: dict) -> None:
    model = _model(**over).eval()
    batch = _batch()
    changed = dict(batch)
    changed["text_tokens"] = batch["text_tokens"].clone()
    changed["text_tokens"][~batch["text_mask"]] = 1e3  # padding positions
    changed["region_feats"] = batch["region_feats"].clone()
    changed["region_feats"][~batch["region_mask"]] = -7.0  # empty region slots
    changed["region_boxes"] = batch["region_boxes"].clone()
    changed["region_boxes"][~batch["region_mask"]] = 0.5
    changed["region_classes"] = batch["region_classes"].masked_fill(~batch["region_mask"], 3)
    with torch.no_grad():
        a, b = model(batch), model(changed)
    for task in a.logits:
        torch.testing.assert_close(a.logits[task], b.logits[task])
    torch.testing.assert_close(a.extras["attention"], b.extras["attention"])


def test_missing_labels_are_masked_out_of_the_loss() -> None:
    model = _model().eval()
    batch = _batch()
    with torch.no_grad():
        out = model(batch)
    base = float(compute_loss(out, batch["targets"], SPECS))
    # a missing label stays missing whatever the row's prediction: changing that row's inputs only
    # moves the loss through the tasks that *are* labelled on it
    only_missing = {"metaphor": torch.full((5,), IGNORE_INDEX), "sentiment": torch.full((5,), IGNORE_INDEX),
                    "harm_target": torch.full((5, 3), -1.0)}  # fmt: skip
    assert float(compute_loss(out, only_missing, SPECS)) == 0.0
    targets = {k: v.clone() for k, v in batch["targets"].items()}
    targets["metaphor"][2] = IGNORE_INDEX  # already missing: same loss
    assert float(compute_loss(out, targets, SPECS)) == pytest.approx(base)
    targets["metaphor"][0] = IGNORE_INDEX  # drop a labelled row: loss changes
    assert float(compute_loss(out, targets, SPECS)) != pytest.approx(base)


@pytest.mark.parametrize("over", [{}, {"combine": "logits"}, {"cap_layers": 3},
                                  {"region_class_embedding": True, "region_class_vocab": 5}])
def test_gradients_reach_every_block(over: dict) -> None:
    model = _model(**over).train()
    batch = _batch()
    out = model(batch)
    assert out.aux_loss is not None and float(out.aux_loss.detach()) > 0
    compute_loss(out, batch["targets"], SPECS).backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or float(p.grad.abs().sum()) == 0)]
    assert dead == []


def test_seeded_builds_and_steps_are_identical() -> None:
    def run() -> list[torch.Tensor]:
        model = _model(dropout=0.1, head_dropout=0.2).train()
        seed_everything(1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(2):
            batch = _batch()
            loss = compute_loss(model(batch), batch["targets"], SPECS)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(), run()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ablation_switches() -> None:
    batch = _batch()
    full = _model()
    no_obj = _model(object_level=False)
    assert full.regions is not None and no_obj.regions is None
    assert no_obj.eval()(batch).extras["attention"].shape == (5, T + 1)
    concat = _model(interaction="concat").eval()
    assert not hasattr(concat, "blocks") and "attention" not in concat(batch).extras
    single = _model(unimodal_heads=False).eval()
    assert not hasattr(single, "text_heads")
    assert _model(contrastive=False).train()(batch).aux_loss is None
    # global-only ignores the region inputs entirely
    changed = {**batch, "region_feats": batch["region_feats"] + 5.0}
    with torch.no_grad():
        torch.testing.assert_close(no_obj(batch).logits["metaphor"], no_obj(changed).logits["metaphor"])
    assert sum(p.numel() for p in no_obj.parameters()) < sum(p.numel() for p in full.parameters())


def test_prob_combination_is_the_mean_of_head_probabilities() -> None:
    heads = [{s.name: torch.randn(4, s.num_labels) for s in SPECS} for _ in range(3)]
    combined = combine_heads(heads, SPECS, "probs")
    for spec in SPECS:
        expected = torch.stack([probabilities(h[spec.name], spec) for h in heads]).mean(0)
        torch.testing.assert_close(probabilities(combined[spec.name], spec), expected, atol=1e-5, rtol=1e-4)
    summed = combine_heads(heads, SPECS, "logits")
    torch.testing.assert_close(summed["metaphor"], sum(h["metaphor"] for h in heads))


def test_info_nce_prefers_matched_pairs() -> None:
    a = torch.eye(4)
    assert float(info_nce(a, a, 0.5)) < float(info_nce(a, a.roll(1, 0), 0.5))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        _cfg(d_model=15, heads=2)
    with pytest.raises(ValueError, match="temperature"):
        _cfg(temperature=0.0)
