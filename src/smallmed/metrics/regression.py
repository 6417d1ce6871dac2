"""Metrics of a bounded score (a joint-damage grade, a Kellgren-Lawrence grade): MAE, RMSE, accuracy of
the rounded score, and the RA2 DREAM Challenge's weighted errors.

Weights per true score value default to the inverse frequency of that value (rare high scores
count as much in total as the many zeros), as the challenge's weighted metrics do.
"""

from __future__ import annotations

import numpy as np

from ..errors import SmallmedError


def inverse_frequency_weights(y_true: np.ndarray) -> dict[int, float]:
    """{score: 1 / count} over the rounded true scores.

    Example:
        >>> inverse_frequency_weights(np.array([0, 0, 0, 1]))
        {0: 0.3333333333333333, 1: 1.0}
    """
    vals, counts = np.unique(np.rint(np.asarray(y_true, dtype=float)).astype(int), return_counts=True)
    return {int(v): 1.0 / int(c) for v, c in zip(vals, counts)}


def _weights(y_true: np.ndarray, weights: dict | None) -> np.ndarray:
    w = inverse_frequency_weights(y_true) if weights is None else {int(k): float(v) for k, v in weights.items()}
    keys = np.rint(np.asarray(y_true, dtype=float)).astype(int)
    missing = sorted(set(keys.tolist()) - set(w))
    if missing:
        raise SmallmedError(f"weights: no weight for score value(s) {missing}; give one weight per score value.")
    return np.array([w[k] for k in keys.tolist()], dtype=float)


def weighted_mae(y_true: np.ndarray, y_pred: np.ndarray, weights: dict | None = None) -> float:
    """sum(w_i |y_i - p_i|) / sum(w_i), with w from the true score's value.

    Example:
        >>> weighted_mae(np.array([0, 0, 2]), np.array([0, 1, 0]), {0: 1, 2: 2})
        1.25
    """
    y, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    w = _weights(y, weights)
    return float((w * np.abs(y - p)).sum() / w.sum())


def weighted_rmse(y_true: np.ndarray, y_pred: np.ndarray, weights: dict | None = None) -> float:
    """sqrt(sum(w_i (y_i - p_i)^2) / sum(w_i)), with w from the true score's value.

    Example:
        >>> round(weighted_rmse(np.array([0, 0, 2]), np.array([0, 1, 0]), {0: 1, 2: 2}), 4)
        1.5
    """
    y, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    w = _weights(y, weights)
    return float(np.sqrt((w * (y - p) ** 2).sum() / w.sum()))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, *, low: float | None = None,
                       high: float | None = None, weights: dict | None = None) -> dict:
    """MAE, RMSE, weighted MAE/RMSE (inverse-frequency weights by default), accuracy and
    mean absolute error of the score rounded to the nearest grade (clipped to [low, high]).

    Example:
        >>> m = regression_metrics(np.array([0, 1, 2]), np.array([0.2, 1.4, 1.6]))
        >>> round(m["mae"], 4), m["acc"]
        (0.3333, 1.0)
    """
    y, p = np.asarray(y_true, dtype=float).reshape(-1), np.asarray(y_pred, dtype=float).reshape(-1)
    if len(y) != len(p):
        raise SmallmedError(f"{len(y)} true scores but {len(p)} predictions.")
    if len(y) == 0:
        raise SmallmedError("no scores to evaluate.")
    r = np.rint(p)
    if low is not None or high is not None:
        r = np.clip(r, low if low is not None else -np.inf, high if high is not None else np.inf)
    return {
        "mae": float(np.abs(y - p).mean()),
        "rmse": float(np.sqrt(((y - p) ** 2).mean())),
        "weighted_mae": weighted_mae(y, p, weights),
        "weighted_rmse": weighted_rmse(y, p, weights),
        "acc": float((r == np.rint(y)).mean()),
        "mae_rounded": float(np.abs(y - r).mean()),
        "n": int(len(y)),
    }
