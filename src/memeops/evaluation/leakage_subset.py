"""The leakage-clean subsets stage ``evaluate`` adds beside an official split with flagged memes.

Under ``data.leakage.policy: auto`` (or ``flag``) an official split keeps a meme whose image
duplicates one in an earlier split, flagged with ``leak_of``: the official split is what every
paper reports, so its figures must stay comparable. The same split without those memes is the
honest figure of generalisation, so evaluate reports both: ``<split>`` as is and
``<split>_clean`` (its memes whose ``leak_of`` is null). A split with no flagged meme gets no
clean twin, so the evaluation of data without leaks (SynthMeme) is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

CLEAN_SUFFIX = "_clean"
LEAK_COLUMN = "leak_of"


@dataclass(frozen=True)
class EvalSplit:
    """One entry of a version's ``splits``: its report name, the meme-table split its predictions
    come from, and whether flagged memes are left out."""

    name: str
    split: str
    clean: bool = False


def clean_split_name(split: str) -> str:
    """``test`` -> ``test_clean``."""
    return split + CLEAN_SUFFIX


def leak_values(memes: pd.DataFrame) -> list[str | None] | None:
    """``leak_of`` per row of the meme table (None where unflagged); None without the column (a
    table from before the column, or a test's)."""
    if LEAK_COLUMN not in memes.columns:
        return None
    return [v if isinstance(v, str) else None for v in memes[LEAK_COLUMN]]


def flagged_count(attrs: pd.DataFrame, split: str) -> int:
    """Memes of ``split`` in the meme table flagged as duplicates of an earlier-split meme."""
    if LEAK_COLUMN not in attrs.columns:
        return 0
    return int((attrs[LEAK_COLUMN].notna() & (attrs["split"] == split)).sum())


def split_size(attrs: pd.DataFrame, split: str) -> int:
    """Memes of ``split`` in the meme table."""
    return int((attrs["split"] == split).sum())


def clean_twin(attrs: pd.DataFrame, split: str) -> str | None:
    """``<split>_clean`` when the meme table flags some but not all memes of ``split``, else None
    (no flagged meme: nothing changes; all flagged: no clean meme to report)."""
    flagged = flagged_count(attrs, split)
    return clean_split_name(split) if 0 < flagged < split_size(attrs, split) else None


def evaluation_splits(attrs: pd.DataFrame, splits: Sequence[str]) -> list[EvalSplit]:
    """Each requested split, followed by its leakage-clean twin when it has one (:func:`clean_twin`)."""
    out: list[EvalSplit] = []
    for split in splits:
        out.append(EvalSplit(split, split))
        twin = clean_twin(attrs, split)
        if twin:
            out.append(EvalSplit(twin, split, clean=True))
    return out


def clean_attributes(attrs: pd.DataFrame) -> pd.DataFrame:
    """The meme attributes without flagged memes (so coverage notes count the clean memes)."""
    if LEAK_COLUMN not in attrs.columns:
        return attrs
    return attrs[attrs[LEAK_COLUMN].isna()]


def clean_frame(frame: pd.DataFrame | None, attrs: pd.DataFrame) -> pd.DataFrame | None:
    """A logged predictions frame restricted to memes the meme table does not flag."""
    if frame is None or LEAK_COLUMN not in attrs.columns:
        return frame
    flagged = set(attrs.index[attrs[LEAK_COLUMN].notna()])
    return frame[~frame["meme_id"].astype(str).isin(flagged)]


def official_note(attrs: pd.DataFrame, split: str) -> str:
    """The note on an official split that has flagged memes."""
    flagged, total, twin = flagged_count(attrs, split), split_size(attrs, split), clean_twin(attrs, split)
    return (f"{flagged} of the {total} {split} memes duplicate an earlier-split meme (flagged with leak_of by "
            f"data.leakage.policy) and are kept, as in the official split; "
            + (f"{twin} leaves them out" if twin else "no meme is left for a leakage-clean subset"))  # fmt: skip


def clean_note(attrs: pd.DataFrame, split: str) -> str:
    """The note on a leakage-clean subset."""
    total = split_size(attrs, split)
    return (f"leakage-clean subset of {split}: its {total - flagged_count(attrs, split)} of {total} memes whose "
            f"image duplicates no earlier-split meme (leak_of null)")  # fmt: skip
