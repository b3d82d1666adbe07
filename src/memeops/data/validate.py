"""Validation of the consolidated meme table with Great Expectations 1.x (stage ``validate``).

The suite is built from configuration alone (:func:`build_suite`); the data only decides what is
fed to it. Three in-memory batches of one ephemeral GX context are validated:

``memes``
    the consolidated table itself, plus two derived helper columns for leakage
    (``image_sha256__cross_split`` / ``image_phash__cross_split``: a description of the offending
    pair for a later-split row that shares an image with an earlier split, else null);
``label_elements``
    multi-label columns exploded to one element per row (GX has no element check for list
    columns), so ``ExpectColumnValuesToBeInSet`` reports the stray elements themselves;
``class_counts``
    one row per ``(split, task, label)`` with its count, keyed ``"split/task/label"``, checked with
    ``ExpectColumnValuesToBeBetween(min_value=min_class_count)``.

Every expectation carries ``meta = {"blocking": bool, "check": <stable id>, "examples": how}``,
a human ``description`` and a GX ``severity`` (critical for blocking, warning otherwise). The
report is plain data (:class:`memeops.data.validation_report.ValidationReport`), written by the stage
as JSON and Markdown.

The GX context is ephemeral (nothing is written), progress bars are off, and analytics are off
through ``GX_ANALYTICS_ENABLED=false`` (set by :mod:`memeops.runtime` at package import).
Great Expectations is imported lazily: importing this module stays cheap.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from memeops.config import SPLITS, ValidateConfig
from memeops.config.data import LEAKAGE_POLICIES
from memeops.data.schema import arrow_schema
from memeops.data.taxonomy import Taxonomy, label_column, load_taxonomy
from memeops.data.validation_report import ExpectationOutcome, ValidationReport

if TYPE_CHECKING:  # pragma: no cover
    from great_expectations import ExpectationSuite

# What each policy lets through: a later-split duplicate never (drop_later), only flagged (flag),
# only flagged and in an official split (auto: an assigned split's duplicates were dropped).
LEAK_RULES = {
    "auto": "later-split duplicates only in official splits, flagged with leak_of",
    "drop_later": "no image shared by two splits",
    "flag": "later-split duplicates flagged with leak_of",
}
SHA256_REGEX = r"^[0-9a-f]{64}$"
PHASH_REGEX = r"^[0-9a-f]{16}$"
EMPTY_TEXT_REGEX = r"^\s*$"
SPLIT_ORIGINS = ("official", "assigned")
TEXT_ORIGINS = ("annotation", "ocr", "missing")
LEAK_KINDS = ("exact", "near")
MAX_EXAMPLES = 5

ROW_COLUMN = "__row"  # positional row number, so a row without meme_id can still be named
CROSS_SPLIT_SUFFIX = "__cross_split"
BATCHES = ("memes", "label_elements", "class_counts")
_INDEX_COLUMNS = {
    "memes": ("meme_id", ROW_COLUMN),
    "label_elements": ("meme_id", ROW_COLUMN),
    "class_counts": ("key",),
}


# --------------------------------------------------------------------------------------------
# Suite


class Suites(NamedTuple):
    """One expectation suite per batch."""

    memes: ExpectationSuite
    label_elements: ExpectationSuite
    class_counts: ExpectationSuite


def build_suite(taxonomy: Taxonomy, cfg: ValidateConfig, leakage_policy: str) -> Suites:
    """The expectation suites for the consolidated table; they depend on configuration only."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    if leakage_policy not in LEAKAGE_POLICIES:
        raise ValueError(f"unknown leakage policy {leakage_policy!r}; expected one of {LEAKAGE_POLICIES}")

    def meta(check: str, blocking: bool, examples: str = "values") -> dict[str, Any]:
        return {
            "meta": {"check": check, "blocking": blocking, "examples": examples},
            "severity": "critical" if blocking else "warning",
        }

    schema_columns = [f.name for f in arrow_schema(taxonomy)]
    memes: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=schema_columns, exact_match=False,
            description="all schema columns present", **meta("table.columns", True),
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1, description="table has rows", **meta("table.rows", True),
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="meme_id", description="meme_id not null", **meta("meme_id.not_null", True, "ids"),
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="meme_id", description="meme_id unique", **meta("meme_id.unique", True),
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="text", description="text not null", **meta("text.not_null", True, "ids"),
        ),
        gxe.ExpectColumnValuesToNotMatchRegex(
            column="text", regex=EMPTY_TEXT_REGEX, mostly=_mostly(1.0 - cfg.max_empty_text_fraction),
            description=f"empty text fraction ≤ {cfg.max_empty_text_fraction:g}",
            **meta("text.empty_fraction", False, "ids"),
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="image_sha256", description="image_sha256 not null",
            **meta("image_sha256.not_null", True, "ids"),
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="image_sha256", regex=SHA256_REGEX, description="image_sha256 is 64 lowercase hex digits",
            **meta("image_sha256.format", True),
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="image_phash", description="image_phash not null",
            **meta("image_phash.not_null", True, "ids"),
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="image_phash", regex=PHASH_REGEX, description="image_phash is 16 lowercase hex digits",
            **meta("image_phash.format", True),
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="split", description="split not null", **meta("split.not_null", True, "ids"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="split", value_set=list(SPLITS), description=f"split in {_set(SPLITS)}",
            **meta("split.in_set", True),
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="language", description="language not null", **meta("language.not_null", True, "ids"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="split_origin", value_set=list(SPLIT_ORIGINS),
            description=f"split_origin in {_set(SPLIT_ORIGINS)}", **meta("split_origin.in_set", False),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="text_origin", value_set=list(TEXT_ORIGINS),
            description=f"text_origin in {_set(TEXT_ORIGINS)}", **meta("text_origin.in_set", False),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="leak_kind", value_set=list(LEAK_KINDS),
            description=f"leak_kind in {_set(LEAK_KINDS)}", **meta("leak_kind.in_set", False),
        ),
    ]
    elements: list[Any] = []
    for task in taxonomy.tasks.values():
        col = label_column(task.name)
        if task.is_multi:
            elements.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=col, value_set=list(task.labels),
                    description=f"{col} elements in {_set(task.labels)}", **meta(f"{col}.in_set", True),
                )
            )
        else:
            memes.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=col, value_set=list(task.labels),
                    description=f"{col} values in {_set(task.labels)}", **meta(f"{col}.in_set", True),
                )
            )
    rule = LEAK_RULES[leakage_policy]
    for col in ("image_sha256", "image_phash"):
        memes.append(
            gxe.ExpectColumnValuesToBeNull(
                column=col + CROSS_SPLIT_SUFFIX,
                description=f"{col}: {rule} (policy {leakage_policy})",
                **meta(f"{col}.cross_split", True),
            )
        )
    count_splits = ", ".join(cfg.class_count_splits)
    counts = [
        gxe.ExpectColumnValuesToBeBetween(
            column="count", min_value=cfg.min_class_count,
            description=f"≥ {cfg.min_class_count} examples per label in {count_splits}",
            **meta("class_counts.min", True, "keys"),
        )
    ]
    return Suites(
        memes=gx.ExpectationSuite(name="memes", expectations=memes),
        label_elements=gx.ExpectationSuite(name="label_elements", expectations=elements),
        class_counts=gx.ExpectationSuite(name="class_counts", expectations=counts),
    )


def _set(values: Any) -> str:
    return "{" + ", ".join(values) + "}"


def _mostly(value: float) -> float:
    return min(1.0, max(0.0, round(value, 12)))


# --------------------------------------------------------------------------------------------
# Running


@lru_cache(maxsize=1)
def _batch_definitions() -> dict[str, Any]:
    """One ephemeral context per process: a pandas data source with one dataframe asset per batch."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # The default ephemeral config reserves a temp dir for a data-docs site; with no docs site the
    # context touches no file at all. Analytics are off here too, not only through the env switch.
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    source = context.data_sources.add_pandas("memeops_validation")
    return {
        name: source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(f"{name}_all")
        for name in BATCHES
    }


def validate_memes(
    df: pd.DataFrame,
    cfg: ValidateConfig,
    leakage_policy: str,
    taxonomy: Taxonomy | None = None,
) -> ValidationReport:
    """Validate the consolidated table; never raises for bad data (only for a bad policy)."""
    taxonomy = taxonomy or load_taxonomy()
    df = df.reset_index(drop=True)
    suites = build_suite(taxonomy, cfg, leakage_policy)
    frames = {
        "memes": _memes_frame(df, leakage_policy),
        "label_elements": _elements_frame(df, taxonomy),
        "class_counts": class_counts(df, cfg, taxonomy),
    }
    definitions = _batch_definitions()
    results: list[ExpectationOutcome] = []
    for name in BATCHES:
        suite = getattr(suites, name)
        if not suite.expectations:
            continue
        frame = frames[name]
        index_columns = [c for c in _INDEX_COLUMNS[name] if c in frame.columns]
        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
        if index_columns:
            result_format["unexpected_index_column_names"] = index_columns
        batch = definitions[name].get_batch(batch_parameters={"dataframe": frame})
        run = batch.validate(suite, result_format=result_format)
        by_check = {r.expectation_config.meta["check"]: r for r in run.results}
        # GX returns results in its own order; report them in suite order.
        for exp in suite.expectations:
            results.append(_outcome(by_check[exp.meta["check"]], name))
    success = all(r.success for r in results if r.blocking)
    summary = _summary(df, taxonomy, cfg, leakage_policy)
    return ValidationReport(success=success, results=results, summary=summary)


def _memes_frame(df: pd.DataFrame, leakage_policy: str) -> pd.DataFrame:
    frame = df.copy(deep=False)
    frame[ROW_COLUMN] = np.arange(len(df), dtype=np.int64)
    for col in ("image_sha256", "image_phash"):
        frame[col + CROSS_SPLIT_SUFFIX] = cross_split_violations(df, col, leakage_policy)
    return frame


def cross_split_violations(df: pd.DataFrame, column: str, leakage_policy: str) -> pd.Series:
    """Per row: a description when it is a later-split row sharing ``column`` with an earlier split
    and the policy does not allow it (drop_later: always; flag: when ``leak_of`` is null; auto: when
    ``leak_of`` is null or the row's split is not official), else null.
    """
    out = pd.Series([None] * len(df), index=df.index, dtype=object)
    if column not in df.columns or "split" not in df.columns or len(df) == 0:
        return out
    order = {s: i for i, s in enumerate(SPLITS)}
    meme_id = df["meme_id"] if "meme_id" in df.columns else pd.Series([None] * len(df), index=df.index)
    work = pd.DataFrame(
        {"key": df[column], "split": df["split"], "rank": df["split"].map(order), "meme_id": meme_id}
    )
    work = work[work["key"].notna() & work["rank"].notna()]
    if work.empty:
        return out
    work = work.sort_values("rank", kind="stable")
    first = work.groupby("key", sort=False).first()
    earliest_rank = work["key"].map(first["rank"])
    later = work[work["rank"] > earliest_rank]
    if leakage_policy in ("flag", "auto"):
        later = later[~_allowed_duplicate(df, leakage_policy).loc[later.index]]
    for idx, row in later.iterrows():
        ref = first.loc[row["key"]]
        here = f"{_name(row['meme_id'], idx)} ({row['split']})"
        out.at[idx] = f"{here} ~ {_name(ref['meme_id'], None)} ({ref['split']})"
    return out


def _allowed_duplicate(df: pd.DataFrame, leakage_policy: str) -> pd.Series:
    """Rows whose later-split duplicate the policy keeps: flagged (``leak_of`` set), and under
    ``auto`` also in an official split (an assigned split's duplicates should have been dropped)."""
    nulls = pd.Series([None] * len(df), index=df.index, dtype=object)
    allowed = df.get("leak_of", nulls).notna()
    if leakage_policy == "auto":
        allowed &= df.get("split_origin", nulls) == "official"
    return allowed


def _name(meme_id: Any, index: Any) -> str:
    if _missing(meme_id):
        return f"row {index}" if index is not None else "?"
    return str(meme_id)


def _elements_frame(df: pd.DataFrame, taxonomy: Taxonomy) -> pd.DataFrame:
    """Multi-label columns exploded: one row per element, the element in its own column."""
    multi = [label_column(t.name) for t in taxonomy.tasks.values() if t.is_multi]
    meme_ids = df["meme_id"].tolist() if "meme_id" in df.columns else [None] * len(df)
    records: list[dict[str, Any]] = []
    for col in multi:
        if col not in df.columns:
            continue
        for row, (mid, value) in enumerate(zip(meme_ids, df[col].tolist())):
            if _missing(value):
                continue
            if isinstance(value, (list, tuple, np.ndarray)):
                elements = ["<null element>" if _missing(e) else e for e in list(value)]
            else:
                elements = [f"<not a list: {value!r}>"]
            records.extend({"meme_id": mid, ROW_COLUMN: row, col: e} for e in elements)
    columns = ["meme_id", ROW_COLUMN, *multi]
    frame = pd.DataFrame.from_records(records, columns=columns)
    frame[ROW_COLUMN] = frame[ROW_COLUMN].astype(np.int64)
    for col in columns:
        if col != ROW_COLUMN:
            frame[col] = frame[col].astype(object)
    return frame


def class_counts(df: pd.DataFrame, cfg: ValidateConfig, taxonomy: Taxonomy) -> pd.DataFrame:
    """Rows ``(key, split, task, label, count)``: for each split of ``cfg.class_count_splits``
    present in the data and each single-label task with any label in that split, every label of
    that task seen anywhere in the data, with its count in the split (possibly 0)."""
    records: list[dict[str, Any]] = []
    if "split" in df.columns:
        present = set(df["split"].dropna().unique())
        for split in cfg.class_count_splits:
            if split not in present:
                continue
            in_split = df["split"] == split
            for task in taxonomy.tasks.values():
                col = label_column(task.name)
                if task.is_multi or col not in df.columns:
                    continue
                values = df.loc[in_split, col]
                if values.notna().sum() == 0:
                    continue
                seen = set(df[col].dropna().unique())
                counts = values.value_counts()
                for label in task.labels:
                    if label in seen:
                        records.append({
                            "key": f"{split}/{task.name}/{label}", "split": split, "task": task.name,
                            "label": label, "count": int(counts.get(label, 0)),
                        })
    frame = pd.DataFrame.from_records(records, columns=["key", "split", "task", "label", "count"])
    frame["count"] = frame["count"].astype(np.int64)
    return frame


def _summary(df: pd.DataFrame, taxonomy: Taxonomy, cfg: ValidateConfig, policy: str) -> dict[str, Any]:
    rows = len(df)
    splits: dict[str, int] = {}
    if "split" in df.columns:
        counts = df["split"].value_counts(dropna=False)
        known = [s for s in SPLITS if s in counts.index]
        other = sorted((s for s in counts.index if s not in SPLITS and not _missing(s)), key=str)
        for s in known + other:
            splits[str(s)] = int(counts[s])
        nulls = int(df["split"].isna().sum())
        if nulls:
            splits["<null>"] = nulls
    empty = 0
    if "text" in df.columns:
        text = df["text"].dropna().astype(str)
        empty = int(text.str.match(EMPTY_TEXT_REGEX).sum())
    coverage = {}
    for task in taxonomy.tasks.values():
        col = label_column(task.name)
        labelled = int(df[col].notna().sum()) if col in df.columns else 0
        coverage[task.name] = {"labelled": labelled, "fraction": round(labelled / rows, 4) if rows else 0.0}
    return {
        "rows": rows,
        "splits": splits,
        "empty_texts": empty,
        "empty_text_fraction": round(empty / rows, 4) if rows else 0.0,
        "leakage_policy": policy,
        "min_class_count": cfg.min_class_count,
        "class_count_splits": list(cfg.class_count_splits),
        "label_coverage": coverage,
    }


# --------------------------------------------------------------------------------------------
# Reading GX results


def _outcome(result: Any, batch: str) -> ExpectationOutcome:
    config = result.expectation_config
    meta = config.meta or {}
    res = dict(result.result or {})
    column = config.kwargs.get("column")
    error = _exception_message(result.exception_info)
    unexpected = res.get("unexpected_count")
    examples: list[Any] = []
    details: str | None = None
    if error:
        details = f"error: {error}"
    elif "unexpected_count" in res:
        examples = _examples(res, meta.get("examples", "values"), column)
    elif config.type == "expect_table_columns_to_match_set":
        missing = (res.get("details") or {}).get("mismatched", {}).get("missing", [])
        if missing:
            unexpected, examples = len(missing), list(missing)[:MAX_EXAMPLES]
            details = "missing columns: " + ", ".join(missing)
    elif "observed_value" in res:
        details = f"observed {res['observed_value']}"
    return ExpectationOutcome(
        check=str(meta.get("check", config.type)),
        name=config.description or config.type,
        expectation=config.type,
        batch=batch,
        column=column,
        blocking=bool(meta.get("blocking", True)),
        success=bool(result.success) and not error,
        unexpected_count=None if unexpected is None else int(unexpected),
        examples=examples,
        details=details,
    )


def _examples(res: dict[str, Any], how: str, column: str | None) -> list[Any]:
    out: list[Any] = []
    if how in ("ids", "keys"):
        for entry in res.get("partial_unexpected_index_list") or []:
            if not isinstance(entry, dict):
                value = f"row {entry}"
            elif how == "keys":
                value = f"{entry.get('key')} ({_plain(entry.get(column))})"
            else:
                value = _name(entry.get("meme_id"), _plain(entry.get(ROW_COLUMN)))
            if value not in out:
                out.append(value)
    else:
        for value in res.get("partial_unexpected_list") or []:
            value = _plain(value)
            if value is not None and value not in out:
                out.append(value)
    return out[:MAX_EXAMPLES]


def _exception_message(info: Any) -> str | None:
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    for value in info.values():  # keyed by metric id when a metric failed
        message = _exception_message(value)
        if message:
            return message
    return None


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _plain(value: Any) -> Any:
    """A JSON-friendly Python value."""
    if isinstance(value, np.generic):
        value = value.item()
    if _missing(value):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return str(value)
