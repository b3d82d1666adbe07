"""What loaders yield: one :class:`RawMeme` or one :class:`Quarantined` per input row.

Every row a loader reads comes out as exactly one of the two, so a source's datasheet line always
reconciles: ``read = kept + quarantined``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Label = Union[str, list[str], None]


class SourceError(ValueError):
    """A source that cannot be read at all (missing path, wrong layout, unknown format).

    The message is one line naming the source and what was expected; the CLI prints it without a
    traceback.
    """


@dataclass
class RawMeme:
    """One meme as a loader read it, before image checks, hashing, splitting and leakage."""

    native_id: str
    location: str  # "<file>:<line or row>" for error messages and quarantine entries
    text: str | None
    image: str | None  # path as the source gives it, relative to the source root
    split: str | None = None  # official split, or None to let consolidation assign one
    language: str | None = None
    labels: dict[str, Label] = field(default_factory=dict)  # task -> mapped label; None = missing
    native: dict[str, Any] = field(default_factory=dict)  # native labels verbatim
    label_notes: dict[str, str] = field(default_factory=dict)  # task -> why it was set missing
    explanations: dict[str, str] = field(default_factory=dict)  # task -> explanation text
    text_origin: str = "annotation"  # where the text came from: annotation | ocr | missing
    extra: dict[str, Any] = field(default_factory=dict)  # other ground truth (boxes, style, ...)


@dataclass
class Quarantined:
    """A row that was not kept, with enough detail to find and fix it."""

    location: str
    field: str
    reason: str
    value: str | None = None
    native_id: str | None = None
    source: str = ""  # filled in by consolidation

    def __post_init__(self) -> None:
        if self.value is not None:
            self.value = str(self.value)
            if len(self.value) > 200:  # keep the quarantine file readable; the location finds the rest
                self.value = self.value[:200] + "…"


LoaderItem = Union[RawMeme, Quarantined]
