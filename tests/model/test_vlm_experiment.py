"""VLM regimes: unified vs per-source training, one scoring per split, the comparison table, the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memeops.evaluation.compare import markdown_table
from memeops.models.base import TaskSpec
from memeops.vlm.experiment import (
    compare_regimes,
    examples_frame,
    prediction_frame,
    seed_summary,
    seed_table,
    prefix_vectors,
    stage_report,
    train_regime,
)
from memeops.vlm.instructions import InstructionSample, build_prompt, build_target
from memeops.vlm.train import VLMTrainConfig

SPEC = TaskSpec("metaphor", "single", ("no", "yes"))
TINY = VLMTrainConfig(epochs=3, batch_size=16, lr=5e-3, vocab_size=300, generate_samples=6, max_new_tokens=16,
                      model={"hidden": 32, "intermediate": 64, "layers": 1, "heads": 2})  # fmt: skip


def _samples(source: str, n: int, split: str) -> list[InstructionSample]:
    out = []
    for i in range(n):
        label = ("no", "yes")[i % 2]
        expl = "A snake stands for the boss." if label == "yes" else None
        prompt = build_prompt(SPEC, f"the boss {i % 5}", "en")
        out.append(InstructionSample(f"{source}-{split}-{i}", source, split, "en", "metaphor", SPEC.labels, "x.jpg",
                                     prompt, build_target(label, expl), label, expl))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def data() -> tuple[list[InstructionSample], dict[str, tuple[np.ndarray, np.ndarray]]]:
    samples = [s for src, n in (("big", 64), ("small", 16)) for split, k in (("train", n), ("val", 8), ("test", 12))
               for s in _samples(src, k, split)]  # fmt: skip
    rng = np.random.default_rng(0)
    images = {}
    for s in samples:
        v = rng.normal(size=8).astype(np.float32) + (2.0 if s.label == "yes" else -2.0)
        images[s.meme_id] = (v, v)
    return samples, images


def test_unified_trains_one_model_and_scores_each_split_once(data) -> None:
    samples, images = data
    result = train_regime(samples, images, TINY, "unified", ("val", "test"))
    assert list(result.fits) == ["unified"]
    assert set(result.splits) == {"val", "test"}
    test = result.splits["test"]
    assert len(test.probs) == 24 and all(np.isclose(p.sum(), 1.0) for p in test.probs)
    assert len(test.generated) == len(test.generated_idx) == 6
    report = test.report([SPEC])
    assert {"source/big/metaphor/macro_f1", "source/small/metaphor/macro_f1", "all/invalid_rate"} <= set(report)
    history = result.fits["unified"].history
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]


def test_per_source_trains_a_model_per_source(data) -> None:
    samples, images = data
    result = train_regime(samples, images, TINY, "per_source", ("test",))
    assert sorted(result.fits) == ["big", "small"]
    # each model was selected on its own source's val samples: their val losses differ
    assert result.fits["big"].history[0]["val_loss"] != result.fits["small"].history[0]["val_loss"]
    assert len(result.splits["test"].probs) == 24


def test_per_source_needs_val_for_every_source(data) -> None:
    samples, images = data
    without = [s for s in samples if not (s.source == "small" and s.split == "val")]
    with pytest.raises(ValueError, match="small"):
        train_regime(without, images, TINY, "per_source", ("test",))


def test_comparison_table_and_report(data) -> None:
    samples, images = data
    table, results = compare_regimes(samples, images, TINY, [SPEC])
    assert set(table["source"]) == {"big", "small"}
    assert {"unified_macro_f1", "per_source_macro_f1", "unified_auroc", "per_source_auroc"} <= set(table.columns)
    assert set(table["task"]) == {"metaphor", "mean"}
    assert "| source |" in markdown_table(table)
    memes = pd.DataFrame({"meme_id": [s.meme_id for s in samples], "split": [s.split for s in samples]})
    memes = memes.drop_duplicates("meme_id")
    table = seed_table(results["unified"], memes, [SPEC], seed=0)
    assert set(table["split"]) == set(results["unified"].splits) and set(table["seed"]) == {0}
    summary = seed_summary(table, memes, [SPEC], n_boot=50, seed=0)
    report = stage_report(results["unified"], [SPEC], summary, skipped={})
    lo, hi = report["ci95"]["test"]["metaphor/auroc"]
    # one seed: the seed mean is the run's own value, inside its (test-sample) interval
    assert summary["test"]["metaphor/auroc"]["n_seeds"] == 1
    assert lo <= summary["test"]["metaphor/auroc"]["mean"] == pytest.approx(report["test"]["metaphor/auroc"], abs=1e-6)
    assert summary["test"]["metaphor/auroc"]["mean"] <= hi
    assert report["best_epoch"] >= 1 and report["regime"] == "unified"
    examples = examples_frame(results["unified"].splits["test"])
    assert len(examples) == 6 and {"explanation", "reference_explanation", "valid"} <= set(examples.columns)


def test_prefix_vectors_append_the_text_embedding() -> None:
    memes = pd.DataFrame({"meme_id": ["a", "b"]})
    arrays = {"image": np.ones((2, 3)), "image_flip": np.zeros((2, 3)), "text": np.full((2, 2), 5.0)}
    both = prefix_vectors(memes, arrays, with_text=True)
    assert both["a"][0].tolist() == [1, 1, 1, 5, 5] and both["b"][1].tolist() == [0, 0, 0, 5, 5]
    assert prefix_vectors(memes, arrays, with_text=False)["a"][0].shape == (3,)


def test_prediction_frame_covers_every_meme_and_masks_unscored_rows(data) -> None:
    from memeops.tracking.promotion import frame_arrays

    samples, images = data
    result = train_regime(samples, images, TINY, "unified", ("test",))
    scored = result.splits["test"]
    ids = sorted({s.meme_id for s in scored.samples}) + ["unlabelled-meme"]
    frame = prediction_frame(scored, ids, [SPEC])
    assert len(frame) == len(ids) and frame["target"].isna().sum() == 1
    arrays = frame_arrays(frame, ids)["metaphor"]
    assert arrays.mask.sum() == len(ids) - 1 and arrays.probs.shape == (len(ids), 2)
