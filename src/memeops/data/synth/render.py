"""Drawing one SynthMeme image: background, distractor props, the key object, meme-style captions.

Every random choice made here (background style and colours, object sizes and positions, props)
comes from one generator seeded by ``(seed, index)``, so an image depends only on its job and not on
which worker process drew it or in what order. None of these choices touches a label: they are the
nuisance variation a model has to see through.

Geometry (why it looks like this): the key object is small (side 0.18-0.32 of the image, so its box
is at most ~10% of the area) and the props are as large or larger (0.25-0.42), so a global,
low-resolution view of the image is dominated by things that carry no label, while a crop of the
key object's region carries the metaphor cue (see the object-level property test).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from memeops.data.synth.world import (
    PROPS,
    cjk_font_path,
    class_id,
    emoji_font_path,
    emoji_for,
    latin_font_path,
)

STYLES: tuple[str, ...] = ("gradient", "texture", "photo_noise")
KEY_SIDE = (0.18, 0.32)  # key object's longer side, as a fraction of the image side
PROP_SIDE = (0.25, 0.42)  # distractor props: as large as or larger than the key object
MAX_PROPS = 3
CAPTION_MAX_BAND = 0.24  # one caption block may take at most this fraction of the height
_OUTLINE = (16, 16, 16)


@dataclass(frozen=True)
class RenderJob:
    """Everything needed to draw and write one meme (picklable, so it crosses process boundaries)."""

    index: int
    meme_id: str
    seed: int
    size: int
    lang: str
    top: str | None
    bottom: str | None
    key_class: str
    image_path: str
    label_path: str
    jpeg_quality: int


def meme_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The generator of one meme's ``stream`` (0: rendering, 1: label noise), independent of workers."""
    return np.random.default_rng([seed, index, stream])


# --- backgrounds -----------------------------------------------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A mid-range colour (captions are white with a dark outline, so both extremes are avoided)."""
    return rng.uniform(35, 215, size=3)


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x, y


def bg_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear two-colour gradient at a random angle."""
    c1, c2 = _colour(rng), _colour(rng)
    angle = rng.uniform(0, 2 * np.pi)
    x, y = _coords(size)
    proj = x * np.cos(angle) + y * np.sin(angle)
    t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def bg_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes, a checkerboard or dots in two colours."""
    c1 = _colour(rng)
    c2 = np.clip(c1 + rng.choice([-1, 1]) * rng.uniform(30, 70, size=3), 0, 255)
    kind = ("stripes", "checker", "dots")[int(rng.integers(0, 3))]
    period = rng.uniform(0.06, 0.2) * size
    x, y = _coords(size)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        mask = np.floor((x * np.cos(angle) + y * np.sin(angle)) / (period / 2)) % 2
    elif kind == "checker":
        mask = (np.floor(x / period) + np.floor(y / period)) % 2
    else:
        radius = rng.uniform(0.18, 0.4) * period
        dx, dy = (x % period) - period / 2, (y % period) - period / 2
        mask = (dx * dx + dy * dy < radius * radius).astype(np.float32)
    return c1 * (1 - mask[..., None]) + c2 * mask[..., None]


def bg_photo_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth multi-scale noise (coarse octaves dominate) with fine grain: reads like a blurry photo."""
    base = _colour(rng)
    acc = np.zeros((size, size, 3), np.float32)
    for octave, cells in enumerate((2, 4, 8, 16, 32)):
        weight = 1.0 / (1.6**octave)
        for ch in range(3):
            grid = rng.normal(0, 1, size=(cells + 1, cells + 1)).astype(np.float32)
            up = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
            acc[..., ch] += weight * np.asarray(up)
    # luminance-correlated channels look more like light and shadow than like coloured static
    lum = acc.mean(axis=2, keepdims=True)
    acc = 0.65 * lum + 0.35 * acc
    acc = acc / max(float(acc.std()), 1e-6) * rng.uniform(25, 45)
    grain = rng.normal(0, 3.0, size=(size, size, 1)).astype(np.float32)
    return base + acc + grain


def background(style: str, rng: np.random.Generator, size: int) -> Image.Image:
    fn = {"gradient": bg_gradient, "texture": bg_texture, "photo_noise": bg_photo_noise}[style]
    return Image.fromarray(np.clip(fn(rng, size), 0, 255).astype(np.uint8), mode="RGB")


# --- emoji tiles -----------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _base_tile(emoji: str) -> Image.Image:
    """The emoji drawn once, large, cropped to its visible pixels (later resized: fast, deterministic)."""
    font = ImageFont.truetype(str(emoji_font_path()), 200)
    canvas = Image.new("RGBA", (320, 320), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((160, 160), emoji, font=font, embedded_color=True, anchor="mm")
    bbox = canvas.getbbox()
    if bbox is None:
        raise RuntimeError(f"emoji {emoji!r} renders empty with {emoji_font_path()}")
    return canvas.crop(bbox)


@lru_cache(maxsize=4096)
def emoji_tile(emoji: str, side: int, flip: bool) -> Image.Image:
    """The emoji scaled so its longer side is ``side`` pixels (tight box), optionally mirrored."""
    base = _base_tile(emoji)
    scale = side / max(base.size)
    w, h = max(1, round(base.width * scale)), max(1, round(base.height * scale))
    # resize premultiplied so transparent edges do not bleed black into the outline
    tile = base.convert("RGBa").resize((w, h), Image.Resampling.LANCZOS).convert("RGBA")
    return tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else tile


# --- captions --------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def caption_font(lang: str, size: int) -> ImageFont.FreeTypeFont:
    """Bold caption font: DejaVu Sans Bold for English, Noto Sans CJK Bold for Chinese."""
    if lang == "zh":
        font = ImageFont.truetype(str(cjk_font_path()), size, index=0)
        font.set_variation_by_name("Bold")
        return font
    return ImageFont.truetype(str(latin_font_path()), size)


_ZH_TOKEN = re.compile(r"[A-Za-z0-9\-']+|\s+|.")


def _tokens(text: str, lang: str) -> list[str]:
    """Wrap units: words for English; characters (Latin runs kept whole) for Chinese."""
    if lang == "zh":
        return [tok for tok in _ZH_TOKEN.findall(text) if not tok.isspace()]
    return text.split()


def wrap(text: str, lang: str, font: ImageFont.FreeTypeFont, max_width: float) -> list[str]:
    """Line wrap by measured width, balanced: the narrowest width that needs no more lines than a
    greedy wrap at ``max_width`` (no one-word orphan lines). A unit wider than a line stays alone."""
    lines = _greedy_wrap(text, lang, font, max_width)
    if len(lines) < 2:
        return lines
    lo, hi = max_width / len(lines), max_width
    for _ in range(8):  # bisection on the line width; 8 steps is well below a pixel at meme sizes
        mid = (lo + hi) / 2
        if len(_greedy_wrap(text, lang, font, mid)) <= len(lines):
            hi = mid
        else:
            lo = mid
    return _greedy_wrap(text, lang, font, hi)


def _greedy_wrap(text: str, lang: str, font: ImageFont.FreeTypeFont, max_width: float) -> list[str]:
    """Fill each line with as many units as fit in ``max_width``."""
    joiner = " " if lang == "en" else ""
    lines: list[str] = []
    current = ""
    for tok in _tokens(text, lang):
        trial = f"{current}{joiner}{tok}" if current else tok
        if current and font.getlength(trial) > max_width:
            lines.append(current)
            current = tok
        else:
            current = trial
    if current:
        lines.append(current)
    return lines


@dataclass(frozen=True)
class CaptionBlock:
    lines: tuple[str, ...]
    font_size: int
    line_height: int
    stroke: int

    @property
    def height(self) -> int:
        return self.line_height * len(self.lines)


@lru_cache(maxsize=8192)
def fit_caption(text: str, lang: str, size: int, max_height: float) -> CaptionBlock:
    """The largest font size whose wrapped lines fit the width and ``max_height`` (meme style).

    Cached: caption parts repeat (frames x targets x languages), and measuring text dominates the
    cost of a meme otherwise.
    """
    max_width = 0.92 * size
    largest, smallest = max(9, round(0.115 * size)), max(7, round(0.05 * size))
    block = None
    for font_size in range(largest, smallest - 1, -1):
        font = caption_font(lang, font_size)
        stroke = max(1, round(font_size * 0.09))
        lines = _greedy_wrap(text, lang, font, max_width - 2 * stroke)
        ascent, descent = font.getmetrics()
        line_h = round((ascent + descent) * (0.95 if lang == "en" else 0.85)) + stroke
        block = CaptionBlock(tuple(lines), font_size, line_h, stroke)
        widest = max(font.getlength(line) for line in lines) + 2 * stroke
        if widest <= max_width and block.height <= max_height:
            break
    assert block is not None  # else: the smallest size, possibly clipped (rare by construction)
    # balance the lines of the chosen size: same line count, so it still fits
    font = caption_font(lang, block.font_size)
    balanced = wrap(text, lang, font, max_width - 2 * block.stroke)
    return CaptionBlock(tuple(balanced), block.font_size, block.line_height, block.stroke)


def draw_caption(img: Image.Image, block: CaptionBlock, lang: str, y0: int) -> None:
    """White bold text with a dark outline, each line centred, starting at ``y0``."""
    draw = ImageDraw.Draw(img)
    font = caption_font(lang, block.font_size)
    for i, line in enumerate(block.lines):
        draw.text((img.width / 2, y0 + i * block.line_height), line, font=font, fill=(255, 255, 255),
                  stroke_width=block.stroke, stroke_fill=_OUTLINE, anchor="ma")


# --- composition -----------------------------------------------------------------------------------

Box = tuple[int, int, int, int]


def _overlaps(a: Box, b: Box, pad: int) -> bool:
    return not (a[2] + pad <= b[0] or b[2] + pad <= a[0] or a[3] + pad <= b[1] or b[3] + pad <= a[1])


def render_image(job: RenderJob) -> tuple[Image.Image, list[dict], str]:
    """Draw one meme; return the image, its objects (key first) and the background style."""
    rng = meme_rng(job.seed, job.index, 0)
    size = job.size
    style = STYLES[int(rng.integers(0, len(STYLES)))]
    img = background(style, rng, size).convert("RGBA")

    margin = max(2, round(0.02 * size))
    top = fit_caption(job.top, job.lang, size, CAPTION_MAX_BAND * size) if job.top else None
    bottom = fit_caption(job.bottom, job.lang, size, CAPTION_MAX_BAND * size) if job.bottom else None
    top_end = margin + top.height if top else 0
    bottom_start = size - margin - bottom.height if bottom else size

    # key object: small, kept out of the caption bands where there is room
    side = round(rng.uniform(*KEY_SIDE) * size)
    tile = emoji_tile(emoji_for(job.key_class), side, False)
    w, h = tile.size
    x = int(rng.integers(margin, max(margin, size - margin - w) + 1))
    lo, hi = top_end + margin, bottom_start - margin - h
    if hi < lo:  # captions leave too little room: centre it in whatever space there is
        lo = hi = int(np.clip((top_end + bottom_start - h) // 2, 0, size - h))
    y = int(rng.integers(lo, hi + 1))
    key_box: Box = (x, y, x + w, y + h)
    placed: list[tuple[str, Box, Image.Image, bool]] = [(job.key_class, key_box, tile, True)]

    # props: 0-3, anywhere (captions may cover them), never overlapping anything already placed
    for _ in range(int(rng.integers(0, MAX_PROPS + 1))):
        prop = PROPS[int(rng.integers(0, len(PROPS)))]
        pside = round(rng.uniform(*PROP_SIDE) * size)
        ptile = emoji_tile(prop.emoji, pside, False)  # props are never mirrored (a book has a title)
        pw, ph = ptile.size
        for _try in range(40):
            px, py = int(rng.integers(0, size - pw + 1)), int(rng.integers(0, size - ph + 1))
            box: Box = (px, py, px + pw, py + ph)
            if not any(_overlaps(box, other, 2) for _, other, _, _ in placed):
                placed.append((prop.key, box, ptile, False))
                break

    for _, box, t, _ in placed:
        img.alpha_composite(t, (box[0], box[1]))
    img = img.convert("RGB")
    if top:
        draw_caption(img, top, job.lang, margin)
    if bottom:
        draw_caption(img, bottom, job.lang, bottom_start)

    objects = [{"class": key, "class_id": class_id(key), "box": list(box), "key": is_key}
               for key, box, _, is_key in placed]
    return img, objects, style


def yolo_lines(objects: list[dict], size: int) -> str:
    """YOLO labels: ``class_id cx cy w h`` normalised to [0, 1], one line per object."""
    rows = []
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        rows.append(f"{obj['class_id']} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
                    f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}")
    return "\n".join(rows) + "\n"


def render_job(job: RenderJob) -> dict:
    """Worker entry point: draw, write the JPEG and the YOLO label file, return the metadata."""
    img, objects, style = render_image(job)
    img.save(job.image_path, format="JPEG", quality=job.jpeg_quality)
    Path(job.label_path).write_text(yolo_lines(objects, job.size), encoding="utf-8")
    return {"index": job.index, "objects": objects, "style": style}
