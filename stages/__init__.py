"""DVC stages, one thin module each: read params, call the library, write the declared outputs.

Run as ``python -m stages.<name>`` from the project root (dvc.yaml does).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable

from memeops.config import ConfigError
from memeops.data.records import SourceError

# Errors whose message is already one clear line: print it, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, SourceError, FileNotFoundError)


def peak_memory_line(name: str) -> str:
    """The stage's peak resident memory: this process's, and the largest of its finished child
    processes' (seed / arm workers, dataloader workers). Linux reports ``ru_maxrss`` in KiB. The
    children's figure is the largest single child, not their sum: two workers side by side held up
    to twice it. ``make bench`` reads this line (benchmarks.pipeline.PEAK_MEMORY)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return f"stage {name}: peak memory {own:.0f} MiB (stage process), {child:.0f} MiB (largest worker)"


def run_stage(name: str, main: Callable[[], int | None]) -> int:
    """Run a stage's ``main``; user errors become one line on stderr (that line alone) and exit code
    2. A stage that finishes prints its peak memory as its last stderr line (:func:`peak_memory_line`)."""
    try:
        code = int(main() or 0)
    except USER_ERRORS as exc:
        print(f"stage {name}: {exc}", file=sys.stderr)
        return 2
    print(peak_memory_line(name), file=sys.stderr, flush=True)
    return code
