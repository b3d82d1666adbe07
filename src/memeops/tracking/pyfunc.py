"""The import path of the pyfunc class that MLflow models logged before the serving re-cut name.

Their stored entry script runs ``from memeops.tracking.pyfunc import MemePyfunc``. In a process
that has already imported ``memeops`` (``memeops predict models:/...``, evaluation, tests), that
import resolves against this installed package rather than the copy shipped with the model, so
the name must stay here. New code imports :mod:`memeops.serving.pyfunc`.
"""

from __future__ import annotations

from memeops.serving.pyfunc import MemePyfunc

__all__ = ["MemePyfunc"]
