"""Benchmark: latency and throughput of a served model (``mlflow models serve`` / ``make serve``).

One meme (a real SynthMeme image from ``data/synthmeme/images`` when present, else a generated
PNG, base64-encoded, with a caption) is sent as a one-row ``dataframe_split`` request to
``<url>/invocations``:

* ``sequential``: ``n`` requests one after another (p50 / p95 / mean latency, requests per second);
* ``concurrent``: ``n`` requests from ``clients`` threads at once (the same figures; latency
  includes queueing in the server).

Against a running server::

    python -m benchmarks.serve_latency --url http://127.0.0.1:5001 -n 50 -k 4

or let it start one (``mlflow models serve --env-manager local`` on a free loopback port, stopped
afterwards; the project's runtime env must be set, e.g. ``eval "$(.venv/bin/memeops env)"``)::

    python -m benchmarks.serve_latency --model models:/memeops-gatedclip@champion

Prints one JSON object; ``--merge`` also writes it into reports/bench.json as ``serve_latency``.
Only the standard library, numpy and Pillow on the client side.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SYNTHMEME_IMAGES = Path("data/synthmeme/images")
DEFAULT_TEXT = "when the code works on the first try"


# --------------------------------------------------------------------------- the request


def meme_image_b64(images_dir: str | Path = SYNTHMEME_IMAGES) -> tuple[str, str]:
    """(base64 image, where it came from): ``images_dir`` itself when it is a file, else its first
    image (by name; SynthMeme's by default), else a generated 224-px PNG."""
    folder = Path(images_dir)
    if folder.is_file():
        return base64.b64encode(folder.read_bytes()).decode("ascii"), str(folder)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in {".jpg", ".jpeg", ".png"} and path.is_file():
                return base64.b64encode(path.read_bytes()).decode("ascii"), str(path)
    from PIL import Image

    grid = np.indices((224, 224)).sum(axis=0)
    pixels = np.stack([grid * 3 % 256, grid * 5 % 256, np.full_like(grid, 96)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii"), "generated 224x224 PNG"


def request_body(image_b64: str, text: str = DEFAULT_TEXT) -> bytes:
    """A one-row ``dataframe_split`` request (MLflow's scoring protocol)."""
    payload = {"dataframe_split": {"columns": ["image", "text"], "data": [[image_b64, text]]}}
    return json.dumps(payload).encode("utf-8")


def post(url: str, body: bytes, timeout: float = 120.0) -> tuple[int, bytes]:
    """POST JSON to ``<url>/invocations``; (status, body), also for 4xx / 5xx answers."""
    req = urllib.request.Request(
        url.rstrip("/") + "/invocations", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --------------------------------------------------------------------------- a server


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 240.0) -> float:
    """Poll ``<url>/ping`` until it answers 200; seconds waited. Fails early if ``proc`` exits."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"model server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"model server at {url} not ready after {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow + the uvicorn it execs), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@contextmanager
def served(
    model_uri: str, *, port: int | None = None, env: Mapping[str, str] | None = None,
    log_path: str | Path | None = None, timeout: float = 240.0,
) -> Iterator[str]:  # fmt: skip
    """``mlflow models serve -m model_uri --env-manager local`` on loopback; yields its base URL
    once ``/ping`` answers and stops it (its whole process group) on exit."""
    port = port or free_port()
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    cmd = [mlflow_bin, "models", "serve", "-m", model_uri, "--host", "127.0.0.1", "--port", str(port),
           "--env-manager", "local"]  # fmt: skip
    child_env = dict(os.environ if env is None else env)
    # mlflow execs ``uvicorn`` by name: this interpreter's bin folder first
    child_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), child_env.get("PATH", "")])
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=child_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout)
        yield url
    finally:
        stop_server(proc)
        if log is not subprocess.DEVNULL:
            log.close()


# --------------------------------------------------------------------------- measuring


def _summary(latencies: list[float], wall: float) -> dict[str, Any]:
    ms = np.asarray(latencies) * 1000.0
    return {
        "requests": len(latencies),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "max_ms": round(float(ms.max()), 2),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 2) if wall > 0 else None,
    }


def _timed(url: str, body: bytes) -> float:
    start = time.perf_counter()
    status, content = post(url, body)
    elapsed = time.perf_counter() - start
    if status != 200:
        raise RuntimeError(f"server answered {status}: {content[:300]!r}")
    return elapsed


def measure(
    url: str, *, n: int = 50, clients: int = 4, warmup: int = 3, images_dir: str | Path = SYNTHMEME_IMAGES,
    text: str = DEFAULT_TEXT,
) -> dict[str, Any]:  # fmt: skip
    """Sequential and concurrent latency / throughput of ``url`` (see the module docstring)."""
    image_b64, image_source = meme_image_b64(images_dir)
    body = request_body(image_b64, text)
    for _ in range(max(0, warmup)):
        _timed(url, body)

    start = time.perf_counter()
    sequential = [_timed(url, body) for _ in range(n)]
    sequential_wall = time.perf_counter() - start

    lock, concurrent_lat = threading.Lock(), []

    def one(_: int) -> None:
        elapsed = _timed(url, body)
        with lock:
            concurrent_lat.append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(n)))
    concurrent_wall = time.perf_counter() - start
    return {
        "url": url,
        "image": image_source,
        "image_bytes": len(base64.b64decode(image_b64)),
        "request_bytes": len(body),
        "rows_per_request": 1,
        "warmup_requests": warmup,
        "sequential": _summary(sequential, sequential_wall),
        "concurrent": {"clients": clients, **_summary(concurrent_lat, concurrent_wall)},
    }


def run(
    *, url: str | None = None, model_uri: str | None = None, n: int = 50, clients: int = 4, warmup: int = 3,
    images_dir: str | Path = SYNTHMEME_IMAGES, server_log: str | Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """:func:`measure` against ``url``, or against a server started for ``model_uri`` (with its
    start-up time in ``server_start_s``)."""
    if (url is None) == (model_uri is None):
        raise ValueError("give exactly one of url and model_uri")
    if url is not None:
        return measure(url, n=n, clients=clients, warmup=warmup, images_dir=images_dir)
    start = time.perf_counter()
    with served(model_uri, log_path=server_log) as base:  # type: ignore[arg-type]
        started = time.perf_counter() - start
        result = measure(base, n=n, clients=clients, warmup=warmup, images_dir=images_dir)
    return {"model_uri": model_uri, "server_start_s": round(started, 2), **result}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:5001")
    where.add_argument("--model", help="a model URI to serve for the run, e.g. models:/memeops-gatedclip@champion")
    parser.add_argument("-n", "--requests", type=int, default=50, help="requests per phase (default 50)")
    parser.add_argument("-k", "--clients", type=int, default=4, help="concurrent client threads (default 4)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first (default 3)")
    parser.add_argument("--image", default=str(SYNTHMEME_IMAGES),
                        help="the image to send, or a folder (its first image); default data/synthmeme/images")  # fmt: skip
    parser.add_argument("--server-log", help="with --model: write the server's output here")
    parser.add_argument("--merge", action="store_true", help="also merge into reports/bench.json (serve_latency)")
    args = parser.parse_args(argv)
    url = args.url if args.url or args.model else "http://127.0.0.1:5001"  # make serve's default port
    result = run(url=None if args.model else url, model_uri=args.model, n=args.requests, clients=args.clients,
                 warmup=args.warmup, images_dir=args.image, server_log=args.server_log)  # fmt: skip
    if args.merge:
        from benchmarks import merge_bench

        merge_bench("serve_latency", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
