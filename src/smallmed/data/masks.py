"""Image + binary mask data for segmentation (seed 004's U-Net part).

Sources:

- an ``.npz`` with ``images`` and ``masks`` (same [N, H, W] shape) and optionally ``patient_id``:
  split patient-level 60/20/20 (seeded); or with ``train_images``/``train_masks``/``val_*``/``test_*``;
- a folder with ``images/`` and ``masks/`` holding files of the same names (PNG, JPEG, TIFF, DICOM);
- ``covid-lungseg``: the 451 COVID-era chest X-rays with V7 Labs lung masks in ../shared/data.

Masks must be binary: values {0, 1} or {0, 255} (anything else is an error naming the file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SmallmedError
from .npz import open_npz
from .splits import patient_split

SPLITS = ("train", "val", "test")


@dataclass
class MaskSplit:
    images: np.ndarray  # [N, H, W] or [N, H, W, C] uint8
    masks: np.ndarray  # [N, H, W] uint8 in {0, 1}
    patient_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> MaskSplit:
        idx = np.asarray(idx, dtype=np.int64)
        return MaskSplit(self.images[idx], self.masks[idx], None if self.patient_ids is None else self.patient_ids[idx])


@dataclass
class SegmentationDataset:
    name: str
    splits: dict[str, MaskSplit]
    source: str = ""
    info: dict = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        im = self.splits["train"].images
        return 1 if im.ndim == 3 else im.shape[-1]

    @property
    def image_size(self) -> int:
        return int(self.splits["train"].images.shape[1])


def check_masks(images: np.ndarray, masks: np.ndarray, where: str) -> np.ndarray:
    """Masks as uint8 {0, 1}; clear errors for a shape mismatch or non-binary values."""
    if masks.shape[:3] != images.shape[:3] or masks.ndim != 3:
        raise SmallmedError(
            f"{where}: masks have shape {tuple(masks.shape)} but the images {tuple(images.shape)}; "
            "expected one [H, W] mask per image of the same height and width."
        )
    values = np.unique(masks)
    if set(values.tolist()) <= {0, 1}:
        return masks.astype(np.uint8)
    if set(values.tolist()) <= {0, 255}:
        return (masks > 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:6])
    raise SmallmedError(
        f"{where}: mask values {shown}{'...' if len(values) > 6 else ''}; expected binary masks "
        "with values {0, 1} or {0, 255}."
    )


def load_segmentation(
    spec: str | os.PathLike, *, data_dir: str | os.PathLike | None = None, split_seed: int = 0
) -> SegmentationDataset:
    """Load image/mask data by name (``covid-lungseg``) or path (npz or folder)."""
    from .paths import resolve_data

    path = resolve_data(spec, data_dir)
    if path.is_dir():
        return _from_folder(path, split_seed)
    if path.suffix.lower() != ".npz":
        raise SmallmedError(
            f"{path}: segmentation data must be an .npz (images, masks) or a folder with images/ and masks/."
        )
    keys = set(np.load(path, allow_pickle=False).files) if path.exists() else set()
    if {"train_images", "train_masks"} <= keys:
        npz = open_npz(path, tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "masks")))
        splits = {
            s: MaskSplit(npz[f"{s}_images"], check_masks(npz[f"{s}_images"], npz[f"{s}_masks"], f"{path} ({s})"))
            for s in SPLITS
        }
        return SegmentationDataset(path.stem, splits, str(path), {"split": "given by the file"})
    npz = open_npz(path, ("images", "masks"))
    images = npz["images"]
    masks = check_masks(images, npz["masks"], str(path))
    pids = np.asarray(npz["patient_id"]).astype(str) if "patient_id" in keys else None
    return _split(path.stem if str(spec) == str(path) else str(spec), images, masks, pids, split_seed, str(path))


def _split(name, images, masks, pids, seed, source) -> SegmentationDataset:
    strata = (masks.reshape(len(masks), -1).mean(1) > np.median(masks.reshape(len(masks), -1).mean(1))).astype(int)
    idx = patient_split(strata, pids, val=0.2, test=0.2, seed=seed)
    splits = {s: MaskSplit(images[i], masks[i], None if pids is None else pids[i]) for s, i in idx.items()}
    how = "patient-level" if pids is not None else "image-level"
    return SegmentationDataset(name, splits, source, {"split": f"{how} 60/20/20, seed {seed}"})


def _from_folder(path: Path, seed: int) -> SegmentationDataset:
    from .folder import IMAGE_SUFFIXES, read_image

    im_dir, mk_dir = path / "images", path / "masks"
    if not im_dir.is_dir() or not mk_dir.is_dir():
        raise SmallmedError(f"{path}: expected sub-folders images/ and masks/ with files of the same names.")
    files = sorted(p for p in im_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SmallmedError(f"{im_dir}: no image files.")
    images, masks = [], []
    for f in files:
        cands = [m for m in mk_dir.glob(f.stem + ".*") if m.suffix.lower() in IMAGE_SUFFIXES]
        if not cands:
            raise SmallmedError(f"{f}: no mask named {f.stem}.* in {mk_dir}.")
        im = read_image(f, channels=1)[..., 0]
        mk = read_image(cands[0], channels=1)[..., 0]
        images.append(im)
        masks.append(check_masks(im[None], mk[None], str(cands[0]))[0])
    return _split(path.name, np.stack(images), np.stack(masks), None, seed, str(path))
