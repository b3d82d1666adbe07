"""Detectors and region views: grid, torchvision and ultralytics backends, selection, crops, the
sharded RegionStore, detector folders, metrics, and the regions stage's library on a tiny table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from memeops.vision.detect import (
    Detections,
    DetectorConfig,
    box_iou,
    detection_ap,
    detection_map,
    grid_boxes,
    key_recall_at_k,
)  # fmt: skip
from memeops.vision.detector_dir import (
    DETECTOR_CONFIG_FILE,
    load_detector,
    load_detector_dir,
    pack_detector,
    save_detector_dir,
)  # fmt: skip
from memeops.vision.extract import RegionsConfig, extract_regions, key_objects, load_detections
from memeops.vision.regions import (
    RegionSet,
    RegionStore,
    RegionViewConfig,
    RegionViewWriter,
    crop_regions,
    region_key_coverage,
    region_key_recall,
    region_rng,
    regions_for_images,
    select_regions,
    write_region_view,
)  # fmt: skip

RED = (230, 20, 20)


def _dets(boxes: list[list[float]], scores: list[float], classes: list[int] | None = None) -> Detections:
    return Detections.from_normalised(
        boxes, scores, classes if classes is not None else list(range(len(scores)))
    )


def _square_image(
    size: int = 100, box: tuple[int, int, int, int] = (60, 20, 80, 40), bg=(255, 255, 255)
) -> Image.Image:
    image = Image.new("RGB", (size, size), bg)
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=RED)
    return image


class StubDetector:
    """Finds the red square (the test images' only object) exactly, plus a weak whole-image box."""

    def __init__(self) -> None:
        self.config = DetectorConfig(backend="grid")

    def detect(self, images):
        out = []
        for im in images:
            a = np.asarray(im.convert("RGB")).astype(int)
            ys, xs = np.nonzero((a[..., 0] > 200) & (a[..., 1] < 60))
            w, h = im.size
            boxes = [[xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h]] if len(xs) else []
            out.append(
                Detections.from_normalised(
                    boxes + [[0, 0, 1, 1]], [0.9] * len(boxes) + [0.3], [3] * len(boxes) + [5]
                )
            )
        return out


# --- grid and Detections -----------------------------------------------------------------------------


def test_grid_boxes_and_grid_detector():
    assert np.allclose(
        grid_boxes(2), [[0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]]
    )
    det = load_detector(DetectorConfig(backend="grid", grid=3))
    out = det.detect([Image.new("RGB", (40, 30)), Image.new("L", (10, 10))])
    assert len(out) == 2 and all(len(d) == 9 for d in out)
    assert out[0].boxes.dtype == np.float32 and out[0].classes.dtype == np.int64
    assert np.all(out[0].scores == 1.0) and np.all(out[0].classes == -1)
    assert np.isclose(out[0].boxes[:, [2, 3]].max(), 1.0) and out[0].boxes.min() == 0.0


def test_detections_sorted_normalised_and_clipped():
    d = Detections.from_pixels([[10, 10, 20, 20], [0, 0, 300, 50]], [0.2, 0.8], [1, 2], width=200, height=100)
    assert d.scores.tolist() == pytest.approx([0.8, 0.2]) and d.classes.tolist() == [2, 1]
    assert np.allclose(d.boxes[0], [0, 0, 1, 0.5]) and np.allclose(d.boxes[1], [0.05, 0.1, 0.1, 0.2])
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 4)), np.zeros(1), np.zeros(2))


# --- select_regions ----------------------------------------------------------------------------------


def test_select_regions_pads_and_filters_by_score():
    dets = _dets(
        [[0, 0, 0.2, 0.2], [0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9], [0.6, 0, 1, 0.4]], [0.9, 0.6, 0.3, 0.1]
    )
    boxes, scores, classes, valid = select_regions(dets, RegionViewConfig(max_regions=4, min_score=0.25))
    assert boxes.shape == (4, 4) and boxes.dtype == np.float32 and classes.dtype == np.int64
    assert valid.tolist() == [True, True, True, False]
    assert scores.tolist() == pytest.approx([0.9, 0.6, 0.3, 0.0]) and classes[3] == -1
    assert np.allclose(boxes[:3], dets.boxes[:3]) and np.all(boxes[3] == 0)
    boxes, scores, _, valid = select_regions(dets, RegionViewConfig(max_regions=2, min_score=0.0))
    assert valid.all() and scores.tolist() == pytest.approx([0.9, 0.6])
    _, _, _, valid = select_regions(Detections.empty(), RegionViewConfig(max_regions=3))
    assert not valid.any()
    _, _, _, valid = select_regions(dets, RegionViewConfig(min_score=0.95))
    assert not valid.any()


def test_select_regions_grid_source_ignores_detections():
    boxes, scores, classes, valid = select_regions(
        None, RegionViewConfig(source="grid", grid=2, max_regions=4)
    )
    assert np.allclose(boxes, grid_boxes(2)) and valid.all() and np.all(scores == 1) and np.all(classes == -1)
    boxes, _, _, valid = select_regions(None, RegionViewConfig(source="grid", grid=3, max_regions=4))
    assert np.allclose(boxes, grid_boxes(3)[:4]) and valid.all()
    with pytest.raises(ValueError):
        select_regions(None, RegionViewConfig())


def test_jitter_is_seeded_per_image_and_bounded():
    dets = _dets([[0.4, 0.4, 0.6, 0.6], [0.1, 0.1, 0.3, 0.5]], [0.9, 0.8])
    view = RegionViewConfig(jitter=0.2, min_score=0.0, max_regions=2)
    a = select_regions(dets, view, region_rng(view, "img-a"))[0]
    again = select_regions(dets, view, region_rng(view, "img-a"))[0]
    other = select_regions(dets, view, region_rng(view, "img-b"))[0]
    reseeded = select_regions(
        dets, view.model_copy(update={"seed": 1}), region_rng(view.model_copy(update={"seed": 1}), "img-a")
    )[0]
    assert np.array_equal(a, again) and not np.allclose(a, other) and not np.allclose(a, reseeded)
    wh = np.concatenate([dets.boxes[:, 2:] - dets.boxes[:, :2]] * 2, axis=1)
    assert np.all(np.abs(a - dets.boxes) <= 0.2 * wh + 1e-6) and not np.allclose(a, dets.boxes)
    assert np.all(a[:, 2:] > a[:, :2]) and a.min() >= 0 and a.max() <= 1
    clean = select_regions(dets, RegionViewConfig(min_score=0.0, max_regions=2), np.random.default_rng(0))[0]
    assert np.allclose(clean, dets.boxes)


def test_context_enlarges_boxes_within_the_image():
    dets = _dets([[0.4, 0.4, 0.6, 0.6], [0, 0, 0.2, 0.2]], [0.9, 0.8])
    boxes = select_regions(dets, RegionViewConfig(context=0.5, min_score=0.0, max_regions=2))[0]
    assert np.allclose(boxes[0], [0.35, 0.35, 0.65, 0.65]) and np.allclose(boxes[1], [0, 0, 0.25, 0.25])


# --- crops -------------------------------------------------------------------------------------------


def test_crops_see_the_object_and_zero_invalid_slots():
    image = _square_image()
    boxes = np.array([[0.6, 0.2, 0.8, 0.4], [0, 0.6, 0.3, 0.9], [0, 0, 0, 0]], np.float32)
    crops = crop_regions(image, boxes, np.array([True, True, False]), crop_size=16)
    assert crops.shape == (3, 16, 16, 3) and crops.dtype == np.uint8
    assert np.allclose(crops[0, 3:-3, 3:-3].reshape(-1, 3), RED, atol=3)  # the square fills the crop
    assert ((crops[0, ..., 0] > 200) & (crops[0, ..., 1] < 80)).all()  # edges blend a little, still red
    assert crops[1].min() > 250  # white background elsewhere
    assert not crops[2].any()
    half = crop_regions(image, np.array([[0.5, 0.2, 0.8, 0.4]], np.float32), np.array([True]), crop_size=12)[
        0
    ]
    red = (half[..., 0] > 200) & (half[..., 1] < 60)
    assert red[:, 6:].mean() > 0.9 and red[:, :3].mean() < 0.05  # the square is in the right two thirds


def test_regions_for_images_with_detector_and_grid():
    images = [_square_image(), _square_image(box=(10, 50, 30, 70))]
    rs = regions_for_images(
        images, StubDetector(), RegionViewConfig(max_regions=3, crop_size=8), keys=["a", "b"]
    )
    assert rs.keys == ["a", "b"] and rs.boxes.shape == (2, 3, 4) and rs.crops.shape == (2, 3, 8, 8, 3)
    assert rs.valid.tolist() == [[True, True, False]] * 2 and rs.classes[:, 0].tolist() == [3, 3]
    assert np.allclose(rs.boxes[1, 0], [0.1, 0.5, 0.3, 0.7])
    assert region_key_recall(rs, np.array([[0.6, 0.2, 0.8, 0.4], [0.6, 0.2, 0.8, 0.4]])) == pytest.approx(0.5)
    assert region_key_coverage(rs, np.array([[0.6, 0.2, 0.8, 0.4], [0.6, 0.2, 0.8, 0.4]])) == pytest.approx(
        1.0
    )  # whole-image box
    grid = regions_for_images(images, None, RegionViewConfig(source="grid", grid=2, max_regions=4))
    assert grid.keys == ["0", "1"] and grid.valid.all() and grid.crops.shape == (2, 4, 32, 32, 3)
    with pytest.raises(ValueError):
        regions_for_images(images, None, RegionViewConfig())


# --- the store ---------------------------------------------------------------------------------------


def _region_set(keys: list[str], k: int = 3, s: int = 4, seed: int = 0) -> RegionSet:
    rng = np.random.default_rng(seed)
    n = len(keys)
    valid = rng.random((n, k)) > 0.3
    return RegionSet(keys, rng.random((n, k, 4)).astype(np.float32), rng.random((n, k)).astype(np.float32),
                     rng.integers(-1, 5, (n, k)), valid,
                     rng.integers(0, 255, (n, k, s, s, 3), dtype=np.uint8))  # fmt: skip


def test_region_store_round_trip_across_shards(tmp_path: Path):
    view = RegionViewConfig(max_regions=3, crop_size=4)
    keys = [f"sha{i:03d}" for i in range(11)]
    full = _region_set(keys)
    with RegionViewWriter(tmp_path / "v", view, shard_size=4) as writer:
        writer.add(full.take(keys[:5]))
        writer.add(full.take(keys[5:]))
        writer.add(full.take(keys[:2]))  # repeated keys are ignored
    assert sorted(p.name for p in (tmp_path / "v").glob("shard_*")) == [
        f"shard_0000{i}.safetensors" for i in range(3)
    ]
    store = RegionStore(tmp_path / "v")
    assert len(store) == 11 and "sha004" in store and store.view == view
    order = ["sha010", "sha000", "sha005", "sha000"]
    got, want = store.get(order), full.take(order)
    assert got.keys == order
    for name in ("boxes", "scores", "classes", "valid", "crops"):
        assert (
            np.array_equal(getattr(got, name), getattr(want, name))
            and getattr(got, name).dtype == getattr(want, name).dtype
        )
    assert store.get([]).crops.shape == (0, 3, 4, 4, 3)
    with pytest.raises(KeyError, match="1 of 2 images are not in region view"):
        store.get(["sha000", "nope"])
    write_region_view(tmp_path / "v", full.take(keys[:2]), view)  # rewriting a view replaces it
    assert len(RegionStore(tmp_path / "v")) == 2 and len(list((tmp_path / "v").glob("shard_*"))) == 1
    with pytest.raises(FileNotFoundError):
        RegionStore(tmp_path / "missing")


def test_region_set_take_and_concat():
    a, b = _region_set(["x", "y"]), _region_set(["z"], seed=1)
    both = RegionSet.concat([a, b])
    assert both.keys == ["x", "y", "z"] and np.array_equal(both.take(["z"]).crops, b.crops)
    with pytest.raises(KeyError):
        both.take(["q"])


# --- metrics -----------------------------------------------------------------------------------------


def test_key_recall_at_k_class_aware_and_agnostic():
    gt = np.array([[0, 0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.1, 0.1, 0.4, 0.4]], np.float32)
    gt_cls = np.array([1, 2, 3])
    dets = [
        _dets([[0, 0, .2, .2], [.6, .6, .9, .9]], [0.9, 0.5], [1, 0]),        # rank 1, right class
        _dets([[0, 0, .1, .1], [.5, .5, .7, .71]], [0.8, 0.6], [0, 4]),       # rank 2, wrong class
        _dets([[.1, .1, .4, .4]], [0.2], [3]),                                # right box, low score
    ]  # fmt: skip
    assert key_recall_at_k(dets, gt, None, [1, 2, 4]) == pytest.approx({1: 2 / 3, 2: 1.0, 4: 1.0})
    assert key_recall_at_k(dets, gt, None, [1, 2], min_score=0.25) == pytest.approx({1: 1 / 3, 2: 2 / 3})
    assert key_recall_at_k(dets, gt, gt_cls, [1, 2, 4]) == pytest.approx({1: 2 / 3, 2: 2 / 3, 4: 2 / 3})
    assert np.isclose(box_iou(gt[:1], [[0, 0, 0.1, 0.2]])[0, 0], 0.5)


def test_detection_map_perfect_and_missing():
    truth = [
        (np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]), np.array([0, 1])),
        (np.array([[0.2, 0.2, 0.4, 0.4]]), np.array([0])),
    ]
    perfect = [_dets(t[0], [0.9] * len(t[1]), t[1]) for t in truth]
    ap, n_gt = detection_ap(perfect, truth, num_classes=3)
    # ultralytics' interpolation (recall padded with 1.0 at precision 0) tops out at 0.995, as in its val
    assert n_gt.tolist() == [2, 1, 0] and np.allclose(ap[:2], 0.995) and not ap[2].any()
    assert detection_map(ap, n_gt) == pytest.approx({"map50": 0.995, "map50_95": 0.995, "classes": 2})
    half = [perfect[0], _dets([[0.6, 0.6, 0.8, 0.8]], [0.9], [0])]  # class 0 finds 1 of 2
    ap, n_gt = detection_ap(half, truth, num_classes=3)
    m = detection_map(ap, n_gt, classes=[0])
    assert 0.6 < m["map50"] < 0.65 and m["classes"] == 1  # 0.5 + the linear tail to recall 1 (ultralytics)


# --- detector folders and backends -------------------------------------------------------------------


def test_save_pack_and_load_detector_dir(tmp_path: Path):
    section = save_detector_dir(DetectorConfig(backend="grid", grid=3), tmp_path / "a")
    assert section["weights"] is None and (tmp_path / "a" / DETECTOR_CONFIG_FILE).is_file()
    assert len(load_detector_dir(tmp_path / "a").detect([Image.new("RGB", (8, 8))])[0]) == 9
    fake = tmp_path / "w.pt"
    fake.write_bytes(b"weights")
    save_detector_dir(DetectorConfig(backend="torchvision", weights=str(fake), num_classes=3), tmp_path / "b")
    packed = pack_detector(tmp_path / "b", tmp_path / "serve" / "detector")
    assert packed["weights"] == "w.pt" and packed["num_classes"] == 3
    assert (tmp_path / "serve" / "detector" / "w.pt").read_bytes() == b"weights"
    stored = json.loads((tmp_path / "serve" / "detector" / DETECTOR_CONFIG_FILE).read_text())
    assert stored == packed and json.dumps(packed)
    with pytest.raises(FileNotFoundError):
        load_detector_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        load_detector(DetectorConfig(backend="torchvision", weights=str(tmp_path / "missing.pt")))


@pytest.fixture(scope="module")
def fasterrcnn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init Faster R-CNN ResNet-50 FPN (3 classes) state dict in a detector folder."""
    import torch

    from memeops.vision.detect import build_fasterrcnn

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("frcnn")
    cfg = DetectorConfig(backend="torchvision", num_classes=3, imgsz=64, conf=0.0, max_det=5, batch_size=2,
                         proposals=50)  # fmt: skip
    torch.save(build_fasterrcnn(cfg).state_dict(), folder / "frcnn.pth")
    save_detector_dir(cfg.model_copy(update={"weights": str(folder / "frcnn.pth")}), folder / "detector")
    return folder / "detector"


def test_torchvision_backend_loads_a_local_state_dict(fasterrcnn_dir: Path):
    det = load_detector_dir(fasterrcnn_dir)
    out = det.detect([Image.new("RGB", (80, 64), (40, 90, 200)), _square_image(64), _square_image(48)])
    assert len(out) == 3
    for d in out:
        assert len(d) <= 5 and d.boxes.dtype == np.float32 and d.classes.dtype == np.int64
        assert np.all((d.boxes >= 0) & (d.boxes <= 1)) and np.all(np.diff(d.scores) <= 0)
        assert np.all((d.classes >= 1) & (d.classes < 3))


# --- the regions stage's library ---------------------------------------------------------------------


def test_extract_regions_writes_views_detections_and_metrics(tmp_path: Path):
    rows = []
    for i in range(5):
        x = 10 + 12 * i
        path = tmp_path / "src" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        _square_image(100, (x, 30, x + 20, 50)).save(path)
        objects = [
            {"box": [x, 30, x + 20, 50], "class_id": 3, "key": True},
            {"box": [0, 0, 5, 5], "class_id": 20, "key": False},
        ]
        rows.append({"meme_id": f"m{i}", "split": "test" if i < 3 else "train",
                     "source_root": str(tmp_path / "src"),
                     "image_path": f"{i}.png", "image_sha256": f"sha{i}", "width": 100, "height": 100,
                     "extra": json.dumps({"objects": objects})})  # fmt: skip
    rows.append({**rows[0], "meme_id": "dup"})  # same image twice: detected once
    memes = pd.DataFrame(rows)
    assert key_objects(memes).loc[0, ["x0", "x1", "key_class"]].tolist() == pytest.approx([0.1, 0.3, 3])
    views = {"detector": RegionViewConfig(max_regions=2, crop_size=8),
             "grid": RegionViewConfig(source="grid", crop_size=8),
             "degraded": RegionViewConfig(max_regions=1, min_score=0.5, jitter=0.3, crop_size=8)}  # fmt: skip
    cfg = RegionsConfig(
        output_dir=str(tmp_path / "regions"), batch_size=2, shard_size=3, views=views, recall_k=[1, 2]
    )
    write_region_view(
        tmp_path / "regions" / "views" / "old",
        _region_set(["x"]),
        RegionViewConfig(max_regions=3, crop_size=4),
    )
    metrics = extract_regions(memes, StubDetector(), cfg)
    assert sorted(p.name for p in (tmp_path / "regions" / "views").iterdir()) == [
        "degraded",
        "detector",
        "grid",
    ]
    assert metrics["images"] == 5 and metrics["eval_images"] == 3 and metrics["detections"] == 10
    assert (
        metrics["views"]["detector"]["key_recall"] == 1.0
        and metrics["views"]["detector"]["mean_valid_regions"] == 2
    )
    assert (
        metrics["views"]["grid"]["key_recall"] == 0.0
        and metrics["views"]["degraded"]["mean_valid_regions"] == 1
    )
    assert metrics["stored_detections_key_recall"] == {"at_1": 1.0, "at_2": 1.0}
    assert metrics["views"]["grid"]["key_coverage"] == pytest.approx(
        2 / 3, abs=1e-4
    )  # the square across x=50 is cut
    store = RegionStore(tmp_path / "regions" / "views" / "detector")
    rs = store.get(["sha4", "sha0"])
    assert np.allclose(rs.boxes[0, 0], [0.58, 0.3, 0.78, 0.5]) and rs.crops.shape == (2, 2, 8, 8, 3)
    dets = load_detections(tmp_path / "regions" / "detections.parquet", keys=["sha0", "other"])
    assert len(dets["sha0"]) == 2 and len(dets["other"]) == 0 and dets["sha0"].scores[0] == pytest.approx(0.9)
    again = RegionStore(tmp_path / "regions" / "views" / "degraded").get(["sha1"])
    assert again.valid.sum() == 1


# --- params ------------------------------------------------------------------------------------------


def test_project_params_validate(repo_root: Path):
    from memeops.config import load_params
    from memeops.vision.train import DetectorStageConfig

    params = load_params(repo_root / "params.yaml")
    det = params.section("detector", DetectorStageConfig)
    regions = params.section("regions", RegionsConfig)
    assert det.runtime().backend == det.backend and "detector" in regions.views
    assert all(isinstance(v, RegionViewConfig) for v in regions.views.values())


# --- ultralytics (slow: one tiny training run) -------------------------------------------------------

COLOURS = [(220, 30, 30), (30, 60, 220)]


def _tiny_yolo_data(root: Path, n: int = 8) -> Path:
    """n 64-px images, each with one red (class 0) and one blue (class 1) square, SynthMeme layout."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.json").write_text(json.dumps(["red", "blue"]))
    records = {"train": [], "val": []}
    for i in range(n):
        image = Image.new("RGB", (64, 64), (240, 240, 240))
        draw, lines, objects = ImageDraw.Draw(image), [], []
        for c, (x, y) in enumerate([(int(rng.integers(2, 20)), int(rng.integers(2, 40))),
                                    (int(rng.integers(36, 46)), int(rng.integers(2, 40)))]):  # fmt: skip
            draw.rectangle((x, y, x + 15, y + 15), fill=COLOURS[c])
            lines.append(f"{c} {(x + 8) / 64:.6f} {(y + 8) / 64:.6f} {16 / 64:.6f} {16 / 64:.6f}")
            objects.append({"class_id": c, "box": [x, y, x + 16, y + 16], "key": c == 0})
        image.save(root / "images" / f"im{i}.jpg", quality=95)
        (root / "labels" / f"im{i}.txt").write_text("\n".join(lines) + "\n")
        records["train" if i < n - 2 else "val"].append(
            {"id": f"im{i}", "image": f"images/im{i}.jpg", "objects": objects}
        )
    for split, recs in [*records.items(), ("test", records["val"])]:
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


@pytest.mark.slow
def test_ultralytics_train_pack_and_detect(tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch):
    from memeops.vision.train import DetectorEvalConfig, evaluate_detector
    from memeops.vision.yolo import (
        YoloModelSpec,
        YoloTrainConfig,
        configure_ultralytics,
        prepare_yolo_dataset,
        train_yolo,
        write_model_yaml,
    )  # fmt: skip

    monkeypatch.chdir(tmp_path)  # anything written relative to cwd would land here, not in the repo
    before = set(repo_root.iterdir())
    data = _tiny_yolo_data(tmp_path / "data")
    configure_ultralytics()
    from ultralytics import settings

    assert settings["mlflow"] is False and settings["sync"] is False
    data_yaml = prepare_yolo_dataset(data, tmp_path / "work" / "data")
    model_yaml = write_model_yaml(YoloModelSpec(depth=0.33, width=0.0625), 2, tmp_path / "work" / "m.yaml")
    cfg = YoloTrainConfig(
        epochs=1, batch=4, workers=0, cache=False, mosaic=0.0, close_mosaic=0, warmup_epochs=0
    )
    result = train_yolo(model_yaml, data_yaml, cfg, imgsz=64, project=tmp_path / "work" / "runs")
    assert result.best.is_file() and result.train_images == 6 and result.val_images == 2
    assert len(result.history) == 1 and "val_map50" in result.history[0]
    section = save_detector_dir(DetectorConfig(imgsz=64, conf=0.0, max_det=7, class_names=("red", "blue")),
                                tmp_path / "detector", weights=result.best)  # fmt: skip
    assert section["weights"] == "best.pt"
    assert pack_detector(tmp_path / "detector", tmp_path / "packed")["weights"] == "best.pt"
    det = load_detector_dir(tmp_path / "packed")
    images = [Image.open(data / "images" / "im0.jpg"), Image.new("RGB", (96, 48), (240, 240, 240))]
    out = det.detect(images)
    assert len(out) == 2
    for d in out:
        assert 0 < len(d) <= 7 and d.boxes.dtype == np.float32 and d.classes.dtype == np.int64
        assert np.all((d.boxes >= 0) & (d.boxes <= 1)) and np.all(np.diff(d.scores) <= 0)
        assert np.all((d.classes >= 0) & (d.classes < 2))
    scores = evaluate_detector(det, data, DetectorEvalConfig(key_classes=1, recall_k=[1, 4]), ["red", "blue"])
    assert scores["images"] == 2 and {"map50", "key_map50", "key_recall", "key_recall_any_class"} <= set(
        scores
    )
    assert not (tmp_path / "runs").exists() and (repo_root / "runs").exists() == (
        repo_root / "runs" in before
    )


def test_build_detector_packages_grid_and_torchvision(tmp_path: Path, fasterrcnn_dir: Path):
    from memeops.vision.train import (
        DetectorEvalConfig,
        DetectorStageConfig,
        build_detector,
        evaluate_detector,
    )

    data = _tiny_yolo_data(tmp_path / "data")
    grid = build_detector(DetectorStageConfig(backend="grid", grid=4, output_dir=str(tmp_path / "g")), data)
    assert not grid.trained and grid.config["backend"] == "grid" and grid.config["weights"] is None
    scores = evaluate_detector(load_detector_dir(tmp_path / "g"), data, DetectorEvalConfig(recall_k=[1, 16]),
                               ["red", "blue"])  # fmt: skip
    assert scores["images"] == 2 and "map50" not in scores and "key_recall" not in scores
    recall = scores["key_recall_any_class"]  # 16-px squares vs 16-px cells: IoU >= 0.5 only when aligned
    assert 0 <= recall["at_1"] <= recall["at_16"] <= 1
    weights = fasterrcnn_dir / "frcnn.pth"
    cfg = DetectorStageConfig(backend="torchvision", train=False, weights=str(weights), num_classes=3, imgsz=64,
                              output_dir=str(tmp_path / "tv"))  # fmt: skip
    (tmp_path / "tv").mkdir()
    (tmp_path / "tv" / "stale.pt").write_bytes(b"old")
    tv = build_detector(cfg, None)
    assert tv.config["weights"] == "frcnn.pth" and not (tmp_path / "tv" / "stale.pt").exists()
    assert load_detector_dir(tmp_path / "tv").config.num_classes == 3
    with pytest.raises(FileNotFoundError):
        build_detector(
            DetectorStageConfig(backend="torchvision", train=False, output_dir=str(tmp_path / "x")), None
        )
    with pytest.raises(FileNotFoundError):
        build_detector(DetectorStageConfig(output_dir=str(tmp_path / "y")), None)  # train without data
