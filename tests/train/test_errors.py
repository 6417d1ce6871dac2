"""What a classification run gets wrong: the confusion matrix at its operating point and the gallery of the most
confidently wrong test images, checked against the run's own test_predictions.csv."""

from __future__ import annotations

import csv
import json

import numpy as np

from smallmed.train.errors import confusion, most_wrong, predicted


def test_most_wrong_picks_the_most_confident_mistakes_of_each_kind():
    labels = np.array([0, 0, 0, 1, 1, 1, 0])
    p1 = np.array([0.9, 0.6, 0.2, 0.1, 0.45, 0.8, 0.95])
    probs = np.stack([1 - p1, p1], 1)
    rows = most_wrong(labels, probs, threshold=0.5, k=2)
    assert [(r["kind"], r["index"]) for r in rows] == [
        ("false positive", 6),
        ("false positive", 0),
        ("false negative", 3),
        ("false negative", 4),
    ]
    # the threshold moves what counts as wrong: at 0.4 image 4 (p=0.45) is called positive, as it is
    assert [r["index"] for r in most_wrong(labels, probs, threshold=0.4, k=2) if r["kind"] == "false negative"] == [3]
    three = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]])
    assert [r["index"] for r in most_wrong(np.array([0, 0, 1]), three, None, k=1)] == [0, 2]
    assert confusion(np.array([0, 0, 1]), predicted(three, None), 3).tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]


def test_a_run_writes_its_confusion_matrix_and_gallery_from_its_own_predictions(tiny_cfg, tiny_npz, tmp_path, figures):
    from smallmed import fit

    arrays = dict(np.load(tiny_npz))
    arrays["test_labels"][::3] = 1 - arrays["test_labels"][::3]  # wrong labels: mistakes of both kinds to show
    np.savez(tmp_path / "noisy.npz", **arrays)
    # calibrated: the threshold was fixed on temperature-scaled probabilities, and the gallery uses them too
    fit(tiny_cfg(data=str(tmp_path / "noisy.npz"), epochs=1, figures=True, calibrate="temperature"))
    run = tmp_path / "run"
    assert (run / "confusion_test.png").stat().st_size > 1000
    m = json.loads((run / "metrics.json").read_text())
    t = m["test"]["operating_point"]["threshold"]
    with open(run / "test_predictions.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    names = m["data"]["classes"]
    from smallmed.metrics.clinical import apply_temperature

    raw = np.array([[float(r[f"p_{c}"]) for c in names] for r in preds])
    p1 = apply_temperature(raw, m["test"]["calibration"]["temperature"])[:, 1]
    fp = sorted((i for i, r in enumerate(preds) if int(r["label"]) == 0 and p1[i] >= t), key=lambda i: (-p1[i], i))[:4]
    with open(run / "errors_test.csv", newline="") as f:
        shown = [r for r in csv.DictReader(f) if r["kind"] == "false positive"]
    assert fp and [int(r["index"]) for r in shown] == fp
    assert (run / "errors_test.png").exists() and "errors_test.png" in (run / "report.md").read_text()
