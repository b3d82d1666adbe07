"""Multi3Hate (multilingual, multicultural hate): per-country votes and five caption languages.

``final_annotations.csv`` (``Meme ID,US,DE,MX,CN,IN``, 0/1 per country) and
``captions/{en,de,es,hi,zh}.csv`` (``Meme ID,Template Name,Original (English),Translation``).
One RawMeme per (meme id, caption language): the caption row is the unit read and its annotation
row is merged in. ``hateful`` is the majority of the country votes mapped by the rule
``multi3hate_country_vote``; ties go to "yes" (taxonomy.md); blank/NA votes are skipped, and a meme
with no vote at all keeps ``hateful`` missing. Caption rows without an annotation row, and
annotation rows used by no caption row (or repeated), are each quarantined, so
``read = caption rows + unmerged annotation rows``. Multi-panel captions joined with " <sep> " are
kept as they are. ``extra["meme_id"]`` groups the language versions of one meme (they share an
image template, so consolidation should keep them in one split). No official split: None.

Options:
  languages: caption languages to read (default: en, de, es, hi, zh, whichever files exist).
  countries: vote columns (default US, DE, MX, CN, IN).
  image_pattern: default "images/{lang}/{meme_id}.png" (unverified layout: images are assumed to
    be rendered per caption language and named by meme id).
  encoding: overrides the utf-8-sig -> gbk fallback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from memeops.config import SourceConfig
from memeops.data.loaders.base import (
    CsvRow,
    RowLabels,
    SeenIds,
    is_blank,
    meme,
    missing_field,
    norm_col,
    option,
    read_table,
    require_file,
    source_error,
    source_root,
)
from memeops.data.records import LoaderItem, Quarantined
from memeops.data.taxonomy import Taxonomy

FORMAT = "multi3hate"
LANGUAGES = ("en", "de", "es", "hi", "zh")
COUNTRIES = ("US", "DE", "MX", "CN", "IN")
MISSING_VOTES = {"", "na", "nan", "none"}


def load(source: SourceConfig, taxonomy: Taxonomy) -> Iterator[LoaderItem]:
    root = source_root(source)
    countries = [str(c) for c in option(source, "countries", COUNTRIES)]
    pattern = str(option(source, "image_pattern", "images/{lang}/{meme_id}.png"))
    try:
        pattern.format(lang="en", meme_id="1")
    except (KeyError, IndexError, ValueError):
        raise source_error(source, f"option image_pattern with only {{lang}} and {{meme_id}} (got {pattern!r})", root)
    ann_path = require_file(source, root, "final_annotations.csv")
    ann = read_table(source, root, ann_path, required=("meme id", *countries))
    annotations: dict[str, CsvRow] = {}
    leftovers: list[LoaderItem] = []
    for row in ann.rows:
        key = _meme_id(row.get("meme id"))
        if not key:
            leftovers.append(missing_field(row.location, "Meme ID"))
        elif key in annotations:
            leftovers.append(
                Quarantined(row.location, "Meme ID", f"duplicate annotation row; first at {annotations[key].location}",
                            key, key)
            )
        else:
            annotations[key] = row

    used: set[str] = set()
    for lang, path in _caption_files(source, root):
        table = read_table(source, root, path, required=("meme id", "translation"))
        seen = SeenIds()
        for row in table.rows:
            key = _meme_id(row.get("meme id"))
            if not key:
                yield missing_field(row.location, "Meme ID")
                continue
            native_id = f"{lang}/{key}"
            if (dup := seen.check(native_id, row.location, "Meme ID")) is not None:
                yield dup
                continue
            votes = annotations.get(key)
            if votes is None:
                yield Quarantined(row.location, "Meme ID", f"orphan caption row: meme {key!r} has no row in "
                                  f"{ann.name}", key, native_id)
                continue
            used.add(key)
            yield _meme(row, votes, lang, key, native_id, countries, pattern, taxonomy)
    yield from leftovers
    for key, row in annotations.items():
        if key not in used:
            yield Quarantined(row.location, "Meme ID", f"orphan annotation row: meme {key!r} has no caption row",
                              key, key)


def _meme_id(value: str) -> str:
    """Ids are integers in Multi3Hate; '007' and '7' (a spreadsheet round trip) name one meme."""
    text = value.strip()
    return str(int(text)) if text.isdigit() else text


def _caption_files(source: SourceConfig, root: Path) -> list[tuple[str, Path]]:
    wanted = option(source, "languages", None)
    if isinstance(wanted, str):
        wanted = [wanted]
    files = []
    for lang in wanted or LANGUAGES:
        path = root / "captions" / f"{lang}.csv"
        if path.is_file():
            files.append((str(lang), path))
        elif wanted is not None:
            raise source_error(source, f"the caption file for language {lang!r}", path)
    if not files:
        raise source_error(source, f"captions/{{{','.join(LANGUAGES)}}}.csv", root / "captions")
    return files


def _meme(
    row: CsvRow,
    votes: CsvRow,
    lang: str,
    meme_id: str,
    native_id: str,
    countries: list[str],
    pattern: str,
    taxonomy: Taxonomy,
) -> LoaderItem:
    rl = RowLabels(taxonomy, FORMAT)
    tally = {"yes": 0, "no": 0}
    failed = ""
    for country in countries:
        value = votes.get(norm_col(country))
        if value.strip().lower() in MISSING_VOTES:
            continue  # a missing vote is skipped, never counted
        ok, label = rl.convert("multi3hate_country_vote", value)
        if ok and label in tally:
            tally[label] += 1
        elif not ok and not failed:
            failed = country
    if (bad := rl.quarantined(row.location, native_id)) is not None:
        bad.field = failed or bad.field
        bad.reason = f"{votes.location} column {failed}: {bad.reason}"
        return bad
    if tally["yes"] + tally["no"] == 0:
        rl.set("hateful", None, "no country votes")
    else:
        rl.set("hateful", "yes" if tally["yes"] >= tally["no"] else "no")  # ties -> yes (taxonomy.md)
    text = row.get("translation")
    if lang == "en" and is_blank(text):
        text = row.get("original (english)")
    return meme(
        native_id=native_id,
        location=row.location,
        text=text,
        image=pattern.format(lang=lang, meme_id=meme_id),
        labels=rl,
        native={country: votes.get(norm_col(country)) for country in countries},
        split=None,
        language=lang,
        extra={"meme_id": meme_id, "split_group": meme_id, "template_name": row.get("template name")},
    )
