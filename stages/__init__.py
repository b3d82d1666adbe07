"""DVC stages, one thin module each: read params, call the library, write the declared outputs.

Run as ``python -m stages.<name>`` from the project root (dvc.yaml does).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from memeops.config import ConfigError
from memeops.data.records import SourceError

# Errors whose message is already one clear line: print it, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, SourceError, FileNotFoundError)


def run_stage(name: str, main: Callable[[], int | None]) -> int:
    """Run a stage's ``main``; user errors become one line on stderr and exit code 2."""
    try:
        return int(main() or 0)
    except USER_ERRORS as exc:
        print(f"stage {name}: {exc}", file=sys.stderr)
        return 2
