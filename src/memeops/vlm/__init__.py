"""MemeLens-style instruction-tuned VLM variant: one generative model for every task and data set.

- :mod:`memeops.vlm.instructions`: meme table -> instruction samples (hybrid English instruction +
  native-language meme text, target ``Label: <label>\\nExplanation: <explanation>``), the strict
  answer parser and length-bucketed batching;
- :mod:`memeops.vlm.scoring`: candidate-label probabilities from log-likelihoods, explanation
  ROUGE-L and the per-task / per-source report built on :mod:`memeops.evaluation.metrics`.

Kept import-light: import the submodules explicitly.
"""
