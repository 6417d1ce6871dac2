"""Heads for graded labels (regression, classification, ordinal CORN) and the graded metrics they share."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import make_medmnist


def test_qwk_and_balanced_accuracy_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score

    from smallmed.metrics.regression import graded_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    grade = np.clip(y + rng.integers(-1, 2, 300), 0, 4)
    m = graded_metrics(y, grade + rng.normal(0, 0.2, 300), grade)
    assert m["qwk"] == pytest.approx(cohen_kappa_score(y, grade, weights="quadratic"))
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, grade))
    assert m["acc"] == pytest.approx((y == grade).mean())
    assert m["mae_rounded"] == pytest.approx(np.abs(y - grade).mean())
    # a constant predictor has no agreement beyond chance
    assert graded_metrics(y, np.ones(300), np.ones(300))["qwk"] == pytest.approx(0.0)


def test_corn_probabilities_to_grade_match_coral_pytorch():
    from coral_pytorch.dataset import corn_label_from_logits

    from smallmed.train.tasks import OrdinalTask

    task = OrdinalTask(class_names=["0", "1", "2", "3", "4"])
    logits = torch.randn(200, 4) * 3
    kept = task.collect(logits).numpy()
    assert np.all(np.diff(kept, axis=1) <= 1e-7)  # P(y > k) never rises with k
    score, grade = task.grades(kept)
    assert np.array_equal(grade, corn_label_from_logits(logits).numpy())
    assert np.allclose(score, kept.sum(1)) and np.all((score >= 0) & (score <= 4))
    # a hand-made case: P(y>0)=0.9, P(y>1)=0.6, P(y>2)=0.2, P(y>3)=0.1 -> grade 2, expected grade 1.8
    s, g = task.grades(np.array([[0.9, 0.6, 0.2, 0.1]]))
    assert g[0] == 2 and s[0] == pytest.approx(1.8)


def test_ordinal_head_needs_three_grades():
    from smallmed.errors import SmallmedError
    from smallmed.train.tasks import OrdinalTask

    with pytest.raises(SmallmedError, match="at least 3 grades"):
        OrdinalTask(class_names=["0", "1"])


@pytest.mark.parametrize("head", ["ordinal", "classification", "regression"])
def test_every_head_writes_the_grade_and_the_same_metrics(tmp_path, head):
    from smallmed import TrainConfig, fit

    data = make_medmnist(tmp_path / "graded.npz", n=(60, 20, 30), classes=4)
    cfg = TrainConfig(
        data=str(data),
        model="small_cnn",
        epochs=2,
        batch_size=16,
        lr=3e-3,
        task=head,
        augment="none",
        progress=False,
        out=str(tmp_path / head),
    )
    m = fit(cfg)
    for k in ("acc", "mae", "mae_rounded", "qwk", "balanced_acc", "weighted_rmse"):
        assert k in m["test"], k
    with open(tmp_path / head / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30
    from smallmed.studies.ra2_scoring import read_predictions

    p = read_predictions(tmp_path / head, 0, 3)
    assert set(np.unique(p["grade"])) <= {0, 1, 2, 3}
    # the metrics in metrics.json are those of the grades written to the predictions file
    assert m["test"]["acc"] == pytest.approx(float((p["grade"] == p["label"]).mean()))
    saved = json.loads((tmp_path / head / "metrics.json").read_text())
    assert saved["test"]["qwk"] == pytest.approx(m["test"]["qwk"], nan_ok=True)


def test_head_flag_on_the_cli(tmp_path, capsys):
    from smallmed.cli import main

    data = make_medmnist(tmp_path / "graded.npz", n=(40, 12, 12), classes=3)
    assert (
        main(
            [
                "-q",
                "train",
                "--data",
                str(data),
                "--model",
                "small_cnn",
                "--epochs",
                "1",
                "--head",
                "ordinal",
                "--augment",
                "none",
                "--no-progress",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["task"] == "ordinal"
    assert (
        main(["train", "--data", str(tmp_path / "graded.npz"), "--head", "ordnal", "--out", str(tmp_path / "x")]) == 2
    )
    assert "ordinal" in capsys.readouterr().err


def test_boneage_months_is_a_regression_on_the_groups_split(shared_data):
    from smallmed.data import load_dataset

    months = load_dataset("rsna-boneage-months", data_dir=shared_data)
    groups = load_dataset("rsna-boneage", data_dir=shared_data)
    assert months.task == "regression" and months.info["range"] == (0.0, 240.0)
    for s in ("train", "val", "test"):
        assert len(months.splits[s]) == len(groups.splits[s])
        assert np.array_equal(months.splits[s].images[:5], groups.splits[s].images[:5])
    assert 1 <= months.splits["train"].labels.min() and months.splits["train"].labels.max() <= 228


def test_vectorised_qwk_for_the_bootstrap_equals_scikit_learn():
    from sklearn.metrics import cohen_kappa_score

    from smallmed.studies.ra2_scoring import qwk_matrix

    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, (20, 150))
    g = np.clip(y + rng.integers(-2, 3, y.shape), 0, 4)
    g[0] = 1  # a constant prediction: kappa 0
    want = [cohen_kappa_score(a, b, weights="quadratic") for a, b in zip(y, g)]
    assert np.allclose(qwk_matrix(y, g, 5), want)
