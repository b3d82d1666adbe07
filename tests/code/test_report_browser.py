"""The report page (memeops.reporting.page): its HTML, and that it renders in headless Chromium.

The browser test builds a report from small fixture inputs written here (metrics, a comparison,
ablations, VLM examples, datasheet / validation, a tiny meme image), opens it as ``file://`` in
Debian's Chromium (``make browser`` installs it) driven over the DevTools protocol on loopback
(``websockets``, already in the lock), and checks: a non-blank screenshot, every ``<img>`` loaded,
no console errors, no resource loaded from anywhere but the page's folder.

Without Chromium the browser test skips with the reason; under ``CI=true`` it fails instead (CI
installs it through ``make test`` -> ``make browser``). ``python tests/code/test_report_browser.py
reports/index.html`` runs the same check on any page.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from memeops.reporting.inputs import AttentionMap, MlflowRun, SampleMeme
from memeops.reporting.markdown import markdown_to_html
from memeops.reporting.page import build_report

EVIL = '<script>alert("x")</script> & <b>bold</b>'
CANDIDATES = (
    "/usr/lib/chromium/chromium",
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
)


# --------------------------------------------------------------------------- fixture inputs


def _png(path: Path, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (size, size), (240, 200, 40))
    for x in range(size):
        for y in range(size // 2, size):
            im.putpixel((x, y), (20, 60 + 2 * x % 190, 160))
    im.save(path)
    return path


def _metrics(variant: str, tasks: dict[str, str], base: float) -> dict[str, Any]:
    split = lambda off: (
        {f"{t}/{m}": base + off + 0.01 * i for i, (t, m) in enumerate(tasks.items())}
        | {f"{t}/macro_f1": base + off for t in tasks}
    )
    return {
        "variant": variant, "primary_metric": tasks, "test": split(0.0), "val": split(0.02),
        "test_unseen": split(-0.03),
        "ci95": {"test": {f"{t}/{m}": [base - 0.05, base + 0.05] for t, m in tasks.items()}},
    }  # fmt: skip


def _with_seeds(report: dict[str, Any]) -> dict[str, Any]:
    """The report of a variant trained over three seeds (stage train's seed summary)."""
    summary = {key: {"n_seeds": 3, "mean": value, "std": 0.012, "ci95": [value - 0.04, value + 0.04],
                     "per_seed": [value - 0.01, value, value + 0.01]} for key, value in report["test"].items()}  # fmt: skip
    summary["mean/macro_f1"] = {"n_seeds": 3, "mean": 0.7, "std": 0.021, "ci95": [0.66, 0.74], "per_seed": [0.68, 0.7, 0.72]}
    return report | {"seeds": [0, 1, 2], "seed_summary": {"test": summary}}


def write_fixture_reports(root: Path, *, ablations: bool = True) -> dict[str, Any]:
    """A small reports/ folder + the records a stage would compute; returns build_report kwargs."""
    reports = root / "reports"
    (reports / "metrics").mkdir(parents=True)
    tasks = {"hateful": "auroc", "sentiment": "macro_f1"}
    (reports / "metrics" / "alpha.json").write_text(json.dumps(_with_seeds(_metrics("alpha", tasks, 0.7))))
    (reports / "metrics" / "beta.json").write_text(json.dumps(_metrics("beta", {"hateful": "auroc"}, 0.6)))
    (reports / "metrics" / "ocr.json").write_text(json.dumps({"cer": 0.1}))  # not a variant
    (reports / "comparison.csv").write_text(
        "task,alpha,beta\nhateful,0.7,0.6\nsentiment,0.7,\nmean,0.7,0.6\n"
    )
    (reports / "plots" / "train").mkdir(parents=True)
    (reports / "plots" / "train" / "alpha.csv").write_text("epoch,val/mean/macro_f1\n1,0.5\n2,0.6\n3,0.65\n")
    if ablations:
        (reports / "ablations.csv").write_text(
            "group,arm,mean,std,n_seeds\nmgmcf,full,0.71,0.01,3\nmgmcf,global_only,0.65,0.02,3\n"
            "gatedclip,gate,0.55,0.01,3\ngatedclip,concat,0.53,0.02,3\n"
        )
        (reports / "ablations.md").write_text(
            f"# Ablations\n\nRegions help. {EVIL}\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
        )
        _png(reports / "figures" / "seeds.png", 80)
    (reports / "vlm").mkdir()
    (reports / "vlm" / "examples.csv").write_text(
        "meme_id,source,language,task,label,scored_label,scored_prob,generated_label,valid,invalid_reason,"
        "explanation,reference_explanation\n"
        f'm1,s,en,hateful,yes,yes,0.8,yes,True,,"{EVIL.replace(chr(34), chr(34) * 2)}",The lizard demeans.\n'
        "m2,s,zh,sentiment,negative,positive,0.4,,False,no label line,,Negative.\n"
    )
    (reports / "datasheet.json").write_text(json.dumps({
        "total": 2, "splits": {"test": 2}, "languages": {"en": 1, "zh": 1},
        "leakage": {"exact": 0, "near": 0, "policy": "drop_later"},
    }))  # fmt: skip
    (reports / "datasheet.md").write_text("# Datasheet\n\n| split | memes |\n|---|---|\n| test | 2 |\n")
    (reports / "validation.json").write_text(json.dumps({
        "success": True, "headline": "validation passed: 2 rows, 2 expectations",
        "results": [{"name": "rows", "success": True, "blocking": True, "column": None},
                    {"name": "empty text", "success": False, "blocking": False, "column": "text",
                     "unexpected_count": 1, "details": EVIL}],
    }))  # fmt: skip
    image = _png(root / "data" / "m1.png")
    samples = [
        SampleMeme("m1", image, f"caption {EVIL}", {"hateful": "yes", "sentiment": "negative"},
                   {"alpha": {"hateful": ("yes", 0.8), "sentiment": ("positive", 0.6)}, "beta": {"hateful": ("no", 0.7)}},
                   split="test", language="en"),
        SampleMeme("m2", image, "卧槽，我太爱了", {"hateful": "no"}, {"alpha": {"hateful": ("no", 0.9)}}, "test", "zh"),
    ]  # fmt: skip
    attention = [AttentionMap(
        "m1", image, "when the <code> works", ["<sot>", "when", "the", "<code>", "<eot>"],
        [0.05, 0.2, 0.05, 0.25, 0.05], 0.1, [[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]], ["lizard", "卧槽"],
        [0.2, 0.1], {"hateful": "yes"},
    )]  # fmt: skip
    runs = [
        MlflowRun(
            "train@alpha", "alpha", "1", "memeops", "abc123def4567890", "alpha", "FINISHED", 1_700_000_000_000
        )
    ]
    return {"reports_dir": reports, "out_path": reports / "index.html", "samples": samples, "attention": attention,
            "mlflow_runs": runs, "meme_images": {"m1": image}}  # fmt: skip


# --------------------------------------------------------------------------- the HTML


def _img_srcs(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', page)


def test_report_html_sections_escaping_and_assets(tmp_path: Path) -> None:
    kwargs = write_fixture_reports(tmp_path)
    out = build_report(**kwargs, mlflow_ui="http://mlflow.example:5000/")
    page = out.read_text(encoding="utf-8")
    for anchor in ("leaderboard", "comparison", "ablations", "samples", "vlm", "attention", "datasheet",
                   "validation", "mlflow"):  # fmt: skip
        assert f'<section id="{anchor}">' in page
    assert "<script" not in page and "<b>bold</b>" not in page  # every input text escaped
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "ocr" not in re.findall(r"<strong>([^<]+)</strong>", page)  # stage metrics are no variants
    assert "0.700 ± 0.012 [0.660–0.740]" in page  # primary metric: mean ± std over seeds [seeds × memes]
    assert "± 0.021 [0.660–0.740]" in page  # the leaderboard's test mean macro-F1 over seeds
    assert "0.600 [0.550–0.650]" in page  # a report without seeds: its own interval
    # the run's link filters its experiment by run name and stage: no run id (random) or time in the page
    link = ("http://mlflow.example:5000/#/experiments/1?searchFilter=attributes.run_name+%3D+%27alpha%27+and+"
            "tags.%60memeops.dvc_stage%60+%3D+%27train%40alpha%27")  # fmt: skip
    assert link in html.unescape(page) and "abc123" not in page and "2023-11" not in page
    assert "not produced yet" not in page and "global_only" in page and "Regions help." in page
    # only relative asset links, all written, no external resource
    srcs = _img_srcs(page)
    assert len(srcs) >= 10
    for src in srcs:
        assert src.startswith("report_assets/") and (out.parent / src).is_file(), src
    assert not re.search(r'(src|href)="(https?:)?//(?!mlflow\.example)', page)
    assert 'rel="stylesheet"' not in page


def test_report_without_optional_inputs_says_so(tmp_path: Path) -> None:
    kwargs = write_fixture_reports(tmp_path, ablations=False)
    out = build_report(kwargs["reports_dir"], tmp_path / "site" / "index.html")
    page = out.read_text(encoding="utf-8")
    assert "Ablations not produced yet" in page
    assert "No sample memes" in page and "No attention maps" in page and "No MLflow runs" in page
    assert "http://127.0.0.1:5000" not in page  # no runs, no links
    # the page works from another folder: its assets sit next to it
    assert all((out.parent / s).is_file() for s in _img_srcs(page))


def test_comparison_shows_every_variant_with_metrics(tmp_path: Path) -> None:
    """A variant with metrics but missing from stage compare's comparison.csv is still a column."""
    kwargs = write_fixture_reports(tmp_path, ablations=False)
    metrics = kwargs["reports_dir"] / "metrics"
    (metrics / "gamma_late.json").write_text(json.dumps(_metrics("gamma_late", {"sentiment": "macro_f1"}, 0.42)))
    page = build_report(kwargs["reports_dir"], tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    comparison = page.split('<section id="comparison">')[1].split("</section>")[0]
    header = re.findall(r"<th>([^<]*)</th>", comparison.split("</thead>")[0])
    assert header == ["task", "alpha", "beta", "gamma_late"]
    assert "0.420" in comparison


def test_markdown_subset_escapes_raw_html() -> None:
    out = markdown_to_html(f"# T\n\n{EVIL} `x<y`\n\n- a **b**\n\n| h |\n|---|\n| <i>c</i> |\n")
    assert "<script" not in out and "<i>c</i>" not in out
    assert "<h3>T</h3>" in out and "<code>x&lt;y</code>" in out and "<strong>b</strong>" in out
    assert "<table" in out and "&lt;i&gt;c&lt;/i&gt;" in out


# --------------------------------------------------------------------------- headless Chromium


def find_chromium() -> str | None:
    configured = os.environ.get("MEMEOPS_CHROMIUM")
    for name in ([configured] if configured else []) + list(CANDIDATES):
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    return None


class CDP:
    """Headless Chromium driven over the DevTools protocol (loopback websocket, flat sessions)."""

    def __init__(self, binary: str, workdir: Path, width: int = 1280, height: int = 900):
        from websockets.sync.client import connect

        profile, home = workdir / "profile", workdir / "home"
        profile.mkdir(parents=True)
        home.mkdir()
        env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
                   XDG_CACHE_HOME=str(home / ".cache"), XDG_DATA_HOME=str(home / ".local"))  # fmt: skip
        self.log = (workdir / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
             "--mute-audio", "--hide-scrollbars", f"--window-size={width},{height}", "about:blank"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                tail = (workdir / "chromium.log").read_text(errors="replace")[-800:]
                raise RuntimeError(f"chromium did not start (exit {self.proc.returncode}): {tail}")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", proxy=None, max_size=None, open_timeout=10)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(method, session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip

    def call(self, method: str, session: bool = False, timeout: float = 20, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev["method"] == method:
                    return ev
            self.events.append(json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                           returnByValue=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                with contextlib.suppress(Exception):  # the browser may close the socket first
                    self.call("Browser.close", timeout=5)
                self.ws.close()
        finally:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self.log.close()


def console_errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for ev in events:
        p = ev.get("params", {})
        if ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(
                "console: "
                + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            )
        elif ev["method"] == "Runtime.exceptionThrown":
            out.append("exception: " + str(p.get("exceptionDetails", {}).get("text")))
        elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
    return out


def check_page(page: Path, binary: str, workdir: Path) -> dict[str, Any]:
    """Open ``page`` as file:// and return what the checks look at (asserting nothing)."""
    browser = CDP(binary, workdir)
    try:
        browser.call("Page.navigate", session=True, url=page.resolve().as_uri())
        browser.wait_event("Page.loadEventFired")
        images = browser.evaluate(
            "Promise.all(Array.from(document.images).map(i => i.complete ? null : new Promise(r => {"
            " i.addEventListener('load', r); i.addEventListener('error', r); })))"
            ".then(() => Array.from(document.images).map(i => ({src: i.getAttribute('src'),"
            " ok: i.complete && i.naturalWidth > 0})))"
        )
        resources = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
        sections = browser.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
        overflow = browser.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        metrics = browser.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        width, height = int(metrics["width"]), min(int(metrics["height"]), 16000)
        shot = browser.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})  # fmt: skip
        time.sleep(0.2)  # late console messages
        browser.call("Runtime.evaluate", session=True, expression="1")
        errors = console_errors(browser.events)
    finally:
        browser.close()
    png = base64.b64decode(shot["data"])
    with Image.open(io.BytesIO(png)) as im:
        rgb = im.convert("RGB")
        small = rgb.resize((max(1, rgb.width // 4), max(1, rgb.height // 4)))
        colours = small.getcolors(maxcolors=1 << 20)
        extrema = rgb.getextrema()
        size = rgb.size
    background = max(colours)[0] / (small.width * small.height) if colours else 0.0
    return {"images": images, "resources": resources, "sections": sections, "errors": errors, "size": size,
            "overflow_px": overflow,
            "colours": len(colours) if colours else 1 << 20, "extrema": extrema, "background_fraction": background,
            "png": png}  # fmt: skip


def assert_renders(result: dict[str, Any], min_images: int = 1) -> None:
    assert not result["errors"], f"console errors: {result['errors']}"
    images = result["images"]
    assert len(images) >= min_images, f"only {len(images)} images"
    broken = [i["src"] for i in images if not i["ok"]]
    assert not broken, f"images not loaded: {broken}"
    external = [r for r in result["resources"] if not r.startswith("file:")]
    assert not external, f"resources from outside the page's folder: {external}"
    assert result["colours"] > 16 and result["background_fraction"] < 0.98, "blank screenshot"
    assert any(lo != hi for lo, hi in result["extrema"]), "single-colour screenshot"
    assert result["overflow_px"] <= 0, f"the page is {result['overflow_px']} px wider than the window"


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        reason = ("chromium not found (not on PATH, not /usr/lib/chromium/chromium, no $MEMEOPS_CHROMIUM): "
                  "`make browser` installs Debian's package")  # fmt: skip
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI must run the browser test")
        pytest.skip(reason)
    return binary


@pytest.fixture
def browser_dir() -> Iterator[Path]:
    # a short path: chromium's profile sockets live under it
    path = Path(tempfile.mkdtemp(prefix="memeops-cdp-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_report_renders_in_headless_chromium(tmp_path: Path, chromium: str, browser_dir: Path) -> None:
    kwargs = write_fixture_reports(tmp_path)
    page = build_report(**kwargs)
    expected = len(_img_srcs(page.read_text(encoding="utf-8")))
    result = check_page(page, chromium, browser_dir)
    (tmp_path / "screenshot.png").write_bytes(result["png"])
    assert_renders(result, min_images=expected)
    assert len(result["images"]) == expected
    assert result["sections"][:3] == ["leaderboard", "comparison", "ablations"]
    assert result["size"][0] >= 1000 and result["size"][1] > 900


def test_browser_check_catches_a_broken_image(tmp_path: Path, chromium: str, browser_dir: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><h1>x</h1>'
                    '<img src="missing.png" alt="gone"></body></html>')  # fmt: skip
    result = check_page(page, chromium, browser_dir)
    assert [i["ok"] for i in result["images"]] == [False]
    assert result["errors"], "a missing file should show up as a console error"


if __name__ == "__main__":  # python tests/code/test_report_browser.py reports/index.html
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/index.html")
    binary = find_chromium()
    if binary is None:
        raise SystemExit("chromium not found (make browser)")
    with tempfile.TemporaryDirectory(prefix="memeops-cdp-") as tmp:
        started = time.perf_counter()
        res = check_page(target, binary, Path(tmp))
        shot = target.with_name("screenshot.png") if len(sys.argv) < 3 else Path(sys.argv[2])
        shot.write_bytes(res["png"])
        print(json.dumps({"size": res["size"], "images": len(res["images"]), "overflow_px": res["overflow_px"],
                          "broken": [i["src"] for i in res["images"] if not i["ok"]], "errors": res["errors"],
                          "colours": res["colours"], "sections": res["sections"], "screenshot": str(shot),
                          "seconds": round(time.perf_counter() - started, 1)}, indent=1))  # fmt: skip
        assert_renders(res, 1)
