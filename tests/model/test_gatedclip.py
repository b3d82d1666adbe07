"""GatedCLIP: shapes, the gate, the ablation switches, the alignment term, the parameter budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from memeops.models.base import TaskSpec, count_trainable, normalise_inputs
from memeops.models.gatedclip import GatedCLIP, GatedCLIPConfig

SPECS = [
    TaskSpec("hateful", "single", ("no", "yes")),
    TaskSpec("offensive", "single", ("not", "slight", "very", "hateful")),
    TaskSpec("target", "multi", ("religion", "race", "gender", "disability")),
]
B = 5


def _batch(image_dim: int = 512, text_dim: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image, text = torch.randn(B, image_dim, generator=g), torch.randn(B, text_dim, generator=g)
    return {"image_emb": image, "text_emb": text}


def _model(**overrides) -> GatedCLIP:
    torch.manual_seed(0)
    return GatedCLIP(GatedCLIPConfig(**overrides), SPECS).eval()


def _assert_logit_shapes(out) -> None:
    assert set(out.logits) == {s.name for s in SPECS}
    for spec in SPECS:
        assert out.logits[spec.name].shape == (B, spec.num_labels)


def test_forward_shapes_gate_and_aux():
    out = _model()(_batch())
    _assert_logit_shapes(out)
    gate = out.extras["gate"]
    assert gate.shape == (B,)
    assert ((gate >= 0) & (gate <= 1)).all()
    assert gate.std() > 0  # per-example, not a constant
    assert out.aux_loss is not None and out.aux_loss.ndim == 0 and 0 <= out.aux_loss.item() <= 0.02


def test_aux_loss_is_weighted_cosine_distance_of_projections():
    model, batch = _model(align_weight=0.5), _batch()
    out = model(batch)
    scaled = normalise_inputs(batch, model.config.input_norm)  # the projections see rescaled inputs
    with torch.no_grad():
        h_i, h_t = model.image_proj(scaled["image_emb"]), model.text_proj(scaled["text_emb"])
    expected = 0.5 * (1 - F.cosine_similarity(h_i, h_t, dim=-1)).mean()
    torch.testing.assert_close(out.aux_loss, expected)


def test_fused_vector_is_the_gated_mix():
    model = _model()
    h_i, h_t = torch.randn(B, 128), torch.randn(B, 128)
    h, g = model.fuse(h_i, h_t)
    torch.testing.assert_close(h, g[:, None] * h_i + (1 - g[:, None]) * h_t)


def test_param_count_matches_paper_formula():
    # One binary task, 512-d CLIP inputs: the paper's model.
    expected = (
        2 * ((512 * 256 + 256) + (256 * 128 + 128))  # W1, W2 per modality
        + (256 * 64 + 64)  # W_c
        + (64 + 1)  # W_g
        + (128 * 64 + 64)  # W_h
        + (64 * 2 + 2)  # W_cls
    )
    model = GatedCLIP(GatedCLIPConfig(), [SPECS[0]])
    assert count_trainable(model) == expected == 353_347
    assert abs(expected - 350_000) < 5_000  # papers.md: "about 350K"


def test_fixed_gate_is_one_half_and_has_no_gate_parameters():
    model = _model(fusion="fixed")
    out = model(_batch())
    _assert_logit_shapes(out)
    torch.testing.assert_close(out.extras["gate"], torch.full((B,), 0.5))
    gate_params = 2 * 128 * 64 + 64 + 64 + 1
    assert count_trainable(_model()) - count_trainable(model) == gate_params


def test_concat_variant_feeds_both_projections_to_the_classifier():
    model = _model(fusion="concat")
    assert model.fused_dim == 256 and model.trunk[0].in_features == 256
    out = model(_batch())
    _assert_logit_shapes(out)
    assert "gate" not in out.extras


def test_no_projection_uses_clip_embeddings_directly():
    model = _model(projection=False)
    assert model.fused_dim == 512 and isinstance(model.image_proj, torch.nn.Identity)
    out = model(_batch())
    _assert_logit_shapes(out)
    assert out.extras["gate"].shape == (B,)
    assert _model(projection=False, fusion="concat").fused_dim == 1024


def test_no_projection_needs_equal_widths_unless_plain_concat():
    with pytest.raises(ValidationError):
        GatedCLIPConfig(projection=False, text_dim=768)
    model = GatedCLIP(GatedCLIPConfig(projection=False, text_dim=768, fusion="concat", align=False), SPECS)
    _assert_logit_shapes(model(_batch(text_dim=768)))


def test_align_off_gives_no_aux_loss():
    assert _model(align=False)(_batch()).aux_loss is None


def test_gradients_reach_gate_and_projections():
    model = _model().train()
    out = model(_batch())
    (out.logits["hateful"].sum() + out.aux_loss).backward()
    for module in (model.gate, model.image_proj, model.text_proj):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_config_is_frozen_and_strict():
    with pytest.raises(ValidationError):
        GatedCLIPConfig(fusion="attention")
    with pytest.raises(ValidationError):
        GatedCLIPConfig(hiden=128)
    with pytest.raises(ValidationError):
        GatedCLIPConfig().hidden = 1


def test_unit_variance_inputs_are_scale_free_and_switchable() -> None:
    v = torch.randn(4, 64)
    batch = {"image_emb": v, "text_emb": 3 * v, "targets": {}}
    out = normalise_inputs(batch, "unit_variance")
    torch.testing.assert_close(out["image_emb"], out["text_emb"])  # the encoder's norm does not matter
    torch.testing.assert_close(out["image_emb"].norm(dim=-1), torch.full((4,), 8.0))  # sqrt(64)
    assert normalise_inputs(batch, "none") is batch and batch["text_emb"] is not out["text_emb"]
