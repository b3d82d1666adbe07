"""Cross-split leakage: what the policy does with each duplicate, and the datasheet's account of it.

Stage consolidate finds every meme whose image duplicates (exact sha256 or near pHash) a meme in an
earlier split (:func:`memeops.data.consolidate.find_leaks`); this module decides, per duplicate,
whether it is kept and flagged or dropped (:func:`leak_action`, by ``data.leakage.policy``), and
builds the datasheet's ``leakage`` block and Markdown from those decisions. Kept plain (no image or
table code) so that the rule and its report cannot drift apart.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from memeops.config import SPLITS

FLAGGED, DROPPED = "flagged", "dropped"
EXAMPLES = 20  # pairs in the block's ``examples`` (the full list is ``groups``)
MARKDOWN_GROUPS = 50  # groups listed in datasheet.md (all of them are in datasheet.json)

POLICY_RULES = {
    "auto": "a duplicate in an official split is kept there and flagged (`leak_of`), so the official "
            "split stays comparable with published results; one in a split memeops assigned is dropped "
            "(quarantined)",
    "drop_later": "every later-split duplicate is dropped (quarantined)",
    "flag": "every later-split duplicate is kept and flagged (`leak_of`)",
}  # fmt: skip


@dataclass(frozen=True)
class Leak:
    """One later-split duplicate of an earlier meme and what the policy did with it."""

    meme_id: str
    split: str
    duplicate_of: str
    duplicate_split: str
    kind: str  # exact | near
    action: str  # flagged | dropped


def leak_action(policy: str, split_origin: str) -> str:
    """``flagged`` or ``dropped`` for a later-split duplicate under ``policy``.

    ``auto`` never moves or drops a meme of an official split (the papers' test set must stay whole);
    a split memeops assigned itself is ours to keep clean, so its duplicates are dropped.
    """
    if policy == "flag":
        return FLAGGED
    if policy == "drop_later":
        return DROPPED
    if policy == "auto":
        return FLAGGED if split_origin == "official" else DROPPED
    raise ValueError(f"unknown leakage policy {policy!r}; expected one of {', '.join(POLICY_RULES)}")


def _split_rank(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


def leakage_groups(leaks: list[Leak]) -> list[dict[str, Any]]:
    """One group per earlier meme: its later-split duplicates (id, split, kind, action), in split order."""
    by_earlier: dict[str, list[Leak]] = {}
    for leak in leaks:
        by_earlier.setdefault(leak.duplicate_of, []).append(leak)
    groups = []
    for earlier, members in by_earlier.items():
        members = sorted(members, key=lambda m: (_split_rank(m.split), m.meme_id))
        duplicates = [{"meme_id": m.meme_id, "split": m.split, "kind": m.kind, "action": m.action} for m in members]
        groups.append({"meme_id": earlier, "split": members[0].duplicate_split, "duplicates": duplicates})
    return sorted(groups, key=lambda g: (_split_rank(g["split"]), g["meme_id"]))


def actions_by_split(leaks: list[Leak]) -> dict[str, dict[str, int]]:
    """``{later split: {flagged: n, dropped: n}}`` for every split that has a duplicate."""
    counts = Counter((leak.split, leak.action) for leak in leaks)
    splits = sorted({leak.split for leak in leaks}, key=_split_rank)
    return {s: {FLAGGED: counts.get((s, FLAGGED), 0), DROPPED: counts.get((s, DROPPED), 0)} for s in splits}


def leakage_report(policy: str, phash_max_distance: int, leaks: list[Leak]) -> dict[str, Any]:
    """The datasheet's ``leakage`` block: counts, split pairs, flagged vs dropped per split, the
    first :data:`EXAMPLES` pairs and every group (earlier meme -> its later duplicates)."""
    kinds = Counter(leak.kind for leak in leaks)
    actions = Counter(leak.action for leak in leaks)
    pairs = Counter(f"{leak.duplicate_split}->{leak.split}" for leak in leaks)
    examples = [{"meme_id": leak.meme_id, "duplicate_of": leak.duplicate_of, "kind": leak.kind}
                for leak in leaks[:EXAMPLES]]  # fmt: skip
    groups = leakage_groups(leaks)
    return {"policy": policy, "phash_max_distance": phash_max_distance,
            "exact": kinds.get("exact", 0), "near": kinds.get("near", 0),
            "flagged": actions.get(FLAGGED, 0), "dropped": actions.get(DROPPED, 0),
            "by_split_pair": dict(sorted(pairs.items())), "by_split": actions_by_split(leaks),
            "examples": examples, "groups_total": len(groups), "groups": groups}  # fmt: skip


def leakage_markdown(leakage: dict[str, Any], within_split_duplicates: int,
                     limit: int = MARKDOWN_GROUPS) -> list[str]:
    """The datasheet's leakage section: the policy and its rule, flagged vs dropped per split, and
    a table of the first ``limit`` groups (the full list is in datasheet.json)."""
    policy = leakage["policy"]
    lines = ["## Leakage across splits", "",
             f"Policy `{policy}`: {POLICY_RULES.get(policy, policy)}. Exact duplicates {leakage['exact']}, "
             f"near duplicates (pHash distance <= {leakage['phash_max_distance']}) {leakage['near']}; "
             f"exact duplicates within a split: {within_split_duplicates}.", ""]  # fmt: skip
    groups = leakage.get("groups") or []
    if not groups:
        return lines
    lines += ["| later split | flagged (kept, `leak_of` set) | dropped (quarantined) |", "|---|---|---|"]
    lines += [f"| {s} | {c[FLAGGED]} | {c[DROPPED]} |" for s, c in leakage.get("by_split", {}).items()]
    total = leakage.get("groups_total", len(groups))
    shown = groups[:limit]
    lines += ["", f"Leakage groups (an earlier meme and its later-split duplicates): {total}"
              + (f"; the first {len(shown)} below, all of them in datasheet.json." if total > len(shown) else "."), "",
              "| earlier meme | split | later duplicates (split, kind, action) |", "|---|---|---|"]  # fmt: skip
    for g in shown:
        dupes = "; ".join(f"{d['meme_id']} ({d['split']}, {d['kind']}, {d['action']})" for d in g["duplicates"])
        lines.append(f"| {g['meme_id']} | {g['split']} | {dupes} |")
    return lines + [""]
