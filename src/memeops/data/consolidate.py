"""Stage ``consolidate``: every configured source -> one meme table, a quarantine file and a datasheet.

Order of work, each step able to quarantine a row (never drop it silently):
1. the source's loader reads rows (malformed rows, stray labels, duplicate ids);
2. text length and cross-source id checks;
3. image checks and hashes (path escape, missing, empty, corrupt, truncated, bombs), in parallel;
4. OCR texts (stage ``ocr``) for sources whose ``ocr`` is ``missing`` or ``all``: a meme the OCR
   table lacks, or whose image changed since, is quarantined with the reason;
5. a seeded, stratified split for rows without an official split;
6. leakage across splits (exact sha256 and near pHash), per the configured policy (default ``auto``:
   official splits keep their memes, flagged; assigned splits drop theirs: :mod:`memeops.data.leakage`).
The datasheet reconciles ``read = kept + quarantined`` per source and raises if it does not.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from memeops.config import SPLITS, ConsolidateConfig, SourceConfig, SplitFractions
from memeops.data.images import ImageInfo, ImageRejected, hamming_matrix, inspect_image
from memeops.data.leakage import FLAGGED, Leak, leak_action, leakage_markdown, leakage_report
from memeops.data.loaders import get_loader
from memeops.data.ocr import read_texts
from memeops.data.records import Quarantined, RawMeme, SourceError
from memeops.data.schema import arrow_schema
from memeops.data.taxonomy import Taxonomy, label_column

ASSIGNABLE_SPLITS = ("train", "val", "test")


@dataclass
class SourceCounts:
    name: str
    format: str
    path: str
    read: int = 0
    kept: int = 0
    quarantined: int = 0
    quarantined_by_field: dict[str, int] = field(default_factory=dict)
    split_origin: str = "official"
    stratified_by: str | None = None
    ocr: str = "off"
    text_from_ocr: int = 0  # kept memes whose text stage ocr filled in
    ocr_empty: int = 0  # kept memes OCR'd (as the source asked) where it read nothing


@dataclass
class ConsolidationResult:
    memes: pd.DataFrame
    quarantine: list[Quarantined]
    counts: dict[str, SourceCounts]
    leakage: dict[str, Any]


@dataclass
class _Pending:
    source: SourceConfig
    raw: RawMeme
    image: ImageInfo | None = None
    split_origin: str = "official"
    leak_of: str | None = None
    leak_kind: str | None = None
    ocr_filled: bool = False

    @property
    def meme_id(self) -> str:
        return f"{self.source.name}:{self.raw.native_id}"


def _read_source(source: SourceConfig, taxonomy: Taxonomy, root: Path) -> tuple[list[_Pending], list[Quarantined], int]:
    path = root / source.path
    if not path.exists():
        raise SourceError(f"source {source.name!r} ({source.format}): path {source.path!r} does not exist")
    loader = get_loader(source)
    kept: list[_Pending] = []
    bad: list[Quarantined] = []
    read = 0
    # Loaders get the source with its path resolved against the project root; the table keeps
    # the path as written in params (portable across machines).
    for item in loader(source.model_copy(update={"path": str(path)}), taxonomy):
        read += 1
        if isinstance(item, Quarantined):
            item.source = source.name
            bad.append(item)
        else:
            kept.append(_Pending(source, item))
    return kept, bad, read


def _check_rows(rows: list[_Pending], cfg: ConsolidateConfig, seen_ids: dict[str, str]) -> tuple[list[_Pending], list[Quarantined]]:
    """Text-length and id checks that need no image."""
    ok: list[_Pending] = []
    bad: list[Quarantined] = []
    for row in rows:
        raw = row.raw
        text = raw.text or ""
        if len(text) > cfg.max_text_chars:
            bad.append(_quarantine(row, "text", f"text is {len(text)} characters, over the {cfg.max_text_chars}-character limit", text))
        elif raw.split is not None and raw.split not in SPLITS:
            bad.append(_quarantine(row, "split", f"unknown split {raw.split!r} (expected one of {', '.join(SPLITS)})", raw.split))
        elif row.meme_id in seen_ids:
            bad.append(_quarantine(row, "id", f"duplicate meme id (first at {seen_ids[row.meme_id]})", raw.native_id))
        elif not raw.image:
            bad.append(_quarantine(row, "image", "no image path", None))
        else:
            seen_ids[row.meme_id] = raw.location
            ok.append(row)
    return ok, bad


def _quarantine(row: _Pending, field_name: str, reason: str, value: Any) -> Quarantined:
    q = Quarantined(row.raw.location, field_name, reason, None if value is None else str(value), row.raw.native_id)
    q.source = row.source.name
    return q


def _inspect_one(args: tuple[str, str, int, int]) -> ImageInfo | str:
    root, raw, max_pixels, max_bytes = args
    try:
        return inspect_image(Path(root), raw, max_pixels=max_pixels, max_bytes=max_bytes)
    except ImageRejected as exc:
        return str(exc)


def _check_images(rows: list[_Pending], cfg: ConsolidateConfig, root: Path) -> tuple[list[_Pending], list[Quarantined]]:
    jobs = [(str(root / r.source.path), r.raw.image or "", cfg.max_image_pixels, cfg.max_image_bytes) for r in rows]
    if cfg.workers > 1 and len(jobs) > 200:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            results = list(pool.map(_inspect_one, jobs, chunksize=64))
    else:
        results = [_inspect_one(job) for job in jobs]
    ok: list[_Pending] = []
    bad: list[Quarantined] = []
    for row, result in zip(rows, results):
        if isinstance(result, str):
            bad.append(_quarantine(row, "image", result, row.raw.image))
        else:
            row.image = result
            ok.append(row)
    return ok, bad


def _load_ocr_texts(cfg: ConsolidateConfig, root: Path) -> pd.DataFrame | None:
    """Stage ocr's table when a source asks for OCR texts; a one-line SourceError when it is absent."""
    asking = [s for s in cfg.sources if s.ocr != "off"]
    if not asking:
        return None
    path = root / cfg.ocr_texts
    if not path.is_file():
        s = asking[0]
        raise SourceError(f"source {s.name!r} ({s.format}): ocr: {s.ocr} needs stage ocr's texts at {cfg.ocr_texts}, "
                          "which do not exist (run python -m stages.ocr first)")
    return read_texts(path)


def _apply_ocr(rows: list[_Pending], source: SourceConfig, texts: pd.DataFrame | None,
               cfg: ConsolidateConfig) -> tuple[list[_Pending], list[Quarantined]]:
    """Fill (``ocr: missing``: only blank texts) or replace (``ocr: all``) texts from stage ocr.

    The OCR entry must exist and match the image consolidation hashed; otherwise the meme is
    quarantined (field ``text``) with the reason, never kept with a text it should not have.
    """
    if source.ocr == "off":
        return rows, []
    entries: dict[str, Any] = {}
    if texts is not None and len(texts):
        mine = texts[texts["source"] == source.name]
        entries = {str(e.native_id): e for e in mine.itertuples(index=False)}
    ok: list[_Pending] = []
    bad: list[Quarantined] = []
    for row in rows:
        raw = row.raw
        if source.ocr == "missing" and (raw.text or "").strip():
            ok.append(row)
            continue
        entry = entries.get(raw.native_id)
        if entry is None:
            bad.append(_quarantine(row, "text", f"ocr: {source.ocr} but {cfg.ocr_texts} has no entry for this meme "
                                   "(rerun stage ocr)", raw.image))
        elif isinstance(entry.error, str) and entry.error:
            bad.append(_quarantine(row, "text", f"OCR could not read the image: {entry.error}", raw.image))
        elif entry.image_sha256 != row.image.sha256:
            bad.append(_quarantine(row, "text", f"stale OCR entry in {cfg.ocr_texts}: the image changed since stage ocr "
                                   "read it (rerun stage ocr)", raw.image))
        elif len(entry.ocr_text) > cfg.max_text_chars:
            bad.append(_quarantine(row, "text", f"OCR text is {len(entry.ocr_text)} characters, over the "
                                   f"{cfg.max_text_chars}-character limit", entry.ocr_text))
        else:
            note = {"engine": entry.engine, "confidence": float(entry.confidence), "mode": source.ocr}
            if (raw.text or "").strip():
                note["replaced_text"] = raw.text
                note["replaced_origin"] = raw.text_origin
            raw.text = entry.ocr_text
            raw.text_origin = "ocr" if entry.ocr_text else "missing"
            raw.extra = {**raw.extra, "ocr": note}
            row.ocr_filled = True
            ok.append(row)
    return ok, bad


def _stratum(row: _Pending, task: str | None) -> str:
    if task is None:
        return ""
    value = row.raw.labels.get(task)
    return "" if value is None else json.dumps(value)


def _stratify_task(rows: list[_Pending], taxonomy: Taxonomy) -> str | None:
    """The single-label task with the most labelled rows: the split keeps its class balance."""
    counts = Counter(
        task for r in rows for task, v in r.raw.labels.items()
        if v is not None and task in taxonomy.tasks and not taxonomy.task(task).is_multi
    )
    return counts.most_common(1)[0][0] if counts else None


def assign_splits(rows: list[_Pending], fractions: SplitFractions, seed: int, taxonomy: Taxonomy, source_name: str) -> str | None:
    """Give rows without an official split a seeded, stratified one; return the stratifying task.

    Only splits the source does not already have officially are assigned (Memotion's labels.csv
    goes to train/val when its official test exists), with the fractions renormalised.
    """
    todo = [r for r in rows if r.raw.split is None]
    if not todo:
        return None
    official = {r.raw.split for r in rows if r.raw.split is not None}
    targets = [s for s in ASSIGNABLE_SPLITS if s not in official] or ["train"]
    weights = np.array([getattr(fractions, s) for s in targets], dtype=float)
    weights = weights / weights.sum()
    task = _stratify_task(todo, taxonomy)
    rng = np.random.default_rng([seed, zlib.crc32(source_name.encode())])
    # Rows sharing extra["split_group"] (e.g. Multi3Hate's language versions of one meme) move
    # together, so the same picture never sits in two splits.
    groups: dict[str, list[_Pending]] = defaultdict(list)
    for r in sorted(todo, key=lambda r: r.raw.native_id):
        groups[str(r.raw.extra.get("split_group") or r.raw.native_id)].append(r)
    by_stratum: dict[str, list[list[_Pending]]] = defaultdict(list)
    for key in sorted(groups):
        by_stratum[_stratum(groups[key][0], task)].append(groups[key])
    for key in sorted(by_stratum):
        members = by_stratum[key]
        order = rng.permutation(len(members))
        bounds = np.round(np.cumsum(weights) * len(members)).astype(int)
        for rank, idx in enumerate(order):
            split = targets[min(int(np.searchsorted(bounds, rank, side="right")), len(targets) - 1)]
            for row in members[idx]:
                row.raw.split = split
                row.split_origin = "assigned"
    return task


def find_leaks(rows: list[_Pending], max_distance: int) -> list[tuple[_Pending, _Pending, str]]:
    """(later, earlier, kind) for every row whose image duplicates one in an earlier split.

    Exact = same sha256; near = pHash Hamming distance <= max_distance. Each later row is reported
    once, against its first duplicate in the earliest split.
    """
    order = {s: i for i, s in enumerate(SPLITS)}
    rows_sorted = sorted(rows, key=lambda r: (order[r.raw.split], r.meme_id))
    first_by_sha: dict[str, _Pending] = {}
    leaks: dict[str, tuple[_Pending, _Pending, str]] = {}
    for r in rows_sorted:
        first = first_by_sha.setdefault(r.image.sha256, r)
        if first is not r and order[first.raw.split] < order[r.raw.split]:
            leaks[r.meme_id] = (r, first, "exact")
    if max_distance >= 0 and len(rows_sorted) > 1:
        phashes = [r.image.phash for r in rows_sorted]
        splits = np.array([order[r.raw.split] for r in rows_sorted])
        block = 2048  # bounded memory: block x N uint8 distances at a time
        for start in range(0, len(rows_sorted), block):
            dist = hamming_matrix(phashes[start:start + block], phashes)
            for i_local, i in enumerate(range(start, min(start + block, len(rows_sorted)))):
                row = rows_sorted[i]
                if row.meme_id in leaks:
                    continue
                earlier = np.nonzero((dist[i_local] <= max_distance) & (splits < splits[i]))[0]
                if earlier.size:
                    leaks[row.meme_id] = (row, rows_sorted[int(earlier[0])], "near")
    return list(leaks.values())


def _apply_leak_policy(rows: list[_Pending], cfg: ConsolidateConfig) -> tuple[list[_Pending], list[Quarantined], dict[str, Any]]:
    """Flag or drop each later-split duplicate as :func:`memeops.data.leakage.leak_action` says
    (per row: under ``auto`` an official split keeps its memes, an assigned one loses them)."""
    policy = cfg.leakage.policy
    found = find_leaks(rows, cfg.leakage.phash_max_distance)
    leaks = [Leak(later.meme_id, later.raw.split, earlier.meme_id, earlier.raw.split, kind,
                  leak_action(policy, later.split_origin)) for later, earlier, kind in found]  # fmt: skip
    dropped: dict[str, Leak] = {}
    for (later, _, _), leak in zip(found, leaks):
        if leak.action == FLAGGED:
            later.leak_of, later.leak_kind = leak.duplicate_of, leak.kind
        else:
            dropped[later.meme_id] = leak
    kept = [r for r in rows if r.meme_id not in dropped]
    bad = [_quarantine(r, "image", _leak_reason(dropped[r.meme_id], policy, r.split_origin), r.raw.image)
           for r in rows if r.meme_id in dropped]  # fmt: skip
    return kept, bad, leakage_report(policy, cfg.leakage.phash_max_distance, leaks)


def _leak_reason(leak: Leak, policy: str, split_origin: str) -> str:
    why = f"policy {policy}" + (f", {split_origin} split" if policy == "auto" else "")
    return f"leakage: {leak.kind} duplicate of {leak.duplicate_of} in earlier split {leak.duplicate_split!r} ({why})"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _to_frame(rows: list[_Pending], taxonomy: Taxonomy) -> pd.DataFrame:
    schema = arrow_schema(taxonomy)
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for r in rows:
        raw, img = r.raw, r.image
        base = {
            "meme_id": r.meme_id, "source": r.source.name, "format": r.source.format, "native_id": raw.native_id,
            "split": raw.split, "split_origin": r.split_origin,
            "language": raw.language or r.source.language or "und", "text": raw.text or "",
            "text_origin": raw.text_origin, "source_root": r.source.path, "image_path": img.rel_path,
            "image_sha256": img.sha256, "image_phash": img.phash, "width": img.width, "height": img.height,
            "native_labels": _dumps(raw.native), "label_notes": _dumps(raw.label_notes),
            "explanations": _dumps(raw.explanations), "extra": _dumps(raw.extra),
            "leak_of": r.leak_of, "leak_kind": r.leak_kind, "location": raw.location,
        }
        for name, value in base.items():
            columns[name].append(value)
        for task in taxonomy.tasks.values():
            value = raw.labels.get(task.name)
            columns[label_column(task.name)].append(list(value) if task.is_multi and value is not None else value)
    table = pa.table(columns, schema=schema)
    return table.to_pandas()


def consolidate(cfg: ConsolidateConfig, taxonomy: Taxonomy, root: Path,
                ocr_texts: pd.DataFrame | None = None) -> ConsolidationResult:
    """Run every source through its loader and the shared checks; nothing is lost silently.

    ``ocr_texts``: stage ocr's table; by default read from ``cfg.ocr_texts`` when a source asks for
    OCR (and not read at all otherwise).
    """
    if ocr_texts is None:
        ocr_texts = _load_ocr_texts(cfg, root)
    counts: dict[str, SourceCounts] = {}
    quarantine: list[Quarantined] = []
    rows: list[_Pending] = []
    seen_ids: dict[str, str] = {}
    for source in cfg.sources:
        counts[source.name] = SourceCounts(source.name, source.format, source.path, ocr=source.ocr)
        loaded, bad, read = _read_source(source, taxonomy, root)
        counts[source.name].read = read
        quarantine += bad
        ok, bad = _check_rows(loaded, cfg, seen_ids)
        quarantine += bad
        ok, bad = _check_images(ok, cfg, root)
        quarantine += bad
        ok, bad = _apply_ocr(ok, source, ocr_texts, cfg)
        quarantine += bad
        stratified_by = assign_splits(ok, cfg.split, cfg.split_seed, taxonomy, source.name)
        if any(r.split_origin == "assigned" for r in ok):
            counts[source.name].split_origin = "assigned" if all(r.split_origin == "assigned" for r in ok) else "mixed"
            counts[source.name].stratified_by = stratified_by
        rows += ok
    rows, bad, leakage = _apply_leak_policy(rows, cfg)
    quarantine += bad
    for r in rows:
        c = counts[r.source.name]
        c.kept += 1
        if r.ocr_filled:
            if r.raw.text:
                c.text_from_ocr += 1
            else:
                c.ocr_empty += 1
    for q in quarantine:
        c = counts[q.source]
        c.quarantined += 1
        c.quarantined_by_field[q.field] = c.quarantined_by_field.get(q.field, 0) + 1
    for c in counts.values():
        if c.read != c.kept + c.quarantined:
            raise RuntimeError(f"source {c.name!r}: read {c.read} != kept {c.kept} + quarantined {c.quarantined}")
    rows.sort(key=lambda r: r.meme_id)
    return ConsolidationResult(_to_frame(rows, taxonomy), quarantine, counts, leakage)


def build_datasheet(result: ConsolidationResult, taxonomy: Taxonomy) -> dict[str, Any]:
    """Counts per source, split, task and label, languages, leakage and the reconciliation."""
    df = result.memes
    tasks: dict[str, Any] = {}
    for task in taxonomy.tasks.values():
        col = df[label_column(task.name)]
        present = col.notna()
        if not present.any():
            continue
        per_split: dict[str, dict[str, int]] = {}
        for split, part in df[present].groupby("split"):
            values = part[label_column(task.name)]
            if task.is_multi:
                counter = Counter(v for labels in values for v in labels)
                counter["<none>"] = int(sum(len(labels) == 0 for labels in values))
            else:
                counter = Counter(values)
            per_split[str(split)] = {k: int(v) for k, v in sorted(counter.items())}
        per_split["missing"] = {"count": int((~present).sum())}
        tasks[task.name] = per_split
    within_split_dupes = int(df.duplicated(subset=["split", "image_sha256"]).sum()) if len(df) else 0
    return {
        "total": {"read": sum(c.read for c in result.counts.values()), "kept": len(df),
                  "quarantined": len(result.quarantine)},
        "sources": {name: asdict(c) for name, c in result.counts.items()},
        "splits": {str(k): int(v) for k, v in df["split"].value_counts().sort_index().items()},
        "by_source_split": {f"{s}/{sp}": int(n) for (s, sp), n in df.groupby(["source", "split"]).size().items()},
        "languages": {str(k): int(v) for k, v in df["language"].value_counts().sort_index().items()},
        "text": {"empty": int((df["text"] == "").sum()), "origin": {str(k): int(v) for k, v in df["text_origin"].value_counts().items()},
                 "from_ocr_stage": sum(c.text_from_ocr for c in result.counts.values()),
                 "ocr_stage_empty": sum(c.ocr_empty for c in result.counts.values())},
        "tasks": tasks,
        "leakage": result.leakage,
        "within_split_exact_duplicates": within_split_dupes,
    }


def datasheet_markdown(sheet: dict[str, Any]) -> str:
    """A readable datasheet: reconciliation first, then splits, languages and label counts."""
    lines = ["# Datasheet: consolidated memes", "",
             f"Total read {sheet['total']['read']} = kept {sheet['total']['kept']} + quarantined {sheet['total']['quarantined']}.", "",
             "## Sources (read = kept + quarantined)", "",
             "| source | format | read | kept | quarantined | quarantined by field | split |", "|---|---|---|---|---|---|---|"]
    for name, c in sheet["sources"].items():
        by_field = ", ".join(f"{k}: {v}" for k, v in sorted(c["quarantined_by_field"].items())) or "-"
        split = c["split_origin"] + (f" (stratified by {c['stratified_by']})" if c["stratified_by"] else "")
        lines.append(f"| {name} | {c['format']} | {c['read']} | {c['kept']} | {c['quarantined']} | {by_field} | {split} |")
    lines += ["", "## Splits", "", "| split | memes |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sheet["splits"].items()]
    lines += ["", "## Languages", "", "| language | memes |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sheet["languages"].items()]
    lines += ["", f"Empty texts: {sheet['text']['empty']}."]
    ocr_sources = {name: c for name, c in sheet["sources"].items() if c.get("ocr", "off") != "off"}
    if ocr_sources:
        lines += ["", "Texts from stage ocr: " + "; ".join(
            f"{name} (ocr: {c['ocr']}): {c['text_from_ocr']} filled, {c['ocr_empty']} read nothing"
            for name, c in ocr_sources.items()) + "."]
    lines += ["", *leakage_markdown(sheet["leakage"], sheet["within_split_exact_duplicates"]),
              "## Labels per task and split", ""]
    for task, per_split in sheet["tasks"].items():
        missing = per_split.get("missing", {}).get("count", 0)
        lines.append(f"**{task}** (missing: {missing})")
        lines.append("")
        lines.append("| split | " + " | ".join(["counts"]) + " |")
        lines.append("|---|---|")
        for split, counter in per_split.items():
            if split == "missing":
                continue
            lines.append(f"| {split} | " + ", ".join(f"{k}: {v}" for k, v in counter.items()) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_outputs(result: ConsolidationResult, sheet: dict[str, Any], out_dir: Path, reports_dir: Path) -> None:
    """memes.parquet + quarantine.jsonl under ``out_dir``; datasheet.json / .md under ``reports_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reports_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(result.memes, preserve_index=False)
    pq.write_table(table, out_dir / "memes.parquet")
    entries = sorted((asdict(q) for q in result.quarantine), key=lambda q: (q["source"], q["location"], q["field"]))
    with open(out_dir / "quarantine.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n" for entry in entries)
    (reports_dir / "datasheet.json").write_text(json.dumps(sheet, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    (reports_dir / "datasheet.md").write_text(datasheet_markdown(sheet), encoding="utf-8")


def read_memes(path: Path) -> pd.DataFrame:
    """Read the consolidated table (the one place later stages load it)."""
    return pq.read_table(path).to_pandas()
