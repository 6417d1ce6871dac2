"""Data in: MedMNIST npz, image folders, CSV manifests, DICOM; splits, transforms, statistics.

- ``dataset``: the checked structure every loader returns (:class:`ImageDataset`).
- ``npz``, ``folder``, ``dicom``, ``covid``: readers.  ``catalog``/``paths``/``fetch``: names and downloads.
- ``splits``: patient-level splits and nested training fractions.
- ``transforms``: augmentation and normalisation on torchvision v2.  ``stats``: ``smallmed data stats``.
- ``audit``: duplicates, leakage, balance and constant images (``smallmed data audit``).
- ``keypoints``: hand keypoint sets; ``masks``: image + mask sets; ``boneage``: RSNA bone age.
- ``sampling``: the balanced sampler and inverse-frequency weights; ``torchdata``: arrays as torch Datasets.
"""

from __future__ import annotations

import os
from pathlib import Path

from .catalog import LOCAL_ONLY
from .dataset import ImageDataset, Split
from .fetch import fetch
from .folder import load_csv, load_folder, read_image
from .npz import load_npz
from .paths import resolve_data
from .splits import nested_fraction, patient_split
from .stats import dataset_stats
from .transforms import AugmentConfig, build_transform, parse_augment

__all__ = [
    "AugmentConfig",
    "ImageDataset",
    "Split",
    "build_transform",
    "dataset_stats",
    "fetch",
    "load_csv",
    "load_dataset",
    "load_folder",
    "load_npz",
    "nested_fraction",
    "parse_augment",
    "patient_split",
    "read_image",
    "resolve_data",
]


def _local_loader(name: str):
    """The reader of a LOCAL_ONLY dataset, imported only when used."""
    if name == "rsna-boneage":
        from .boneage import load_boneage

        return load_boneage
    if name == "rsna-boneage-months":
        from .boneage import load_boneage_months

        return load_boneage_months
    if name == "covid-lungseg":
        from ..errors import SmallmedError

        def refuse(path, **_):
            raise SmallmedError(
                f"{path}: image + mask data for segmentation; train it with --model unet "
                "(smallmed.data.masks.load_segmentation), not as a classification set."
            )

        return refuse
    from .covid import load_covid_ieee8023

    return load_covid_ieee8023


def load_dataset(
    spec: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    split_seed: int = 0,
) -> ImageDataset:
    """Load a dataset by name (``pneumoniamnist``, ``retinamnist_64``, ``covid-ieee8023``) or path.

    A path may be an ``.npz`` file, a CSV manifest or an image folder. ``image_size`` only
    applies to folders/CSVs (files are resized when read); npz data is resized by the transforms.

    Example:
        >>> ds = load_dataset("pneumoniamnist")   # doctest: +SKIP
        >>> len(ds.splits["test"])                # doctest: +SKIP
        624
    """
    path = resolve_data(spec, data_dir)
    if str(spec) in LOCAL_ONLY:  # a name first: two names may share one file
        return _local_loader(str(spec))(path, split_seed=split_seed)
    for name, fname in LOCAL_ONLY.items():
        if str(spec) == name or path.name == fname:
            return _local_loader(name)(path, split_seed=split_seed)
    if path.is_dir():
        return load_folder(path, image_size=image_size, split_seed=split_seed)
    if path.suffix.lower() == ".csv":
        return load_csv(path, image_size=image_size, split_seed=split_seed)
    if path.suffix.lower() == ".npz":
        known = str(spec) if not Path(str(spec)).exists() else None
        return load_npz(path, name=known, split_seed=split_seed)
    from ..errors import SmallmedError

    raise SmallmedError(f"{path}: unsupported data; expected an .npz file, a .csv manifest or a folder of images.")
