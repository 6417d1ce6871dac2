"""Images with named keypoints (joint localisation): an ``.npz`` with ``images`` [N, H, W] uint8,
``keypoints_xyv`` [N, K, 3] (x, y in pixels, v > 0 visible), ``keypoint_names`` [K] and a
``split`` [N] of train/val/test (or a seeded 70/10/20 split without it).

``select`` keeps and renames a subset of the keypoints (``{"mcp_1": "thumb2", ...}``), so a
set annotated with other names trains a localiser for the names a pipeline needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SmallmedError
from .npz import open_npz

SPLITS = ("train", "val", "test")


@dataclass
class KeypointSplit:
    images: np.ndarray  # [N, H, W] or [N, H, W, C] uint8
    keypoints: np.ndarray  # [N, K, 3] float32: x, y, visible
    patient_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> KeypointSplit:
        idx = np.asarray(idx, dtype=np.int64)
        return KeypointSplit(
            self.images[idx], self.keypoints[idx], None if self.patient_ids is None else self.patient_ids[idx]
        )


@dataclass
class KeypointDataset:
    name: str
    names: list[str]
    splits: dict[str, KeypointSplit]
    source: str = ""
    info: dict = field(default_factory=dict)
    task: str = "keypoints"

    @property
    def in_chans(self) -> int:
        im = self.splits["train"].images
        return 1 if im.ndim == 3 else int(im.shape[-1])

    @property
    def image_size(self) -> int:
        return int(max(self.splits["train"].images.shape[1:3]))


def is_keypoint_file(path: Path) -> bool:
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        return "keypoints_xyv" in np.load(path, allow_pickle=False).files
    except Exception:
        return False


def load_keypoints(
    spec: str | os.PathLike, *, data_dir=None, split_seed: int = 0, select: dict[str, str] | None = None
) -> KeypointDataset:
    """Load a keypoint ``.npz`` (see the module docstring), optionally keeping ``select``'s names."""
    from .paths import resolve_data
    from .splits import patient_split

    path = resolve_data(spec, data_dir)
    npz = open_npz(path, ("images", "keypoints_xyv"))
    images, kp = npz["images"], np.asarray(npz["keypoints_xyv"], dtype=np.float32)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise SmallmedError(f"{path}: 'images' are {images.dtype} {images.shape}; expected uint8 [N, H, W(, C)].")
    if kp.ndim != 3 or kp.shape[0] != len(images) or kp.shape[2] != 3:
        raise SmallmedError(f"{path}: 'keypoints_xyv' has shape {kp.shape}; expected [{len(images)}, K, 3].")
    names = (
        [str(n) for n in npz["keypoint_names"]]
        if "keypoint_names" in npz.files
        else [str(i) for i in range(kp.shape[1])]
    )
    if select:
        missing = [src for src in select.values() if src not in names]
        if missing:
            raise SmallmedError(f"{path}: keypoint(s) {', '.join(missing)} not in the file ({', '.join(names)}).")
        kp = kp[:, [names.index(src) for src in select.values()]]
        names = list(select)
    if "split" in npz.files:
        split = np.asarray(npz["split"]).astype(str)
        bad = sorted(set(split) - set(SPLITS))
        if bad:
            raise SmallmedError(f"{path}: 'split' has value(s) {bad}; expected train, val or test.")
        idx = {s: np.flatnonzero(split == s) for s in SPLITS}
        how = "given by the file"
    else:
        idx = patient_split(np.zeros(len(images), dtype=int), None, val=0.1, test=0.2, seed=split_seed)
        how = f"image-level 70/10/20, seed {split_seed}"
    for s in SPLITS:
        if len(idx[s]) == 0:
            raise SmallmedError(f"{path}: split '{s}' is empty.")
    splits = {s: KeypointSplit(images[i], kp[i]) for s, i in idx.items()}
    return KeypointDataset(path.stem, names, splits, str(path), {"split": how, "official_split": "split" in npz.files})
