"""Image folders (``root/<class>/*.png``) and CSV manifests (path, label[, patient_id][, split])."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import SmallmedError
from .dataset import SPLITS, ImageDataset, Split
from .dicom import is_dicom, read_dicom
from .splits import patient_split

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}


def read_image(path: str | Path, *, channels: int | None = None, size: int | None = None) -> np.ndarray:
    """Read one PNG/JPEG/TIFF/DICOM file as uint8 (H, W, C), optionally resized to size×size.

    16-bit PNG/TIFF are scaled from their own min-max to 0-255.
    """
    path = Path(path)
    if not path.exists():
        raise SmallmedError(f"{path}: file not found.")
    if is_dicom(path):
        arr = read_dicom(path)
    else:
        try:
            with Image.open(path) as im:
                im.load()
                arr = _pil_to_uint8(im)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise SmallmedError(f"{path}: not a readable image ({e}).") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if channels == 1 and arr.shape[-1] == 3:
        arr = np.asarray(Image.fromarray(arr).convert("L"))[..., None]
    elif channels == 3 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if size is not None and arr.shape[:2] != (size, size):
        mode_arr = arr[..., 0] if arr.shape[-1] == 1 else arr
        arr = np.asarray(Image.fromarray(mode_arr).resize((size, size), Image.Resampling.BILINEAR))
        if arr.ndim == 2:
            arr = arr[..., None]
    return np.ascontiguousarray(arr)


def _pil_to_uint8(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        return np.round((a - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    if im.mode in ("L", "RGB"):
        return np.asarray(im)
    if im.mode in ("LA", "P") and im.convert("RGB").getextrema() == im.convert("L").convert("RGB").getextrema():
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))


def _gray(arr: np.ndarray) -> bool:
    return arr.shape[-1] == 1 or (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))


def _read_all(paths: list[Path], size: int | None) -> np.ndarray:
    raw = [read_image(p) for p in paths]
    channels = 1 if all(_gray(a) for a in raw) else 3
    shapes = {a.shape[:2] for a in raw}
    if size is None and len(shapes) > 1:
        size = 224  # mixed sizes need one: 224 is what ImageNet backbones expect
    return np.stack([read_image(p, channels=channels, size=size) for p in paths])


def load_csv(path: str | Path, *, image_size: int | None = None, split_seed: int = 0) -> ImageDataset:
    """Load a CSV manifest with columns ``path``, ``label`` and optional ``patient_id``, ``split``.

    Paths are relative to the CSV's folder. Labels may be names or integers; class indices follow
    sorted order. Without a ``split`` column the data is split patient-level 70/10/20 (stratified).

    Example:
        >>> ds = load_csv("manifest.csv", image_size=224)   # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise SmallmedError(f"{path}: file not found.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = list(reader)
    missing = [c for c in ("path", "label") if c not in fields]
    if missing:
        raise SmallmedError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(fields) or 'none'}.")
    if not rows:
        raise SmallmedError(f"{path}: no rows; expected one row per image.")
    files = [(path.parent / r["path"]).resolve() for r in rows]
    raw_labels = [(r["label"] or "").strip() for r in rows]
    empty = [i for i, lbl in enumerate(raw_labels) if not lbl]
    if empty:
        raise SmallmedError(f"{path}, row {empty[0] + 2}: empty label; every row needs a class.")
    pids = np.array([r.get("patient_id") or f"row{i}" for i, r in enumerate(rows)]) if "patient_id" in fields else None
    split_col = [r["split"].strip().lower() for r in rows] if "split" in fields else None
    return _build(path, files, raw_labels, pids, split_col, image_size, split_seed)


def load_folder(root: str | Path, *, image_size: int | None = None, split_seed: int = 0) -> ImageDataset:
    """Load ``root/<class>/<image>`` (classes in sorted order), or ``root/{train,val,test}/<class>/...``.

    Example:
        >>> ds = load_folder("xrays/", image_size=128)   # doctest: +SKIP
    """
    root = Path(root)
    if not root.is_dir():
        raise SmallmedError(f"{root}: not a folder.")
    has_splits = all((root / s).is_dir() for s in SPLITS)
    files, labels, split_col = [], [], []
    for split in SPLITS if has_splits else (None,):
        base = root / split if split else root
        classes = sorted(d.name for d in base.iterdir() if d.is_dir())
        for c in classes:
            for f in sorted((base / c).iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    if f.suffix.lower() not in IMAGE_SUFFIXES and not is_dicom(f):
                        raise SmallmedError(
                            f"{f}: not an image file; expected one of {', '.join(sorted(IMAGE_SUFFIXES))}."
                        )
                    files.append(f)
                    labels.append(c)
                    split_col.append(split)
    if not files:
        raise SmallmedError(f"{root}: no images found; expected {root}/<class>/<image> files.")
    return _build(root, files, labels, None, split_col if has_splits else None, image_size, split_seed)


def _build(source, files, raw_labels, pids, split_col, image_size, split_seed) -> ImageDataset:
    if all(lbl.lstrip("-").isdigit() for lbl in raw_labels):
        ints = np.array([int(lbl) for lbl in raw_labels])
        classes = [str(i) for i in range(max(int(ints.max()) + 1, 2))]
        labels = ints
    else:
        classes = sorted(set(raw_labels))
        labels = np.array([classes.index(lbl) for lbl in raw_labels])
    images = _read_all(files, image_size)
    if split_col is not None:
        bad = sorted({s for s in split_col if s not in SPLITS})
        if bad:
            raise SmallmedError(f"{source}: split value {bad[0]!r} is not one of train, val, test.")
        idx = {s: np.flatnonzero(np.array(split_col) == s) for s in SPLITS}
    else:
        idx = patient_split(labels, pids, seed=split_seed)
    splits = {
        s: Split(images[i], labels[i], None if pids is None else pids[i], [str(files[j]) for j in i])
        for s, i in idx.items()
    }
    task = "binary" if len(classes) == 2 else "multiclass"
    info = {"official_split": True} if split_col is not None else {}
    return ImageDataset(
        name=Path(source).stem, task=task, class_names=classes, splits=splits, source=str(source), info=info
    )
