"""Statistics for studies: means with t confidence intervals, paired comparisons."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean, sample sd and the t-interval of the mean (nan interval for fewer than 2 values)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return {"mean": float("nan"), "sd": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": m, "sd": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 1}
    sd = float(v.std(ddof=1))
    h = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * sd / math.sqrt(len(v)))
    return {"mean": m, "sd": sd, "lo": m - h, "hi": m + h, "n": int(len(v))}


def paired(a, b, level: float = 0.95) -> dict:
    """Paired difference a - b over matched runs: mean, t-interval, paired t-test p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    out = mean_ci(d, level)
    out["p_t"] = float(stats.ttest_rel(a, b).pvalue) if len(d) >= 2 and np.std(d) > 0 else float("nan")
    out["wins"] = int((d > 0).sum())
    return out


def fmt_ci(c: dict) -> str:
    """``mean [lo, hi]`` of a :func:`mean_ci` result (just the mean when n < 2)."""
    if c["n"] < 2:
        return f"{c['mean']:.4f}"
    return f"{c['mean']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}]"


def fmt_paired(pr: dict, wins: bool = True) -> str:
    """``+d [lo, hi] p=... (wins/n)`` of a :func:`paired` result."""
    s = f"{pr['mean']:+.4f} [{pr['lo']:+.4f}, {pr['hi']:+.4f}] p={pr['p_t']:.2g}"
    return s + (f" ({pr['wins']}/{pr['n']})" if wins else "")


def direction(pr: dict, up: str, down: str, same: str = "not distinguishable from") -> str:
    """``up`` if the paired interval is above 0, ``down`` if below, else ``same``."""
    return up if pr["lo"] > 0 else down if pr["hi"] < 0 else same
