"""safetensors files whose bytes depend only on their content.

``safetensors.save_file`` writes the header's ``__metadata__`` from a Rust ``HashMap``: with two or
more metadata entries their order (and so the file's bytes and its DVC md5) changes from process to
process. :func:`save_tensors` writes the same file with the metadata entries sorted by name; readers
see no difference (the header is a JSON object, read by name).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save
from torch import Tensor

__all__ = ["canonical_header", "save_tensors"]

HEADER_ALIGN = 8  # safetensors pads its JSON header with spaces to a multiple of 8 bytes


def canonical_header(data: bytes) -> bytes:
    """The safetensors file ``data`` with its ``__metadata__`` entries sorted by name (first in the
    header, as safetensors writes it); tensor entries and the data buffer are kept as they are (their
    offsets are relative to the buffer, so the header may change length)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    metadata = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(metadata.items()))} if metadata else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGN)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def save_tensors(tensors: Mapping[str, Tensor], path: str | os.PathLike[str],
                 metadata: Mapping[str, str] | None = None) -> None:  # fmt: skip
    """Write ``tensors`` (and string ``metadata``) to ``path`` as safetensors, byte for byte the same
    for the same content (see the module docstring)."""
    data = save(dict(tensors), metadata=dict(metadata) if metadata else None)
    Path(path).write_bytes(canonical_header(data))
