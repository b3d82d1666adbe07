"""Serving raw memes: decode the input, run a packed model folder, answer per task.

A trained model is packed as a self-contained folder (its head plus the input encoder that turns
an image and a caption into what the head takes), loaded by a predictor with torch alone, and
logged to MLflow as a pyfunc model that ``mlflow models serve`` and ``memeops predict`` run.

- :mod:`memeops.serving.inputs`: raw-input decoding (image path / base64 / bytes, caption text),
  image size limits, example frames; every bad input is a one-line :class:`MemeInputError`;
- :mod:`memeops.serving.folder`: the model folder's layout and ``memeops_model.json`` contract,
  atomic writing, and the packed frozen CLIP encoder of GatedCLIP and the baselines;
- :mod:`memeops.serving.mgmcf`: MGMCF's input encoder (CLIP, text encoder, detector, region CNN);
- :mod:`memeops.serving.vlm`: the VLM's folder and predictor (label, probability, explanation);
- :mod:`memeops.serving.predictor`: the head models' predictor, the output table, and
  :func:`open_predictor` / :func:`load_predictor` for folders and MLflow URIs;
- :mod:`memeops.serving.pyfunc`: :func:`save_model_dir`, the MLflow pyfunc wrapper and
  :func:`log_pyfunc`.

Import the submodules explicitly; this package imports nothing, so ``memeops.serving.inputs``
stays free of torch.
"""
