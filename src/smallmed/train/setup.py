"""Everything a run needs before its first step, checked before any file is written."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import TrainConfig, resolved
from ..data import nested_fraction
from ..data.transforms import build_transform, dataset_mean_std
from ..errors import SmallmedError
from ..models import model_entry
from .recipe import Built, build_model
from .tasks import Task, task_for

if TYPE_CHECKING:
    from ..data.dataset import ImageDataset
    from ..data.keypoints import KeypointDataset
    from ..data.masks import SegmentationDataset
    from .tasks import ClassificationTask

log = logging.getLogger(__name__)


@dataclass
class Setup:
    cfg: TrainConfig
    dataset: ImageDataset | SegmentationDataset | KeypointDataset  # labelled images, image + mask or keypoint data
    task: Task
    train_idx: np.ndarray
    built: Built
    image_size: int
    in_chans: int
    normalize: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    device: torch.device

    @property
    def model(self) -> nn.Module:
        return self.built.model

    def transform(self, train: bool):
        return build_transform(
            train=train,
            image_size=self.image_size,
            channels=self.in_chans,
            augment=self.cfg.augment,
            normalize=self.normalize,
            mean=self.mean,
            std=self.std,
            fit=resolved(self.cfg.fit, "fit"),
        )

    @functools.cached_property
    def train_split(self):
        """The training fraction, indexed once (fancy indexing copies the images)."""
        return self.dataset.splits["train"].subset(self.train_idx)

    def dataset_for(self, split: str, *, train: bool):
        sp = self.train_split if split == "train" else self.dataset.splits[split]
        return self.task.torch_dataset(sp, self.transform(train))

    def loader(self, split: str, *, train: bool, sampler=None, generator=None, dataset=None) -> DataLoader:
        ds = dataset if dataset is not None else self.dataset_for(split, train=train)
        return DataLoader(
            ds,
            batch_size=self.cfg.batch_size if train else self.cfg.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=self.cfg.num_workers,
            drop_last=train and len(ds) > resolved(self.cfg.batch_size, "batch_size"),  # no 1-image batch for BatchNorm
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def checkpoint_meta(self) -> dict:
        """What ``best.pt`` records beside the weights so that any command can rebuild and use the model."""
        return {
            "config": self.cfg.to_dict(),
            "recipe": self.built.recipe,
            "task_info": self.task.info(),
            "image_size": self.image_size,
            "normalize": self.normalize,
            "fit": self.cfg.fit,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "base_hash": self.built.base_hash,
        }


def _labels(split) -> np.ndarray:
    """Strata for the nested training fraction: class labels, rounded scores, or one stratum for masks."""
    if not hasattr(split, "labels"):
        return np.zeros(len(split), dtype=np.int64)
    labels = getattr(split, "labels", None)
    if labels is None:
        return np.zeros(len(split), dtype=np.int64)
    labels = np.asarray(labels)
    if labels.ndim > 1:  # multi-label: stratify by the first label
        return labels[:, 0].astype(np.int64)
    return np.rint(labels).astype(np.int64) if np.issubdtype(labels.dtype, np.floating) else labels


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise SmallmedError(f"device={spec!r}: expected auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SmallmedError(f"device={spec!r} but CUDA is not available here; use device=auto or cpu.")
    return dev


def load_data(cfg: TrainConfig, task_hint: str | None = None):
    """The run's data: image/mask pairs for a segmentation model, labelled images otherwise."""
    from ..data import load_dataset
    from ..data.keypoints import is_keypoint_file, load_keypoints
    from ..data.masks import load_segmentation
    from ..data.paths import resolve_data

    try:
        path = resolve_data(cfg.data, cfg.data_dir)
    except SmallmedError:
        path = None
    ds: ImageDataset | SegmentationDataset | KeypointDataset
    if path is not None and is_keypoint_file(path):
        ds = load_keypoints(path, split_seed=cfg.split_seed)
    elif task_hint == "segmentation" or (task_hint is None and model_entry(cfg.model).task == "segmentation"):
        ds = load_segmentation(cfg.data, data_dir=cfg.data_dir, split_seed=cfg.split_seed)
    else:
        ds = load_dataset(cfg.data, data_dir=cfg.data_dir, split_seed=cfg.split_seed)
    if cfg.split_seed and not cfg.cv_folds and ds.info.get("official_split"):
        raise SmallmedError(
            f"split_seed={cfg.split_seed} has no effect: {cfg.data} comes with its own train/val/test split; it "
            "applies to data without one, or to the folds of cv_folds 2 or more."
        )
    return ds


def check_options(cfg: TrainConfig, task: Task, model_task: str | None) -> None:
    """Refuse, in one sentence, a model that does not fit the data's task, or an option the task does not use."""
    if model_task == "segmentation" and not task.dense:
        raise SmallmedError(
            f"model={cfg.model!r} is a segmentation model but data={cfg.data!r} holds labelled images; "
            "give image + mask data, or a classification model."
        )
    if model_task not in (None, "segmentation") and task.dense:
        raise SmallmedError(
            f"data={cfg.data!r} holds image + mask pairs but model={cfg.model!r} is a classifier; use --model unet."
        )
    task.check_options(cfg)


def resplit(ds, cfg: TrainConfig):
    """The splits a run sees: with ``cv_folds``, train+val pooled and fold ``cv_fold`` held out as val; with
    ``holdout='val'``, the final evaluation reads the validation split and the test split is dropped unread."""
    import dataclasses

    if not cfg.cv_folds and cfg.holdout == "test":
        return ds
    from ..data.splits import kfold

    splits = dict(ds.splits)
    if cfg.cv_folds:
        pooled = _concat(splits["train"], splits["val"])
        groups = getattr(pooled, "patient_ids", None)
        tr, ho = kfold(_labels(pooled), cfg.cv_folds, cfg.cv_fold, seed=cfg.split_seed, groups=groups)
        splits["train"], splits["val"] = pooled.subset(tr), pooled.subset(ho)
    splits["test"] = splits["val"]
    return dataclasses.replace(ds, splits=splits)


def _concat(a, b):
    """Two splits of one dataset as one (array fields concatenated; a field missing in either is dropped)."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        out[f.name] = None if x is None or y is None else np.concatenate([np.asarray(x), np.asarray(y)])
    return type(a)(**out)


def prepare(cfg: TrainConfig, *, model: nn.Module | None = None, dataset=None) -> Setup:
    """Load data, pick the training subset, build the model and resolve preprocessing.

    Pass ``model`` to train any PyTorch model (its head is found by ``get_classifier()`` or its last
    Linear) or ``dataset`` (an ImageDataset or SegmentationDataset) to skip loading by name.
    """
    model_task = model_entry(cfg.model).task if model is None else None
    ds = dataset if dataset is not None else load_data(cfg, model_task)
    if cfg.task == "regression":
        from ..data.dataset import as_regression

        if not hasattr(ds, "task") or ds.task not in ("binary", "multiclass", "regression"):
            raise SmallmedError(
                f"task='regression' needs one integer label or score per image; {cfg.data} has "
                f"{getattr(ds, 'task', 'masks or keypoints')}."
            )
        ds = as_regression(ds)
    ds = resplit(ds, cfg)
    task = task_for(ds, cfg)
    check_options(cfg, task, model_task)
    train = ds.splits["train"]
    groups = getattr(train, "patient_ids", None)
    train_idx = nested_fraction(_labels(train), cfg.fraction, seed=cfg.seed, groups=groups)
    flat = np.asarray(train.images)[train_idx].reshape(len(train_idx), -1)
    if len(train_idx) and (flat.max(axis=1) == flat.min(axis=1)).all():
        raise SmallmedError(f"{getattr(ds, 'source', '') or cfg.data}: every training image is a single constant "
                            "value; there is nothing to learn (check how the images were exported).")  # fmt: skip
    if len(train_idx) < 2:
        raise SmallmedError(f"fraction={cfg.fraction} leaves {len(train_idx)} training image(s); need at least 2.")
    if task.single_label:
        present = np.unique(np.asarray(train.labels)[train_idx])
        if len(present) < 2:
            only = cast("ClassificationTask", task).class_names[int(present[0])]  # single-label: a classification task
            raise SmallmedError(
                f"{getattr(ds, 'source', '') or cfg.data}: the training split (fraction {cfg.fraction}) "
                f"holds one class only ({only}); a classifier needs at least two."
            )
    image_size = cfg.image_size or ds.image_size
    in_chans = ds.in_chans
    built = build_model(cfg, num_classes=task.outputs(ds), in_chans=in_chans, input_size=image_size, model=model)
    normalize: str = cfg.normalize
    if normalize == "auto":
        normalize = model_entry(cfg.model).normalize_for(cfg.weights) if built.named_weights else "dataset"
    mean = std = None
    if normalize == "dataset":
        images = np.asarray(train.images)[train_idx]
        mean, std = dataset_mean_std(images[..., None] if images.ndim == 3 else images, in_chans)
    device = resolve_device(cfg.device)
    return Setup(cfg, ds, task, train_idx, built, image_size, in_chans, normalize, mean, std, device)
