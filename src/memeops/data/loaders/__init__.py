"""Loaders for public meme formats. Each format is a function ``load(source, taxonomy)``.

A loader yields exactly one :class:`~memeops.data.records.RawMeme` or
:class:`~memeops.data.records.Quarantined` per input row it reads, and raises
:class:`~memeops.data.records.SourceError` (one line: source name + what was expected) when the
source cannot be read at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from memeops.config import SourceConfig
from memeops.data.records import LoaderItem, SourceError
from memeops.data.taxonomy import Taxonomy

Loader = Callable[[SourceConfig, Taxonomy], Iterator[LoaderItem]]


def _registry() -> dict[str, Loader]:
    # Imported lazily so that one broken optional dependency cannot take down every format.
    from memeops.data.loaders import (
        harmeme,
        hateful_memes,
        mami,
        memelens,
        memotion,
        met_meme,
        multi3hate,
        multioff,
        pridemm,
        synthmeme,
    )

    return {
        "hateful_memes": hateful_memes.load,
        "harmeme": harmeme.load,
        "met_meme": met_meme.load,
        "memotion": memotion.load,
        "mami": mami.load,
        "multioff": multioff.load,
        "pridemm": pridemm.load,
        "multi3hate": multi3hate.load,
        "memelens": memelens.load,
        "synthmeme": synthmeme.load,
    }


FORMAT_NAMES: tuple[str, ...] = (
    "hateful_memes", "harmeme", "met_meme", "memotion", "mami",
    "multioff", "pridemm", "multi3hate", "memelens", "synthmeme",
)


def get_loader(source: SourceConfig) -> Loader:
    """The loader of ``source.format``, or a one-line SourceError naming the expected formats."""
    if source.format not in FORMAT_NAMES:
        raise SourceError(
            f"source {source.name!r}: unknown format {source.format!r} (expected one of {', '.join(FORMAT_NAMES)})"
        )
    return _registry()[source.format]
