"""OCR of meme captions (stage ``ocr``) and the character error rate (CER) used to report it.

Engine
------
``rapidocr-onnxruntime`` (Apache-2.0) runs PaddleOCR's PP-OCRv4 detector and recogniser through
onnxruntime on the CPU. Its three ONNX models ship inside the wheel (``rapidocr_onnxruntime/models``):
nothing is downloaded and nothing is written to the home directory. The one recogniser is the
"ch" model, whose dictionary holds Chinese characters *and* Latin letters, digits and punctuation:
one model reads English and Chinese captions, no language switch.

Three things are set or added on top of the engine, all measured on SynthMeme's val split
(docs/ocr.md):

* ``use_cls: false``: the engine's 180-degree line classifier is off (captions are upright); it
  occasionally flipped a correct line and costs time.
* ``space_bias``: the recogniser drops most spaces between English words on bold, tightly set
  captions ("Whenmyneighbour"). Its CTC output has a probability for the space class at every
  column; multiplying that probability by ``space_bias`` before the greedy decode brings the spaces
  back (English raw CER ~9% -> ~2%). Each column is renormalised afterwards, so line scores stay
  probabilities. Spaces that end up between two CJK characters are removed again (Chinese does
  not use them).
* Reading order and joining (:func:`order_lines`): detected lines are grouped into rows (vertical
  overlap), each row read left to right; rows that sit close together (a wrapped caption) form one
  block, joined with a space (no space next to CJK text); blocks are joined with ``"\\n"``. That is
  how captions are stored (SynthMeme's ``text`` is ``top + "\\n" + bottom``). ``join: lines`` keeps
  every row on its own line instead.

CER
---
:func:`character_error_rate` is the Levenshtein distance over characters divided by the reference
length. *Raw* compares the strings as stored (case, spaces and line breaks count). *Normalised*
(:func:`normalize_for_cer`) applies NFKC, case-folds and removes all whitespace: it measures whether
the characters were read, whatever the spacing and line breaks. Corpus figures are micro averages:
total edits / total reference characters.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from memeops.config import ConsolidateConfig, OcrConfig, SourceConfig
from memeops.data.images import ImageRejected, inspect_image
from memeops.data.loaders import get_loader
from memeops.data.records import RawMeme, SourceError
from memeops.data.taxonomy import Taxonomy

ENGINE_PACKAGE = "rapidocr-onnxruntime"

TEXTS_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("native_id", pa.string()),
    ("image", pa.string()),  # path as the source gives it, relative to the source root
    ("image_sha256", pa.string()),  # of the file OCR read (consolidate checks it is still the same)
    ("ocr_text", pa.string()),
    ("confidence", pa.float64()),  # character-weighted mean score of the kept lines; 0 when none
    ("n_lines", pa.int32()),
    ("engine", pa.string()),
    ("error", pa.string()),  # why the image could not be read; null when OCR ran
])

CER_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("native_id", pa.string()),
    ("split", pa.string()),
    ("language", pa.string()),
    ("ref_text", pa.string()),
    ("ocr_text", pa.string()),
    ("confidence", pa.float64()),
    ("edits_raw", pa.int32()),
    ("ref_chars_raw", pa.int32()),
    ("edits_norm", pa.int32()),
    ("ref_chars_norm", pa.int32()),
    ("error", pa.string()),
])


def shipped_models() -> list[Path]:
    """The three ONNX models inside the installed package (RapidOCR loads them from there)."""
    from importlib.util import find_spec

    spec = find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.origin:
        raise RuntimeError(f"{ENGINE_PACKAGE} is not installed (pip install -r requirements.lock)")
    models = Path(spec.origin).parent / "models"
    return [models / name for name in ("ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx",
                                       "ch_ppocr_mobile_v2.0_cls_infer.onnx")]


def engine_name() -> str:
    """``rapidocr-onnxruntime==<version>``: recorded with every OCR text."""
    from importlib.metadata import version

    return f"{ENGINE_PACKAGE}=={version(ENGINE_PACKAGE)}"


# ------------------------------------------------------------------------------------------ CER


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


_WS = re.compile(r"\s+")


def normalize_for_cer(text: str) -> str:
    """NFKC, case-folded, all whitespace removed ("Hello,\\nWorld" -> "hello,world")."""
    return _WS.sub("", unicodedata.normalize("NFKC", text).casefold())


def cer_counts(hyp: str, ref: str, *, normalize: bool = False) -> tuple[int, int]:
    """``(edits, reference characters)``: the two sums a corpus CER is made of."""
    if normalize:
        hyp, ref = normalize_for_cer(hyp), normalize_for_cer(ref)
    return levenshtein(hyp, ref), len(ref)


def character_error_rate(hyp: str, ref: str, *, normalize: bool = False) -> float:
    """Levenshtein(hyp, ref) / len(ref). An empty reference gives 0.0 for an empty hypothesis and
    1.0 otherwise (corpus figures use :func:`cer_counts` sums, where it adds only edits)."""
    edits, n = cer_counts(hyp, ref, normalize=normalize)
    if n == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / n


@dataclass
class CerTotals:
    n: int = 0
    edits_raw: int = 0
    chars_raw: int = 0
    edits_norm: int = 0
    chars_norm: int = 0
    exact_norm: int = 0  # memes read without a single character error (normalised)
    empty_outputs: int = 0

    def add(self, hyp: str, ref: str) -> None:
        e, c = cer_counts(hyp, ref)
        en, cn = cer_counts(hyp, ref, normalize=True)
        self.n += 1
        self.edits_raw += e
        self.chars_raw += c
        self.edits_norm += en
        self.chars_norm += cn
        self.exact_norm += int(en == 0)
        self.empty_outputs += int(not hyp.strip())

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "cer_raw": round(self.edits_raw / self.chars_raw, 4) if self.chars_raw else None,
            "cer_normalized": round(self.edits_norm / self.chars_norm, 4) if self.chars_norm else None,
            "exact_normalized": round(self.exact_norm / self.n, 4) if self.n else None,
            "ref_chars": self.chars_raw,
            "empty_outputs": self.empty_outputs,
        }


def aggregate_cer(items: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
    """Corpus CER of ``(language, hypothesis, reference)`` items: overall and per language."""
    overall = CerTotals()
    by_lang: dict[str, CerTotals] = {}
    for lang, hyp, ref in items:
        overall.add(hyp, ref)
        by_lang.setdefault(lang or "und", CerTotals()).add(hyp, ref)
    return {"overall": overall.summary(), "by_language": {k: by_lang[k].summary() for k in sorted(by_lang)}}


# ------------------------------------------------------------------------------- reading order


@dataclass(frozen=True)
class OcrLine:
    """One detected text line: its axis-aligned box (x0, y0, x1, y1) in pixels, text and score."""

    box: tuple[float, float, float, float]
    text: str
    score: float

    @property
    def height(self) -> float:
        return max(self.box[3] - self.box[1], 1e-6)


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x2E80 <= cp <= 0x9FFF  # radicals, CJK symbols and punctuation, kana, unified ideographs
        or 0xAC00 <= cp <= 0xD7AF  # Hangul
        or 0xF900 <= cp <= 0xFAFF  # compatibility ideographs
        or 0xFE30 <= cp <= 0xFE4F  # compatibility forms
        or 0xFF00 <= cp <= 0xFFEF  # full-width forms (，：？！)
        or 0x20000 <= cp <= 0x3FFFF
    )


def smart_join(parts: Iterable[str]) -> str:
    """Join with a space, except where either side of the join is CJK (no spaces in Chinese)."""
    out = ""
    for part in parts:
        if not part:
            continue
        if out and not (_is_cjk(out[-1]) or _is_cjk(part[0])):
            out += " "
        out += part
    return out


_SPACES = re.compile(r"[ \t\u3000]+")


def clean_line(text: str) -> str:
    """Collapse runs of spaces, strip, and drop a space that sits between two CJK characters."""
    text = _SPACES.sub(" ", text).strip()
    if " " not in text:
        return text
    chars = list(text)
    keep = [
        not (c == " " and 0 < i < len(chars) - 1 and _is_cjk(chars[i - 1]) and _is_cjk(chars[i + 1]))
        for i, c in enumerate(chars)
    ]
    return "".join(c for c, k in zip(chars, keep) if k)


def order_lines(lines: Sequence[OcrLine], join: str = "blocks", *, row_overlap: float = 0.5,
                block_gap: float = 0.6) -> str:
    """The text of detected lines in reading order (top to bottom, left to right).

    Rows: a line belongs to the current row when it overlaps the row vertically by at least
    ``row_overlap`` of the smaller height; a row reads left to right. Blocks (``join="blocks"``):
    consecutive rows whose vertical gap is at most ``block_gap`` x the median line height are one
    wrapped caption and are joined with :func:`smart_join`; blocks are joined with ``"\\n"``.
    ``join="lines"``: every row is its own line.
    """
    items = [line for line in lines if line.text.strip()]
    if not items:
        return ""
    items.sort(key=lambda ln: ((ln.box[1] + ln.box[3]) / 2, ln.box[0]))
    rows: list[list[OcrLine]] = []
    span: tuple[float, float] = (0.0, 0.0)
    for line in items:
        if rows:
            top, bottom = span
            overlap = min(bottom, line.box[3]) - max(top, line.box[1])
            if overlap >= row_overlap * min(bottom - top, line.height):
                rows[-1].append(line)
                span = (min(top, line.box[1]), max(bottom, line.box[3]))
                continue
        rows.append([line])
        span = (line.box[1], line.box[3])
    row_texts = [smart_join(clean_line(ln.text) for ln in sorted(row, key=lambda ln: ln.box[0])) for row in rows]
    if join == "lines":
        return "\n".join(t for t in row_texts if t)
    median_h = float(np.median([ln.height for ln in items]))
    blocks: list[list[str]] = [[row_texts[0]]]
    for prev, row, text in zip(rows, rows[1:], row_texts[1:]):
        gap = min(ln.box[1] for ln in row) - max(ln.box[3] for ln in prev)
        if gap <= block_gap * median_h:
            blocks[-1].append(text)
        else:
            blocks.append([text])
    return "\n".join(t for t in (smart_join(b) for b in blocks) if t)


# -------------------------------------------------------------------------------------- engine


class _SpaceBias:
    """Wraps the recogniser's CTC decoder: scales the space class before the greedy decode.

    The recogniser's output is softmax probabilities ``(batch, columns, classes)``; the space is
    its last class (RapidOCR appends it to the dictionary).
    """

    def __init__(self, decoder: Any, factor: float):
        self.decoder = decoder
        self.factor = factor
        chars = getattr(decoder, "character", None)
        if not chars or chars[-1] != " ":
            raise RuntimeError(f"{engine_name()}: the recogniser's last class is not the space; space_bias cannot apply")
        self.space = len(chars) - 1

    def __call__(self, preds: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        # A prior shift on the space class: scale, then renormalise each column so the scores the
        # decoder reports stay probabilities (argmax per column is what the scaling changed).
        preds = np.array(preds, dtype=np.float64, copy=True)
        preds[:, :, self.space] *= self.factor
        preds /= preds.sum(axis=2, keepdims=True)
        return self.decoder(preds.astype(np.float32), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.decoder, name)


class OcrEngine:
    """``read_text(image) -> (text, confidence)`` for English and Chinese captions (one model)."""

    def __init__(self, cfg: OcrConfig | None = None):
        cfg = cfg or OcrConfig()
        if cfg.engine != "rapidocr":
            raise ValueError(f"unknown OCR engine {cfg.engine!r}")
        missing = [p.name for p in shipped_models() if not p.is_file()]
        if missing:
            raise RuntimeError(f"{ENGINE_PACKAGE}: model files missing from the package: {', '.join(missing)} (reinstall it)")
        from rapidocr_onnxruntime import RapidOCR

        self.cfg = cfg
        self.name = engine_name()
        self.ocr = RapidOCR(
            text_score=cfg.min_confidence,
            det_limit_side_len=cfg.det_limit_side_len,
            intra_op_num_threads=cfg.threads,
            inter_op_num_threads=1,
        )
        self.ocr.use_cls = cfg.use_cls
        if cfg.space_bias != 1.0:
            self.ocr.text_rec.postprocess_op = _SpaceBias(self.ocr.text_rec.postprocess_op, cfg.space_bias)

    def read_lines(self, image: Image.Image | np.ndarray | str | Path) -> list[OcrLine]:
        """Every text line the engine keeps (score >= min_confidence), in the engine's order."""
        if isinstance(image, (str, Path)):
            with Image.open(image) as im:
                image = _rgb(im)
        elif isinstance(image, Image.Image):
            image = _rgb(image)
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)  # an RGB (or grey) array, as PIL gives it
        result, _ = self.ocr(image)
        lines = []
        for box, text, score in result or []:
            pts = np.asarray(box, dtype=float)
            lines.append(OcrLine((float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()),
                                  float(pts[:, 1].max())), str(text), float(score)))
        return lines

    def read_text(self, image: Image.Image | np.ndarray | str | Path) -> tuple[str, float]:
        """The caption text in reading order and its confidence (character-weighted mean line
        score, 0.0 when nothing was read)."""
        text, conf, _ = self.read(image)
        return text, conf

    def read(self, image: Image.Image | np.ndarray | str | Path) -> tuple[str, float, int]:
        lines = [ln for ln in self.read_lines(image) if clean_line(ln.text)]
        text = order_lines(lines, self.cfg.join)
        weights = [len(clean_line(ln.text)) for ln in lines]
        conf = float(np.average([ln.score for ln in lines], weights=weights)) if lines else 0.0
        return text, round(conf, 6), len(lines)


def _rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return im.convert("RGB")


# ------------------------------------------------------------------------------------ batch runs


@dataclass(frozen=True)
class OcrJob:
    source: str
    native_id: str
    root: str  # the source root (absolute)
    image: str  # the image path as the source gives it
    max_pixels: int = 40_000_000
    max_bytes: int = 50_000_000


@dataclass
class OcrResult:
    source: str
    native_id: str
    image: str
    image_sha256: str | None
    ocr_text: str
    confidence: float
    n_lines: int
    engine: str
    error: str | None = None
    seconds: float = field(default=0.0, compare=False)


_WORKER_ENGINE: OcrEngine | None = None


def _init_worker(cfg_json: str) -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = OcrEngine(OcrConfig.model_validate_json(cfg_json))


def _ocr_one(job: OcrJob, engine: OcrEngine | None = None) -> OcrResult:
    engine = engine or _WORKER_ENGINE
    assert engine is not None
    start = time.perf_counter()
    try:
        info = inspect_image(Path(job.root), job.image, max_pixels=job.max_pixels, max_bytes=job.max_bytes)
        with Image.open(Path(job.root) / info.rel_path) as im:
            text, conf, n = engine.read(_rgb(im))
        return OcrResult(job.source, job.native_id, job.image, info.sha256, text, conf, n, engine.name,
                         seconds=time.perf_counter() - start)
    except ImageRejected as exc:
        return OcrResult(job.source, job.native_id, job.image, None, "", 0.0, 0, engine.name, str(exc),
                         time.perf_counter() - start)


def run_ocr(jobs: Sequence[OcrJob], cfg: OcrConfig, engine: OcrEngine | None = None) -> list[OcrResult]:
    """OCR every job, in order. ``cfg.workers`` > 1: that many spawned processes, each with its own
    engine (``cfg.threads`` onnxruntime threads each); results do not depend on the worker count."""
    if not jobs:
        return []
    if cfg.workers > 1 and len(jobs) >= 2 * cfg.workers and engine is None:
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(cfg.model_dump_json(),)) as pool:
            return list(pool.map(_ocr_one, jobs, chunksize=max(1, min(16, math.ceil(len(jobs) / (4 * cfg.workers))))))
    engine = engine or OcrEngine(cfg)
    return [_ocr_one(job, engine) for job in jobs]


def results_table(results: Iterable[OcrResult]) -> pa.Table:
    rows = sorted(results, key=lambda r: (r.source, r.native_id))
    cols = {name: [getattr(r, name) for r in rows] for name in TEXTS_SCHEMA.names}
    return pa.table(cols, schema=TEXTS_SCHEMA)


def write_texts(results: Iterable[OcrResult], path: Path) -> pa.Table:
    """``texts.parquet``: one row per (source, native_id), sorted, with :data:`TEXTS_SCHEMA`."""
    table = results_table(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table


def read_texts(path: Path) -> pd.DataFrame:
    """Stage ocr's texts table (columns :data:`TEXTS_SCHEMA`)."""
    table = pq.read_table(path)
    missing = [c for c in TEXTS_SCHEMA.names if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not an OCR texts table (missing columns {', '.join(missing)})")
    return table.to_pandas()


def sample_indices(n: int, k: int, seed: int) -> list[int]:
    """A seeded sample of ``min(k, n)`` indices out of ``n``, in ascending order."""
    if k <= 0 or n == 0:
        return []
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=min(k, n), replace=False))


# ------------------------------------------------------------------------------------- the stage


@dataclass
class OcrStageResult:
    texts: list[OcrResult]  # -> data.ocr_texts (fills for sources whose ocr is on)
    cer_rows: list[dict[str, Any]]  # -> ocr.cer_output (the SynthMeme sample, per meme)
    metrics: dict[str, Any]  # -> reports/metrics/ocr.json


def source_records(source: SourceConfig, taxonomy: Taxonomy, root: Path) -> list[RawMeme]:
    """The memes the source's loader yields (its quarantined rows are consolidation's business)."""
    if not (root / source.path).exists():
        raise SourceError(f"source {source.name!r} ({source.format}): path {source.path!r} does not exist")
    loader = get_loader(source)
    resolved = source.model_copy(update={"path": str(root / source.path)})
    return [item for item in loader(resolved, taxonomy) if isinstance(item, RawMeme)]


def needs_ocr(mode: str, meme: RawMeme) -> bool:
    """``all``: every meme; ``missing``: memes whose text is blank; ``off``: none."""
    return bool(meme.image) and (mode == "all" or (mode == "missing" and not (meme.text or "").strip()))


def run_ocr_stage(data: ConsolidateConfig, cfg: OcrConfig, taxonomy: Taxonomy, root: Path,
                  engine: OcrEngine | None = None) -> OcrStageResult:
    """OCR the memes that sources with ``ocr`` on need, plus a seeded sample of each SynthMeme
    source's ``cer_split`` for the CER report; every image is read once."""
    jobs: dict[tuple[str, str], OcrJob] = {}
    fill_keys: dict[str, list[tuple[str, str]]] = {}
    cer_refs: dict[str, list[RawMeme]] = {}
    records_read: dict[str, int] = {}
    for source in data.sources:
        if source.ocr == "off" and source.format != "synthmeme":
            continue
        records = source_records(source, taxonomy, root)
        records_read[source.name] = len(records)
        src_root = str((root / source.path).resolve())

        def job(meme: RawMeme, source: SourceConfig = source, src_root: str = src_root) -> tuple[str, str]:
            key = (source.name, meme.native_id)
            jobs.setdefault(key, OcrJob(source.name, meme.native_id, src_root, str(meme.image),
                                        data.max_image_pixels, data.max_image_bytes))
            return key

        fill_keys[source.name] = [job(m) for m in records if needs_ocr(source.ocr, m)]
        if source.format == "synthmeme" and cfg.cer_sample > 0:
            pool = sorted((m for m in records if m.split == cfg.cer_split and m.image), key=lambda m: m.native_id)
            sample = [pool[i] for i in sample_indices(len(pool), cfg.cer_sample, cfg.seed)]
            cer_refs[source.name] = sample
            for m in sample:
                job(m)
    order = sorted(jobs)
    start = time.perf_counter()
    results = dict(zip(order, run_ocr([jobs[k] for k in order], cfg, engine)))
    seconds = time.perf_counter() - start

    texts = [results[k] for keys in fill_keys.values() for k in keys]
    per_source: dict[str, Any] = {}
    for source in data.sources:
        if source.name not in records_read:
            continue
        filled = [results[k] for k in fill_keys[source.name]]
        per_source[source.name] = {
            "ocr": source.ocr, "records": records_read[source.name], "ocr_memes": len(filled),
            "empty": sum(1 for r in filled if not r.error and not r.ocr_text),
            "errors": sum(1 for r in filled if r.error),
        }
    cer_rows: list[dict[str, Any]] = []
    cer: dict[str, Any] = {}
    for name, sample in cer_refs.items():
        items = []
        for m in sample:
            r = results[(name, m.native_id)]
            hyp, ref = r.ocr_text, m.text or ""
            e_raw, c_raw = cer_counts(hyp, ref)
            e_norm, c_norm = cer_counts(hyp, ref, normalize=True)
            cer_rows.append({"source": name, "native_id": m.native_id, "split": m.split, "language": m.language or "und",
                             "ref_text": ref, "ocr_text": hyp, "confidence": r.confidence, "edits_raw": e_raw,
                             "ref_chars_raw": c_raw, "edits_norm": e_norm, "ref_chars_norm": c_norm, "error": r.error})
            items.append((m.language or "und", hyp, ref))
        cer[name] = {"split": cfg.cer_split, "seed": cfg.seed, "errors": sum(1 for row in cer_rows
                                                                            if row["source"] == name and row["error"]),
                     **aggregate_cer(items)}
    all_results = list(results.values())
    metrics = {
        "engine": engine_name(),
        "settings": cfg.model_dump(exclude={"cer_output"}),
        "images": len(all_results),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(all_results) / seconds, 3) if seconds > 0 and all_results else None,
        "empty_outputs": sum(1 for r in all_results if not r.error and not r.ocr_text),
        "errors": sum(1 for r in all_results if r.error),
        "sources": per_source,
        "cer": cer,
    }
    return OcrStageResult(texts, cer_rows, metrics)


def write_cer_rows(rows: list[dict[str, Any]], path: Path) -> None:
    rows = sorted(rows, key=lambda r: (r["source"], r["native_id"]))
    table = pa.table({name: [r[name] for r in rows] for name in CER_SCHEMA.names}, schema=CER_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
