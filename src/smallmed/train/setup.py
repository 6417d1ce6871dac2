"""Everything a run needs before its first step, checked before any file is written."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..data import ImageDataset, Split, load_dataset, nested_fraction
from ..data.torchdata import ArrayDataset
from ..data.transforms import build_transform, dataset_mean_std
from ..errors import SmallmedError
from ..models import MODELS, create_model

log = logging.getLogger(__name__)


@dataclass
class Setup:
    cfg: TrainConfig
    dataset: ImageDataset
    train_idx: np.ndarray
    model: nn.Module
    model_kwargs: dict
    image_size: int
    normalize: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    device: torch.device
    trainable_names: set
    svd_summary: object = None
    pretrained_state: dict | None = None
    total_params: int = 0

    def transform(self, train: bool):
        return build_transform(train=train, image_size=self.image_size, channels=self.model_kwargs["in_chans"],
                               augment=self.cfg.augment, normalize=self.normalize, mean=self.mean, std=self.std)

    @functools.cached_property
    def train_split(self) -> Split:
        """The training fraction, indexed once (fancy indexing copies the images)."""
        return self.dataset.splits["train"].subset(self.train_idx)

    def dataset_for(self, split: str, *, train: bool) -> ArrayDataset:
        sp = self.train_split if split == "train" else self.dataset.splits[split]
        return ArrayDataset(sp, self.transform(train))

    def loader(self, split: str, *, train: bool, sampler=None, generator=None, dataset=None) -> DataLoader:
        ds = dataset if dataset is not None else self.dataset_for(split, train=train)
        return DataLoader(
            ds,
            batch_size=self.cfg.batch_size if train else self.cfg.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=self.cfg.num_workers,
            drop_last=train and len(ds) > self.cfg.batch_size,  # no 1-image batch for BatchNorm
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SmallmedError(f"device={spec!r} but CUDA is not available here; use device=auto or cpu.")
    return dev


def prepare(cfg: TrainConfig, *, model: nn.Module | None = None, dataset: ImageDataset | None = None) -> Setup:
    """Load data, pick the training subset, build the model and resolve preprocessing.

    Pass ``model`` to train any PyTorch classifier (its last Linear is the head) or ``dataset``
    to skip loading by name.
    """
    ds = dataset if dataset is not None else load_dataset(cfg.data, data_dir=cfg.data_dir, split_seed=cfg.split_seed)
    train = ds.splits["train"]
    train_idx = nested_fraction(train.labels, cfg.fraction, seed=cfg.seed, groups=train.patient_ids)
    if len(train_idx) < 2:
        raise SmallmedError(f"fraction={cfg.fraction} leaves {len(train_idx)} training image(s); need at least 2.")
    image_size = cfg.image_size or ds.image_size
    named = False
    if model is None:
        entry = MODELS.get(cfg.model)
        named = bool(cfg.weights) and cfg.weights in (entry.pretrained or {})
        kw = dict(num_classes=ds.num_classes, in_chans=ds.in_chans, norm=cfg.norm, input_size=image_size,
                  stem=cfg.stem)
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
        model = create_model(cfg.model, weights=cfg.weights, **kw)
        kw["stem"] = model.smallmed_stem  # resolved from "auto", so a reload builds the same layers
        if model.smallmed_load_report is not None:
            log.info("weights %s: %s", cfg.weights, model.smallmed_load_report)
    else:
        kw = {"num_classes": ds.num_classes, "in_chans": ds.in_chans, "custom": type(model).__name__}
    if cfg.conv != "conv":
        from ..reparam.factorized import factorize

        log.info("%s", factorize(model, cfg.conv, rank_ratio=cfg.rank_ratio if cfg.conv != "dpc" else None))
    total_params = sum(p.numel() for p in model.parameters())  # before any reparametrisation
    pretrained_state = None
    if cfg.weights and cfg.method == "full":  # kept for the R-ratio diagnostic of seed 000
        pretrained_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    from ..methods import apply_method

    trainable_names, svd_summary = apply_method(model, cfg.method, svd_train=cfg.svd_train,
                                                svd_linear=cfg.svd_linear, prune=cfg.prune)
    normalize = cfg.normalize
    if normalize == "auto":
        normalize = MODELS.get(cfg.model).pretrained_normalize if named else "dataset"
    mean = std = None
    if normalize == "dataset":
        mean, std = dataset_mean_std(train.images[train_idx], kw["in_chans"])
    device = resolve_device(cfg.device)
    return Setup(cfg, ds, train_idx, model, kw, image_size, normalize, mean, std, device, trainable_names,
                 svd_summary, pretrained_state, total_params)

