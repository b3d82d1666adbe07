"""Safe image access: path containment, size limits, decoding checks, content and perceptual hashes.

Everything a source says about an image is untrusted: the path may escape the source root (``../``,
absolute paths, symlinks), the file may be missing, empty, truncated, not an image, or a
decompression bomb. Each failure is an :class:`ImageRejected` with a one-line reason that
consolidation turns into a quarantine entry.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import imagehash
from PIL import Image, UnidentifiedImageError


class ImageRejected(ValueError):
    """An image that cannot be used; ``str(exc)`` is the quarantine reason."""


@dataclass(frozen=True)
class ImageInfo:
    rel_path: str  # normalised, posix, relative to the source root
    sha256: str
    phash: str  # 16 hex digits
    width: int
    height: int


def safe_relative_path(root: Path, raw: str) -> tuple[Path, str]:
    """Resolve ``raw`` inside ``root``; reject anything that points outside it.

    Returns the absolute path and the normalised relative posix path. Rejects absolute paths
    (posix or Windows style), ``..`` components that climb out, and symlinks (at any level) whose
    target lies outside the root.
    """
    if not raw or not raw.strip():
        raise ImageRejected("empty image path")
    raw = raw.strip()
    if raw.startswith(("/", "\\")) or PureWindowsPath(raw).is_absolute() or PureWindowsPath(raw).drive:
        raise ImageRejected(f"absolute image path {raw!r} is not allowed (paths are relative to the source root)")
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    if ".." in parts:
        raise ImageRejected(f"image path {raw!r} climbs out of the source root with '..'")
    root_resolved = root.resolve()
    candidate = root_resolved.joinpath(*parts)
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root_resolved):
        raise ImageRejected(f"image path {raw!r} resolves outside the source root (symlink to {resolved})")
    return candidate, PurePosixPath(*parts).as_posix()


def inspect_image(root: Path, raw: str, *, max_pixels: int, max_bytes: int) -> ImageInfo:
    """Check one image end to end and return its hashes and size, or raise ImageRejected."""
    path, rel = safe_relative_path(root, raw)
    if not path.exists():
        raise ImageRejected(f"image file {rel!r} does not exist")
    if not path.is_file():
        raise ImageRejected(f"image path {rel!r} is not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise ImageRejected(f"image file {rel!r} is empty (0 bytes)")
    if size > max_bytes:
        raise ImageRejected(f"image file {rel!r} is {size} bytes, over the {max_bytes}-byte limit")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            # The explicit pixel limit below is the check; Pillow's own warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
        with probe:
            width, height = probe.size  # header only: checked before any pixel is decoded
            if width * height > max_pixels:
                raise ImageRejected(
                    f"image {rel!r} is {width}x{height} = {width * height} pixels, over the "
                    f"{max_pixels}-pixel limit (possible decompression bomb)"
                )
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()  # raises on truncated or corrupt data
                phash = str(imagehash.phash(im.convert("RGB")))
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected(f"file {rel!r} is not a readable image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"image {rel!r} cannot be decoded: {exc}") from None
    return ImageInfo(rel, sha256, phash, int(width), int(height))


def hamming_matrix(hashes_a: list[str], hashes_b: list[str]):
    """Pairwise Hamming distances between two lists of 64-bit hex pHashes (numpy uint8 matrix)."""
    import numpy as np

    a = np.array([int(h, 16) for h in hashes_a], dtype=np.uint64)
    b = np.array([int(h, 16) for h in hashes_b], dtype=np.uint64)
    return np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.uint8)
