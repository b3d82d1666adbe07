"""Models: shared multi-task plumbing (base), GatedCLIP and CLIP-feature baselines, later MGMCF and the VLM.

Model code imports only torch (and numpy): it must run on a GPU box that has no mlflow, dvc or prefect.
"""
