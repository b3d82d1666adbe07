"""memeops: experiment-tracked MLOps for multimodal meme understanding."""

from memeops.runtime import configure as _configure_runtime

# Offline switches and in-project tool state before anything imports mlflow, ultralytics, prefect,
# transformers or dvc (they read these variables at import time).
_configure_runtime()

__version__ = "0.1.0"
