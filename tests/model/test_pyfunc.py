"""Packed meme models: the self-contained folder, input decoding and its errors, MLflow pyfunc
logging + registry alias, loading in a fresh process, and ``memeops predict``.

Everything is tiny and randomly initialised (a few-string corpus tokenizer, a 1-layer CLIP, a
small GatedCLIP head): the point is plumbing and exact agreement between paths, not accuracy.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from memeops.cli import app
from memeops.models.base import TaskSpec
from memeops.models.clip import ClipEncoderConfig, build_clip_model
from memeops.models.factory import build_model
from memeops.models.text_tokenizer import CorpusTokenizer
from memeops.serving.folder import ENCODER_DIR, HEAD_FILE, SPEC_FILE
from memeops.serving.inputs import decode_image
from memeops.serving.predictor import MemePredictor, load_predictor
from memeops.serving.pyfunc import log_pyfunc, pinned_requirements, save_model_dir
from memeops.tracking.registry import (
    alias_uri,
    alias_version,
    promote,
    register_and_alias,
    registered_model_name,
)
from memeops.tracking.runs import tracked_run

TEXTS = [
    "cats made my whole week",
    "说实话老师让我开心",
    "gamers be like pure sunshine",
    "nobody: teachers:",
] * 3
SMALL = {
    "embed_dim": 32,
    "image_size": 32,
    "patch_size": 16,
    "vision_width": 64,
    "vision_layers": 1,
    "vision_heads": 2,
    "text_width": 64,
    "text_layers": 1,
    "text_heads": 2,
    "context_length": 24,
}
SPECS = [
    TaskSpec("hateful", "single", ("no", "yes")),
    TaskSpec("sentiment", "single", ("negative", "neutral", "positive")),
    TaskSpec("protected_category", "multi", ("race", "sex", "religion")),
]
HEAD_CFG = {"image_dim": 32, "text_dim": 32, "hidden": 16, "proj_dim": 8, "gate_hidden": 8, "cls_hidden": 8}


def _png_bytes(seed: int, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the pretrain_clip stage writes: clip.safetensors, tokenizer.json, clip_config.json."""
    folder = tmp_path_factory.mktemp("clip")
    tok = CorpusTokenizer.train(TEXTS, vocab_size=200, context_length=24)
    tok.save(folder / "tokenizer.json")
    cfg = ClipEncoderConfig(
        **SMALL,
        weights=str(folder / "clip.safetensors"),
        tokenizer_path=str(folder / "tokenizer.json"),
        vocab_size=tok.vocab_size,
    )
    model = build_clip_model(cfg, tok.vocab_size)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "clip.safetensors"))
    (folder / "clip_config.json").write_text(cfg.model_dump_json(), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def head() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("gatedclip", HEAD_CFG, SPECS)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, clip_dir: Path, head: torch.nn.Module) -> Path:
    return save_model_dir(
        tmp_path_factory.mktemp("packed") / "model", head, "gatedclip", HEAD_CFG, SPECS, clip_dir
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(3):
        (folder / f"meme{i}.png").write_bytes(_png_bytes(i))
        paths.append(folder / f"meme{i}.png")
    return paths


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> MemePredictor:
    return MemePredictor.from_dir(model_dir)


# --------------------------------------------------------------------------- the folder


def test_folder_is_self_contained_and_spec_describes_it(model_dir: Path, clip_dir: Path) -> None:
    files = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
    assert files == [
        f"{ENCODER_DIR}/clip.safetensors",
        f"{ENCODER_DIR}/clip_config.json",
        f"{ENCODER_DIR}/tokenizer.json",
        HEAD_FILE,
        SPEC_FILE,
    ]
    spec = json.loads((model_dir / SPEC_FILE).read_text())
    assert spec["model"]["name"] == "gatedclip" and spec["model"]["config"]["image_dim"] == 32
    assert [t["name"] for t in spec["tasks"]] == [s.name for s in SPECS]
    assert spec["inputs"]["kind"] == "clip_features" and spec["inputs"]["dim"] == 32
    packed_cfg = json.loads((model_dir / ENCODER_DIR / "clip_config.json").read_text())
    assert packed_cfg["weights"] == "clip.safetensors" and packed_cfg["tokenizer_path"] == "tokenizer.json"
    # spec_key hashes content, not paths: same key as the encoder that filled the feature cache
    from memeops.models.clip import load_clip

    original = load_clip(ClipEncoderConfig.model_validate_json((clip_dir / "clip_config.json").read_text()))
    assert spec["inputs"]["spec_key"] == original.spec_key


def test_save_refuses_mismatches_and_existing_folders(
    tmp_path: Path, clip_dir: Path, head, model_dir: Path
) -> None:
    with pytest.raises(FileExistsError):
        save_model_dir(model_dir, head, "gatedclip", HEAD_CFG, SPECS, clip_dir)
    with pytest.raises(ValueError, match="do not fit gatedclip"):
        save_model_dir(tmp_path / "m1", head, "gatedclip", {**HEAD_CFG, "hidden": 12}, SPECS, clip_dir)
    wide = build_model("gatedclip", {**HEAD_CFG, "image_dim": 48, "text_dim": 48}, SPECS)
    with pytest.raises(ValueError, match="dim 32"):  # head trained on another CLIP width: caught by verify
        save_model_dir(
            tmp_path / "m2", wide, "gatedclip", {**HEAD_CFG, "image_dim": 48, "text_dim": 48}, SPECS, clip_dir
        )
    with pytest.raises(FileNotFoundError, match="clip_config.json"):
        save_model_dir(tmp_path / "m3", head, "gatedclip", HEAD_CFG, SPECS, tmp_path)
    assert not any(p.name.startswith((".m1", ".m2", ".m3", "m1", "m2", "m3")) for p in tmp_path.iterdir())


# --------------------------------------------------------------------------- predictions and inputs


def test_outputs_match_the_head_on_clip_features(predictor: MemePredictor, head, images: list[Path]) -> None:
    frame = pd.DataFrame({"image": [str(p) for p in images], "text": ["cats", "说实话", None]})
    out = predictor.predict(frame)
    assert list(out.columns) == [
        "hateful",
        "hateful_prob",
        "hateful_p_yes",
        "sentiment",
        "sentiment_prob",
        "protected_category",
        "protected_category_prob",
        "protected_category_p_race",
        "protected_category_p_sex",
        "protected_category_p_religion",
    ]
    pil = [Image.open(p).convert("RGB") for p in images]
    enc = predictor.inputs.encoder  # type: ignore[attr-defined]
    with torch.no_grad():
        logits = head.eval()(
            {"image_emb": enc.encode_images(pil), "text_emb": enc.encode_texts(["cats", "说实话", ""])}
        )
    p_hate = logits.logits["hateful"].softmax(-1).numpy()
    np.testing.assert_allclose(out["hateful_p_yes"], p_hate[:, 1], rtol=1e-5)
    assert list(out["hateful"]) == [("no", "yes")[i] for i in p_hate.argmax(1)]
    np.testing.assert_allclose(out["hateful_prob"], p_hate.max(1), rtol=1e-5)
    p_multi = logits.logits["protected_category"].sigmoid().numpy()
    chosen = p_multi >= 0.5
    assert list(out["protected_category"]) == ["|".join(np.array(SPECS[2].labels)[row]) for row in chosen]
    np.testing.assert_allclose(
        out["protected_category_prob"], np.where(chosen, p_multi, 1 - p_multi).prod(1), rtol=1e-5
    )


def test_path_base64_data_url_and_bytes_agree(predictor: MemePredictor, images: list[Path]) -> None:
    raw = images[0].read_bytes()
    b64 = base64.b64encode(raw).decode()
    frame = pd.DataFrame(
        {
            "image": [
                str(images[0]),
                b64,
                f"data:image/png;base64,{b64}",
                raw,
                base64.urlsafe_b64encode(raw).decode(),
            ],
            "text": ["gamers be like"] * 5,
        }
    )
    probs = predictor.predict_proba(frame)
    for task in probs.values():
        np.testing.assert_allclose(task, np.repeat(task[:1], 5, axis=0), rtol=1e-6)
    assert len(predictor.predict(frame.iloc[:0])) == 0


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"image": ["x"]}), r"^input is missing column\(s\) text: expected"),
        (pd.DataFrame({"text": ["x"]}), r"^input is missing column\(s\) image"),
        (
            pd.DataFrame({"image": ["not base64 !!"], "text": ["x"]}),
            r"^row 0: image is neither an existing file path nor valid base64$",
        ),
        (
            pd.DataFrame({"image": [base64.b64encode(b"hello world").decode()], "text": ["x"]}),
            r"^row 0: base64 image data is not a readable image",
        ),
        (
            pd.DataFrame({"image": ["/no/such/meme.png"], "text": ["x"]}),
            r"^row 0: image file not found: '/no/such/meme.png'$",
        ),
        (
            pd.DataFrame({"image": [42], "text": ["x"]}),
            r"^row 0: image must be a file path, a base64 string or bytes, got int$",
        ),
        (pd.DataFrame({"image": [None], "text": ["x"]}), r"^row 0: image is missing$"),
        (pd.DataFrame({"image": ["x"], "text": [3]}), r"^row 0: text must be a string, got int$"),
        ("not a frame", r"^input must be a pandas DataFrame"),
    ],
)
def test_bad_inputs_give_one_line_value_errors(predictor: MemePredictor, frame, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        predictor.predict(frame)
    assert "\n" not in str(info.value)


def test_unreadable_image_file_names_the_row(tmp_path: Path, predictor: MemePredictor, images) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    frame = pd.DataFrame({"image": [str(images[0]), str(bad)], "text": ["a", "b"]})
    with pytest.raises(ValueError, match=r"^row 1: image file '.*broken.png' is not a readable image"):
        predictor.predict(frame)
    assert decode_image(images[0].read_bytes()).size == (40, 40)


def test_pinned_requirements_are_exact_versions() -> None:
    pins = pinned_requirements()
    names = {p.split("==")[0] for p in pins}
    assert {
        "mlflow",
        "torch",
        "open_clip_torch",
        "safetensors",
        "numpy",
        "pandas",
        "pillow",
        "pydantic",
    } <= names
    assert all(p.count("==") == 1 and "+" not in p for p in pins)


# --------------------------------------------------------------------------- MLflow pyfunc + registry


FRESH_PROCESS = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
import memeops
frame = pd.DataFrame({"image": [sys.argv[2], sys.argv[3]], "text": [sys.argv[4], sys.argv[4]]})
out = model.predict(frame)
print(json.dumps({"memeops": memeops.__file__, "rows": out.to_dict(orient="records")}))
"""


def test_logged_registered_model_loads_in_a_fresh_process(
    model_dir: Path,
    predictor: MemePredictor,
    images: list[Path],
    subprocess_env: dict,
    tmp_path: Path,
    repo_root: Path,
) -> None:
    name = registered_model_name("x")
    assert name == "memeops-x"
    with tracked_run(
        experiment="test-pyfunc",
        run_name="pack",
        stage="package",
        variant="x",
        seed=0,
        data_digest="d",
        params={},
        system_metrics=False,
    ) as run:
        info = log_pyfunc(model_dir, registered_model_name=name, input_example_image=images[1])
    assert info.run_id == run.info.run_id and info.registered_model_version is not None
    version = register_and_alias(info, name)  # reuses the registration, sets the alias
    assert version == str(info.registered_model_version) == alias_version(name, "challenger")
    assert alias_version(name, "champion") is None
    assert promote(name) == version and alias_version(name, "champion") == version
    other = registered_model_name("x/copy")  # a plain model URI is registered, then aliased
    assert other == "memeops-x-copy" and register_and_alias(info.model_uri, other, "staging") == "1"
    assert alias_version(other, "staging") == "1"

    b64 = base64.b64encode(images[2].read_bytes()).decode()
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, alias_uri(name), str(images[0]), b64, "cats made my week"],
        env=subprocess_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # code_paths made the logged model self-contained: memeops came from the model's own copy
    assert "/code/memeops/" in result["memeops"] and not result["memeops"].startswith(str(repo_root / "src"))
    here = predictor.predict(
        pd.DataFrame({"image": [str(images[0]), str(images[2])], "text": ["cats made my week"] * 2})
    )
    fresh = pd.DataFrame(result["rows"])
    assert list(fresh.columns) == list(here.columns)
    for column in here.columns:
        if pd.api.types.is_numeric_dtype(here[column]):
            np.testing.assert_allclose(fresh[column], here[column], rtol=1e-5, err_msg=column)
        else:
            assert list(fresh[column]) == list(here[column]), column
    assert not Path(subprocess_env["MEMEOPS_NETGUARD_LOG"]).exists()  # nothing tried the network

    loaded = load_predictor(alias_uri(name))  # in-process, through the registry
    frame = pd.DataFrame({"image": [b64], "text": ["x"]})
    np.testing.assert_allclose(
        loaded.predict(frame)["hateful_p_yes"], predictor.predict(frame)["hateful_p_yes"], rtol=1e-5
    )
    with pytest.raises(ValueError, match="^row 0: image is neither"):
        loaded.predict(pd.DataFrame({"image": ["@@@"], "text": ["x"]}))
    with pytest.raises(mlflow.exceptions.MlflowException, match="missing inputs"):
        loaded.predict(pd.DataFrame({"image": [b64]}))

    # A model logged before the serving re-cut: its entry script imports the class from
    # memeops.tracking.pyfunc, which in this process (memeops already imported) is the installed one.
    old = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(tmp_path / "old")))
    entry = old / "memeops_pyfunc_entry.py"
    assert "from memeops.serving.pyfunc import MemePyfunc" in entry.read_text()
    entry.write_text(entry.read_text().replace("memeops.serving.pyfunc", "memeops.tracking.pyfunc"))
    np.testing.assert_allclose(
        load_predictor(old).predict(frame)["hateful_p_yes"], predictor.predict(frame)["hateful_p_yes"], rtol=1e-5
    )


# --------------------------------------------------------------------------- CLI


def test_cli_predict_table_json_and_errors(
    model_dir: Path, predictor: MemePredictor, images: list[Path]
) -> None:
    runner = CliRunner()
    paths = [str(p) for p in images[:2]]
    result = runner.invoke(app, ["predict", "--model", str(model_dir), *paths, "--text", "cats"])
    assert result.exit_code == 0, result.output
    expected = predictor.predict(pd.DataFrame({"image": paths, "text": ["cats", "cats"]}))
    lines = result.output.splitlines()
    assert lines[0].startswith(paths[0]) and lines[1].split() == ["task", "label", "probability"]
    assert lines[2].split() == ["hateful", expected["hateful"][0], f"{expected['hateful_prob'][0]:.3f}"]

    result = runner.invoke(app, ["predict", "-m", str(model_dir), *paths, "-t", "a", "-t", "b", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["text"] for d in data] == ["a", "b"]
    hateful = data[0]["predictions"]["hateful"]
    assert set(hateful) == {"label", "probability", "p_yes"}
    assert set(data[0]["predictions"]["protected_category"]) == {
        "label",
        "probability",
        "p_race",
        "p_sex",
        "p_religion",
    }

    for args, message in [
        (["-m", str(model_dir), paths[0], "-t", "a", "-t", "b"], "got 2 --text for 1 images"),
        (["-m", str(model_dir), "missing.png"], "image file not found: missing.png"),
        (["-m", str(images[0].parent), paths[0]], "neither a memeops model folder"),
        (["-m", "models:/memeops-does-not-exist@challenger", paths[0]], "error: "),
    ]:
        result = runner.invoke(app, ["predict", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
