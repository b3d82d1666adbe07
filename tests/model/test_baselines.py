"""Baselines and the factory: shapes, behavioural checks (invariance, XOR overfit, determinism)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from memeops.models import baselines as bl
from memeops.models.base import IGNORE_INDEX, ModelOutput, TaskSpec, count_trainable, masked_task_loss
from memeops.models.factory import MODEL_REGISTRY, build_model, model_config_class
from memeops.models.gatedclip import GatedCLIPConfig

SPECS = [
    TaskSpec("hateful", "single", ("no", "yes")),
    TaskSpec("offensive", "single", ("not", "slight", "very", "hateful")),
    TaskSpec("target", "multi", ("religion", "race", "gender", "disability")),
]
B = 6
# MGMCF takes tokens and regions (tests/model/test_mgmcf.py); bilinear and retrieval need the lexical inputs
# (tests/model/test_interaction.py, tests/model/test_retrieval.py)
NAMES = [n for n in MODEL_REGISTRY if n not in {"mgmcf", "bilinear", "retrieval"}]


def _batch(b: int = B, dim: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image_emb": torch.randn(b, dim, generator=g), "text_emb": torch.randn(b, dim, generator=g)}


def _build(name: str, seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, config, SPECS).eval()


@pytest.fixture
def one_thread():
    """Tiny models train faster (and far more predictably on a shared box) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_for_mixed_tasks(name):
    out = _build(name)(_batch())
    assert set(out.logits) == {s.name for s in SPECS}
    for spec in SPECS:
        assert out.logits[spec.name].shape == (B, spec.num_labels)
        assert torch.isfinite(out.logits[spec.name]).all()


@pytest.mark.parametrize(
    ("name", "feature_dim"),
    [
        ("text_only", 512), ("image_only", 512), ("average", 512),
        ("concat", 1024), ("align", 256), ("cross", 64 * 64),
    ],  # fmt: skip
)
def test_feature_widths(name, feature_dim):
    model = _build(name)
    assert model.feature_dim == feature_dim
    assert model.features(_batch()).shape == (B, feature_dim)


def test_cross_features_are_the_flattened_interaction_matrix():
    model, batch = _build("cross", proj_dim=8), _batch()
    p_i, p_t = model.projections(batch)
    torch.testing.assert_close(model.features(batch), torch.einsum("bi,bj->bij", p_i, p_t).reshape(B, 64))
    assert _build("align", proj_dim=8).features(batch).shape == (B, 8)


def test_baselines_have_no_aux_loss_or_extras():
    for name in (n for n in NAMES if n != "gatedclip"):
        out = _build(name)(_batch())
        assert out.aux_loss is None and out.extras == {}


# --- behavioural: invariance ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ignored", "used"),
    [("text_only", "image_emb", "text_emb"), ("image_only", "text_emb", "image_emb")],
)
def test_unimodal_models_ignore_the_other_modality(name, ignored, used):
    model, batch = _build(name), _batch()
    base = model(batch).logits["offensive"]
    torch.testing.assert_close(model(batch | {ignored: torch.randn(B, 512)}).logits["offensive"], base)
    assert not torch.allclose(model(batch | {used: torch.randn(B, 512)}).logits["offensive"], base)


def test_average_is_invariant_to_embedding_scale():
    # It L2-normalises before averaging, so CLIP feature norms must not matter.
    model, batch = _build("average"), _batch()
    scaled = {"image_emb": 7.0 * batch["image_emb"], "text_emb": 0.1 * batch["text_emb"]}
    torch.testing.assert_close(model(scaled).logits["hateful"], model(batch).logits["hateful"])


# --- behavioural: XOR overfit ---------------------------------------------------------------------------

XOR_DIM, XOR_K, XOR_STEPS = 4, 16, 150
XOR_SPEC = TaskSpec("xor", "single", ("0", "1"))


def _xor_side(k: int, direction: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """k vectors, half with a positive projection on ``direction`` (flip whole vectors to set the sign)."""
    v = torch.randn(k, XOR_DIM, generator=g)
    want_pos = torch.arange(k) % 2 == 0
    return v * torch.where((v @ direction > 0) == want_pos, 1.0, -1.0)[:, None]


def _xor_data(rule: str = "xor") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """All K×K image/text pairings; label = sign(⟨x, a⟩) XOR sign(⟨t, b⟩) (``rule="xor"``), or
    sign(⟨t, b⟩) alone (``"text"``), or sign(⟨x, a⟩) alone (``"image"``).

    Every image (and every text) appears with both XOR labels equally often, so any single-modality
    model is capped at exactly 0.5 even if it memorises its inputs. Under ``"text"`` every image
    appears with both labels equally often too (half its partner texts are positive): an image-only
    model is capped at 0.5 there as well, and a text-only model is under ``"image"``.
    """
    g = torch.Generator().manual_seed(123)
    a = F.normalize(torch.randn(XOR_DIM, generator=g), dim=0)
    b = F.normalize(torch.randn(XOR_DIM, generator=g), dim=0)
    x, t = _xor_side(XOR_K, a, g), _xor_side(XOR_K, b, g)
    i, j = torch.cartesian_prod(torch.arange(XOR_K), torch.arange(XOR_K)).T
    x, t = x[i], t[j]  # [K², D]
    labels = {"xor": (x @ a > 0) ^ (t @ b > 0), "text": t @ b > 0, "image": x @ a > 0}
    return {"image_emb": x, "text_emb": t}, labels[rule].long()


def _xor_fit(name: str, rule: str = "xor", **config) -> tuple[float, ModelOutput]:
    """Full-batch Adam on the pairs labelled by ``rule``; returns train accuracy and the final
    eval-mode output (seeded, one thread: the same numbers on every run)."""
    batch, y = _xor_data(rule)
    torch.manual_seed(0)
    model = build_model(name, {"image_dim": XOR_DIM, "text_dim": XOR_DIM, **config}, [XOR_SPEC])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(XOR_STEPS):
        out = model(batch)
        loss, _ = masked_task_loss(out.logits["xor"], y, XOR_SPEC)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(batch)
    return (out.logits["xor"].argmax(-1) == y).float().mean().item(), out


@pytest.mark.parametrize(
    ("name", "config", "low", "high"),
    [
        ("text_only", {}, 0.45, 0.55),
        ("image_only", {}, 0.45, 0.55),
        ("concat", {}, 0.9, 1.0),
        ("align", {}, 0.9, 1.0),
        ("cross", {"proj_dim": 16}, 0.9, 1.0),  # 16² features: same model, quicker test
        ("gatedclip", {"fusion": "fixed"}, 0.9, 1.0),  # additive mix + ReLU trunk can express XOR
        ("gatedclip", {"fusion": "concat"}, 0.9, 1.0),
        # One shared space: the sum mixes the a- and b-directions; it only partly fits (~0.87).
        ("average", {}, 0.75, 1.0),
    ],
)
def test_xor_overfit(one_thread, name, config, low, high):
    acc, _ = _xor_fit(name, **config)
    assert low <= acc <= high, f"{name} {config}: train accuracy {acc:.3f}"


def test_xor_learned_gate_fits_it(one_thread):
    """The learned gate can express XOR (as the fixed gate does). The gate may saturate to a hard
    switch on some init seeds and then sticks near 0.75; init seed 0 (fixed here) does not."""
    acc, out = _xor_fit("gatedclip")
    assert acc > 0.9, f"acc {acc:.3f}"
    assert out.extras["gate"].shape == (XOR_K * XOR_K,)


@pytest.mark.parametrize(("rule", "informed", "blind", "gate_side"), [
    ("text", "text_only", "image_only", lambda g: g < 0.1),  # g weights the image: ~0 = text
    ("image", "image_only", "text_only", lambda g: g > 0.9),
])  # fmt: skip
def test_one_modality_label_is_learned_by_that_modality_only(one_thread, rule, informed, blind, gate_side):
    """Label = a function of one modality: the baseline that sees it fits it, the baseline that
    sees the other stays at chance (exactly 0.5 by construction of the pairs), and the learned gate
    routes (almost) all weight to the informative modality."""
    acc_informed, _ = _xor_fit(informed, rule)
    acc_blind, _ = _xor_fit(blind, rule)
    acc_gated, out = _xor_fit("gatedclip", rule)
    assert acc_informed > 0.95, f"{informed} on a {rule} label: {acc_informed:.3f}"
    assert abs(acc_blind - 0.5) < 0.05, f"{blind} on a {rule} label: {acc_blind:.3f}"
    gate = out.extras["gate"].mean().item()
    assert acc_gated > 0.95 and gate_side(gate), f"gatedclip on a {rule} label: acc {acc_gated:.3f}, mean gate {gate:.3f}"


def test_masked_loss_skips_missing_labels_in_training():
    # A batch where the 4-class task is unlabelled must still train the binary head only.
    model = _build("concat").train()
    out = model(_batch())
    y = torch.full((B,), IGNORE_INDEX)
    loss, n = masked_task_loss(out.logits["offensive"], y, SPECS[1])
    assert n == 0 and loss.item() == 0.0
    loss.backward()
    assert model.heads.heads["offensive"].weight.grad.abs().sum() == 0


# --- behavioural: determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_init(name):
    a, b, c = _build(name, seed=0), _build(name, seed=0), _build(name, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    batch = _batch()
    torch.testing.assert_close(a(batch).logits["target"], b(batch).logits["target"])


# --- factory --------------------------------------------------------------------------------------------


def test_registry_names_and_config_classes():
    assert set(NAMES) == {"gatedclip", "text_only", "image_only", "average", "concat", "align", "cross"}
    assert model_config_class("gatedclip") is GatedCLIPConfig
    assert model_config_class("cross")().proj_dim == 64 and model_config_class("align")().proj_dim == 256


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'clipper'; known: gatedclip, text_only"):
        build_model("clipper", {}, SPECS)
    with pytest.raises(ValueError, match="known"):
        model_config_class("clipper")


def test_build_accepts_dict_or_config_and_rejects_bad_ones():
    from_dict = build_model("align", {"proj_dim": 32}, SPECS)
    from_obj = build_model("align", bl.AlignConfig(proj_dim=32), SPECS)
    assert count_trainable(from_dict) == count_trainable(from_obj)
    assert isinstance(from_obj.config, bl.AlignConfig)
    with pytest.raises(ValidationError):
        build_model("align", {"proj_dimm": 32}, SPECS)
    with pytest.raises(TypeError):
        build_model("cross", bl.AlignConfig(), SPECS)
    with pytest.raises(ValidationError):
        build_model("average", {"text_dim": 768}, SPECS)
    with pytest.raises(ValueError, match="duplicate"):
        build_model("concat", {}, [SPECS[0], SPECS[0]])
