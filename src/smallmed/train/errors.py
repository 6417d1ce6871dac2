"""What a classification run gets wrong: the confusion matrix at its operating point and a gallery of the
test images it gets most confidently wrong, each with its probability and an occlusion-sensitivity map.

Binary runs use the threshold fixed on the validation split (``metrics.json``, ``operating_point``); multi-class
runs the most probable class. "Most wrong": false positives with the highest probability of the positive class
and false negatives with the lowest (binary); otherwise the wrong predictions made with the highest probability.
The rows shown are written to ``errors_test.csv`` beside ``test_predictions.csv`` (same ``index``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def read_predictions(run_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, class probabilities, class names) from a run's ``test_predictions.csv``."""
    with open(run_dir / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = [c[2:] for c in rows[0] if c.startswith("p_")]
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in names] for r in rows])
    return labels, probs, names


def predicted(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """The class each image is called: binary at ``threshold`` (probability of class 1), else the most probable."""
    if probs.shape[1] == 2 and threshold is not None:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(1)


def most_wrong(labels: np.ndarray, probs: np.ndarray, threshold: float | None, k: int = 4) -> list[dict]:
    """The ``k`` most confidently wrong test images of each kind (binary: false positives, false negatives;
    multi-class: ``2k`` wrong predictions), most wrong first."""
    pred = predicted(probs, threshold)
    wrong = np.flatnonzero(pred != labels)
    if probs.shape[1] == 2 and threshold is not None:
        fp = sorted((i for i in wrong if labels[i] == 0), key=lambda i: (-probs[i, 1], i))[:k]
        fn = sorted((i for i in wrong if labels[i] == 1), key=lambda i: (probs[i, 1], i))[:k]
        picked = [("false positive", i) for i in fp] + [("false negative", i) for i in fn]
    else:
        picked = [("wrong", i) for i in sorted(wrong, key=lambda i: (-probs[i, pred[i]], i))[: 2 * k]]
    return [
        {
            "kind": kind,
            "index": int(i),
            "label": int(labels[i]),
            "pred": int(pred[i]),
            "p_pred": float(probs[i, pred[i]]),
            "p_label": float(probs[i, labels[i]]),
        }
        for kind, i in picked
    ]


def confusion(labels: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=int)
    np.add.at(m, (labels, pred), 1)
    return m


def error_figures(
    run_dir: str | Path, model, test_data, *, test_metrics: dict, image_size: int, k: int = 4
) -> list[Path]:
    """Write ``confusion_test.png``, ``errors_test.png`` and ``errors_test.csv`` for a finished single-label
    classification run: ``model`` with its best weights, ``test_data`` the test split as the model sees it (item
    ``i`` is row ``i`` of ``test_predictions.csv``), ``test_metrics`` the run's test metrics (its operating
    point, and the temperature that threshold was fixed on when the run is calibrated); returns the figures."""
    from ..io import atomic_write_csv
    from ..report.plots import _save, plt

    run_dir = Path(run_dir)
    labels, probs, names = read_predictions(run_dir)
    cal = test_metrics.get("calibration") or {}
    if cal.get("temperature"):  # the threshold was fixed on calibrated probabilities
        from ..metrics.clinical import apply_temperature

        probs = apply_temperature(probs, cal["temperature"])
    op = test_metrics.get("operating_point") or {}
    threshold = op.get("threshold") if probs.shape[1] == 2 else None
    pred = predicted(probs, threshold)
    m = confusion(labels, pred, len(names))
    how = f"threshold {threshold:.3g} from validation" if threshold is not None else "most probable class"
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(names), 1.0 + 0.7 * len(names)))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black", fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test confusion ({how})", fontsize=9)
    _save(fig, run_dir / "confusion_test.png")
    written = [run_dir / "confusion_test.png"]
    rows = most_wrong(labels, probs, threshold, k)
    atomic_write_csv(
        run_dir / "errors_test.csv", [{**r, "label": names[r["label"]], "pred": names[r["pred"]]} for r in rows]
    )
    if not rows:
        return written
    heats, images = _occlusion(model, test_data, rows, image_size)
    cols = min(4, len(rows))
    nrow = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(2.4 * cols, 2.6 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r, img, heat in zip(axes.ravel(), rows, images, heats):
        ax.imshow(img, cmap="gray")
        lim = max(1e-6, float(np.abs(heat).max()))
        ax.imshow(heat, cmap="bwr", vmin=-lim, vmax=lim, alpha=0.45)
        ax.set_title(
            f"{r['kind']} #{r['index']}\ntrue {names[r['label']]}, called {names[r['pred']]} (p={r['p_pred']:.2f})",
            fontsize=7,
        )
    fig.suptitle(
        "most confidently wrong test images (occluding a red area lowers the true class's probability, a blue one "
        "raises it)",
        fontsize=9,
    )
    _save(fig, run_dir / "errors_test.png")
    return [*written, run_dir / "errors_test.png"]


def _occlusion(model, test_data, rows: list[dict], size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Occlusion maps (drop of the true class's probability) and the grey images, as the model saw them."""
    from ..analysis.erf import occlusion_map

    patch = max(2, size // 8)
    heats, images = [], []
    for r in rows:
        x = test_data[r["index"]][0]
        heats.append(occlusion_map(model, x, r["label"], patch=patch, stride=patch))
        a = x.numpy()
        images.append(a.mean(0) if a.ndim == 3 else a)
    return heats, images
