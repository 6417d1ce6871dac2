"""Paired bootstrap over test images against DeLong and brute-force enumeration; n < 3 prints no interval."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from smallmed.studies.stats import delong_test, fmt_ci, fmt_paired, mean_ci, paired, paired_bootstrap


def _scores(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    common = rng.normal(0, 1, n)
    a = y * 1.0 + common + rng.normal(0, 0.6, n)
    b = y * 0.7 + common + rng.normal(0, 0.6, n)
    return y, a, b


def test_bootstrap_se_agrees_with_delong():
    y, a, b = _scores()
    boot = paired_bootstrap(y, [a], [b], n=2000)
    dl = delong_test(y, a, b)
    assert boot["diff"] == pytest.approx(dl["diff"])
    assert boot["se"] == pytest.approx(dl["se"], rel=0.15)
    assert (boot["p"] < 0.05) == (dl["p"] < 0.05)
    assert boot["lo"] < boot["diff"] < boot["hi"]


def _pair_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC as the share of (positive, negative) pairs ranked right, ties half: written here, not imported."""
    pos, neg = s[y == 1], s[y == 0]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def test_bootstrap_matches_exhaustive_enumeration_on_a_tiny_case():
    y = np.array([0, 1, 0, 1, 1])
    a = np.array([0.2, 0.9, 0.4, 0.3, 0.8])
    b = np.array([0.5, 0.6, 0.1, 0.2, 0.7])
    exact = []
    for idx in itertools.product(range(5), repeat=5):  # every one of the 5^5 resamples, equally likely
        idx = np.array(idx)
        if y[idx].min() == y[idx].max():
            continue
        exact.append(_pair_auc(y[idx], a[idx]) - _pair_auc(y[idx], b[idx]))
    exact = np.array(exact)
    boot = paired_bootstrap(y, [a], [b], n=6000, seed=1)
    assert boot["se"] == pytest.approx(exact.std(), rel=0.05)
    assert boot["lo"] == pytest.approx(np.percentile(exact, 2.5), abs=0.05)
    assert boot["hi"] == pytest.approx(np.percentile(exact, 97.5), abs=0.05)


def test_bootstrap_averages_seeds_and_stays_in_range():
    y, a, b = _scores(120, seed=3)
    rng = np.random.default_rng(0)
    sa = [a + rng.normal(0, 0.3, len(y)) for _ in range(3)]
    sb = [b + rng.normal(0, 0.3, len(y)) for _ in range(3)]
    r = paired_bootstrap(y, sa, sb, n=500)
    assert r["diff"] == pytest.approx(np.mean([roc_auc_score(y, p) - roc_auc_score(y, q) for p, q in zip(sa, sb)]))
    assert -1 <= r["lo"] <= r["hi"] <= 1 and r["seeds"] == 3 and r["images"] == 120
    # perfect vs useless: the interval is pinned at the bound, never beyond it
    perfect = paired_bootstrap(y, [y.astype(float)], [1.0 - y], n=200)
    assert perfect["diff"] == 1.0 and perfect["lo"] == perfect["hi"] == 1.0
    same = paired_bootstrap(y, [a], [a], n=100)
    assert same["diff"] == 0 and same["p"] == 1


def test_fewer_than_three_seeds_print_no_interval_or_p():
    two = paired([0.9, 0.8], [0.7, 0.75])
    assert "too few" in fmt_paired(two) and "p=" not in fmt_paired(two)
    assert "too few" in fmt_ci(mean_ci([0.9, 0.8], bounds=(0, 1)))
    three = mean_ci([0.99, 0.95, 0.999], bounds=(0, 1))
    assert three["hi"] <= 1 and "[" in fmt_ci(three)


def test_cluster_bootstrap_resamples_whole_clusters():
    from smallmed.studies.stats import cluster_bootstrap

    # two cells per split, identical within a split: the result is that of the 5 split means alone
    vals = [0.1, 0.1, 0.3, 0.3, -0.2, -0.2, 0.05, 0.05, 0.0, 0.0]
    splits = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    r = cluster_bootstrap(vals, splits, n=4000)
    alone = cluster_bootstrap([0.1, 0.3, -0.2, 0.05, 0.0], [0, 1, 2, 3, 4], n=4000)
    assert r["clusters"] == 5 and r["cells"] == 10
    assert (r["lo"], r["hi"], r["mean"]) == pytest.approx((alone["lo"], alone["hi"], alone["mean"]))
    assert -1 <= r["lo"] <= r["mean"] <= r["hi"] <= 1
    three = cluster_bootstrap([0.1, 0.2, 0.3, 0.1], [0, 0, 1, 2])
    assert three["clusters"] == 3 and np.isnan(three["lo"]) and np.isnan(three["p"])  # n too small
