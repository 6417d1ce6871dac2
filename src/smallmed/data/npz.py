"""MedMNIST-style ``.npz`` files at any resolution, and plain ``images``/``labels`` npz files."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import cast

import numpy as np

from ..errors import SmallmedError
from .catalog import MEDMNIST, split_name
from .dataset import SPLITS, ImageDataset, Split
from .splits import patient_split


class CheckedNpz:
    """An open ``.npz`` whose arrays are checked before they are read: no object arrays (never unpickled) and no
    header that claims more data than its file member holds (a forged shape would allocate petabytes)."""

    def __init__(self, npz: np.lib.npyio.NpzFile, path: Path) -> None:
        self._npz, self.path, self.files = npz, path, npz.files

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.files:
            raise KeyError(key)
        zf = cast(zipfile.ZipFile, self._npz.zip)  # numpy's stub allows None: only once the file is closed
        member = zf.getinfo(f"{key}.npy")
        with zf.open(member) as f:
            try:
                version = np.lib.format.read_magic(f)
                shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0(f))  # fmt: skip
            except ValueError as e:
                raise SmallmedError(f"{self.path}: '{key}' is not a readable array ({e}).") from None
        if dtype.hasobject:
            raise SmallmedError(f"{self.path}: '{key}' holds Python objects; smallmed reads numeric arrays only "
                                "(it never unpickles).")  # fmt: skip
        need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if need > member.file_size:
            raise SmallmedError(f"{self.path}: '{key}' claims shape {shape} ({need:,} bytes) but holds "
                                f"{member.file_size:,} bytes; the file is damaged or forged.")  # fmt: skip
        return self._npz[key]

    def close(self) -> None:
        self._npz.close()


def open_npz(path: Path, required: tuple[str, ...] = ()) -> CheckedNpz:
    """``np.load`` without pickles, with one-sentence errors for unreadable files, missing keys and arrays whose
    header does not fit their data (:class:`CheckedNpz`)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        reason = "empty file" if isinstance(e, EOFError) or (path.exists() and path.stat().st_size == 0) else str(e)
        raise SmallmedError(f"{path}: not a readable .npz file ({reason}).") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise SmallmedError(f"{path}: a single .npy array, not an .npz file of named arrays.")
    missing = [k for k in required if k not in npz.files]
    if missing:
        raise SmallmedError(f"{path}: missing key(s) {', '.join(missing)}; found {', '.join(npz.files) or 'none'}.")
    return CheckedNpz(npz, path)


def _check_labels(splits: dict, path: Path, known_classes: int | None) -> None:
    """Class labels that can be learnt: finite whole numbers from 0, every class id present somewhere (labels such as
    0/255 are a coding to fix, not 256 classes), and none in val/test that training never has."""
    single = {}
    for s, sp in splits.items():
        y = np.asarray(sp.labels)
        if not np.issubdtype(y.dtype, np.number) and y.dtype != bool:
            continue  # named in the dataset check
        y = y.astype(np.float64)
        if not np.isfinite(y).all():
            i = int(np.flatnonzero(~np.isfinite(y.reshape(len(y), -1)).all(axis=1))[0])
            raise SmallmedError(f"{path}: '{s}_labels' holds a non-finite value (image {i}); expected class indices.")
        if (y < 0).any() or (np.mod(y, 1) != 0).any():
            bad = y[(y < 0) | (np.mod(y, 1) != 0)][0]
            raise SmallmedError(f"{path}: '{s}_labels' holds {bad:g}; expected whole class indices from 0.")
        if y.ndim == 1 or y.shape[1] == 1:
            single[s] = np.unique(y.astype(np.int64))
    if len(single) != len(splits):
        return
    present = np.unique(np.concatenate(list(single.values())))
    if known_classes is not None and present.max() >= known_classes:
        return  # the dataset check names the label outside the known classes
    n = known_classes or int(present.max()) + 1
    missing = n - len(present)  # present: distinct ids in [0, n); counted, never listed (a label may be 2**40)
    if known_classes is None and missing:
        codes = ", ".join(map(str, present[:6])) + (" ..." if len(present) > 6 else "")
        raise SmallmedError(f"{path}: labels are coded {codes}, so {n} classes would follow with "
                            f"{missing} of them empty; recode the labels as 0..{len(present) - 1}.")  # fmt: skip
    unseen = sorted(set(np.concatenate([single[s] for s in single if s != "train"]).tolist())
                    - set(single["train"].tolist()))  # fmt: skip
    if unseen:
        raise SmallmedError(f"{path}: class {unseen[0]} appears in val/test but never in 'train_labels'; a model "
                            "cannot learn a class it never sees (move some of its images to training).")  # fmt: skip


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
        _check_labels(splits, path, len(info.labels) if info is not None else None)
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
        _check_labels(splits, path, len(info.labels) if info is not None else None)
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
    official = {"official_split": True} if {f"{s}_images" for s in SPLITS} <= keys else {}
    return ImageDataset(name=name, task=task, class_names=classes, splits=splits, source=str(path), info=official)


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
        name=name,
        task="regression",
        class_names=[],
        splits=splits,
        source=str(path),
        info={"range": (low, high), "official_split": True},
    )
