"""Statistics for studies: means with t confidence intervals, paired comparisons."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


MIN_SEEDS = 3  # fewer replicates: no t-interval and no p-value is printed (compare paired over test images)


RATE = (0.0, 1.0)  # bounds of accuracy, AUC, TPR, Dice


def mean_ci(values, level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """Mean, sample sd and the t-interval of the mean, clipped to the metric's ``bounds`` (``RATE`` for
    accuracy, AUC, TPR; nan interval for fewer than 2 values)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return {"mean": float("nan"), "sd": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": m, "sd": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 1}
    sd = float(v.std(ddof=1))
    h = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * sd / math.sqrt(len(v)))
    lo, hi = m - h, m + h
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"mean": m, "sd": sd, "lo": lo, "hi": hi, "n": int(len(v))}


def paired(a, b, level: float = 0.95) -> dict:
    """Paired difference a - b over matched runs: mean, t-interval, paired t-test p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    out = mean_ci(d, level, bounds=(-1.0, 1.0) if (np.abs(np.concatenate([a, b])) <= 1).all() else None)
    out["p_t"] = float(stats.ttest_rel(a, b).pvalue) if len(d) >= 2 and np.std(d) > 0 else float("nan")
    out["wins"] = int((d > 0).sum())
    return out


def fmt_ci(c: dict) -> str:
    """``mean [lo, hi]`` of a :func:`mean_ci` result (just the mean, marked, with fewer than 3 replicates)."""
    if c["n"] < MIN_SEEDS:
        return f"{c['mean']:.4f} (n={c['n']}: too few for an interval)"
    return f"{c['mean']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}]"


def fmt_paired(pr: dict, wins: bool = True) -> str:
    """``+d [lo, hi] p=... (wins/n)`` of a :func:`paired` result; no interval or p with fewer than 3 pairs."""
    if pr["n"] < MIN_SEEDS:
        return f"{pr['mean']:+.4f} (n={pr['n']}: too few for an interval or p)" + (f" ({pr['wins']}/{pr['n']})" if wins else "")
    s = f"{pr['mean']:+.4f} [{pr['lo']:+.4f}, {pr['hi']:+.4f}] p={pr['p_t']:.2g}"
    return s + (f" ({pr['wins']}/{pr['n']})" if wins else "")


def direction(pr: dict, up: str, down: str, same: str = "not distinguishable from") -> str:
    """``up`` if the paired interval is above 0, ``down`` if below, else ``same``."""
    if pr["n"] < MIN_SEEDS:
        return same + " (too few seeds to tell)"
    return up if pr["lo"] > 0 else down if pr["hi"] < 0 else same


def _midrank(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x)  # average ranks of ties: the mid-ranks DeLong's method uses


def delong_test(y_true, score_a, score_b) -> dict:
    """DeLong's test for the difference of two correlated ROC AUCs on the same test images
    (DeLong et al. 1988, fast form of Sun and Xu 2014).

    Returns ``auc_a``, ``auc_b``, ``diff`` (a - b), ``se`` of the difference and two-sided ``p``.

    Example:
        >>> y = np.array([0, 0, 1, 1, 0, 1])
        >>> r = delong_test(y, np.array([.1, .4, .35, .8, .2, .9]), np.array([.1, .4, .35, .8, .2, .9]))
        >>> r["diff"], r["p"]
        (0.0, 1.0)
    """
    y = np.asarray(y_true).astype(int).ravel()
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        from ..errors import SmallmedError

        raise SmallmedError(f"DeLong's test needs at least 2 positives and 2 negatives; got {m} and {n}.")
    v10, v01, aucs = [], [], []
    for s in (np.asarray(score_a, float).ravel(), np.asarray(score_b, float).ravel()):
        sp, sn = s[pos], s[neg]
        tz = _midrank(np.concatenate([sp, sn]))
        tx, ty = _midrank(sp), _midrank(sn)
        auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
        v10.append((tz[:m] - tx) / n)  # structural components of the positives
        v01.append(1.0 - (tz[m:] - ty) / m)  # and of the negatives
        aucs.append(float(auc))
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = aucs[0] - aucs[1]
    se = math.sqrt(max(var, 0.0))
    p = 1.0 if se == 0 else float(2 * stats.norm.sf(abs(diff) / se))
    return {"auc_a": aucs[0], "auc_b": aucs[1], "diff": float(diff), "se": se, "p": p}
