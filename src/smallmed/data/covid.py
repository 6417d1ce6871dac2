"""The COVID-19 image data collection (ieee8023) at 224 px: COVID-19 vs other findings.

The npz holds ``images`` and ``finding`` and an ``index`` into the metadata CSV beside it, which
gives each image's ``patientid``: splits are patient-level (the CovidAID setting of seed 000).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import SmallmedError
from .dataset import ImageDataset, Split
from .npz import open_npz
from .splits import patient_split


def load_covid_ieee8023(path: str | Path, *, split_seed: int = 0) -> ImageDataset:
    path = Path(path)
    meta = path.with_name(path.stem + "_metadata.csv")
    if not meta.exists():
        raise SmallmedError(f"{meta}: metadata CSV not found; it gives the patient ids for {path.name}.")
    npz = open_npz(path, ("images", "finding", "index"))
    with open(meta, newline="") as f:
        by_index = {int(r["index"]): r["patientid"] for r in csv.DictReader(f)}
    try:
        pids = np.array([by_index[int(i)] for i in npz["index"]])
    except KeyError as e:
        raise SmallmedError(f"{meta}: no row with index {e.args[0]} referenced by {path.name}.") from None
    labels = np.array([str(f).startswith("COVID-19") for f in npz["finding"]], dtype=np.int64)
    images = npz["images"]
    idx = patient_split(labels, pids, val=0.2, test=0.3, seed=split_seed)
    splits = {s: Split(images[i], labels[i], pids[i]) for s, i in idx.items()}
    return ImageDataset(
        name="covid-ieee8023",
        task="binary",
        class_names=["other finding", "COVID-19"],
        splits=splits,
        source=str(path),
        info={"split": f"patient-level 50/20/30, stratified by majority label, seed {split_seed}"},
    )
