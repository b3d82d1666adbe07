"""Raw input memes: decoding ``image`` cells (path, base64, bytes), caption text, size limits,
and example frames -- every bad input is a one-line :class:`MemeInputError` naming the row.

Input: a DataFrame with ``image`` (a file path, a base64 string -- optionally a ``data:`` URL --
or raw bytes) and ``text`` (str; None/NaN means no caption). Through MLflow the signature types
``image`` as a string, so send base64 or paths there; raw bytes work with the local predictor.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

INPUT_COLUMNS = ("image", "text")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
#: Limits on one image given to the MLflow pyfunc (``model_config`` keys ``max_image_bytes`` /
#: ``max_image_pixels``; 0 or None = no limit): the encoded size (decoded base64, file or bytes)
#: and width x height read from the header, checked before any image is decoded. The folder
#: predictors have no limit (Pillow's decompression-bomb guard only).
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name when it has none): for error messages
    that quote a library's multi-line text."""
    return " ".join(str(exc).split()) or type(exc).__name__


class MemeInputError(ValueError):
    """A bad input meme or table: a one-line message naming the row (and the field)."""


def _open_image(source: str | Path | bytes, row: int, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            return im.convert("RGB")  # convert() loads the pixels, so the file can close
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MemeInputError(f"row {row}: {what} is not a readable image ({one_line(exc)})") from None


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, with or without padding, whitespace ignored."""
    payload = "".join(text.split())
    if payload.startswith("data:"):
        payload = payload.partition(",")[2]
    if not payload:
        raise ValueError("empty")
    payload += "=" * (-len(payload) % 4)
    altchars = b"-_" if ("-" in payload or "_" in payload) else None
    try:
        return base64.b64decode(payload, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _pathlike(text: str) -> bool:
    return len(text) < 1024 and (
        Path(text).suffix.lower() in _IMAGE_SUFFIXES
        or text.startswith(("/", "./", "../", "~"))
        or os.sep in text
    )


def decode_image(value: Any, row: int = 0) -> Image.Image:
    """One ``image`` cell -> RGB PIL image, or a one-line ValueError naming the row.

    A string is an existing file path first; otherwise base64 (a ``data:`` URL prefix is fine).
    A string that looks like a path but is neither a file nor base64 image data is reported as a
    missing file.
    """
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _open_image(bytes(value), row, "image bytes")
    if isinstance(value, Path):
        if not value.is_file():
            raise MemeInputError(f"row {row}: image file not found: {str(value)!r}")
        return _open_image(value, row, f"image file {str(value)!r}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise MemeInputError(f"row {row}: image is missing")
    if not isinstance(value, str):
        # MemeInputError (a ValueError), not TypeError, for every bad input: one exception type for
        # callers (the CLI, MLflow's scoring server) to report as a user error.
        got = type(value).__name__
        raise MemeInputError(f"row {row}: image must be a file path, a base64 string or bytes, got {got}")
    text = value.strip()
    if not text:
        raise MemeInputError(f"row {row}: image is an empty string")
    if len(text) < 4096 and os.path.isfile(os.path.expanduser(text)):
        path = os.path.expanduser(text)
        return _open_image(path, row, f"image file {text!r}")
    try:
        data = _b64decode(text)
    except ValueError:
        if _pathlike(text):
            raise MemeInputError(f"row {row}: image file not found: {text!r}") from None
        raise MemeInputError(f"row {row}: image is neither an existing file path nor valid base64") from None
    try:
        return _open_image(data, row, "base64 image data")
    except ValueError:
        if _pathlike(text):
            raise MemeInputError(f"row {row}: image file not found: {text!r}") from None
        raise


def caption_text(value: Any, row: int) -> str:
    """One ``text`` cell -> the caption ("" for None/NaN), or a one-line error for a non-string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, str):
        raise MemeInputError(f"row {row}: text must be a string, got {type(value).__name__}")
    return value


def check_input_frame(frame: Any) -> pd.DataFrame:
    """The input as a DataFrame with ``image`` and ``text`` columns, or a one-line ValueError."""
    if isinstance(frame, (Mapping, list)):
        try:
            frame = pd.DataFrame(frame)
        except (ValueError, TypeError) as exc:
            raise MemeInputError(f"input cannot be read as a table: {one_line(exc)}") from None
    if not isinstance(frame, pd.DataFrame):
        got = type(frame).__name__
        raise MemeInputError(f"input must be a pandas DataFrame with columns image, text; got {got}")
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise MemeInputError(
            f"input is missing column(s) {', '.join(missing)}: expected 'image' (file path, base64 or bytes) "
            "and 'text' (str)"
        )
    return frame


def image_limit(value: Any) -> int | None:
    """A ``max_image_*`` config value: a positive int, or None (0, None, "" = no limit)."""
    return int(value) if value not in (None, "", 0, "0") and int(value) > 0 else None


def _header_pixels(source: bytes | str) -> float | None:
    """width x height from the image header (nothing decoded), inf for a decompression bomb over
    Pillow's own limit, None when unreadable (left for :func:`decode_image` to report)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                width, height = im.size
        except Image.DecompressionBombError:
            return math.inf
        except (OSError, ValueError):
            return None
    return float(width) * float(height)


def _bytes_text(n: int) -> str:
    """``n`` bytes as a person reads it: ``12.0 MiB``, ``27.1 kB``, ``900 bytes``."""
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 1000:.1f} kB" if n >= 1000 else f"{n} bytes"


def check_image_limits(
    frame: pd.DataFrame, *, max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, base64_only: bool = False,
) -> pd.DataFrame:  # fmt: skip
    """Refuse oversized images before any is decoded (one-line :class:`MemeInputError`).

    Sizes: the encoded bytes (decoded base64, the file, raw bytes) against ``max_bytes``;
    width x height from the header against ``max_pixels``. With ``base64_only`` (a server: file
    paths would read the server's disk) every string must be base64 image data; it is decoded
    once here and handed on as bytes, so no file is ever opened. Cells of other types are left for
    :func:`decode_image` to accept or report. Returns ``frame`` (a copy when cells were replaced).
    """
    values = frame["image"].tolist()
    replaced: list[Any] = list(values)
    changed = False
    for row, value in enumerate(values):
        source: bytes | str | None = None
        if isinstance(value, Image.Image):
            pixels: float | None = float(value.width) * float(value.height)
            size = None
        else:
            if isinstance(value, (bytes, bytearray, memoryview)):
                source = bytes(value)
            elif isinstance(value, Path) and not base64_only:
                source = str(value) if value.is_file() else None
            elif isinstance(value, str) and value.strip():
                text = value.strip()
                if not base64_only and len(text) < 4096 and os.path.isfile(os.path.expanduser(text)):
                    source = os.path.expanduser(text)
                else:
                    try:
                        source = _b64decode(text)
                    except ValueError:
                        if base64_only:
                            raise MemeInputError(
                                f"row {row}: image is not valid base64 (send the image file's bytes base64-encoded; "
                                "file paths are not accepted here)"
                            ) from None
                    if base64_only:
                        replaced[row], changed = source, True
            if source is None:
                continue
            size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
            pixels = None
        if max_bytes is not None and size is not None and size > max_bytes:
            raise MemeInputError(f"row {row}: the image file is too large: {_bytes_text(size)}, and the limit is "
                                 f"{_bytes_text(max_bytes)}; send a smaller or more compressed image")  # fmt: skip
        if source is not None and (max_pixels is not None or base64_only):
            pixels = _header_pixels(source)
            if pixels is None and base64_only:
                raise MemeInputError(f"row {row}: base64 image data is not a readable image")
        if max_pixels is not None and pixels is not None and pixels > max_pixels:
            shown = "more pixels than Pillow will open" if math.isinf(pixels) else f"{int(pixels):,} pixels"
            raise MemeInputError(f"row {row}: the image is too large: {shown}, and the limit is {max_pixels:,} "
                                 "pixels; send it scaled down")  # fmt: skip
    if not changed:
        return frame
    return frame.assign(image=pd.Series(replaced, index=frame.index, dtype=object))


def example_image_b64(image: str | Path | bytes | Image.Image | None = None, size: int = 32) -> str:
    """Base64 PNG for an input example: ``image`` (path, bytes or PIL), or a generated ``size``-px
    picture (a real decodable image, so MLflow's offline example validation runs the model)."""
    if image is None:
        grid = np.indices((size, size)).sum(axis=0)
        pixels = np.stack([grid * 4 % 256, grid * 7 % 256, np.full_like(grid, 128)], axis=-1)
        image = Image.fromarray(pixels.astype(np.uint8))
    elif not isinstance(image, Image.Image):
        image = decode_image(image if isinstance(image, bytes) else Path(image))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def example_frame(
    image: str | Path | bytes | Image.Image | None = None, text: str = "when the code works"
) -> pd.DataFrame:
    """A one-row input frame (base64 image + caption) for examples, signatures and smoke checks."""
    return pd.DataFrame({"image": [example_image_b64(image)], "text": [text]})
