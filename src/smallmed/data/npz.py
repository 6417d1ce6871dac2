"""MedMNIST-style ``.npz`` files at any resolution, and plain ``images``/``labels`` npz files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import SmallmedError
from .catalog import MEDMNIST, split_name
from .dataset import SPLITS, ImageDataset, Split
from .splits import patient_split


def open_npz(path: Path, required: tuple[str, ...] = ()) -> np.lib.npyio.NpzFile:
    """``np.load`` without pickles, with one-sentence errors for unreadable files and missing keys."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        reason = "empty file" if isinstance(e, EOFError) or (path.exists() and path.stat().st_size == 0) else str(e)
        raise SmallmedError(f"{path}: not a readable .npz file ({reason}).") from None
    missing = [k for k in required if k not in npz.files]
    if missing:
        raise SmallmedError(f"{path}: missing key(s) {', '.join(missing)}; found {', '.join(npz.files) or 'none'}.")
    return npz


def _as_2d(labels: np.ndarray, path: Path, split: str) -> np.ndarray:
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == bool):
        key = "labels" if split == "all" else f"{split}_labels"
        raise SmallmedError(f"{path}: '{key}' holds {labels.dtype} values; expected integer class indices.")
    if labels.size == 0:
        raise SmallmedError(f"{path}: '{split}' has no labels.")
    if labels.ndim == 1:
        return labels[:, None]
    if labels.ndim != 2:
        raise SmallmedError(f"{path}: '{split}' labels have shape {labels.shape}; expected (N,), (N, 1) or (N, K).")
    return labels


def _task_from_labels(labels: np.ndarray) -> str:
    if labels.ndim == 2 and labels.shape[1] > 1:
        return "multilabel"
    return "binary" if int(labels.max()) <= 1 else "multiclass"


def load_npz(path: str | Path, *, name: str | None = None, split_seed: int = 0) -> ImageDataset:
    """Load a MedMNIST file (``train_images``, ``train_labels``, ... ) or an ``images``/``labels`` file.

    A file with ``{split}_scores`` instead of labels (and optionally ``score_range`` = [low, high])
    is a regression set: a bounded score per image, e.g. a joint-damage grade.

    Grayscale (N, H, W) and RGB (N, H, W, 3) are both accepted; task and class names come from
    the MedMNIST catalogue when the file name is known, otherwise from the labels. A file with
    only ``images``/``labels`` (and optional ``patient_id``) is split patient-level 70/10/20.

    Example:
        >>> ds = load_npz("pneumoniamnist_64.npz")   # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise SmallmedError(f"{path}: file not found.")
    npz = open_npz(path)
    keys = set(npz.files)
    base, _ = split_name(path.stem)
    name = name or path.stem
    info = MEDMNIST.get(base)
    if {f"{s}_images" for s in SPLITS} <= keys and {f"{s}_scores" for s in SPLITS} <= keys:
        return _regression(npz, path, name)
    if {f"{s}_images" for s in SPLITS} <= keys:
        missing = [f"{s}_labels" for s in SPLITS if f"{s}_labels" not in keys]
        if missing:
            raise SmallmedError(f"{path}: missing key(s) {', '.join(missing)}; found {', '.join(sorted(keys))}.")
        splits = {
            s: Split(
                npz[f"{s}_images"], npz[f"{s}_labels"], npz[f"{s}_patient_ids"] if f"{s}_patient_ids" in keys else None
            )
            for s in SPLITS
        }
        empty = [s for s, sp in splits.items() if len(sp.labels) == 0 or len(sp.images) == 0]
        if empty:
            raise SmallmedError(f"{path}: split '{empty[0]}' is empty; every split needs at least one image.")
        all_labels = np.concatenate([_as_2d(sp.labels, path, s) for s, sp in splits.items()])
    elif {"images", "labels"} <= keys:
        images, labels = npz["images"], npz["labels"]
        pids = npz["patient_id"] if "patient_id" in keys else None
        if len(labels) != len(images):
            raise SmallmedError(f"{path}: {len(images)} images but {len(labels)} labels.")
        idx = patient_split(
            labels.reshape(len(labels), -1)[:, 0] if labels.ndim == 2 and labels.shape[1] == 1 else labels,
            pids,
            seed=split_seed,
        )
        splits = {s: Split(images[i], labels[i], None if pids is None else pids[i]) for s, i in idx.items()}
        all_labels = _as_2d(labels, path, "all")
    else:
        raise SmallmedError(
            f"{path}: expected keys train_images/train_labels/val_images/val_labels/test_images/test_labels "
            f"(MedMNIST) or images/labels; found {', '.join(sorted(keys)) or 'none'}."
        )
    if info is not None:
        task, classes = info.task, list(info.labels)
    else:
        task = _task_from_labels(all_labels)
        n = all_labels.shape[1] if task == "multilabel" else int(all_labels.max()) + 1
        classes = [str(i) for i in range(max(n, 2))]
    return ImageDataset(name=name, task=task, class_names=classes, splits=splits, source=str(path))


def _regression(npz, path: Path, name: str) -> ImageDataset:
    splits = {}
    for s in SPLITS:
        scores = np.asarray(npz[f"{s}_scores"])
        if not np.issubdtype(scores.dtype, np.number):
            raise SmallmedError(f"{path}: '{s}_scores' holds {scores.dtype} values; expected numbers.")
        splits[s] = Split(
            npz[f"{s}_images"],
            scores.astype(np.float32).reshape(len(scores), -1)[:, 0]
            if scores.ndim == 2 and scores.shape[1] == 1
            else scores.astype(np.float32),
        )
    if "score_range" in npz.files:
        rng = np.asarray(npz["score_range"], dtype=float).ravel()
        if rng.size != 2 or not rng[1] > rng[0]:
            raise SmallmedError(f"{path}: 'score_range' is {rng.tolist()}; expected [low, high] with low < high.")
        low, high = float(rng[0]), float(rng[1])
    else:
        allv = np.concatenate([sp.labels for sp in splits.values()])
        low, high = float(np.floor(allv.min())), float(np.ceil(allv.max()))
    return ImageDataset(
        name=name, task="regression", class_names=[], splits=splits, source=str(path), info={"range": (low, high)}
    )
