"""Bootstrap resamples as count matrices, seed draws and the percentile interval.

The meme resamples depend only on ``(n, n_boot, seed)``: :func:`bootstrap_indices` draws them from
``numpy.random.default_rng(seed)`` in blocks, which is the same stream as one ``rng.integers(0, n,
size=n)`` per resample (so a textbook one-resample-at-a-time loop with the same seed sees
the same resamples). Seed draws (:func:`seed_draws`) come from a separate stream keyed by
``(seed, number of seeds)``: turning them on leaves the meme resamples unchanged, and every arm
with the same number of seeds gets the same draws (comparisons stay paired).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

# Elements of one resample block ([n, B] count matrix): bounds memory for large test splits.
BLOCK_ELEMENTS = 2_000_000
_SEED_STREAM = 0x5EED  # separates the seed draws' stream from the meme resamples'


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Resampled row indices in blocks ``[b, n]`` (b <= n_boot; the blocks add up to n_boot rows).

    Depends only on (n, n_boot, seed): every comparison with the same settings sees the same
    resamples. Blocks bound the memory of the count matrices for large test splits.
    """
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, BLOCK_ELEMENTS // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(block, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``[n, b]`` float32: how often each of the ``n`` rows is drawn in each of the ``b`` resamples
    of ``idx [b, n]`` (the weights of :mod:`memeops.stats.weighted`; exact below 2**24)."""
    b = len(idx)
    flat = (idx * b + np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=n * b).reshape(n, b).astype(np.float32)


def count_blocks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The resamples of :func:`bootstrap_indices` as count matrices ``[n, b]``."""
    for idx in bootstrap_indices(n, n_boot, seed):
        yield resample_counts(idx, n)


def seed_draws(n_seeds: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n_seeds]`` float: how often each seed is drawn when each resample draws
    ``n_seeds`` seeds with replacement. All ones for one seed (nothing to resample). The same
    ``(n_seeds, n_boot, seed)`` always gives the same draws, independent of the meme resamples."""
    if n_seeds <= 1:
        return np.ones((n_boot, max(n_seeds, 0)))
    rng = np.random.default_rng([seed, _SEED_STREAM, n_seeds])
    idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    flat = (np.arange(n_boot)[:, None] * n_seeds + idx).ravel()
    return np.bincount(flat, minlength=n_boot * n_seeds).reshape(n_boot, n_seeds).astype(np.float64)


def seed_mean(per_seed: np.ndarray, draws: np.ndarray | None) -> np.ndarray:
    """``[B]`` mean over the drawn seeds of ``per_seed [n_seeds, B]`` (``draws [B, n_seeds]``; None:
    every seed once). NaN where a drawn seed's value is NaN; an undrawn NaN seed does not count."""
    if draws is None:
        return per_seed.mean(axis=0)
    drawn = draws.T > 0
    total = np.where(drawn, per_seed, 0.0) * draws.T
    undefined = (drawn & np.isnan(per_seed)).any(axis=0)
    return np.where(undefined, np.nan, total.sum(axis=0) / draws.sum(axis=1))


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of the resampled ``values``, NaN resamples skipped
    (``(nan, nan)`` when none is left)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)
