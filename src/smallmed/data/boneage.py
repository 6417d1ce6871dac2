"""RSNA bone-age hand radiographs (12,611 at 100 px) as a pretraining source: age in 5 groups.

A large, domain-close X-ray set for pretraining before fine-tuning on a small target (seed 000
pretrains on chest X-rays for the same reason). The regression target (age in months) is
turned into 5 equal-count age groups so the classification trainer can use it; splits are
seeded and stratified (one image per patient).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import ImageDataset, Split
from .npz import open_npz
from .splits import patient_split


def load_boneage(path: str | Path, *, split_seed: int = 0, groups: int = 5) -> ImageDataset:
    path = Path(path)
    npz = open_npz(path, ("images", "boneage_months"))
    age = npz["boneage_months"].astype(float)
    edges = np.quantile(age, np.linspace(0, 1, groups + 1)[1:-1])
    labels = np.searchsorted(edges, age, side="right").astype(np.int64)
    images = npz["images"]
    idx = patient_split(labels, None, val=0.1, test=0.1, seed=split_seed)
    bounds = [0, *edges.round().astype(int).tolist(), int(age.max())]
    names = [f"{bounds[i]}-{bounds[i + 1]} months" for i in range(groups)]
    return ImageDataset(name="rsna-boneage", task="multiclass", class_names=names,
                        splits={s: Split(images[i], labels[i]) for s, i in idx.items()}, source=str(path))
