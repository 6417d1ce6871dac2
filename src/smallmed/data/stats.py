"""Dataset statistics: counts, image size, intensity mean/std, skewness and kurtosis (seed 004, fig. 1)."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from .dataset import SPLITS, ImageDataset


def intensity_stats(images: np.ndarray, max_pixels: int = 5_000_000, seed: int = 0) -> dict[str, float]:
    """Mean, std, skewness and excess kurtosis of pixel intensities scaled to [0, 1].

    Kurtosis is Fisher's (excess): 0 for a Gaussian. Above ``max_pixels`` a seeded random
    sample of pixels is used, which changes the figures in the third decimal at most.
    """
    x = images.reshape(-1)
    if x.size > max_pixels:
        x = np.random.default_rng(seed).choice(x, size=max_pixels, replace=False)
    x = x.astype(np.float64) / 255.0
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "skewness": float(sps.skew(x)),
        "kurtosis": float(sps.kurtosis(x, fisher=True)),
    }


def dataset_stats(ds: ImageDataset) -> dict:
    """Everything ``smallmed data stats`` prints, as a dict.

    Example:
        >>> dataset_stats(load_dataset("retinamnist"))["splits"]["test"]["n"]   # doctest: +SKIP
        400
    """
    out: dict = {
        "name": ds.name,
        "source": ds.source,
        "task": ds.task,
        "classes": ds.class_names,
        "image_shape": list(ds.splits["train"].images.shape[1:]),
        "splits": {},
    }
    for s in SPLITS:
        sp = ds.splits[s]
        if ds.task == "multilabel":
            counts = {c: int(n) for c, n in zip(ds.class_names, sp.labels.sum(0))}
        else:
            bc = np.bincount(sp.labels, minlength=ds.num_classes)
            counts = {c: int(n) for c, n in zip(ds.class_names, bc)}
        entry = {"n": len(sp), "per_class": counts, **intensity_stats(sp.images)}
        if sp.patient_ids is not None:
            entry["patients"] = int(len(np.unique(sp.patient_ids)))
        out["splits"][s] = entry
    return out


def format_stats(st: dict) -> str:
    lines = [
        f"{st['name']}  ({st['source']})",
        f"task: {st['task']}, {len(st['classes'])} classes, image (H, W, C) = {tuple(st['image_shape'])}",
        "",
        f"{'split':<6} {'n':>6} {'patients':>8}  {'mean':>6} {'std':>6} {'skew':>6} {'kurt':>6}  per class",
    ]
    for s, e in st["splits"].items():
        per = ", ".join(f"{k}: {v}" for k, v in e["per_class"].items())
        lines.append(
            f"{s:<6} {e['n']:>6} {e.get('patients', '-'):>8}  {e['mean']:6.3f} {e['std']:6.3f} "
            f"{e['skewness']:6.2f} {e['kurtosis']:6.2f}  {per}"
        )
    lines.append("\nintensities in [0, 1]; kurt = excess kurtosis (0 for a Gaussian)")
    return "\n".join(lines)
