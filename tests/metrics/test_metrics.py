import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from smallmed.metrics import classification_metrics, loss_variance, tpr_at_fpr


def _brute_tpr(y, s, fpr):
    """Try every threshold: the best TPR whose FPR stays within the budget."""
    best = 0.0
    for t in np.concatenate([[np.inf], np.unique(s)]):
        pred = s >= t
        f = (pred & (y == 0)).sum() / (y == 0).sum()
        if f <= fpr + 1e-12:
            best = max(best, (pred & (y == 1)).sum() / (y == 1).sum())
    return best


@pytest.mark.parametrize("seed", range(5))
def test_binary_against_sklearn_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    m = classification_metrics("binary", y, probs, fprs=(1e-3, 0.05, 0.2))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["acc"] == pytest.approx(((p1 >= 0.5) == y).mean())
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    for f in (1e-3, 0.05, 0.2):
        assert m[f"tpr_at_fpr_{f:g}"] == pytest.approx(_brute_tpr(y, p1, f))
    assert m["tpr_at_fpr"] == m["tpr_at_fpr_0.001"]


def test_multiclass_against_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4)) + 1.5 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics("multiclass", y, probs)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert len(m["auc_per_class"]) == 4
    for j in range(4):
        assert m["auc_per_class"][j] == pytest.approx(roc_auc_score(y == j, probs[:, j]))


def test_multilabel_against_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (200, 3))
    probs = np.clip(rng.normal(0.3 + 0.4 * y, 0.25), 0, 1)
    m = classification_metrics("multilabel", y, probs)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, average="macro"))
    assert m["acc"] == pytest.approx(((probs >= 0.5) == y).mean())


def test_absent_class_is_nan_and_left_out_of_the_mean():
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    m = classification_metrics("multiclass", y, probs)
    assert np.isnan(m["auc_per_class"][2]) and m["auc"] == 1.0


def test_tpr_at_fpr_zero_means_no_false_positive():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.9, 0.5, 0.95, 0.99])
    assert tpr_at_fpr(y, s, 0.0) == pytest.approx(2 / 3)
    assert np.isnan(tpr_at_fpr(np.ones(3), s[:3]))


def test_loss_variance():
    assert loss_variance([1.0, 2.0, 3.0]) == pytest.approx(2 / 3)


def test_bootstrap_ci_brackets_the_estimate_and_narrows_with_n():
    from smallmed.metrics import bootstrap_ci

    rng = np.random.default_rng(0)

    def data(n):
        y = rng.integers(0, 2, n)
        p1 = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
        return y, np.stack([1 - p1, p1], 1)

    y, p = data(100)
    small = bootstrap_ci("binary", y, p, n=300)
    assert set(small) == {"auc", "acc", "tpr_at_fpr"}
    auc = classification_metrics("binary", y, p)["auc"]
    assert small["auc"][0] < auc < small["auc"][1]
    y, p = data(2000)
    big = bootstrap_ci("binary", y, p, n=300)
    assert big["auc"][1] - big["auc"][0] < small["auc"][1] - small["auc"][0]


@pytest.mark.parametrize("seed", range(4))
def test_fast_auc_and_tpr_equal_sklearn_with_ties(seed):
    from smallmed.metrics.classification import _fast_auc_tpr

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(0.4 + 0.2 * y, 0.2), 1)  # rounding makes many ties
    for fpr in (0.0, 1e-3, 0.05, 0.3):
        auc, tpr = _fast_auc_tpr(y, s, fpr)
        assert auc == pytest.approx(roc_auc_score(y, s))
        assert tpr == pytest.approx(tpr_at_fpr(y, s, fpr))


def test_delong_matches_sklearn_auc_and_a_paired_bootstrap():
    from sklearn.metrics import roc_auc_score

    from smallmed.studies.stats import delong_test

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    a = y * 1.0 + rng.normal(0, 1.0, 300)
    b = 0.5 * a + rng.normal(0, 1.0, 300)  # correlated with a, weaker (noisier)
    r = delong_test(y, a, b)
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, a)) and r["auc_b"] == pytest.approx(roc_auc_score(y, b))
    diffs = []
    for _ in range(2000):  # the same resampled images for both scores
        i = rng.integers(0, 300, 300)
        if y[i].min() != y[i].max():
            diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    assert r["se"] == pytest.approx(np.std(diffs), rel=0.15)
    assert 0 <= r["p"] <= 1 and r["p"] < 0.05 and r["diff"] > 0
    same = delong_test(y, a, a)
    assert same["diff"] == 0 and same["p"] == 1.0
