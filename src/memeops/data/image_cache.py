"""Decoded images kept in memory, for training loops that read the same files every epoch.

Stage ``pretrain_clip`` augments each train image anew every epoch (random crop + flip) but the
file behind it never changes: re-reading and re-decoding it each epoch cost ~1.1 s of a ~17 s
epoch (1512 JPEGs, 2-core CPU). :class:`CachedImageFiles` decodes each file once, on first use,
and hands the transform the same RGB image afterwards, so the transform (and every random number
it draws) sees exactly what :class:`~memeops.data.features.ImageFiles` would give it.

Memory: one RGB image per distinct path (256 px: 192 KiB each, ~290 MiB for 1512 images). With
DataLoader workers each worker holds its own copy (filled lazily), so keep ``num_workers`` low.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset


class DecodedImages:
    """path -> decoded RGB image, decoded on first request and kept; ``decodes`` counts file reads."""

    def __init__(self) -> None:
        self._images: dict[Path, Image.Image] = {}
        self.decodes = 0

    def __len__(self) -> int:
        return len(self._images)

    def get(self, path: Path) -> Image.Image:
        """The RGB image of ``path``; callers must not modify it in place (torchvision's PIL
        transforms return new images)."""
        image = self._images.get(path)
        if image is None:
            with Image.open(path) as im:
                image = im.convert("RGB")  # a loaded copy: the file is closed on leaving the block
            self._images[path] = image
            self.decodes += 1
        return image


class CachedImageFiles(Dataset):
    """``(transform(RGB image i), i)`` like ``ImageFiles``, each distinct path decoded only once."""

    def __init__(self, paths: Sequence[Path], transform: Any, cache: DecodedImages | None = None):
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.cache = cache if cache is not None else DecodedImages()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.cache.get(self.paths[i])), i
