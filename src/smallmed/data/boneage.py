"""RSNA bone-age hand radiographs (12,611 at 100 px): a pretraining source and a regression task.

A large, domain-close X-ray set for pretraining before fine-tuning on a small target (seed 000
pretrains on chest X-rays for the same reason). ``rsna-boneage`` turns the age in months into 5
equal-count age groups (a classification source); ``rsna-boneage-months`` keeps the age in months
as a bounded regression target in [0, 240] (the RSNA Pediatric Bone Age Challenge's task, Halabi
et al. 2019). Both use the same seeded split, stratified by age group (one image per patient).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import ImageDataset, Split
from .npz import open_npz
from .splits import patient_split


def _read(path: Path, split_seed: int, groups: int):
    """Images, age in months, the age-group edges and labels, and the split both datasets share."""
    npz = open_npz(path, ("images", "boneage_months"))
    age = npz["boneage_months"].astype(float)
    edges = np.quantile(age, np.linspace(0, 1, groups + 1)[1:-1])
    labels = np.searchsorted(edges, age, side="right").astype(np.int64)
    return npz["images"], age, edges, labels, patient_split(labels, None, val=0.1, test=0.1, seed=split_seed)


def load_boneage(path: str | Path, *, split_seed: int = 0, groups: int = 5) -> ImageDataset:
    """Age in ``groups`` equal-count groups (multiclass)."""
    path = Path(path)
    images, age, edges, labels, idx = _read(path, split_seed, groups)
    bounds = [0, *edges.round().astype(int).tolist(), int(age.max())]
    names = [f"{bounds[i]}-{bounds[i + 1]} months" for i in range(groups)]
    return ImageDataset(
        name="rsna-boneage",
        task="multiclass",
        class_names=names,
        splits={s: Split(images[i], labels[i]) for s, i in idx.items()},
        source=str(path),
    )


MONTHS_RANGE = (0.0, 240.0)  # the challenge's ages lie in 1-228 months


def load_boneage_months(path: str | Path, *, split_seed: int = 0) -> ImageDataset:
    """Age in months as a regression target, on the same split as :func:`load_boneage` (5 age groups)."""
    images, age, _, _, idx = _read(Path(path), split_seed, 5)
    splits = {s: Split(images[i], age[i].astype(np.float32)) for s, i in idx.items()}
    return ImageDataset(
        name="rsna-boneage-months",
        task="regression",
        class_names=[],
        splits=splits,
        source=str(path),
        info={"range": MONTHS_RANGE, "unit": "months"},
    )
