"""SynthMeme orchestration: plan the latents, label them, render in parallel, write the data set.

Order of work (and why):

1. :func:`choose_held_out` fixes the held-out (target, object) pairs H from the seed.
2. :func:`plan_memes` draws every meme's latents in the main process with seeded generators, in
   triples (a hateful base, a text confounder, an image confounder), balancing counts so that each
   target and each object is hateful equally often (that is what keeps unimodal probes at chance).
3. Labels are a pure function of the latents (:mod:`.rules`); noise is seeded per meme.
4. Images are drawn by :func:`.render.render_job`, seeded by ``(seed, index)``: the files are the
   same bytes whatever ``workers`` is.
5. Records are written per split in index order; a metrics report goes to ``report_path``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from memeops.config import SynthConfig
from memeops.data.synth.render import RenderJob, meme_rng, render_job
from memeops.data.synth.rules import Latent, apply_noise, clean_labels, explain
from memeops.data.synth.world import (
    FRAME_BY_ID,
    FRAMES,
    GENERIC_FRAMES,
    OBJECT_BY_KEY,
    OBJECTS,
    TARGET_BY_KEY,
    TARGETS,
    TASKS,
    TONE_WEIGHTS,
    Frame,
    class_names,
    fill,
    objects_of_family,
)
from memeops.timing import without_timings

ROLES: tuple[str, ...] = ("base", "text_confounder", "image_confounder")
SPLIT_FILES: tuple[str, ...] = ("train", "val", "test", "test_unseen")
Pair = tuple[str, str]


# --- held-out pairs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """The held-out pairs H, built so that an unseen triple can use only H pairs.

    ``same[t]``: an object of t's slur family (a hateful pair); ``other[t]``: an object of another
    family (a non-hateful pair), equal to ``same[pi(t)]`` for a family-changing permutation ``pi``;
    ``partner[t] = pi^-1(t)`` is a target whose held-out non-hateful object is ``same[t]``, so the
    image confounder of the unseen triple (partner[t], same[t]) is in H too.
    """

    same: dict[str, str]
    other: dict[str, str]
    partner: dict[str, str]

    @property
    def pairs(self) -> set[Pair]:
        return {(t, o) for t, o in self.same.items()} | {(t, o) for t, o in self.other.items()}


def choose_held_out(seed: int) -> HeldOut:
    """Pick H by seed: per family, three distinct objects for its three targets; then ``pi``."""
    rng = np.random.default_rng([seed, 101])
    same: dict[str, str] = {}
    for family in sorted({t.slur_family for t in TARGETS}):
        members = [t.key for t in TARGETS if t.slur_family == family]
        objs = [o.key for o in objects_of_family(family)]
        chosen = rng.permutation(len(objs))[: len(members)]
        same.update({t: objs[int(i)] for t, i in zip(members, chosen)})
    keys = [t.key for t in TARGETS]
    for _ in range(10_000):  # a permutation with pi(t) in another family (most draws qualify)
        perm = [keys[int(i)] for i in rng.permutation(len(keys))]
        pi = dict(zip(keys, perm))
        if all(TARGET_BY_KEY[t].slur_family != TARGET_BY_KEY[pi[t]].slur_family for t in keys):
            break
    else:  # pragma: no cover - astronomically unlikely
        raise RuntimeError("no family-changing permutation found")
    other = {t: same[pi[t]] for t in keys}
    partner = {pi[t]: t for t in keys}
    return HeldOut(same, other, partner)


# --- planning --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemePlan:
    """One meme's latents and bookkeeping (before labels and pixels)."""

    index: int
    triple: int
    role: str
    split: str
    lang: str
    target: str | None
    obj: str
    frame: str
    related: bool
    held_out: bool

    @property
    def meme_id(self) -> str:
        return f"sm_{self.index:06d}"

    def latent(self) -> Latent:
        target = TARGET_BY_KEY[self.target] if self.target else None
        return Latent(target, OBJECT_BY_KEY[self.obj], FRAME_BY_ID[self.frame], self.related)


def _draw_frame(rng: np.random.Generator, table: tuple[Frame, ...], tone: str | None = None) -> Frame:
    """Tone first (given, or drawn by ``TONE_WEIGHTS``), then uniformly among that tone's frames."""
    if tone is None:
        tones = list(TONE_WEIGHTS)
        probs = np.array([TONE_WEIGHTS[t] for t in tones])
        tone = tones[int(rng.choice(len(tones), p=probs / probs.sum()))]
    options = [f for f in table if f.tone == tone]
    return options[int(rng.integers(0, len(options)))]


def _tone_schedule(n: int, rng: np.random.Generator) -> list[str]:
    """Exactly ``TONE_WEIGHTS`` of ``n`` tones (largest remainders), shuffled.

    Exact, not sampled: P(sarcastic | charm) is the share of praise (nasty) or complaint (cute)
    captions, so equal counts keep an image-only sarcasm probe at chance.
    """
    total = sum(TONE_WEIGHTS.values())
    raw = {t: n * w / total for t, w in TONE_WEIGHTS.items()}
    counts = {t: int(v) for t, v in raw.items()}
    for t in sorted(raw, key=lambda t: raw[t] - counts[t], reverse=True)[: n - sum(counts.values())]:
        counts[t] += 1
    schedule = [t for t in TONE_WEIGHTS for _ in range(counts[t])]
    return [schedule[int(i)] for i in rng.permutation(n)]


def _charm_key(frame_id: str, obj: str) -> tuple[str, str]:
    return frame_id, OBJECT_BY_KEY[obj].charm


def _least_used(candidates: list[str], counts: Counter, rng: np.random.Generator,
                first: Counter | None = None, first_key=None) -> str:
    """The candidate used least so far, ties broken at random: keeps marginals balanced.

    With ``first``, candidates are ranked by ``first[first_key(c)]`` before their own count.
    """
    order = [candidates[int(i)] for i in rng.permutation(len(candidates))]
    if first is None:
        return min(order, key=lambda c: counts[c])
    return min(order, key=lambda c: (first[first_key(c)], counts[c]))


def _split_of_triples(cfg: SynthConfig, n_triples: int, rng: np.random.Generator) -> list[str]:
    """test_unseen for ``unseen_fraction`` of triples; the rest by ``cfg.split`` with exact counts."""
    n_unseen = round(cfg.unseen_fraction * n_triples)
    order = rng.permutation(n_triples)
    splits = [""] * n_triples
    for i in order[:n_unseen]:
        splits[int(i)] = "test_unseen"
    seen = order[n_unseen:]
    n_train = round(cfg.split.train * len(seen))
    n_val = round(cfg.split.val * len(seen))
    for rank, i in enumerate(seen):
        splits[int(i)] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return splits


def _unrelated_slots(cfg: SynthConfig, n_triples: int, rng: np.random.Generator) -> set[tuple[int, str]]:
    """Which confounders get a generic caption: image confounders first (their object keeps the
    "same image, benign text" role of an HM confounder), text confounders only past one third."""
    k = min(round(cfg.unrelated_rate * 3 * n_triples), 2 * n_triples)
    order = [int(i) for i in rng.permutation(n_triples)]
    slots = {(i, "image_confounder") for i in order[: min(k, n_triples)]}
    slots |= {(i, "text_confounder") for i in order[: max(0, k - n_triples)]}
    return slots


def plan_memes(cfg: SynthConfig, held: HeldOut) -> list[MemePlan]:
    """All memes' latents, in triples; see the module docstring and ``docs/synthmeme.md``."""
    n_triples = cfg.n_memes // 3
    rng = np.random.default_rng([cfg.seed, 102])
    splits = _split_of_triples(cfg, n_triples, rng)
    unrelated = _unrelated_slots(cfg, n_triples, rng)
    langs = list(cfg.languages)
    lang_p = np.array([cfg.languages[lang] for lang in langs], dtype=float)
    lang_p /= lang_p.sum()
    h_pairs = held.pairs

    # Base targets cycle through shuffled rounds of all 12, separately for unseen and seen triples,
    # so every target is the base target equally often in both.
    def target_cycle() -> list[str]:
        cycle: list[str] = []
        while len(cycle) < n_triples:
            cycle += [TARGETS[int(i)].key for i in rng.permutation(len(TARGETS))]
        return cycle

    cycles = {"unseen": target_cycle(), "seen": target_cycle()}
    tones = _tone_schedule(n_triples, rng)
    used = {"unseen": 0, "seen": 0}
    base_obj, text_obj, image_tgt, frame_charm = Counter(), Counter(), Counter(), Counter()

    triples: dict[int, list[MemePlan]] = {}
    # unseen triples are fixed by H, so plan them first and let the greedy seen choices compensate
    order = [i for i in range(n_triples) if splits[i] == "test_unseen"]
    order += [i for i in range(n_triples) if splits[i] != "test_unseen"]
    for k in order:
        unseen = splits[k] == "test_unseen"
        kind = "unseen" if unseen else "seen"
        t = cycles[kind][used[kind]]
        used[kind] += 1
        family = TARGET_BY_KEY[t].slur_family
        # the frame comes first so that objects can balance charm within each frame: then a caption
        # alone says nothing about sarcasm beyond its tone (P(nasty | frame) = 1/2 for every frame)
        frame = _draw_frame(rng, FRAMES, tones[k])
        charm_of = partial(_charm_key, frame.id)
        if unseen:
            o, o_text, t_image = held.same[t], held.other[t], held.partner[t]
            frame_charm[charm_of(o)] += 1
            frame_charm[charm_of(o_text)] += 1
        else:
            same_family = [x.key for x in objects_of_family(family) if (t, x.key) not in h_pairs]
            o = _least_used(same_family, base_obj, rng, frame_charm, charm_of)
            frame_charm[charm_of(o)] += 1
            other_family = [x.key for x in OBJECTS if x.family != family and (t, x.key) not in h_pairs]
            o_text = _least_used(other_family, text_obj, rng, frame_charm, charm_of)
            frame_charm[charm_of(o_text)] += 1
            fam_o = OBJECT_BY_KEY[o].family
            other_targets = [x.key for x in TARGETS if x.slur_family != fam_o and (x.key, o) not in h_pairs]
            t_image = _least_used(other_targets, image_tgt, rng)
        lang = langs[int(rng.choice(len(langs), p=lang_p))]
        members = []
        for r, (role, tgt, obj) in enumerate(
            (("base", t, o), ("text_confounder", t, o_text), ("image_confounder", t_image, o))
        ):
            generic = (k, role) in unrelated
            fr = _draw_frame(rng, GENERIC_FRAMES) if generic else frame
            members.append(MemePlan(3 * k + r, k, role, splits[k], lang, None if generic else tgt, obj, fr.id,
                                    not generic, unseen))
        base_obj[o] += 1
        text_obj[o_text] += 1
        if (k, "image_confounder") not in unrelated:
            image_tgt[t_image] += 1
        triples[k] = members
    return [m for k in range(n_triples) for m in triples[k]]


# --- records ---------------------------------------------------------------------------------------


def caption_parts(plan: MemePlan) -> tuple[str | None, str | None]:
    frame = FRAME_BY_ID[plan.frame]
    target = TARGET_BY_KEY[plan.target] if plan.target else None
    top, bottom = frame.parts(plan.lang)
    return fill(top, target, plan.lang), fill(bottom, target, plan.lang)


def caption_text(top: str | None, bottom: str | None) -> str:
    """The meme's text field: top and bottom joined by a newline when both are present."""
    return "\n".join(part for part in (top, bottom) if part)


def latent_record(plan: MemePlan) -> dict:
    lat = plan.latent()
    t, o, f = lat.target, lat.obj, lat.frame
    return {
        "target": t.key if t else None,
        "target_type": t.type if t else None,
        "slur_family": t.slur_family if t else None,
        "frame": f.id,
        "tone": f.tone,
        "emotion": f.emotion,
        "kind": f.kind,
        "rude": f.rude,
        "text_metaphor": f.text_metaphor,
        "object": o.key,
        "family": o.family,
        "charm": o.charm,
        "vehicle": o.vehicle,
        "related": plan.related,
        "triple": plan.triple,
        "role": plan.role,
        "held_out": plan.held_out,
    }


def label_sets() -> dict[str, tuple[str, ...]]:
    """Per task, the labels SynthMeme's rules can produce, in taxonomy order: what noise draws from.

    Noise swaps a label for another *possible* one (an annotator confuses sarcastic with not
    sarcastic; they do not invent ``very_twisted``, which no rule here produces). Found by running
    the rules over every latent combination; a label outside the taxonomy is a bug and raises.
    """
    from memeops.data.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    produced: dict[str, set[str]] = {task: set() for task in TASKS}
    combos = [(t, f) for t in TARGETS for f in FRAMES] + [(None, f) for f in GENERIC_FRAMES]
    for target, frame in combos:
        for obj in OBJECTS:
            for task, label in clean_labels(Latent(target, obj, frame, target is not None)).items():
                if label is not None:
                    produced[task].add(label)
    sets = {}
    for task in TASKS:
        labels = taxonomy.task(task).labels
        unknown = produced[task] - set(labels)
        if unknown:
            raise ValueError(f"SynthMeme's rule for {task} gives labels outside the taxonomy: {sorted(unknown)}")
        sets[task] = tuple(label for label in labels if label in produced[task])
    return sets


def build_record(plan: MemePlan, cfg: SynthConfig, sets: dict[str, tuple[str, ...]]) -> dict:
    """Everything about one meme except what rendering adds (objects, style)."""
    top, bottom = caption_parts(plan)
    text = caption_text(top, bottom)
    lat = plan.latent()
    clean = clean_labels(lat)
    noisy = apply_noise(clean, sets, cfg.label_noise, meme_rng(cfg.seed, plan.index, 1))
    return {
        "id": plan.meme_id,
        "image": f"images/{plan.meme_id}.jpg",
        "text": text,
        "lang": plan.lang,
        "split": plan.split,
        "labels": noisy,
        "clean_labels": clean,
        "explanations": explain(lat, clean, text),
        "objects": [],
        "caption": {"top": top, "bottom": bottom},
        "latent": latent_record(plan),
        "style": None,
    }


# --- rendering and writing -------------------------------------------------------------------------


def _render_all(jobs: list[RenderJob], workers: int) -> list[dict]:
    """Render in ``workers`` processes; results come back in job order (imap keeps order)."""
    if workers <= 1 or len(jobs) < 2:
        return [render_job(job) for job in jobs]
    ctx = mp.get_context("spawn")  # no fork: safe even if the caller holds threads (torch, mlflow)
    with ctx.Pool(processes=workers) as pool:
        return list(pool.imap(render_job, jobs, chunksize=max(1, min(32, len(jobs) // (4 * workers)))))


def _clear_outputs(out: Path) -> None:
    """Remove what a previous run wrote (only SynthMeme's own files), so no stale image survives."""
    for sub in ("images", "labels"):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)
    for name in (*[f"{s}.jsonl" for s in SPLIT_FILES], "classes.json"):
        (out / name).unlink(missing_ok=True)


def _counts(values: list[str | None]) -> dict[str, int]:
    counter = Counter("missing" if v is None else v for v in values)
    return dict(sorted(counter.items()))


def build_report(records: list[dict], cfg: SynthConfig, held: HeldOut, seconds: float) -> dict:
    """The metrics file: sizes, class balance, measured noise, unrelated share, geometry, speed."""
    by_split = {s: [r for r in records if r["split"] == s] for s in SPLIT_FILES}
    balance, balance_clean, noise = {}, {}, {}
    for task in TASKS:
        balance[task] = {"all": _counts([r["labels"][task] for r in records])}
        balance_clean[task] = {"all": _counts([r["clean_labels"][task] for r in records])}
        for s, rows in by_split.items():
            balance[task][s] = _counts([r["labels"][task] for r in rows])
            balance_clean[task][s] = _counts([r["clean_labels"][task] for r in rows])
        present = [r for r in records if r["clean_labels"][task] is not None]
        changed = sum(r["labels"][task] != r["clean_labels"][task] for r in present)
        noise[task] = round(changed / len(present), 4) if present else None
    size2 = cfg.image_size**2
    key_areas = [(o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]) / size2
                 for r in records for o in r["objects"] if o["key"]]
    n_present = sum(r["clean_labels"][t] is not None for r in records for t in TASKS)
    n_changed = sum(r["clean_labels"][t] is not None and r["labels"][t] != r["clean_labels"][t]
                    for r in records for t in TASKS)
    return {
        "n_memes": len(records),
        "n_triples": len(records) // 3,
        "n_per_split": {s: len(rows) for s, rows in by_split.items()},
        "class_balance": balance,
        "class_balance_clean": balance_clean,
        "label_noise": cfg.label_noise,
        "noise_rate": noise,
        "noise_rate_overall": round(n_changed / max(1, n_present), 4),
        "unrelated_rate": cfg.unrelated_rate,
        "unrelated_fraction": round(sum(not r["latent"]["related"] for r in records) / len(records), 4),
        "key_area_fraction_mean": round(float(np.mean(key_areas)), 4),
        "key_area_fraction_max": round(float(np.max(key_areas)), 4),
        "props_per_meme_mean": round(float(np.mean([len(r["objects"]) - 1 for r in records])), 3),
        "languages": _counts([r["lang"] for r in records]),
        "styles": _counts([r["style"] for r in records]),
        "held_out_pairs": sorted([list(p) for p in held.pairs]),
        "image_size": cfg.image_size,
        "workers": cfg.workers,
        "generation_seconds": round(seconds, 2),
        "memes_per_second": round(len(records) / max(seconds, 1e-9), 1),
    }


def generate(cfg: SynthConfig, report_path: str | Path | None = "reports/synthmeme.json") -> dict:
    """Generate SynthMeme under ``cfg.output_dir``; write the report; return it.

    Same ``cfg`` -> byte-identical jsonl, images, label files and report: the report file leaves out
    the timings (:func:`memeops.timing.without_timings`), which only the returned dict carries.
    ``report_path=None`` skips writing the report.
    """
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_outputs(out)
    (out / "images").mkdir()
    (out / "labels").mkdir()

    held = choose_held_out(cfg.seed)
    plans = plan_memes(cfg, held)
    sets = label_sets()
    records = [build_record(p, cfg, sets) for p in plans]
    jobs = [
        RenderJob(p.index, p.meme_id, cfg.seed, cfg.image_size, p.lang, r["caption"]["top"],
                  r["caption"]["bottom"], p.obj, str(out / r["image"]), str(out / "labels" / f"{p.meme_id}.txt"),
                  cfg.jpeg_quality)
        for p, r in zip(plans, records)
    ]
    for rec, result in zip(records, _render_all(jobs, cfg.workers)):
        rec["objects"], rec["style"] = result["objects"], result["style"]

    for split in SPLIT_FILES:
        with open(out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as fh:
            for rec in records:
                if rec["split"] == split:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (out / "classes.json").write_text(json.dumps(class_names(), indent=1) + "\n", encoding="utf-8")

    report = build_report(records, cfg, held, time.perf_counter() - start)
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(without_timings(report), indent=2, ensure_ascii=False) + "\n"
        Path(report_path).write_text(text, encoding="utf-8")
    return report


# --- figure ----------------------------------------------------------------------------------------


def load_records(output_dir: str | Path) -> list[dict]:
    """All records of a generated set, in index order."""
    rows = []
    for split in SPLIT_FILES:
        path = Path(output_dir) / f"{split}.jsonl"
        if path.exists():
            rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return sorted(rows, key=lambda r: r["id"])


def _pick_samples(records: list[dict], n: int) -> list[dict]:
    """A full English triple, then memes that show the other rules (zh, unrelated, sarcasm, metaphor)."""
    by_triple: dict[int, list[dict]] = {}
    for r in records:
        by_triple.setdefault(r["latent"]["triple"], []).append(r)
    picked: list[dict] = []
    for members in by_triple.values():
        if all(m["lang"] == "en" and m["latent"]["related"] for m in members):
            picked += members
            break
    wanted = [
        lambda r: r["lang"] == "zh" and r["clean_labels"]["hateful"] == "yes",
        lambda r: not r["latent"]["related"],
        lambda r: r["clean_labels"]["sarcasm"] == "twisted_meaning" and r["clean_labels"]["hateful"] == "no",
        lambda r: r["clean_labels"]["metaphor_type"] == "complementary",
        lambda r: r["lang"] == "zh" and r["clean_labels"]["offensiveness_level"] == "slight",
        lambda r: r["clean_labels"]["sentiment"] == "positive",
    ]
    for test in wanted:
        for r in records:
            if test(r) and r not in picked:
                picked.append(r)
                break
    return picked[:n]


def make_sample_figure(output_dir: str | Path, figure_path: str | Path, n: int = 8, tile: int = 256) -> Path:
    """A grid of ``n`` sample memes with their clean labels (for the docs); returns the PNG path."""
    from PIL import Image, ImageDraw, ImageFont

    from memeops.data.synth.world import latin_font_path

    records = _pick_samples(load_records(output_dir), n)
    cols = 4
    rows = (len(records) + cols - 1) // cols
    text_h, pad = 92, 6
    sheet = Image.new("RGB", (cols * (tile + pad) + pad, rows * (tile + text_h + pad) + pad), "white")
    font = ImageFont.truetype(str(latin_font_path()).replace("-Bold", ""), 12)
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(records):
        x, y = pad + (i % cols) * (tile + pad), pad + (i // cols) * (tile + text_h + pad)
        img = Image.open(Path(output_dir) / r["image"]).convert("RGB")
        img = img.resize((tile, tile), Image.Resampling.LANCZOS)
        sheet.paste(img, (x, y))
        c, lat = r["clean_labels"], r["latent"]
        lines = [
            f"{r['id'][3:]} {lat['role'].replace('_confounder', ' conf.')} {r['lang']} {lat['object']}",
            f"hateful={c['hateful']}  offensive={c['offensiveness_level']}",
            f"target={c['harm_target']}  intention={c['intention']}",
            f"sarcasm={c['sarcasm']}",
            f"metaphor={c['metaphor']} ({c['metaphor_type']})",
            f"sentiment={c['sentiment']}  emotion={c['emotion']}",
        ]
        for j, line in enumerate(lines):
            draw.text((x + 2, y + tile + 3 + j * 15), line, font=font, fill=(20, 20, 20))
    figure_path = Path(figure_path)
    figure_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(figure_path, optimize=True)
    if figure_path.stat().st_size > 480_000:  # keep it commit-sized: a 256-colour palette is plenty
        sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(figure_path, optimize=True)
    return figure_path
