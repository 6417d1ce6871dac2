"""Classification metrics: accuracy, balanced accuracy, one-vs-rest ROC AUC, TPR at a fixed FPR.

All take ``y_true`` as class indices (N,) or a 0/1 matrix (N, K) for multi-label, and ``probs``
as (N, K) probabilities. For binary tasks the AUC and TPR are those of the positive class 1.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve


def tpr_at_fpr(y_true: np.ndarray, score: np.ndarray, fpr: float = 1e-3) -> float:
    """Highest true-positive rate on the ROC curve whose false-positive rate is at most ``fpr``.

    With N negatives, any ``fpr < 1/N`` means "no false positive at all": the threshold must sit
    above every negative's score. ``nan`` when only one class is present.

    Example:
        >>> tpr_at_fpr(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), fpr=0.0)
        0.5
    """
    y_true = np.asarray(y_true).astype(int)
    if y_true.min() == y_true.max():
        return float("nan")
    fprs, tprs, _ = roc_curve(y_true, score, drop_intermediate=False)  # every reachable ROC point
    ok = fprs <= fpr + 1e-12
    return float(tprs[ok].max()) if ok.any() else 0.0


def _one_vs_rest(task: str, y_true: np.ndarray, num_classes: int) -> np.ndarray:
    if task == "multilabel":
        return np.asarray(y_true).astype(int)
    return np.eye(num_classes, dtype=int)[np.asarray(y_true).astype(int)]


def classification_metrics(
    task: str,
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    fprs: tuple[float, ...] = (1e-3, 1e-2),
) -> dict:
    """Every classification number smallmed reports, as a flat-ish dict.

    Keys: ``acc``, ``balanced_acc``, ``auc`` (mean over classes; positive class for binary),
    ``auc_per_class``, ``tpr_at_fpr`` (mean at ``fprs[0]``), ``tpr_at_fpr_<fpr>`` for every
    FPR, and ``tpr_at_fpr_per_class`` at ``fprs[0]``. Classes absent from ``y_true`` have
    ``nan`` per-class values and are left out of the means.

    Example:
        >>> m = classification_metrics("binary", np.array([0, 1, 1]), np.array([[.9, .1], [.2, .8], [.6, .4]]))
        >>> round(m["acc"], 3), m["auc"]
        (0.667, 1.0)
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    if task == "multilabel":
        pred = (probs >= 0.5).astype(int)
        acc = float((pred == y_true).mean())
        bal = float(np.nanmean([balanced_accuracy_score(y_true[:, j], pred[:, j]) for j in range(k)]))
    else:
        pred = probs.argmax(1)
        acc = float((pred == y_true).mean())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns when a class is absent from predictions
            bal = float(balanced_accuracy_score(y_true, pred))
    onehot = _one_vs_rest(task, y_true, k)
    classes = [1] if task == "binary" else list(range(k))
    auc_pc: list[float] = []
    tpr_pc: dict[float, list[float]] = {f: [] for f in fprs}
    for j in classes:
        yj = onehot[:, j]
        if yj.min() == yj.max():
            auc_pc.append(float("nan"))
            for f in fprs:
                tpr_pc[f].append(float("nan"))
            continue
        auc_pc.append(float(roc_auc_score(yj, probs[:, j])))
        for f in fprs:
            tpr_pc[f].append(tpr_at_fpr(yj, probs[:, j], f))
    out = {
        "acc": acc,
        "balanced_acc": bal,
        "auc": _nanmean(auc_pc),
        "auc_per_class": auc_pc,
        "tpr_at_fpr": _nanmean(tpr_pc[fprs[0]]),
        "tpr_at_fpr_per_class": tpr_pc[fprs[0]],
        "n": int(len(y_true)),
    }
    for f in fprs:
        out[f"tpr_at_fpr_{f:g}"] = _nanmean(tpr_pc[f])
    return out


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def loss_variance(losses: list[float] | np.ndarray) -> float:
    """Variance of per-epoch losses (seed 000 reports it for the test loss; we use validation)."""
    arr = np.asarray(losses, dtype=float)
    return float(arr.var()) if arr.size else float("nan")


def _fast_auc_tpr(y: np.ndarray, s: np.ndarray, fpr: float) -> tuple[float, float]:
    """AUC (Mann-Whitney, ties counted half) and TPR@FPR for one binary problem, numpy only.

    The same numbers as roc_auc_score / :func:`tpr_at_fpr` (checked in the tests), ~50x faster,
    for the thousands of calls a bootstrap makes.
    """
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan"), float("nan")
    ranks = rankdata(s)
    auc = (ranks[y == 1].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
    allowed = int(np.floor(fpr * len(neg) + 1e-9))  # false positives the budget admits
    if allowed >= len(neg):
        return float(auc), 1.0
    cut = np.sort(neg)[::-1][allowed]
    return float(auc), float((pos > cut).mean())


def bootstrap_ci(
    task: str,
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    n: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    fpr: float = 1e-3,
) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals of test AUC, accuracy and TPR@FPR.

    Small test sets make single numbers look more precise than they are; this says how much
    they would move with another draw of the same size (test images resampled with
    replacement). Resamples where a metric is undefined (one class only) are skipped.

    Example:
        >>> ci = bootstrap_ci("binary", y, probs)   # doctest: +SKIP
        >>> ci["auc"]                               # doctest: +SKIP
        [0.941, 0.972]
    """
    from .bootstrap import bootstrap

    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    onehot = _one_vs_rest(task, y_true, probs.shape[1])
    classes = [1] if task == "binary" else list(range(probs.shape[1]))

    def stat(idx):
        yb, pb = y_true[idx], probs[idx]
        acc = ((pb >= 0.5) == yb).mean() if task == "multilabel" else (pb.argmax(1) == yb).mean()
        per = [_fast_auc_tpr(onehot[idx, j], pb[:, j], fpr) for j in classes]
        aucs, tprs = np.array([a for a, _ in per]), np.array([t for _, t in per])
        if not np.isfinite(aucs).any():
            return {"auc": None, "acc": float(acc), "tpr_at_fpr": None}
        return {"auc": float(np.nanmean(aucs)), "acc": float(acc), "tpr_at_fpr": float(np.nanmean(tprs))}

    return bootstrap(stat, len(y_true), n=n, seed=seed, level=level)
