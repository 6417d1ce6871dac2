"""What a clinician asks of a classifier: a threshold fixed before the test set, and trustworthy probabilities.

- :func:`choose_threshold` picks an operating threshold on the *validation* split: Youden's J
  (sensitivity + specificity - 1) by default, or the highest threshold reaching a target
  sensitivity or specificity (``"sensitivity=0.9"``, ``"specificity=0.95"``).
- :func:`rates_at` gives sensitivity, specificity, PPV and NPV at a fixed threshold, and
  :func:`operating_point` their bootstrap intervals over test images.
- :func:`brier_score`, :func:`expected_calibration_error` (equal-mass bins),
  :func:`reliability_curve`, and temperature scaling fitted on validation
  (:func:`fit_temperature`, :func:`apply_temperature`; Guo et al. 2017).

Multi-class tasks get one operating point per class, one-vs-rest.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_curve

from ..errors import SmallmedError

RULES = ("youden", "sensitivity", "specificity")


def parse_rule(rule: str) -> tuple[str, float | None]:
    """``"youden"`` -> ("youden", None); ``"sensitivity=0.9"`` -> ("sensitivity", 0.9)."""
    name, _, value = str(rule).partition("=")
    if name not in RULES or (name == "youden") != (value == ""):
        raise SmallmedError(
            f"operating_point={rule!r}: expected 'youden', 'sensitivity=S' or 'specificity=S' with S in (0, 1]."
        )
    if name == "youden":
        return name, None
    try:
        target = float(value)
    except ValueError:
        target = math.nan
    if not 0 < target <= 1:
        raise SmallmedError(f"operating_point={rule!r}: the target {value!r} is not a fraction in (0, 1].")
    return name, target


def choose_threshold(y_val, score_val, rule: str = "youden") -> float:
    """The operating threshold chosen on validation labels and scores only (predict positive if score >= t).

    Example:
        >>> choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.8
        >>> choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], "sensitivity=1")
        0.35
    """
    name, target = parse_rule(rule)
    y = np.asarray(y_val).astype(int).ravel()
    s = np.asarray(score_val, dtype=float).ravel()
    if y.min() == y.max():
        raise SmallmedError("the validation split has only one class; no operating threshold can be chosen on it.")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop sklearn's +inf point (nothing predicted positive)
    if name == "youden":
        j = tpr - fpr
        i = int(np.flatnonzero(j == j.max())[0])  # the highest threshold reaching the best J
    elif target is None:
        raise SmallmedError(f"operating point {rule!r}: no target rate for {name}; expected e.g. {name}=0.95.")
    elif name == "sensitivity":
        i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    else:
        ok = np.flatnonzero(1 - fpr >= target - 1e-12)
        i = int(ok[-1]) if len(ok) else 0
    return float(thr[i])


def rates_at(y, score, threshold: float) -> dict:
    """Sensitivity, specificity, PPV and NPV at ``threshold`` (None where a denominator is 0: undefined, as
    metrics.json writes it).

    Example:
        >>> rates_at([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.35)
        {'sensitivity': 1.0, 'specificity': 0.5, 'ppv': 0.6666666666666666, 'npv': 1.0}
    """
    y = np.asarray(y).astype(int).ravel()
    pred = np.asarray(score, dtype=float).ravel() >= threshold
    tp, fn = int((pred & (y == 1)).sum()), int((~pred & (y == 1)).sum())
    tn, fp = int((~pred & (y == 0)).sum()), int((pred & (y == 0)).sum())

    def ratio(a, b):
        return a / (a + b) if a + b else None

    return {"sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp), "ppv": ratio(tp, fp), "npv": ratio(tn, fn)}


def operating_point(
    y_val, score_val, score_test, y_test, *, rule: str = "youden", n: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
    """Threshold from validation, then test rates at that fixed threshold with percentile bootstrap intervals.

    The threshold is computed before ``y_test`` is read; a test flips every test label and checks it.
    """
    t = choose_threshold(y_val, score_val, rule)
    y_test = np.asarray(y_test).astype(int).ravel()
    score_test = np.asarray(score_test, dtype=float).ravel()
    out = {"rule": rule, "threshold": t, **rates_at(y_test, score_test, t)}
    from .bootstrap import bootstrap

    def stat(idx):
        rates = rates_at(y_test[idx], score_test[idx], t)
        return {k: rates.get(k) for k in ("sensitivity", "specificity", "ppv", "npv")}

    out["ci95"] = bootstrap(stat, len(y_test), n=n, seed=seed, level=level, undefined=None)
    return out


def brier_score(y, probs) -> float:
    """Mean squared distance between the probability vector and the one-hot label (binary: of the positive class).

    The binary value equals scikit-learn's ``brier_score_loss``; the multi-class one is Brier's original
    sum over classes.

    Example:
        >>> round(brier_score([0, 1], [[0.8, 0.2], [0.4, 0.6]]), 6)
        0.1
    """
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(probs, dtype=float)
    if p.shape[1] == 2:
        return float(np.mean((p[:, 1] - y) ** 2))
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(((p - onehot) ** 2).sum(1)))


def _equal_mass_bins(p: np.ndarray, bins: int) -> list[np.ndarray]:
    order = np.argsort(p, kind="stable")
    return [b for b in np.array_split(order, min(bins, len(p))) if len(b)]


def reliability_curve(y, p, bins: int = 10) -> dict:
    """Per equal-mass bin: mean predicted probability, observed frequency and count."""
    y = np.asarray(y, dtype=float).ravel()
    p = np.asarray(p, dtype=float).ravel()
    groups = _equal_mass_bins(p, bins)
    return {
        "confidence": [float(p[g].mean()) for g in groups],
        "frequency": [float(y[g].mean()) for g in groups],
        "count": [int(len(g)) for g in groups],
    }


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """ECE with ``bins`` equal-mass bins: sum over bins of (share of images) * |observed - predicted|.

    ``y`` is 0/1, ``p`` the predicted probability of 1.

    Example:
        >>> round(expected_calibration_error([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8], bins=2), 6)
        0.25
    """
    c = reliability_curve(y, p, bins)
    n = sum(c["count"])
    return float(sum(k / n * abs(f - q) for k, f, q in zip(c["count"], c["frequency"], c["confidence"])))


def calibration(y, probs, bins: int = 10) -> dict:
    """Brier score and ECE (binary: of the positive class; multi-class: mean one-vs-rest ECE, per class too)."""
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(probs, dtype=float)
    out: dict = {"brier": brier_score(y, p), "ece_bins": int(bins)}
    if p.shape[1] == 2:
        out["ece"] = expected_calibration_error(y, p[:, 1], bins)
    else:
        per = [expected_calibration_error(y == k, p[:, k], bins) for k in range(p.shape[1])]
        out["ece_per_class"] = per
        out["ece"] = float(np.mean(per))
    return out


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Softmax(log p / T): the probabilities a model's logits divided by ``T`` would give."""
    logp = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0)) / temperature
    logp -= logp.max(1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(1, keepdims=True)


def fit_temperature(y_val, probs_val) -> float:
    """The temperature minimising validation negative log-likelihood (searched over log T in [-3, 3])."""
    y = np.asarray(y_val).astype(int).ravel()
    p = np.asarray(probs_val, dtype=float)

    def nll(log_t: float) -> float:
        q = apply_temperature(p, math.exp(log_t))
        return float(-np.log(np.clip(q[np.arange(len(y)), y], 1e-12, 1.0)).mean())

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(math.exp(res.x))


def clinical_summary(
    kind: str,
    val_y,
    val_p,
    test_y,
    test_p,
    *,
    rule: str = "youden",
    calibrate: str = "none",
    bins: int = 10,
    seed: int = 0,
    n: int = 1000,
) -> dict:
    """Operating point(s) and calibration for a classification run's metrics.json (``test`` keys).

    Binary: ``operating_point``; multi-class: ``operating_point_per_class`` (one-vs-rest). With
    ``calibrate="temperature"`` the temperature is fitted on validation and every number is given
    after it, the uncalibrated ones kept under ``uncalibrated``.
    """
    val_y, test_y = np.asarray(val_y).astype(int).ravel(), np.asarray(test_y).astype(int).ravel()
    val_p, test_p = np.asarray(val_p, dtype=float), np.asarray(test_p, dtype=float)
    out: dict = {}
    if calibrate == "temperature":
        t = fit_temperature(val_y, val_p)
        out["calibration"] = {
            "method": "temperature",
            "temperature": t,
            "fitted_on": "val",
            "uncalibrated": calibration(test_y, test_p, bins),
        }
        val_p, test_p = apply_temperature(val_p, t), apply_temperature(test_p, t)
    elif calibrate != "none":
        raise SmallmedError(f"calibrate={calibrate!r}: expected 'none' or 'temperature'.")
    out.update(calibration(test_y, test_p, bins))
    out["reliability"] = reliability_curve(test_y, test_p[:, 1], bins) if test_p.shape[1] == 2 else None
    if kind == "binary":
        out["operating_point"] = operating_point(val_y, val_p[:, 1], test_p[:, 1], test_y, rule=rule, n=n, seed=seed)
    else:
        per: list[dict | None] = []  # None: a class absent from, or alone in, validation
        for k in range(test_p.shape[1]):
            if (val_y == k).all() or not (val_y == k).any():
                per.append(None)
                continue
            per.append(operating_point(val_y == k, val_p[:, k], test_p[:, k], test_y == k, rule=rule, n=n, seed=seed))
        out["operating_point_per_class"] = per
    return out
