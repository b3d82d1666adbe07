"""The report page's sections over examples: sample memes with their predictions, the VLM's
explanations and MGMCF's attention drawn on memes.

The records (:class:`SampleMeme`, :class:`AttentionMap`) are computed by the caller with the model
folders (:mod:`memeops.evaluation.samples`); here they are only drawn. Every text is escaped.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from memeops.reporting.charts import chart_attention, overlay_attention, thumbnail
from memeops.reporting.inputs import AttentionMap, SampleMeme
from memeops.reporting.markup import Assets, esc, html_table, note, num


def samples_section(samples: Sequence[SampleMeme] | None, assets: Assets) -> str:
    """One card per sample meme: thumbnail, caption, and gold vs each model's label and probability."""
    if not samples:
        return note("No sample memes (the report was built without the meme table or model folders).")
    models = list(dict.fromkeys(m for s in samples for m in s.predictions))
    cards = []
    for s in samples:
        thumb = thumbnail(s.image, assets.path("samples", f"{s.meme_id}.jpg")) if s.image else None
        tasks = list(dict.fromkeys([*s.gold, *(t for p in s.predictions.values() for t in p)]))
        rows = []
        for task in tasks:
            gold = s.gold.get(task)
            cells = [esc(task), esc(gold if gold is not None else "–")]
            for m in models:
                pred = s.predictions.get(m, {}).get(task)
                if pred is None:
                    cells.append("–")
                    continue
                label, prob = pred
                cls = "" if gold is None else ("ok" if label == gold else "bad")
                p = f' <span class="dim">{prob:.2f}</span>' if prob is not None else ""
                cells.append(f'<span class="{cls}">{esc(label)}</span>{p}')
            rows.append(cells)
        cards.append(
            '<div class="card">' + assets.img(thumb, f"meme {s.meme_id}", "thumb")
            + f'<div class="meta"><code>{esc(s.meme_id)}</code> {esc(s.split)} {esc(s.language)}</div>'
            + f'<div class="caption">{esc(s.text)}</div>'
            + html_table(["task", "gold", *models], rows, "small") + "</div>"
        )  # fmt: skip
    legend = ('<p>Green: the prediction matches the gold label; red: it does not; the number is the '
              "model's probability of its label.</p>")  # fmt: skip
    return legend + '<div class="cards">' + "".join(cards) + "</div>"


def vlm_section(reports_dir: Path, meme_images: Mapping[str, Path], assets: Assets, limit: int) -> str:
    """Up to ``limit`` rows of ``vlm/examples.csv`` (one per task first): gold, scored and generated
    labels, explanation vs reference; a thumbnail when ``meme_images`` has the meme."""
    path = reports_dir / "vlm" / "examples.csv"
    if not path.is_file():
        return note("No VLM explanations yet: reports/vlm/examples.csv (stage train_vlm) is missing.")
    with path.open(encoding="utf-8", newline="") as fh:
        records = list(csv.DictReader(fh))
    if not records:
        return note("reports/vlm/examples.csv has no rows.")
    # one example per task first (in file order), then fill up to the limit
    chosen, tasks_seen = [], set()
    for i, r in enumerate(records):
        if r.get("task") not in tasks_seen:
            tasks_seen.add(r.get("task"))
            chosen.append(i)
    chosen += [i for i in range(len(records)) if i not in chosen]
    rows = []
    for i in sorted(chosen[:limit]):
        r = records[i]
        mid = r.get("meme_id", "")
        image = meme_images.get(mid)
        thumb = (
            thumbnail(image, assets.path("vlm", f"{mid}.jpg"), 96)
            if image and Path(image).is_file()
            else None
        )
        agree = r.get("scored_label") == r.get("label")
        valid = str(r.get("valid", "")).lower() == "true"
        prob = num(r.get("scored_prob"))
        rows.append([
            assets.img(thumb, f"meme {mid}", "mini") if thumb else "",
            f"<code>{esc(mid)}</code>", esc(r.get("task")), esc(r.get("label")),
            f'<span class="{"ok" if agree else "bad"}">{esc(r.get("scored_label"))}</span>'
            + (f' <span class="dim">{prob:.2f}</span>' if prob is not None else ""),
            esc(r.get("generated_label")) + ("" if valid else f' <span class="bad">invalid: {esc(r.get("invalid_reason"))}</span>'),
            esc(r.get("explanation")), f'<span class="dim">{esc(r.get("reference_explanation"))}</span>',
        ])  # fmt: skip
    return (
        f"<p>{len(rows)} of {len(records)} generated explanations from reports/vlm/examples.csv (one per "
        "task first). The label is scored over the candidates; the explanation is generated "
        "and parsed strictly (docs/vlm.md).</p>"
        + html_table(["", "meme", "task", "gold", "scored label", "generated label", "explanation",
                  "reference explanation"], rows, "small wide")
    )  # fmt: skip


def attention_section(attention: Sequence[AttentionMap] | None, assets: Assets) -> str:
    """Per meme: the attention overlay on the image, the caption's tokens shaded by weight, the bars."""
    if not attention:
        return note("No attention maps (the report was built without the MGMCF model folder).")
    blocks = []
    for att in attention:
        overlay = overlay_attention(att, assets.path("attention", f"{att.meme_id}_overlay.png"))
        bars = chart_attention(att, assets.path("attention", f"{att.meme_id}_bars.png"))
        top = max(att.token_weights, default=0.0) or 1.0
        tokens = " ".join(
            f'<span class="tok" style="background: rgba(76,114,176,{min(1.0, w / top) * 0.8:.2f})" '
            f'title="{w:.3f}">{esc(t)}</span>' for t, w in zip(att.tokens, att.token_weights)
        )  # fmt: skip
        total_text, total_regions = sum(att.token_weights), sum(att.region_weights)
        preds = ", ".join(f"{esc(t)}: {esc(v)}" for t, v in att.predictions.items())
        blocks.append(
            '<div class="att">'
            + f'<div>{assets.img(overlay, f"attention overlay {att.meme_id}", "overlay")}</div>'
            + f'<div><div class="meta"><code>{esc(att.meme_id)}</code></div>'
            + f'<div class="caption">{esc(att.text)}</div>'
            + f"<p>text tokens {total_text:.2f} · image {att.image_weight:.2f} · regions {total_regions:.2f}</p>"
            + f'<p class="toks">{tokens}</p>'
            + assets.img(bars, f"attention bars {att.meme_id}", "chart")
            + (f'<p class="dim small">MGMCF predicts {preds}</p>' if preds else "")
            + "</div></div>"
        )  # fmt: skip
    return (
        "<p>The global multimodal context's attention over the local tokens (last CAP block, mean over "
        "heads and context queries; it sums to one over the valid tokens): boxes are shaded by the "
        "region's weight, the caption's tokens by theirs (docs/mgmcf.md).</p>" + "".join(blocks)
    )
