"""Prefect flows around the DVC pipeline (python -m flows.<name>)."""
