"""The one structure every loader returns: images in memory, labels, optional patient ids.

Small medical datasets fit in memory, so loaders read everything once, check it, and keep
uint8 images of shape (N, H, W, C). Checking happens here, in one place, so that a bad file
fails at load time with a message naming the file, not three epochs into a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SmallmedError

TASKS = ("binary", "multiclass", "multilabel", "regression")
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split: ``images`` (N, H, W, C) uint8; ``labels`` (N,) int64 or (N, K) float32."""

    images: np.ndarray
    labels: np.ndarray
    patient_ids: np.ndarray | None = None
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> Split:
        idx = np.asarray(idx, dtype=np.int64)
        return Split(
            images=self.images[idx],
            labels=self.labels[idx],
            patient_ids=None if self.patient_ids is None else self.patient_ids[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
        )


@dataclass
class ImageDataset:
    """A checked dataset: ``splits`` holds "train", "val" and "test".

    Example:
        >>> ds = load_dataset("pneumoniamnist")          # doctest: +SKIP
        >>> ds.num_classes, ds.in_chans, ds.image_size   # doctest: +SKIP
        (2, 1, 28)
    """

    name: str
    task: str
    class_names: list[str]
    splits: dict[str, Split]
    source: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.source or self.name
        if self.task not in TASKS:
            raise SmallmedError(f"{where}: task {self.task!r} is not one of {', '.join(TASKS)}.")
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise SmallmedError(f"{where}: split(s) {', '.join(missing)} missing; expected train, val and test.")
        shapes = set()
        for name in SPLITS:
            split = self.splits[name]
            self.splits[name] = split = _check_split(split, name, self.task, self.num_classes, where)
            shapes.add(split.images.shape[1:])
        if len(shapes) > 1:
            raise SmallmedError(
                f"{where}: splits have different image shapes {sorted(shapes)}; expected one (H, W, C)."
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.splits["train"].images.shape[-1])

    @property
    def image_size(self) -> int:
        h, w = self.splits["train"].images.shape[1:3]
        return int(max(h, w))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return (
            f"ImageDataset({self.name!r}, task={self.task}, classes={self.num_classes}, "
            f"image={self.image_size}px x{self.in_chans}, {sizes})"
        )


def _check_split(split: Split, name: str, task: str, num_classes: int, where: str) -> Split:
    images, labels = np.asarray(split.images), np.asarray(split.labels)
    if len(images) == 0:
        raise SmallmedError(f"{where}: split '{name}' is empty; every split needs at least one image.")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise SmallmedError(
            f"{where}: '{name}' images have shape {images.shape}; expected (N, H, W) or (N, H, W, 1|3)."
        )
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.number):
        raise SmallmedError(f"{where}: '{name}' images are {images.dtype} values; expected numeric pixels (uint8).")
    if images.dtype != np.uint8:
        raise SmallmedError(f"{where}: '{name}' images are {images.dtype}; expected uint8 (0-255).")
    if len(labels) != len(images):
        raise SmallmedError(f"{where}: '{name}' has {len(images)} images but {len(labels)} labels.")
    if task == "regression":
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.number) or not np.isfinite(labels).all():
            raise SmallmedError(
                f"{where}: '{name}' scores must be one finite number per image; got shape "
                f"{labels.shape}, dtype {labels.dtype}."
            )
        labels = labels.astype(np.float32)
    elif task == "multilabel":
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise SmallmedError(
                f"{where}: '{name}' labels have shape {labels.shape}; expected (N, {num_classes}) for multi-label."
            )
        if not np.isin(labels, (0, 1)).all():
            raise SmallmedError(f"{where}: '{name}' multi-label labels must be 0 or 1.")
        labels = labels.astype(np.float32)
    else:
        if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == bool):
            raise SmallmedError(f"{where}: '{name}' labels are {labels.dtype} values; expected integer class indices.")
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise SmallmedError(f"{where}: '{name}' labels have shape {labels.shape}; expected (N,) or (N, 1).")
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.equal(np.mod(labels, 1), 0)):
                raise SmallmedError(f"{where}: '{name}' labels are not whole numbers; expected class indices.")
        labels = labels.astype(np.int64)
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise SmallmedError(
                f"{where}: '{name}' has label {int(bad[0])} outside the class range 0..{num_classes - 1}."
            )
    pids = None if split.patient_ids is None else np.asarray(split.patient_ids).astype(str)
    return Split(images=images, labels=labels, patient_ids=pids, paths=split.paths)


def as_regression(ds: ImageDataset) -> ImageDataset:
    """Integer class labels as a bounded score 0..K-1 (an ordinal grade such as Kellgren-Lawrence).

    Example:
        >>> ds = as_regression(load_dataset("knee_oa_kl_96.npz"))   # doctest: +SKIP
        >>> ds.task, ds.info["range"]                               # doctest: +SKIP
        ('regression', (0.0, 4.0))
    """
    if ds.task == "regression":
        return ds
    if ds.task not in ("binary", "multiclass"):
        raise SmallmedError(f"{ds.source or ds.name}: {ds.task} labels cannot be read as one score per image.")
    splits = {k: Split(v.images, v.labels.astype(np.float32), v.patient_ids, v.paths) for k, v in ds.splits.items()}
    return ImageDataset(
        ds.name,
        "regression",
        [],
        splits,
        ds.source,
        {**ds.info, "range": (0.0, float(ds.num_classes - 1)), "grades": list(ds.class_names)},
    )
