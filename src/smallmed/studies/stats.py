"""Statistics for studies: means with t confidence intervals, paired comparisons."""

from __future__ import annotations

import math
from pathlib import Path

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
        return f"{pr['mean']:+.4f} (n={pr['n']}: too few for an interval or p)" + (
            f" ({pr['wins']}/{pr['n']})" if wins else ""
        )
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


def _macro_auc(y: np.ndarray, p: np.ndarray) -> float:
    """AUC of the positive class (binary scores or 2 columns) or the mean one-vs-rest AUC, numpy only."""
    from ..metrics.classification import _fast_auc_tpr

    if p.ndim == 1:
        return _fast_auc_tpr(y, p, 0.0)[0]
    if p.shape[1] == 2:
        return _fast_auc_tpr(y, p[:, 1], 0.0)[0]
    vals = [_fast_auc_tpr((y == k).astype(int), p[:, k], 0.0)[0] for k in range(p.shape[1])]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def paired_bootstrap(y_true, scores_a, scores_b, *, n: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Paired bootstrap over test images of the AUC difference a - b, averaged over seeds.

    ``scores_a`` / ``scores_b``: one array per seed (the same seeds in the same order), each the
    positive-class score (N,) or the probabilities (N, K) on the same ``y_true``. Every resample draws
    one set of test-image indices and applies it to both methods and every seed, so the interval
    holds the test set's sampling variation with the pairing kept. Two-sided p: twice the smaller
    tail share of the resampled differences around 0 (at least 1/n). The interval is clipped to
    [-1, 1]. Unit of replication: the test image.

    Example:
        >>> y = np.array([0, 0, 1, 1, 0, 1])
        >>> paired_bootstrap(y, [y * 0.5], [y * 0.5], n=50)["diff"]
        0.0
    """
    y = np.asarray(y_true).astype(int).ravel()
    a = [np.asarray(s, dtype=float) for s in scores_a]
    b = [np.asarray(s, dtype=float) for s in scores_b]
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap: give one score array per seed for both methods, the same seeds.")
    observed = float(np.mean([_macro_auc(y, sa) - _macro_auc(y, sb) for sa, sb in zip(a, b)]))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        yb = y[idx]
        per_seed = [_macro_auc(yb, sa[idx]) - _macro_auc(yb, sb[idx]) for sa, sb in zip(a, b)]
        if all(math.isfinite(v) for v in per_seed):
            draws.append(float(np.mean(per_seed)))
    d = np.asarray(draws)
    lo, hi = np.percentile(d, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    p = min(1.0, 2 * max(min((d <= 0).mean(), (d >= 0).mean()), 1 / len(d))) if np.any(d != 0) else 1.0
    return {
        "diff": observed,
        "lo": float(max(lo, -1.0)),
        "hi": float(min(hi, 1.0)),
        "p": float(p),
        "se": float(d.std(ddof=1)),
        "seeds": len(a),
        "images": int(len(y)),
        "resamples": int(len(d)),
    }


def fmt_bootstrap(b: dict) -> str:
    """``+d [lo, hi] p=...`` of a :func:`paired_bootstrap` result."""
    floor = 2 / b["resamples"] if b.get("resamples") else 0.0
    p = f"p<={floor:.2g}" if b["p"] <= floor + 1e-12 else f"p={b['p']:.2g}"  # no resample crossed 0: p is at most that
    return f"{b['diff']:+.4f} [{b['lo']:+.4f}, {b['hi']:+.4f}] {p}"


def read_test_scores(run_dir) -> tuple[np.ndarray, np.ndarray]:
    """Labels and class probabilities from a run's ``test_predictions.csv``."""
    import csv
    from pathlib import Path

    with open(Path(run_dir) / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in rows[0] if c.startswith("p_")]
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([[float(r[c]) for c in cols] for r in rows])
    return y, p


MIN_CLUSTERS = 5  # a bootstrap over 3 or 4 clusters has 10 or 35 distinct resamples: far too narrow an interval


def cluster_bootstrap(
    values,
    clusters,
    *,
    n: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    bounds: tuple[float, float] | None = (-1.0, 1.0),
    min_clusters: int = MIN_CLUSTERS,
) -> dict:
    """Mean of ``values`` with a bootstrap interval that resamples whole ``clusters`` (e.g. class splits,
    the seeds within one averaged), so cells of one cluster are not counted as independent.

    Fewer than ``min_clusters`` (:data:`MIN_CLUSTERS`) clusters: no interval and no p (``lo``/``hi``/``p`` are
    nan), because resampling 3 or 4 values gives only 10 or 35 distinct means.
    Two-sided p: twice the smaller tail share of resampled means around 0.

    Example:
        >>> r = cluster_bootstrap([0.1, 0.1, -0.1, 0.2, 0.0, 0.3], ["a", "a", "b", "c", "d", "e"], n=200)
        >>> r["clusters"], round(r["mean"], 4), r["lo"] < r["mean"] < r["hi"]
        (5, 0.1, True)
    """
    v = np.asarray(values, dtype=float)
    c = np.asarray([str(x) for x in clusters])
    keys = sorted(set(c))
    means = np.array([v[c == k].mean() for k in keys])
    out = {
        "mean": float(means.mean()),
        "clusters": len(keys),
        "cells": int(len(v)),
        "lo": float("nan"),
        "hi": float("nan"),
        "p": float("nan"),
    }
    if len(keys) < min_clusters:
        return out
    rng = np.random.default_rng(seed)
    draws = means[rng.integers(0, len(keys), (n, len(keys)))].mean(1)
    lo, hi = np.percentile(draws, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    p = min(1.0, 2 * max(min((draws <= 0).mean(), (draws >= 0).mean()), 1 / n)) if np.any(draws != 0) else 1.0
    out.update(lo=float(lo), hi=float(hi), p=float(p))
    return out


def compare_runs(runs_a: dict, runs_b: dict, *, n: int = 2000) -> tuple[dict | None, list[float]]:
    """``runs_a`` - ``runs_b`` (each ``{seed: run folder}``, tested on the same images): the paired bootstrap
    over test images (seeds averaged) and, for binary tasks, DeLong's p per seed. ``(None, [])`` without a
    common seed or a run folder's predictions."""
    from pathlib import Path

    from ..errors import SmallmedError

    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds or not all((Path(r) / "test_predictions.csv").exists() for s in seeds for r in (runs_a[s], runs_b[s])):
        return None, []
    y0, sa, sb, dl = None, [], [], []
    for s in seeds:
        y, pa = read_test_scores(runs_a[s])
        y2, pb = read_test_scores(runs_b[s])
        if not np.array_equal(y, y2) or (y0 is not None and not np.array_equal(y, y0)):
            raise SmallmedError(f"{runs_a[s]} and {runs_b[s]} were tested on different images; cannot pair them.")
        y0 = y
        sa.append(pa)
        sb.append(pb)
        if pa.shape[1] == 2 and min((y == 1).sum(), (y == 0).sum()) >= 2:
            dl.append(delong_test(y, pa[:, 1], pb[:, 1])["p"])
    return paired_bootstrap(y0, sa, sb, n=n), dl


def comparison_figure(
    rows: list[dict], *, group: str | None, arm: str, metric: str, path, xlabel: str, title: str = ""
) -> Path | None:
    """One figure that compares a study's arms: per group (a panel each), every arm's per-seed values (dots) and
    their mean with its 95 % t-interval (3 or more seeds; fewer: the dots only). ``rows`` as in a study's
    ``results.csv``; rows without a number for ``metric`` are left out. Returns the path, or None when empty."""
    from ..report.plots import _save, plt

    rows = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not rows:
        return None
    groups = list(dict.fromkeys(r[group] for r in rows)) if group else [None]
    fig, axes = plt.subplots(
        1, len(groups), figsize=(3.6 * len(groups) + 1.5, 0.45 * len({r[arm] for r in rows}) + 1.4), squeeze=False
    )
    for ax, g in zip(axes[0], groups):
        sel = [r for r in rows if group is None or r[group] == g]
        arms = list(dict.fromkeys(r[arm] for r in sel))
        for y, a in enumerate(arms):
            vals = [float(r[metric]) for r in sel if r[arm] == a]
            ax.scatter(vals, [y] * len(vals), s=12, color="0.55", zorder=2)
            c = mean_ci(vals)
            if c["n"] >= MIN_SEEDS:
                ax.errorbar(
                    c["mean"], y, xerr=[[c["mean"] - c["lo"]], [c["hi"] - c["mean"]]], fmt="o", color="C0", capsize=3
                )
            else:
                ax.scatter([c["mean"]], [y], marker="|", s=200, color="C0", zorder=3)
        ax.set_yticks(range(len(arms)), [str(a) for a in arms], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        if g is not None:
            ax.set_title(f"{group} {g}" if not isinstance(g, str) else g, fontsize=9)
    fig.suptitle(title or f"{xlabel}: each seed (grey) and the mean with its 95 % t-interval", fontsize=9, y=1.04)
    path = Path(path)
    _save(fig, path)
    return path
