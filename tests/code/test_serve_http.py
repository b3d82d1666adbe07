"""Serving over real HTTP: a tiny packed model, logged + registered as ``memeops-serve@champion``
in a temp MLflow store, served by ``mlflow models serve --env-manager local`` on a free loopback
port (the command ``make serve`` runs), then valid and invalid JSON requests.

The server starts once for the module (its start-up is the cost); it runs under the socket guard
with a fresh HOME and is always stopped. Its image limits are lowered at serve time through
``MLFLOW_PYFUNC_INFERENCE_CONFIG`` (the documented override) so oversized images stay small here.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from memeops.models.base import TaskSpec
from memeops.models.clip import ClipEncoderConfig, build_clip_model
from memeops.models.factory import build_model
from memeops.models.text_tokenizer import CorpusTokenizer
from memeops.serving.predictor import MemePredictor
from memeops.serving.pyfunc import log_pyfunc, save_model_dir
from memeops.tracking.registry import CHAMPION_ALIAS, alias_uri, register_and_alias
from memeops.tracking.runs import tracked_run

pytestmark = pytest.mark.slow  # a server start (~10-20 s on 2 busy cores) plus a model log

SMALL = {"embed_dim": 32, "image_size": 32, "patch_size": 16, "vision_width": 64, "vision_layers": 1,
         "vision_heads": 2, "text_width": 64, "text_layers": 1, "text_heads": 2, "context_length": 24}  # fmt: skip
SPECS = [
    TaskSpec("hateful", "single", ("no", "yes")),
    TaskSpec("sentiment", "single", ("negative", "neutral", "positive")),
    TaskSpec("protected_category", "multi", ("race", "sex", "religion")),
]
HEAD_CFG = {"image_dim": 32, "text_dim": 32, "hidden": 16, "proj_dim": 8, "gate_hidden": 8, "cls_hidden": 8}
#: limits for this server (the defaults are 10 MiB / 40 MP)
MAX_BYTES, MAX_PIXELS = 20_000, 10_000
NAME = "memeops-serve"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_png(seed: int, size: int) -> bytes:
    return _png(np.random.default_rng(seed).integers(0, 255, (size, size, 3)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _post(url: str, body: bytes | str | dict, content_type: str = "application/json") -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def _split(rows: list[list]) -> dict:
    return {"dataframe_split": {"columns": ["image", "text"], "data": rows}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-model")
    texts = ["cats made my whole week", "说实话老师让我开心", "gamers be like pure sunshine", "nobody: teachers:"]
    tok = CorpusTokenizer.train(texts * 3, vocab_size=200, context_length=24)
    tok.save(root / "tokenizer.json")
    cfg = ClipEncoderConfig(**SMALL, weights=str(root / "clip.safetensors"),
                            tokenizer_path=str(root / "tokenizer.json"), vocab_size=tok.vocab_size)  # fmt: skip
    torch.manual_seed(0)
    clip = build_clip_model(cfg, tok.vocab_size)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(root / "clip.safetensors"))
    (root / "clip_config.json").write_text(cfg.model_dump_json(), encoding="utf-8")
    head = build_model("gatedclip", HEAD_CFG, SPECS)
    return save_model_dir(root / "model", head, "gatedclip", HEAD_CFG, SPECS, root)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow + the uvicorn it execs), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory, netguard_dir: Path, repo_root: Path
) -> Iterator[str]:
    """Base URL of ``mlflow models serve`` on ``models:/memeops-serve@champion`` (a temp store)."""
    tmp = tmp_path_factory.mktemp("serve")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    old_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(store)
    try:
        with tracked_run(experiment="test-serve", run_name="serve", stage="package", variant="serve", seed=0,
                         data_digest="d", params={}, system_metrics=False):  # fmt: skip
            info = log_pyfunc(model_dir, registered_model_name=NAME)
        register_and_alias(info, NAME, CHAMPION_ALIAS)
    finally:
        mlflow.set_tracking_uri(None)  # back to the environment's store
        if old_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri

    home = tmp / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(netguard_dir), str(repo_root)]),
        "MEMEOPS_NETGUARD_LOG": str(tmp / "netguard.log"),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "MLFLOW_TRACKING_URI": store,
        "MLFLOW_PYFUNC_INFERENCE_CONFIG": json.dumps({"max_image_bytes": MAX_BYTES, "max_image_pixels": MAX_PIXELS}),
    }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = tmp / "server.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", alias_uri(NAME, CHAMPION_ALIAS),
           "--host", "127.0.0.1", "--port", str(port), "--env-manager", "local"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited ({proc.returncode}):\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        _stop(proc)
    assert not (tmp / "netguard.log").exists()  # nothing tried the network
    assert not any(home.iterdir()), sorted(p.name for p in home.iterdir())  # nothing written to HOME


# --------------------------------------------------------------------------- valid requests


def test_valid_requests_get_labels_and_probabilities(server: str, model_dir: Path) -> None:
    images = [_noise_png(0, 40), _noise_png(1, 40)]
    texts = ["cats made my whole week", "说实话老师让我开心"]
    status, body = _post(server, _split([[_b64(im), t] for im, t in zip(images, texts)]))
    assert status == 200, body
    rows = body["predictions"]
    assert len(rows) == 2
    assert set(rows[0]) == {
        "hateful", "hateful_prob", "hateful_p_yes", "sentiment", "sentiment_prob", "protected_category",
        "protected_category_prob", "protected_category_p_race", "protected_category_p_sex",
        "protected_category_p_religion",
    }  # fmt: skip
    # the served numbers are the folder predictor's
    import pandas as pd

    local = MemePredictor.from_dir(model_dir).predict(pd.DataFrame({"image": images, "text": texts}))
    for i, row in enumerate(rows):
        assert row["hateful"] in ("no", "yes") and row["sentiment"] == local["sentiment"][i]
        assert row["protected_category"] == local["protected_category"][i]
        for column in ("hateful_prob", "hateful_p_yes", "sentiment_prob", "protected_category_p_sex"):
            assert row[column] == pytest.approx(float(local[column][i]), rel=1e-5, abs=1e-7), column

    # dataframe_records, a data: URL and a missing caption (null) work too
    status, body = _post(server, {"dataframe_records": [
        {"image": "data:image/png;base64," + _b64(images[0]), "text": texts[0]},
    ]})  # fmt: skip
    assert status == 200, body
    assert body["predictions"][0]["hateful_p_yes"] == pytest.approx(rows[0]["hateful_p_yes"], rel=1e-5)


# --------------------------------------------------------------------------- errors


def _error(status: int, body: dict | str) -> str:
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and body.get("error_code"), body
    return body["message"]


def test_bad_base64_is_a_400_naming_base64(server: str) -> None:
    message = _error(*_post(server, _split([["not base64 !!", "x"]])))
    assert message.startswith("row 0: image is not valid base64") and "\n" not in message, message
    # valid base64 that is no image
    message = _error(*_post(server, _split([[_b64(_noise_png(2, 40)), "ok"], [_b64(b"hello world"), "x"]])))
    assert message == "row 1: base64 image data is not a readable image", message


def test_server_does_not_read_its_own_files(server: str, model_dir: Path) -> None:
    path = str(model_dir / "encoder" / "clip_config.json")  # exists on the server, looks like base64
    message = _error(*_post(server, _split([[path, "x"]])))
    assert "row 0:" in message and ("base64" in message), message


def test_oversized_images_are_refused_with_the_limit(server: str) -> None:
    big_file = _noise_png(3, 95)  # 9025 px, but ~27 kB of noise
    assert len(big_file) > MAX_BYTES
    message = _error(*_post(server, _split([[_b64(big_file), "x"]])))
    assert message.startswith(f"row 0: the image file is too large: {len(big_file) / 1000:.1f} kB, and the limit is "
                              f"{MAX_BYTES / 1000:.1f} kB; send a smaller"), message
    many_pixels = _png(np.zeros((200, 300, 3)))  # small file, 60000 px
    assert len(many_pixels) < MAX_BYTES
    message = _error(*_post(server, _split([[_b64(_noise_png(4, 40)), "ok"], [_b64(many_pixels), "x"]])))
    assert message == f"row 1: the image is too large: 60,000 pixels, and the limit is {MAX_PIXELS:,} pixels; send it scaled down", message


def test_missing_fields_are_named(server: str) -> None:
    image = _b64(_noise_png(5, 40))
    message = _error(*_post(server, {"dataframe_split": {"columns": ["image"], "data": [[image]]}}))
    assert "text" in message and "missing" in message, message
    message = _error(*_post(server, {"dataframe_records": [{"text": "x"}]}))
    assert "image" in message and "missing" in message, message


def test_wrong_types_are_4xx(server: str) -> None:
    image = _b64(_noise_png(6, 40))
    status, body = _post(server, _split([[42, "x"]]))  # a number as the image: MLflow's schema check
    assert "image" in _error(status, body)
    status, body = _post(server, _split([[image, "ok"], [42, "x"]]))  # mixed column: ours
    assert "image" in _error(status, body)
    status, body = _post(server, _split([[image, 3]]))
    assert "text" in _error(status, body)
    status, body = _post(server, _split([[["a", "list"], "x"]]))
    _error(status, body)


def test_malformed_requests_are_4xx(server: str) -> None:
    status, body = _post(server, "this is not json")
    assert "JSON" in _error(status, body)
    status, body = _post(server, {"rows": [["a", "b"]]})  # no dataframe_split / records / inputs key
    assert "dataframe_split" in _error(status, body)
    status, body = _post(server, "image,text\n", content_type="text/plain")
    assert status == 415, (status, body)


def test_benchmark_cli_measures_the_server(server: str, repo_root: Path, tmp_path: Path) -> None:
    image = tmp_path / "meme.png"
    image.write_bytes(_noise_png(7, 40))  # within this server's small limits
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.serve_latency", "--url", server, "-n", "4", "-k", "2", "--warmup", "1",
         "--image", str(image)],
        cwd=repo_root, capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "PYTHONPATH": str(repo_root)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["image"] == str(image) and result["image_bytes"] == image.stat().st_size
    for phase in ("sequential", "concurrent"):
        assert result[phase]["requests"] == 4 and 0 < result[phase]["p50_ms"] <= result[phase]["p95_ms"]
        assert result[phase]["throughput_rps"] > 0
    assert result["concurrent"]["clients"] == 2


def test_make_serve_runs_mlflow_models_serve(repo_root: Path) -> None:
    proc = subprocess.run(
        ["make", "-n", "serve", "VARIANT=mgmcf", "ALIAS=challenger", "PORT=5099"],
        cwd=repo_root, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    commands = " ".join(proc.stdout.replace("\\\n", " ").split())
    line = next(ln for ln in commands.split(" && eval ") if "mlflow models serve" in ln)
    assert "memeops env" in line  # the project runtime env (offline switches, the project's store)
    # the URI comes from memeops serve-uri (the champion, else the challenger: tests/code/test_promotion.py)
    for part in ("memeops serve-uri mgmcf --alias challenger", '-m "$uri"', "--host 127.0.0.1", "--port 5099",
                 "--env-manager local"):  # fmt: skip
        assert part in line, line
