"""Shared helpers for the format loaders.

Every format needs the same things: a one-line :class:`SourceError` naming the source, JSONL and
CSV readers that yield one item per row *with its location* (so ``read = kept + quarantined``
reconciles), the format's ``on_unmapped`` policy applied to taxonomy rules, duplicate-id tracking
and the text/image conventions of :class:`RawMeme`. Keeping them here leaves each format module with
only its own format's facts.

Locations
---------
``RawMeme.location`` and ``Quarantined.location`` are ``"<file relative to the source root>:<n>"``:

* JSONL: ``n`` is the 1-based physical line number.
* CSV/TSV: ``n`` is the spreadsheet row number, i.e. the 1-based data row plus the header offset:
  the header is row 1, so the first data row is row 2 (headerless files such as MAMI's
  ``truth.txt`` start at row 1). A quoted cell spanning several lines still counts as one row.

Blank lines (JSONL) and CSV rows whose cells are all empty carry nothing: they are not rows and are
not counted. Every other line or row produces exactly one item.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memeops.config import SourceConfig
from memeops.data.records import Label, Quarantined, RawMeme, SourceError
from memeops.data.taxonomy import MappingError, Taxonomy

__all__ = [
    "DEFAULT_ENCODINGS",
    "CsvRow",
    "CsvTable",
    "RowLabels",
    "SeenIds",
    "as_code",
    "index_truth_rows",
    "is_blank",
    "join_image",
    "meme",
    "missing_field",
    "norm_col",
    "option",
    "present_files",
    "read_jsonl",
    "read_table",
    "relpath",
    "require_file",
    "source_error",
    "source_root",
    "text_of",
]

DEFAULT_ENCODINGS: tuple[str, ...] = ("utf-8-sig", "gbk")
"""Tried in order: UTF-8 (a BOM is dropped), then GBK (MET-MEME ships GBK CSVs)."""

csv.field_size_limit(16 * 1024 * 1024)  # OCR text cells can be long; the default 128 KiB is not enough


# --------------------------------------------------------------------------------------------- source


def source_error(source: SourceConfig, expected: str, path: Path | str) -> SourceError:
    """The one-line error for a source that cannot be read at all."""
    return SourceError(f"source {source.name!r} ({source.format}): expected {expected} at {path}")


def source_root(source: SourceConfig) -> Path:
    """The source's root directory, or a SourceError when it is not a directory."""
    root = Path(source.path).expanduser()
    if not root.is_dir():
        raise source_error(source, "the source directory", root)
    return root


def require_file(source: SourceConfig, root: Path, rel: str, what: str | None = None) -> Path:
    """``root / rel`` when it is a file; SourceError otherwise."""
    path = root / rel
    if not path.is_file():
        raise source_error(source, what or f"the file {rel!r}", path)
    return path


def option(source: SourceConfig, key: str, default: Any) -> Any:
    """A format option with its default (``None`` in the config also means 'use the default')."""
    value = source.options.get(key)
    return default if value is None else value


def relpath(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` with forward slashes (locations must not depend on the OS)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# ------------------------------------------------------------------------------------------- values


def is_blank(value: Any) -> bool:
    """None, NaN and whitespace-only strings are 'no value'."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


_FLOAT_INT = re.compile(r"^\s*([+-]?\d+)\.0+\s*$")


def as_code(value: Any) -> Any:
    """'1.0' -> '1': numeric codes written through a float column (pandas writes a 0/1 column that
    holds an NA as 1.0/0.0) still meet the rule's integer keys. Other values pass unchanged."""
    if isinstance(value, str):
        m = _FLOAT_INT.match(value)
        if m:
            return m.group(1)
    return value


def text_of(value: Any, origin: str = "annotation", *, none_literal: bool = False) -> tuple[str, str]:
    """``(text, text_origin)``: None/NaN/blank -> ``("", "missing")``; the text is otherwise kept as
    given (multi-line OCR text included). ``none_literal``: the string "None" also means no text
    (PrideMM writes it for memes without text)."""
    if is_blank(value):
        return "", "missing"
    text = value if isinstance(value, str) else str(value)
    if none_literal and text.strip() == "None":
        return "", "missing"
    return text, origin


def join_image(folder: str, name: Any) -> str | None:
    """``folder/name`` as the source gives it (not resolved, not checked: consolidation does that);
    None when the name is missing."""
    if is_blank(name):
        return None
    name = str(name)
    folder = str(folder or "").rstrip("/")
    return f"{folder}/{name}" if folder else name


def missing_field(location: str, field_name: str, native_id: str | None = None, what: str = "") -> Quarantined:
    """Quarantine entry for a row that lacks a required field."""
    reason = f"missing required field {field_name!r}" + (f" ({what})" if what else "")
    return Quarantined(location=location, field=field_name, reason=reason, native_id=native_id)


def present_files(source: SourceConfig, root: Path, files: dict[str, str]) -> list[tuple[str, str]]:
    """(file name, split) for the split files that exist; a SourceError when none does."""
    present = [(name, split) for name, split in files.items() if (root / name).is_file()]
    if not present:
        raise source_error(source, f"at least one of {', '.join(files)}", root)
    return present


def index_truth_rows(rows: Iterable[CsvRow], key_column: str) -> tuple[dict[str, CsvRow], list[Quarantined]]:
    """Ground-truth rows by name; unnamed and repeated rows come back as Quarantined entries."""
    truth: dict[str, CsvRow] = {}
    leftovers: list[Quarantined] = []
    for row in rows:
        key = row.get(key_column).strip()
        if not key:
            leftovers.append(missing_field(row.location, key_column, None, "ground-truth row without a name"))
        elif key in truth:
            leftovers.append(Quarantined(row.location, key_column,
                                         f"duplicate ground-truth row; first at {truth[key].location}", key, key))
        else:
            truth[key] = row
    return truth, leftovers


class SeenIds:
    """Duplicate ids within one source: the first occurrence wins, later ones are quarantined with
    the first one's location (an id is registered on first sight whatever that row's fate)."""

    def __init__(self) -> None:
        self._first: dict[str, str] = {}

    def check(self, native_id: str, location: str, field_name: str = "id") -> Quarantined | None:
        first = self._first.get(native_id)
        if first is not None:
            return Quarantined(
                location=location,
                field=field_name,
                reason=f"duplicate id {native_id!r} within the source; first seen at {first}",
                value=native_id,
                native_id=native_id,
            )
        self._first[native_id] = location
        return None

    def claim(self, row: CsvRow, column: str, prefix: str = "") -> str | Quarantined:
        """The row's id from ``column`` (``prefix`` + stripped name), or the Quarantined entry for a
        blank name or a repeated id. Image-named CSV formats share this first step."""
        name = row.get(column)
        if is_blank(name):
            return missing_field(row.location, "image", None, f"{column} is empty")
        native_id = f"{prefix}{name.strip()}"
        dup = self.check(native_id, row.location, column)
        return dup if dup is not None else native_id

    def __contains__(self, native_id: object) -> bool:
        return native_id in self._first

    def location(self, native_id: str) -> str | None:
        return self._first.get(native_id)


# --------------------------------------------------------------------------------------------- JSONL


def read_jsonl(root: Path, path: Path) -> Iterator[tuple[str, dict[str, Any] | Quarantined]]:
    """``(location, object)`` per non-blank line; a line that is not valid UTF-8 or not a JSON
    object comes back as a Quarantined (field ``json``) in place of the object."""
    name = relpath(root, path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            location = f"{name}:{lineno}"
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield location, Quarantined(location, "json", f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield location, Quarantined(
                    location, "json", f"malformed JSON: {exc.msg} (column {exc.colno})", value=line.strip()
                )
                continue
            if not isinstance(obj, dict):
                yield location, Quarantined(
                    location, "json", f"expected a JSON object, got {type(obj).__name__}", value=line.strip()
                )
                continue
            yield location, obj


# ----------------------------------------------------------------------------------------------- CSV


def norm_col(name: str) -> str:
    """Header names are matched case- and space-insensitively: ' Meme  ID' -> 'meme id'."""
    return " ".join(name.replace("\ufeff", "").strip().lower().split())


@dataclass
class CsvRow:
    """One data row: ``values`` by normalised column name; ``extra`` holds non-empty cells beyond
    the named columns (MET-MEME's trailing columns), kept so nothing is silently lost."""

    location: str
    values: dict[str, str]
    extra: list[str] = field(default_factory=list)

    def get(self, column: str, default: str = "") -> str:
        return self.values.get(column, default)


@dataclass
class CsvTable:
    name: str  # file name relative to the source root
    encoding: str
    columns: list[str]
    rows: list[CsvRow]


def decode(source: SourceConfig, path: Path, encodings: Iterable[str]) -> tuple[str, str]:
    """The file's text and the encoding that decoded it; SourceError when none does."""
    data = path.read_bytes()
    tried = []
    for enc in encodings:
        try:
            return data.decode(enc), enc
        except (UnicodeDecodeError, LookupError):
            tried.append(enc)
    raise source_error(
        source, f"a text file in one of the encodings {', '.join(tried)} (set option 'encoding')", path
    )


def read_table(
    source: SourceConfig,
    root: Path,
    path: Path,
    *,
    required: Iterable[str] = (),
    delimiter: str = ",",
    columns: list[str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> CsvTable:
    """Read a CSV/TSV file whole (sources are small) into rows keyed by normalised column names.

    ``columns`` given: the file has no header and these are its column names. ``aliases`` renames
    normalised header names (MET-MEME's ``images_name`` -> ``file_name``). A header that lacks a
    ``required`` column is a SourceError: the file is not in the expected format at all. The option
    ``encoding`` overrides the default utf-8-sig -> gbk fallback.
    """
    enc_opt = source.options.get("encoding")
    encodings = [enc_opt] if enc_opt else list(DEFAULT_ENCODINGS)
    text, encoding = decode(source, path, encodings)
    name = relpath(root, path)
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise source_error(source, f"a well-formed {'TSV' if delimiter == chr(9) else 'CSV'} file ({exc})", path) from exc
    if columns is None:
        if not records:
            raise source_error(source, "a header row", path)
        header = [norm_col(c) for c in records[0]]
        body, offset = records[1:], 2
    else:
        header, body, offset = [norm_col(c) for c in columns], records, 1
    aliases = {norm_col(k): norm_col(v) for k, v in (aliases or {}).items()}
    header = [aliases.get(c, c) for c in header]
    missing = [c for c in required if norm_col(c) not in header]
    if missing:
        shown = ", ".join(c for c in header if c)
        raise source_error(
            source, f"columns {', '.join(missing)} in {name} (found: {shown or 'none'})", path
        )
    rows: list[CsvRow] = []
    for i, cells in enumerate(body):
        if not any(c.strip() for c in cells):
            continue
        values: dict[str, str] = {}
        extra: list[str] = []
        for j, cell in enumerate(cells):
            col = header[j] if j < len(header) else ""
            if col and col not in values:
                values[col] = cell
            elif cell.strip():
                extra.append(cell)
        for col in header:  # short rows: the missing trailing cells are empty
            if col:
                values.setdefault(col, "")
        rows.append(CsvRow(f"{name}:{i + offset}", values, extra))
    return CsvTable(name, encoding, header, rows)


# -------------------------------------------------------------------------------------------- labels


class RowLabels:
    """Applies one format's taxonomy rules to one row and honours the format's ``on_unmapped``.

    ``quarantine``: the first unmapped value is kept in :attr:`error`; the loader then yields
    :meth:`quarantined` instead of the meme. ``missing``: the task is set to None and the rule's
    message goes into :attr:`notes` (-> ``RawMeme.label_notes``).
    """

    def __init__(self, taxonomy: Taxonomy, fmt: str):
        self.taxonomy = taxonomy
        self.fmt = fmt
        self.policy = taxonomy.on_unmapped(fmt)
        self.labels: dict[str, Label] = {}
        self.notes: dict[str, str] = {}
        self.error: MappingError | None = None

    def convert(self, rule_id: str, value: Any, task: str | None = None) -> tuple[bool, Label]:
        """Map ``value`` by the rule without storing it: ``(ok, label)``. A failure is recorded by
        the policy (error or note on the task)."""
        rule = self.taxonomy.rule(self.fmt, rule_id)
        t = self.taxonomy.task(task or rule.task)
        try:
            if t.is_multi:
                if value is None:
                    return True, None
                items = [as_code(v) for v in value] if isinstance(value, (list, tuple)) else as_code(value)
                return True, rule.apply_multi(items, t)
            return True, rule.apply(as_code(value), t)
        except MappingError as exc:
            if self.policy == "missing":
                self.labels[t.name] = None
                self.notes[t.name] = str(exc)
            elif self.error is None:
                self.error = exc
            return False, None

    def map(self, rule_id: str, value: Any, task: str | None = None) -> Label:
        """Map ``value`` by the rule and store the label under its task (None on failure)."""
        rule = self.taxonomy.rule(self.fmt, rule_id)
        name = task or rule.task
        ok, label = self.convert(rule_id, value, name)
        if ok:
            self.labels[name] = label
        return label

    def set(self, task: str, label: Label, note: str | None = None) -> None:
        self.labels[task] = label
        if note:
            self.notes[task] = note

    def quarantined(self, location: str, native_id: str | None) -> Quarantined | None:
        """The row's quarantine entry when a rule failed under the ``quarantine`` policy."""
        if self.error is None:
            return None
        return Quarantined(
            location=location,
            field=self.error.field,
            reason=str(self.error),
            value=None if self.error.value is None else str(self.error.value),
            native_id=native_id,
        )


def meme(
    *,
    native_id: str,
    location: str,
    text: Any,
    image: str,
    labels: RowLabels,
    native: dict[str, Any],
    split: str | None,
    language: str | None,
    text_origin: str = "annotation",
    none_literal: bool = False,
    explanations: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> RawMeme:
    """A RawMeme with the text convention applied (blank -> "" and text_origin 'missing')."""
    text_value, origin = text_of(text, text_origin, none_literal=none_literal)
    return RawMeme(
        native_id=native_id,
        location=location,
        text=text_value,
        image=image,
        split=split,
        language=language,
        labels=dict(labels.labels),
        native=native,
        label_notes=dict(labels.notes),
        explanations=dict(explanations or {}),
        text_origin=origin,
        extra=dict(extra or {}),
    )
