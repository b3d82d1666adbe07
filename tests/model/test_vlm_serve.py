"""The VLM model folder on raw images: packed CLIP + tiny VLM -> label, probability and explanation
per task, through the folder predictor and through the MLflow pyfunc (``memeops-vlm``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from safetensors.torch import save_model

from memeops.models.base import TaskSpec
from memeops.models.clip import ClipEncoderConfig, load_clip
from memeops.serving.predictor import load_predictor, open_predictor
from memeops.serving.pyfunc import log_pyfunc
from memeops.serving.vlm import VLMPredictor, save_vlm_dir
from memeops.tracking.runs import tracked_run
from memeops.vlm.instructions import InstructionSample, build_prompt, build_target
from memeops.vlm.train import VLMTrainConfig, fit_vlm, score_candidates

SPEC = TaskSpec("metaphor", "single", ("no", "yes"))


def _image(path: Path, red: bool, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 60, (32, 32, 3), dtype=np.uint8))
    ImageDraw.Draw(im).rectangle([6, 6, 26, 26], fill=(250, 10, 10) if red else (10, 10, 250))
    im.save(path)
    return path


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[str], list[np.ndarray]]:
    root = tmp_path_factory.mktemp("vlm")
    clip = load_clip(ClipEncoderConfig(tokenizer="open_clip", embed_dim=16, image_size=32, vision_width=8,
                                       text_width=32, text_layers=1, text_heads=2, context_length=24),
                     allow_random=True)  # fmt: skip
    clip_dir = root / "clip"
    clip_dir.mkdir()
    save_model(clip.model, str(clip_dir / "clip.safetensors"))
    (clip_dir / "clip_config.json").write_text(clip.config.model_copy(update={"weights": "clip.safetensors"}).model_dump_json())
    paths = [_image(root / f"m{i}.png", i % 2 == 1, i) for i in range(40)]
    labels = ["yes" if i % 2 else "no" for i in range(40)]
    texts = [("my boss is a snake " if i % 2 else "my boss is a person ") + str(i % 3) for i in range(40)]
    # the prefix is [image; text] embedding (with_text=True), as benchmarks/vlm_quick.py --with-text
    emb = np.concatenate([clip.encode_images([Image.open(p).convert("RGB") for p in paths]).numpy(),
                          clip.encode_texts(texts).numpy()], axis=1)
    samples = [InstructionSample(f"m{i}", "s", "train", "en", SPEC.name, SPEC.labels, str(p),
                                 build_prompt(SPEC, texts[i], "en"),
                                 build_target(labels[i], "The red block is a vehicle." if labels[i] == "yes" else None),
                                 labels[i], None) for i, p in enumerate(paths)]  # fmt: skip
    images = {s.meme_id: (emb[i], emb[i]) for i, s in enumerate(samples)}
    cfg = VLMTrainConfig(epochs=30, batch_size=16, lr=3e-3, vocab_size=300, max_length=160, max_new_tokens=24,
                         model={"hidden": 64, "layers": 2, "heads": 2, "intermediate": 128, "prefix_tokens": 2})  # fmt: skip
    fit = fit_vlm(samples[:32], samples[32:], images, cfg)
    folder = save_vlm_dir(root / "model", fit.model, fit.tokenizer, [SPEC], clip_dir, cfg, with_text=True)
    # what the trained model gives the held-out memes from the training-side inputs
    direct = score_candidates(fit.model, fit.tokenizer, samples[32:], images, cfg)
    return folder, paths, texts, direct


def test_folder_predicts_label_probability_and_explanation(packed) -> None:
    folder, paths, texts, direct = packed
    predictor = open_predictor(folder)
    assert isinstance(predictor, VLMPredictor)
    table = predictor.predict({"image": [str(p) for p in paths[32:]], "text": texts[32:], "language": ["en"] * 8})
    assert list(table.columns) == ["metaphor", "metaphor_prob", "metaphor_p_yes", "metaphor_explanation", "metaphor_valid"]
    # raw image + caption -> packed CLIP -> prompt -> candidate scores: the training-side numbers
    np.testing.assert_allclose(table["metaphor_p_yes"].to_numpy(), [p[1] for p in direct], atol=1e-4)
    assert table["metaphor"].tolist() == [SPEC.labels[int(np.argmax(p))] for p in direct]
    assert ((table["metaphor_prob"] >= 0.5) & (table["metaphor_prob"] <= 1.0)).all()
    assert table["metaphor_valid"].dtype == bool and table["metaphor_explanation"].map(type).eq(str).all()


def test_logged_vlm_pyfunc_predicts_like_the_folder(packed, tmp_path: Path) -> None:
    folder, paths, texts, _ = packed
    with tracked_run(experiment="test-vlm", run_name="vlm", stage="train_vlm", variant="vlm", seed=0, data_digest="d",
                     params={}, system_metrics=False):  # fmt: skip
        info = log_pyfunc(folder, registered_model_name="memeops-vlm")
    assert info.registered_model_version is not None
    frame = pd.DataFrame({"image": [str(paths[33]), str(paths[34])], "text": texts[33:35]})
    served = load_predictor(f"models:/memeops-vlm/{info.registered_model_version}").predict(frame)
    local = VLMPredictor.from_dir(folder).predict(frame)
    assert served["metaphor"].tolist() == local["metaphor"].tolist()
    np.testing.assert_allclose(served["metaphor_prob"].to_numpy(), local["metaphor_prob"].to_numpy(), atol=1e-6)


def test_cli_records_carry_the_explanation() -> None:
    import pandas as pd

    from memeops.cli import _prediction_records

    frame = pd.DataFrame({"hateful": ["yes"], "hateful_prob": [0.8], "hateful_p_yes": [0.8],
                          "hateful_explanation": ["a rat stands for the boss"], "hateful_valid": [True]})  # fmt: skip
    assert _prediction_records(frame) == [{"hateful": {"label": "yes", "probability": 0.8, "p_yes": 0.8,
                                                       "explanation": "a rat stands for the boss", "valid": True}}]  # fmt: skip
