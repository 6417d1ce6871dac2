"""PNG plots of a run: loss curves per epoch and test ROC curves. Written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve


class _Figures:
    """``plt.subplots`` without pyplot: figures on matplotlib's object API render to files on any
    machine, and importing smallmed never switches a notebook's backend or imports pyplot."""

    @staticmethod
    def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, **kw):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, **kw)

    @staticmethod
    def close(fig) -> None:
        fig.clear()


plt = _Figures()


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        from ..io import _umask

        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what the user's umask gives a new file
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot_history(rows: list[dict], path: str | Path, *, best_epoch: int | None = None, title: str = "") -> None:
    """Train/validation loss and validation AUC per epoch (from history.csv rows)."""
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [float(r["train_loss"]) for r in rows], "o-", label="train")
    ax1.plot(epochs, [float(r["val_loss"]) for r in rows], "o-", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    if rows and "val_auc" in rows[0]:
        ax2.plot(epochs, [float(r["val_auc"]) for r in rows], "o-", color="C2", label="val AUC")
        ax2.plot(epochs, [float(r["val_acc"]) for r in rows], "o-", color="C3", label="val acc")
        ax2.set_xlabel("epoch")
        ax2.legend()
    if best_epoch is not None:
        for ax in (ax1, ax2):
            ax.axvline(best_epoch, color="grey", ls="--", lw=1)
    fig.suptitle(title or "training history (dashed: best epoch by validation loss)")
    _save(fig, Path(path))


def plot_roc(
    task: str, y_true: np.ndarray, probs: np.ndarray, class_names: list[str], path: str | Path, title: str = "test ROC"
) -> None:
    """One ROC curve per class (one-vs-rest; the positive class only for binary tasks), log-x inset."""
    k = probs.shape[1]
    onehot = np.asarray(y_true).astype(int) if task == "multilabel" else np.eye(k, dtype=int)[np.asarray(y_true)]
    classes = [1] if task == "binary" else range(k)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for j in classes:
        if onehot[:, j].min() == onehot[:, j].max():
            continue
        fpr, tpr, _ = roc_curve(onehot[:, j], probs[:, j])
        for ax in axes:
            ax.plot(fpr, tpr, label=class_names[j])
    axes[0].plot([0, 1], [0, 1], ":", color="grey")
    axes[0].set_xlabel("false-positive rate")
    axes[0].set_ylabel("true-positive rate")
    axes[1].set_xscale("log")
    axes[1].set_xlim(1e-3, 1)
    axes[1].set_xlabel("false-positive rate (log)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, Path(path))


def plot_reliability(curve: dict, path: str | Path, title: str = "test reliability") -> None:
    """Reliability diagram from :func:`smallmed.metrics.clinical.reliability_curve` (equal-mass bins)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.plot(curve["confidence"], curve["frequency"], "o-", label="model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed frequency (bin)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    _save(fig, Path(path))


def plot_regression(targets, preds, path: str | Path, *, low: float, high: float, title: str = "") -> None:
    """Predicted against true score, the residuals, and (integer scores on a range of at most 11 grades) the
    confusion matrix of the rounded, range-clipped predictions."""
    t, p = np.asarray(targets, float).ravel(), np.asarray(preds, float).ravel()
    # grades: integer scores on a range of at most 11 values, every target inside it
    graded = bool(np.all(t == np.round(t))) and high - low <= 10 and bool(np.all((t >= low) & (t <= high)))
    fig, axes = plt.subplots(1, 3 if graded else 2, figsize=(11 if graded else 7.5, 3.4))
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(t)) if graded else 0.0
    ax = axes[0]
    ax.scatter(t + jitter, p, s=6, alpha=0.35)
    ax.plot([low, high], [low, high], "k--", lw=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title or "test: predicted vs true", fontsize=9)
    ax = axes[1]
    ax.scatter(t + jitter, p - t, s=6, alpha=0.35)
    ax.axhline(0, color="k", lw=1, ls="--")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted - true")
    ax.set_title(f"residuals (MAE {np.mean(np.abs(p - t)):.3f})", fontsize=9)
    if graded:
        levels = np.arange(int(low), int(high) + 1)
        g = np.clip(np.rint(p), low, high).astype(int) - int(low)
        m = np.zeros((len(levels), len(levels)), dtype=int)
        np.add.at(m, (t.astype(int) - int(low), g), 1)
        ax = axes[2]
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > m.max() / 2 else "black")
        ax.set_xticks(range(len(levels)), levels)
        ax.set_yticks(range(len(levels)), levels)
        ax.set_xlabel("predicted grade (rounded)")
        ax.set_ylabel("true grade")
        ax.set_title("test confusion of grades", fontsize=9)
    _save(fig, Path(path))
