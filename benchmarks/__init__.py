"""Benchmark scripts (``make bench``): each measures one thing and merges it into reports/bench.json.

Speed and memory targets are measured here, never in timed tests. Every entry records the machine
it ran on (CPU count, CUDA device if any) so figures from different machines are never mixed up.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

BENCH_FILE = Path("reports/bench.json")


def machine() -> dict[str, Any]:
    """Where a figure was measured."""
    import torch

    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def merge_bench(key: str, value: dict[str, Any], path: Path = BENCH_FILE) -> None:
    """Set ``key`` in the bench JSON (other entries kept), with the machine it was measured on."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data[key] = {**value, "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def print_table(title: str, rows: list[tuple[str, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
