"""Property tests of SynthMeme: the generated data has the properties the paper claims rely on.

One small set (1200 memes at 128 px, two workers) is generated once for the module; a second
generation with one worker checks determinism. Probes are scikit-learn logistic regressions,
cross-validated with folds grouped by triple (members of a triple share a caption or an object, so
splitting a triple across folds would let a probe memorise its partner). Chance-level bounds are
checked on clean labels (noise would only make them easier); "a probe can learn it" bounds on the
noisy labels a model is trained on.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from memeops.config import SynthConfig
from memeops.data.synth.generate import generate, label_sets, load_records, make_sample_figure
from memeops.data.synth.world import OBJECT_BY_KEY, TARGET_BY_KEY, TASKS
from memeops.data.taxonomy import load_taxonomy

N_MEMES, SIZE = 1200, 128
CHANCE_AUROC = 0.62  # unimodal probes (measured: see docs/synthmeme.md)
JOINT_AUROC = 0.9  # joint probes, on noisy labels
CHANCE_BACC = 0.62  # metaphor from the whole image at 8x8
CROP_BACC = 0.8  # metaphor from the key object's crop at 8x8
PROBE_C = 0.1  # one L2 strength for every probe (the crop probe overfits text-only metaphors at C=1)


def _cfg(out: Path, workers: int) -> SynthConfig:
    return SynthConfig(n_memes=N_MEMES, image_size=SIZE, workers=workers, output_dir=str(out))


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("synthmeme")
    cfg = _cfg(root / "a", workers=2)
    report = generate(cfg, report_path=root / "a_report.json")
    records = load_records(cfg.output_dir)
    return {"root": root, "cfg": cfg, "out": Path(cfg.output_dir), "report": report, "records": records,
            "report_path": root / "a_report.json"}


def _hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


# --- probes ----------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9']+|[\u4e00-\u9fff]")


def _bow(text: str) -> list[str]:
    """Words for English, single characters for Chinese."""
    return _TOKEN.findall(text.lower())


def _cv_scores(features, y: np.ndarray, groups: np.ndarray, scale: bool = False) -> np.ndarray:
    """Out-of-fold P(class 1) of a logistic probe, 5 folds grouped by triple."""
    clf = LogisticRegression(max_iter=3000, C=PROBE_C)
    model = make_pipeline(StandardScaler(), clf) if scale else clf
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    return cross_val_predict(model, features, y, groups=groups, cv=folds, method="predict_proba")[:, 1]


def probe_auroc(records: list[dict], task: str, positive: str, view: str, clean: bool = True) -> float:
    """Cross-validated AUROC of a probe on one view: text (bag of words), image (key class), joint."""
    y = np.array([(r["clean_labels"] if clean else r["labels"])[task] == positive for r in records], int)
    groups = np.array([r["latent"]["triple"] for r in records])
    if view == "text":
        x = CountVectorizer(analyzer=_bow).fit_transform([r["text"] for r in records])
    elif view == "image":
        x = OneHotEncoder().fit_transform([[_key(r)["class"]] for r in records])
    elif view == "joint" and task == "hateful":  # who is named x what the pictogram is
        x = OneHotEncoder().fit_transform(
            [[f"{r['latent']['target']}|{OBJECT_BY_KEY[_key(r)['class']].family}"] for r in records])
    elif view == "joint" and task == "sarcasm":  # tone x charm
        x = OneHotEncoder().fit_transform(
            [[f"{r['latent']['tone']}|{OBJECT_BY_KEY[_key(r)['class']].charm}"] for r in records])
    else:
        raise ValueError(view)
    return float(roc_auc_score(y, _cv_scores(x, y, groups)))


def _key(record: dict) -> dict:
    return next(o for o in record["objects"] if o["key"])


def _pixels_8x8(out: Path, record: dict, crop: bool) -> np.ndarray:
    img = Image.open(out / record["image"]).convert("RGB")
    if crop:
        img = img.crop(tuple(_key(record)["box"]))
    return np.asarray(img.resize((8, 8), Image.Resampling.BOX), np.float32).ravel() / 255.0


def metaphor_bacc(out: Path, records: list[dict], crop: bool, clean: bool) -> float:
    """Balanced accuracy of a logistic probe on 8x8 pixels: the whole image or the key object's crop."""
    y = np.array([(r["clean_labels"] if clean else r["labels"])["metaphor"] == "yes" for r in records], int)
    x = np.stack([_pixels_8x8(out, r, crop) for r in records])
    groups = np.array([r["latent"]["triple"] for r in records])
    p = _cv_scores(x, y, groups, scale=True)
    return float(balanced_accuracy_score(y, (p >= 0.5).astype(int)))


# --- determinism -----------------------------------------------------------------------------------


def test_determinism_across_runs_and_workers(synth: dict) -> None:
    """Same config -> byte-identical jsonl, images, labels, whatever the number of workers."""
    other = _cfg(synth["root"] / "b", workers=1)
    generate(other, report_path=None)
    first, second = _hashes(synth["out"]), _hashes(Path(other.output_dir))
    assert len(first) == 2 * N_MEMES + 5  # images + labels + 4 jsonl + classes.json
    assert first == second


def test_layout_and_label_sets(synth: dict) -> None:
    out, records = synth["out"], synth["records"]
    taxonomy = load_taxonomy()
    possible = label_sets()  # noise swaps only among labels the rules can produce
    classes = json.loads((out / "classes.json").read_text())
    assert classes[:16] == list(OBJECT_BY_KEY) and len(classes) >= 16 + 8
    assert len(records) == N_MEMES
    for r in records:
        assert (out / r["image"]).is_file()
        assert set(r["labels"]) == set(r["clean_labels"]) == set(r["explanations"]) == set(TASKS)
        for task in TASKS:
            assert taxonomy.is_valid(task, r["labels"][task]), (task, r["labels"][task])
            assert taxonomy.is_valid(task, r["clean_labels"][task])
            assert (r["labels"][task] is None) == (r["clean_labels"][task] is None)
            assert r["labels"][task] is None or r["labels"][task] in possible[task]
        lines = (out / "labels" / f"{r['id']}.txt").read_text().splitlines()
        assert len(lines) == len(r["objects"])
        for line, obj in zip(lines, r["objects"]):
            cid, *box = line.split()
            assert int(cid) == obj["class_id"] == classes.index(obj["class"])
            assert all(0.0 <= float(v) <= 1.0 for v in box)
        assert sum(o["key"] for o in r["objects"]) == 1
    report = json.loads(synth["report_path"].read_text())
    for task in TASKS:
        assert set(report["class_balance"][task]) >= {"all", "train", "val", "test", "test_unseen"}
        assert sum(report["class_balance"][task]["all"].values()) == N_MEMES
    assert sum(report["n_per_split"].values()) == N_MEMES


# --- cross-modal -----------------------------------------------------------------------------------


def test_every_hateful_meme_has_both_confounders(synth: dict) -> None:
    """HM-style benign confounders: same caption with another family's object; same object with a
    caption that does not name a target of that family (another family's target, or generic text)."""
    by_triple: dict[int, dict[str, dict]] = {}
    for r in synth["records"]:
        by_triple.setdefault(r["latent"]["triple"], {})[r["latent"]["role"]] = r
    hateful = [r for r in synth["records"] if r["clean_labels"]["hateful"] == "yes"]
    assert len(hateful) == N_MEMES // 3
    for base in hateful:
        members = by_triple[base["latent"]["triple"]]
        text_c, image_c = members["text_confounder"], members["image_confounder"]
        assert text_c["text"] == base["text"]
        assert text_c["latent"]["family"] != base["latent"]["family"]
        assert text_c["clean_labels"]["hateful"] == "no"
        assert _key(image_c)["class"] == _key(base)["class"]
        assert image_c["latent"]["slur_family"] != base["latent"]["family"]  # None when unrelated
        assert image_c["clean_labels"]["hateful"] == "no"
        assert len({m["split"] for m in members.values()}) == 1


def test_unimodal_probes_at_chance_joint_probe_learns(synth: dict) -> None:
    records = synth["records"]
    got = {
        (task, view): probe_auroc(records, task, pos, view, clean=(view != "joint"))
        for task, pos in (("hateful", "yes"), ("sarcasm", "twisted_meaning"))
        for view in ("text", "image", "joint")
    }
    print("probe AUROC:", {f"{t}/{v}": round(a, 3) for (t, v), a in got.items()})
    for task in ("hateful", "sarcasm"):
        assert got[(task, "text")] <= CHANCE_AUROC, got
        assert got[(task, "image")] <= CHANCE_AUROC, got
        assert got[(task, "joint")] >= JOINT_AUROC, got


def test_hateful_rate_equal_per_target_and_object(synth: dict) -> None:
    """What keeps unimodal probes at chance: P(hateful | t) and P(hateful | o) are the same for all."""
    related = [r for r in synth["records"] if r["latent"]["related"]]
    for key in ("target", "object"):
        rates = {}
        for value in {r["latent"][key] for r in related}:
            rows = [r for r in related if r["latent"][key] == value]
            rates[value] = np.mean([r["clean_labels"]["hateful"] == "yes" for r in rows])
        assert max(rates.values()) - min(rates.values()) <= 0.12, (key, rates)


# --- object level ----------------------------------------------------------------------------------


def test_key_object_small(synth: dict) -> None:
    size2 = SIZE * SIZE
    for r in synth["records"]:
        x0, y0, x1, y1 = _key(r)["box"]
        assert (x1 - x0) * (y1 - y0) / size2 <= 0.15
        for o in r["objects"]:
            if not o["key"]:  # props never overlap the key object
                a, b = o["box"], _key(r)["box"]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_metaphor_needs_region_features(synth: dict) -> None:
    """A global 8x8 view is near chance on metaphor; the key object's 8x8 crop is not."""
    whole = metaphor_bacc(synth["out"], synth["records"], crop=False, clean=True)
    crop = metaphor_bacc(synth["out"], synth["records"], crop=True, clean=False)
    print(f"metaphor balanced accuracy: whole image {whole:.3f}, key crop {crop:.3f}")
    assert whole <= CHANCE_BACC
    assert crop >= CROP_BACC


# --- rates, splits, languages ----------------------------------------------------------------------


def test_unrelated_fraction_and_noise_rate(synth: dict) -> None:
    cfg, records, report = synth["cfg"], synth["records"], synth["report"]
    unrelated = np.mean([not r["latent"]["related"] for r in records])
    assert abs(unrelated - cfg.unrelated_rate) <= 0.05
    for r in records:
        if not r["latent"]["related"]:
            assert r["latent"]["target"] is None and r["clean_labels"]["harm_target"] is None
    present = changed = 0
    for r in records:
        for task in TASKS:
            if r["clean_labels"][task] is not None:
                present += 1
                changed += r["labels"][task] != r["clean_labels"][task]
    measured = changed / present
    assert abs(measured - cfg.label_noise) <= 0.015, measured
    assert abs(report["noise_rate_overall"] - measured) < 1e-3
    for task in TASKS:
        assert report["noise_rate"][task] <= cfg.label_noise + 0.05


def test_test_unseen_pairs_never_in_train(synth: dict) -> None:
    pairs = {s: {(r["latent"]["target"], r["latent"]["object"]) for r in synth["records"]
                 if r["split"] == s and r["latent"]["target"]}
             for s in ("train", "val", "test", "test_unseen")}
    assert pairs["test_unseen"], "no test_unseen memes"
    for split in ("train", "val", "test"):
        assert not pairs["test_unseen"] & pairs[split]
    held = {tuple(p) for p in synth["report"]["held_out_pairs"]}
    assert pairs["test_unseen"] <= held
    n_unseen = synth["report"]["n_per_split"]["test_unseen"]
    assert abs(n_unseen / N_MEMES - synth["cfg"].unseen_fraction) <= 0.02


def test_both_languages_render(synth: dict) -> None:
    records = synth["records"]
    zh = [r for r in records if r["lang"] == "zh"]
    en = [r for r in records if r["lang"] == "en"]
    assert zh and en
    assert all(re.search(r"[\u4e00-\u9fff]", r["text"]) for r in zh)
    assert all(re.search(r"[A-Za-z]", r["text"]) for r in en)
    for r in zh:
        name = TARGET_BY_KEY[r["latent"]["target"]].zh if r["latent"]["target"] else None
        assert name is None or name in r["text"]
    # caption pixels: the band under a caption holds near-white text and near-black outline
    for r in zh[:20] + en[:20]:
        grey = np.asarray(Image.open(synth["out"] / r["image"]).convert("L"))
        band = grey[: SIZE // 5] if r["caption"]["top"] else grey
        assert (band > 235).mean() > 0.01 and (band < 40).mean() > 0.01, r["id"]


def test_sample_figure(synth: dict, tmp_path: Path) -> None:
    path = make_sample_figure(synth["out"], tmp_path / "samples.png")
    assert path.stat().st_size < 500_000
    with Image.open(path) as img:
        assert img.width > 800


def test_memelens_export_reads_back_through_the_memelens_loader(synth: dict, tmp_path: Path) -> None:
    from memeops.config import ConsolidateConfig, SourceConfig
    from memeops.data.consolidate import consolidate
    from memeops.data.synth.memelens import export_memelens
    from memeops.data.taxonomy import load_taxonomy

    datasets = {"hate_speech": "hateful", "sentiment": "sentiment"}
    counts = export_memelens(synth["records"], synth["out"], tmp_path / "lens", datasets, seed=3)
    assert sum(counts.values()) == len(synth["records"])  # both tasks are labelled on every meme
    assert {k.split("/")[1] for k in counts} == set(datasets)
    source = SourceConfig(name="lens", format="memelens", path=str(tmp_path / "lens"), tasks=datasets)
    result = consolidate(ConsolidateConfig(sources=[source], workers=1), load_taxonomy(), Path("."))
    assert not result.quarantine
    memes = result.memes
    assert len(memes) == len(synth["records"])
    # one task per meme, the label and explanation of the original record
    by_id = {r["id"]: r for r in synth["records"]}
    for row in memes.head(30).itertuples():
        rec = by_id[row.native_id.split("/")[-1]]
        task = datasets[row.native_id.split("/")[1]]
        assert getattr(row, f"label_{task}") == rec["labels"][task]
        other = next(t for t in datasets.values() if t != task)
        assert pd.isna(getattr(row, f"label_{other}"))
        assert json.loads(row.explanations)[task] == rec["explanations"][task]
        assert row.split == {"test_unseen": "test"}.get(rec["split"], rec["split"])
