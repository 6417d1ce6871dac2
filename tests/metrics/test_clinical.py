"""Operating points chosen on validation, calibration (Brier, ECE, temperature), early stopping."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_curve

from smallmed.errors import SmallmedError
from smallmed.metrics.clinical import (
    apply_temperature,
    brier_score,
    calibration,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    operating_point,
    rates_at,
)


def _noisy(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(0, 0.25, n), 0, 1)
    return y, s


def test_brier_matches_sklearn_and_hand():
    y, s = _noisy()
    probs = np.stack([1 - s, s], 1)
    assert brier_score(y, probs) == pytest.approx(brier_score_loss(y, s))
    # three classes, by hand: (0.1^2 + 0.2^2 + 0.3^2) and (0.5^2 + 0.5^2 + 0)
    p = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    assert brier_score([0, 1], p) == pytest.approx(((0.09 + 0.04 + 0.01) + (0.25 + 0.25)) / 2)


def test_ece_equal_mass_bins_by_hand():
    y = np.array([0, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    # 3 equal-mass bins of 2: |0.5-0.15|, |0.5-0.45|, |1-0.8|, each weighted 1/3
    assert expected_calibration_error(y, p, bins=3) == pytest.approx((0.35 + 0.05 + 0.2) / 3)
    assert expected_calibration_error(y, p, bins=1) == pytest.approx(abs(4 / 6 - p.mean()))
    c = calibration(y, np.stack([1 - p, p], 1), bins=3)
    assert c["ece_bins"] == 3 and c["ece"] == pytest.approx(0.2)


def test_youden_threshold_is_the_brute_force_best():
    y, s = _noisy(seed=3)
    t = choose_threshold(y, s)
    best = max(np.unique(s), key=lambda u: (rates_at(y, s, u)["sensitivity"] + rates_at(y, s, u)["specificity"], u))
    j = lambda u: rates_at(y, s, u)["sensitivity"] + rates_at(y, s, u)["specificity"]
    assert j(t) == pytest.approx(j(best))
    t90 = choose_threshold(y, s, "sensitivity=0.9")
    assert rates_at(y, s, t90)["sensitivity"] >= 0.9
    assert all(rates_at(y, s, u)["sensitivity"] < 0.9 for u in np.unique(s) if u > t90)  # the highest such
    t95 = choose_threshold(y, s, "specificity=0.95")
    assert rates_at(y, s, t95)["specificity"] >= 0.95
    for bad in ("youden=1", "sensitivity", "sensitivity=1.5", "precision=0.9"):
        with pytest.raises(SmallmedError, match="operating_point"):
            choose_threshold(y, s, bad)


def test_undefined_rates_are_none_not_nan():
    r = rates_at([0, 0, 1], [0.1, 0.2, 0.3], 0.9)  # nothing predicted positive: PPV undefined
    assert r["ppv"] is None and r["sensitivity"] == 0.0 and r["specificity"] == 1.0


def test_rates_match_confusion_matrix():
    y, s = _noisy(seed=5)
    tn, fp, fn, tp = confusion_matrix(y, s >= 0.5).ravel()
    r = rates_at(y, s, 0.5)
    assert r == pytest.approx(
        {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp), "npv": tn / (tn + fn)}
    )


def test_operating_point_never_reads_test_labels_and_intervals_stay_in_range():
    yv, sv = _noisy(seed=1)
    yt, st = _noisy(seed=2)
    a = operating_point(yv, sv, st, yt, n=200)
    b = operating_point(yv, sv, st, 1 - yt, n=200)  # every test label flipped
    assert a["threshold"] == b["threshold"] == choose_threshold(yv, sv)
    assert a["sensitivity"] != b["sensitivity"]
    for k, (lo, hi) in a["ci95"].items():
        assert 0 <= lo <= a[k] <= hi <= 1


def test_temperature_minimises_nll_and_helps_an_overconfident_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    logit = (y - 0.5) * 2 + rng.normal(0, 1.5, 400)
    over = 1 / (1 + np.exp(-4 * logit))  # 4x overconfident
    probs = np.stack([1 - over, over], 1)
    t = fit_temperature(y, probs)

    def nll(tt):
        q = apply_temperature(probs, tt)
        return -np.log(q[np.arange(len(y)), y]).mean()

    grid = np.exp(np.linspace(-3, 3, 2001))
    assert nll(t) <= min(nll(g) for g in grid) + 1e-6
    assert 3 < t < 5.5
    assert calibration(y, apply_temperature(probs, t))["ece"] < calibration(y, probs)["ece"]
    # a monotone map: the ROC (and so the AUC) is unchanged
    assert np.allclose(roc_curve(y, over)[1], roc_curve(y, apply_temperature(probs, t)[:, 1])[1])


def _noisy_npz(path, flip_test=False):
    from conftest import make_images

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 80), ("val", 60), ("test", 60)):
        truth = (np.arange(n) % 2).astype(np.uint8)
        arrays[f"{split}_images"] = make_images(truth, 16, 1, seed=n + len(split))[..., 0]
        labels = np.where(rng.random(n) < 0.25, 1 - truth, truth).astype(np.uint8)  # 25% label noise
        if split == "test" and flip_test:
            labels = 1 - labels
        arrays[f"{split}_labels"] = labels[:, None]
    np.savez(path, **arrays)
    return path


def test_run_threshold_does_not_depend_on_test_labels(tmp_path, tiny_cfg, figures):
    from smallmed import fit

    got = []
    for flip in (False, True):
        data = _noisy_npz(tmp_path / f"noisy{int(flip)}.npz", flip_test=flip)
        m = fit(
            tiny_cfg(
                data=str(data),
                epochs=2,
                out=str(tmp_path / f"r{int(flip)}"),
                calibrate="temperature",
                figures=flip is False,
            )
        )
        got.append(m["test"])
    a, b = got
    assert a["operating_point"]["threshold"] == b["operating_point"]["threshold"]
    assert a["calibration"]["temperature"] == b["calibration"]["temperature"]
    assert a["operating_point"]["sensitivity"] != b["operating_point"]["sensitivity"]
    saved = json.loads((tmp_path / "r0" / "metrics.json").read_text())["test"]
    assert {"brier", "ece", "ece_bins", "operating_point"} <= set(saved)
    assert set(saved["operating_point"]) >= {"threshold", "sensitivity", "specificity", "ppv", "npv", "ci95"}
    report = (tmp_path / "r0" / "report.md").read_text()
    assert "Operating point" in report and "temperature scaling" in report
    assert (tmp_path / "r0" / "reliability_test.png").exists()
    card = (tmp_path / "r0" / "model_card.md").read_text()
    for part in (
        "## Data",
        "train: 80 images",
        "## Intended use",
        "not a medical device",
        "Operating point",
        "## Limitations",
        "smallmed train --config",
    ):
        assert part in card


def test_early_stop_ends_a_run_at_patience(tmp_path, tiny_cfg):
    from smallmed import fit

    data = _noisy_npz(tmp_path / "noisy.npz")
    m = fit(tiny_cfg(data=str(data), epochs=30, early_stop=2, lr=3e-2, out=str(tmp_path / "es")))
    assert m["epochs"] < 30
    assert m["epochs"] - m["best_epoch"] == 2


def test_unknown_calibration_refused():
    from smallmed.config import TrainConfig

    with pytest.raises(SmallmedError, match="calibrate"):
        TrainConfig(calibrate="platt")


def test_multiclass_operating_points_are_one_vs_rest_on_validation():
    from smallmed.metrics.clinical import clinical_summary

    rng = np.random.default_rng(0)
    yv, yt = rng.integers(0, 3, 150), rng.integers(0, 3, 150)

    def probs(y):
        logits = np.eye(3)[y] * 1.5 + rng.normal(0, 1, (len(y), 3))
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)

    pv, pt = probs(yv), probs(yt)
    out = clinical_summary("multiclass", yv, pv, yt, pt, n=100)
    ops = out["operating_point_per_class"]
    assert len(ops) == 3 and "operating_point" not in out
    for k, op in enumerate(ops):
        assert op["threshold"] == choose_threshold(yv == k, pv[:, k])
        assert op["sensitivity"] == rates_at(yt == k, pt[:, k], op["threshold"])["sensitivity"]
    assert out["ece"] == pytest.approx(np.mean(out["ece_per_class"]))
    assert out["brier"] == pytest.approx(brier_score(yt, pt))


def test_evaluate_applies_the_runs_fixed_threshold(tmp_path, tiny_cfg):
    from smallmed import evaluate_run, fit

    data = _noisy_npz(tmp_path / "noisy.npz")
    m = fit(tiny_cfg(data=str(data), epochs=2, out=str(tmp_path / "run")))
    ev = evaluate_run(tmp_path / "run", device="cpu")
    op, saved = ev["operating_point"], m["test"]["operating_point"]
    assert op["threshold"] == saved["threshold"]
    for k in ("sensitivity", "specificity", "ppv", "npv"):
        assert (op[k] is None and saved[k] is None) or op[k] == pytest.approx(saved[k])
    assert ev["brier"] == pytest.approx(m["test"]["brier"]) and ev["ece"] == pytest.approx(m["test"]["ece"])
