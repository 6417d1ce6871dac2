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


def regression_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    low: float | None = None,
    high: float | None = None,
    weights: dict | None = None,
) -> dict:
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
    return graded_metrics(y, p, r, weights=weights)


def graded_metrics(y_true: np.ndarray, score: np.ndarray, grade: np.ndarray, *, weights: dict | None = None) -> dict:
    """The metrics every head on graded data reports, from its continuous ``score`` (the regression
    output, or the expected grade of a classification / ordinal head) and its integer ``grade``.

    ``mae``/``rmse``/weighted errors are of the score; ``acc``, ``balanced_acc``, ``mae_rounded`` and
    ``qwk`` (quadratic weighted Cohen's kappa, scikit-learn's ``cohen_kappa_score(weights="quadratic")``)
    are of the grade against the rounded truth.

    Example:
        >>> m = graded_metrics(np.array([0, 1, 2, 2]), np.array([0.1, 1.2, 1.6, 2.4]), np.array([0, 1, 2, 2]))
        >>> m["acc"], m["qwk"]
        (1.0, 1.0)
    """
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    y = np.asarray(y_true, dtype=float).reshape(-1)
    p = np.asarray(score, dtype=float).reshape(-1)
    r = np.asarray(grade, dtype=float).reshape(-1)
    t = np.rint(y)
    return {
        "mae": float(np.abs(y - p).mean()),
        "rmse": float(np.sqrt(((y - p) ** 2).mean())),
        "weighted_mae": weighted_mae(y, p, weights),
        "weighted_rmse": weighted_rmse(y, p, weights),
        "acc": float((r == t).mean()),
        "balanced_acc": _balanced(t, r, balanced_accuracy_score, warnings),
        "mae_rounded": float(np.abs(y - r).mean()),
        "qwk": quadratic_kappa(t, r),
        "n": int(len(y)),
    }


def _balanced(t, r, score, warnings) -> float:
    if len(np.unique(t)) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a predicted grade no true image has: counted, not warned
        return float(score(t.astype(int), r.astype(int)))


def quadratic_kappa(y_true: np.ndarray, grade: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights on integer grades (scikit-learn); NaN when undefined
    (one grade on both sides, e.g. a constant predictor on a one-grade set).

    Example:
        >>> round(quadratic_kappa(np.array([0, 1, 2, 3]), np.array([0, 1, 3, 3])), 4)
        0.9167
    """
    import warnings

    from sklearn.metrics import cohen_kappa_score

    a = np.asarray(y_true).astype(int).reshape(-1)
    b = np.asarray(grade).astype(int).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined (one grade on both sides): NaN below, not a warning
        k = cohen_kappa_score(a, b, weights="quadratic")
    return float(k) if np.isfinite(k) else float("nan")


def qwk_matrix(y: np.ndarray, g: np.ndarray, k: int = 5) -> np.ndarray:
    """Quadratic weighted kappa of many resamples at once: ``y``, ``g`` are [R, N] integer grades 0..k-1;
    the same formula as scikit-learn's ``cohen_kappa_score(weights="quadratic")`` (NaN where undefined)."""
    r, n = y.shape
    cm: np.ndarray = np.zeros((r, k * k))  # flat counts, reshaped to [R, k, k] below
    np.add.at(cm, (np.repeat(np.arange(r), n), (y * k + g).ravel()), 1.0)
    cm = cm.reshape(r, k, k)
    w = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2
    expected = cm.sum(2)[:, :, None] * cm.sum(1)[:, None, :] / n
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1 - (w * cm).sum((1, 2)) / (w * expected).sum((1, 2))


def apply_cutpoints(score: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Integer grades of continuous scores: grade g where ``cuts[g-1] <= score < cuts[g]``.

    Example:
        >>> apply_cutpoints(np.array([0.2, 0.7, 3.9]), np.array([0.5, 1.5, 2.5, 3.5]))
        array([0, 1, 4])
    """
    return np.searchsorted(np.asarray(cuts, dtype=float), np.asarray(score, dtype=float), side="right")


def fit_cutpoints(y: np.ndarray, score: np.ndarray, k: int, *, steps: int = 101, rounds: int = 3) -> np.ndarray:
    """The k-1 increasing cut-points between k grades that maximise the quadratic weighted kappa of
    ``apply_cutpoints(score, cuts)`` against ``y`` (integer grades 0..k-1): coordinate ascent from the
    rounding points 0.5, 1.5, ..., each cut searched on a grid between its neighbours. Deterministic.
    Fit on validation predictions only; the test split then reads the grades once.

    Example:
        >>> y, score = np.array([0, 0, 1, 1, 2, 2]), np.array([0.1, 0.2, 0.3, 0.4, 1.0, 1.1])
        >>> apply_cutpoints(score, np.array([0.5, 1.5])).tolist()  # rounding
        [0, 0, 0, 0, 1, 1]
        >>> apply_cutpoints(score, fit_cutpoints(y, score, 3)).tolist()
        [0, 0, 1, 1, 2, 2]
    """
    y = np.asarray(y).astype(int).reshape(-1)
    s = np.asarray(score, dtype=float).reshape(-1)
    cuts = np.arange(k - 1, dtype=float) + 0.5
    lo_all, hi_all = min(float(s.min()), cuts[0]) - 1e-6, max(float(s.max()), cuts[-1]) + 1e-6
    best = qwk_matrix(y[None], apply_cutpoints(s, cuts)[None], k)[0]
    for _ in range(rounds):
        moved = False
        for i in range(k - 1):
            lo = cuts[i - 1] if i else lo_all
            hi = cuts[i + 1] if i < k - 2 else hi_all
            grid = np.linspace(lo, hi, steps)[1:-1]
            trial = np.repeat(cuts[None], len(grid), 0)
            trial[:, i] = grid
            g = np.stack([apply_cutpoints(s, c) for c in trial])
            q = np.nan_to_num(qwk_matrix(np.repeat(y[None], len(grid), 0), g, k), nan=-np.inf)
            j = int(np.argmax(q))
            if q[j] > best + 1e-12:
                best, cuts, moved = float(q[j]), trial[j], True
        if not moved:
            break
    return cuts
