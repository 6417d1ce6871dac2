"""Class/score balancing for small, skewed label distributions (seed 003).

``balanced_indices``: the most frequent label is undersampled to the second most frequent
label's count and every other label is oversampled (drawn with replacement) up to that count,
freshly each epoch. ``inverse_frequency``: per-label weights for the loss instead.
"""

from __future__ import annotations

import numpy as np

from ..errors import SmallmedError


def balanced_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one balanced epoch (see the module docstring), shuffled.

    Example:
        >>> y = np.array([0] * 10 + [1] * 4 + [2] * 1)
        >>> idx = balanced_indices(y, np.random.default_rng(0))
        >>> np.bincount(y[idx]).tolist()
        [4, 4, 4]
    """
    y = np.rint(np.asarray(labels, dtype=float)).astype(np.int64) if np.asarray(labels).ndim == 1 else None
    if y is None:
        raise SmallmedError("balance='sampling' needs one label per image (not multi-label).")
    values, counts = np.unique(y, return_counts=True)
    if len(values) < 2:
        return rng.permutation(len(y))
    target = int(np.sort(counts)[-2])  # the second most frequent label's count
    out = []
    for v, c in zip(values, counts):
        members = np.flatnonzero(y == v)
        if c >= target:
            out.append(rng.choice(members, target, replace=False))
        else:
            out.append(np.concatenate([members, rng.choice(members, target - c, replace=True)]))
    return rng.permutation(np.concatenate(out))


def inverse_frequency(labels: np.ndarray, num: int | None = None) -> np.ndarray:
    """Weight per label value = N / (K * count), so that the weights average to 1 over the images.

    Example:
        >>> inverse_frequency(np.array([0, 0, 0, 1])).tolist()
        [0.6666666666666666, 2.0]
    """
    y = np.rint(np.asarray(labels, dtype=float)).astype(np.int64)
    counts = np.bincount(y, minlength=num or 0).astype(float)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = len(y) / (present.sum() * counts[present])
    return w
