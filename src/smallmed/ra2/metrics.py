"""The RA2 DREAM Challenge's metrics on two score tables (prediction vs truth).

- Sub-challenge 1: weighted MAE of ``Overall_Tol`` over patients.
- Sub-challenges 2 and 3: weighted RMSE over every joint assessment of one kind (narrowing,
  erosion), pooled over patients.

Weights per true score value are the user's, or the inverse frequency of the value among the
truth's scores (the default), so rare severe scores are not drowned by the many zeros. Patients
or joints missing in either table are left out and counted.
"""

from __future__ import annotations

import numpy as np

from ..errors import SmallmedError
from ..metrics.regression import weighted_mae, weighted_rmse
from .schema import SCHEMA, ScoreTable, totals


def _pairs(pred: ScoreTable, truth: ScoreTable, columns) -> tuple[np.ndarray, np.ndarray, int]:
    p, t, skipped = [], [], 0
    for pid, tv in truth.scores.items():
        pv = pred.scores.get(pid)
        if pv is None:
            continue  # counted as a patient without prediction
        for c in columns:
            a, b = pv.get(c), tv.get(c)
            if a is None or b is None:
                skipped += 1
                continue
            p.append(a)
            t.append(b)
    return np.array(p, dtype=float), np.array(t, dtype=float), skipped


def challenge_metrics(
    pred: ScoreTable, truth: ScoreTable, *, weights: dict | None = None, total_weights: dict | None = None
) -> dict:
    """SC1 weighted MAE of totals, SC2 (narrowing) and SC3 (erosion) weighted RMSE, plus per-joint errors.

    ``weights`` maps a joint score value (0-10) to its weight in SC2/SC3, ``total_weights`` a total
    (0-448) to its weight in SC1; each defaults to the inverse frequency in the truth.

    Example:
        >>> m = challenge_metrics(read_scores("pred.csv"), read_scores("training.csv"))   # doctest: +SKIP
    """
    common = [p for p in truth.patients if p in pred.scores]
    if not common:
        raise SmallmedError(f"{pred.source}: no patient in common with {truth.source}.")
    tp, tt = totals(pred), totals(truth)
    pairs = [
        (tp[p]["Overall_Tol"], tt[p]["Overall_Tol"])
        for p in common
        if tp[p]["Overall_Tol"] is not None and tt[p]["Overall_Tol"] is not None
    ]
    out: dict = {"patients": len(common), "patients_without_prediction": len(truth.patients) - len(common)}
    if pairs:
        a, b = np.array(pairs, dtype=float).T
        out["sc1_weighted_mae_total"] = weighted_mae(b, a, total_weights)
        out["mae_total"] = float(np.abs(a - b).mean())
    for name, kind in (("sc2_weighted_rmse_narrowing", "narrowing"), ("sc3_weighted_rmse_erosion", "erosion")):
        cols = [x.column for x in SCHEMA if x.kind == kind]
        p, t, skipped = _pairs(pred, truth, cols)
        out[name] = weighted_rmse(t, p, weights) if len(t) else float("nan")
        out[f"{kind}_missing"] = skipped
    per = {}
    for x in SCHEMA:
        p, t, _ = _pairs(pred, truth, [x.column])
        if len(t):
            per[x.column] = {"mae": float(np.abs(p - t).mean()), "n": int(len(t))}
    out["per_joint"] = per
    return out
