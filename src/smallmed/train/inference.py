"""Use a finished run: rebuild its model from ``best.pt`` and evaluate or predict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..data import load_dataset, read_image
from ..data.dataset import Split
from ..data.torchdata import ArrayDataset
from ..data.transforms import build_transform
from ..errors import SmallmedError
from ..models import create_model
from .checkpoint import load_checkpoint
from .loop import evaluate, probabilities
from .setup import resolve_device


@dataclass
class LoadedRun:
    model: nn.Module
    config: TrainConfig
    meta: dict

    def transform(self):
        m = self.meta
        return build_transform(train=False, image_size=m["image_size"], channels=m["model_kwargs"]["in_chans"],
                               normalize=m["normalize"], mean=m["mean"], std=m["std"])


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """Rebuild the best model of a run folder (strict key and shape check).

    Example:
        >>> run = load_run("runs/r18")   # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SmallmedError(f"{run_dir}: run folder not found.")
    ckpt = load_checkpoint(run_dir / "best.pt")
    if ckpt.get("task") == "segmentation":
        raise SmallmedError(f"{run_dir}: a segmentation run; its metrics are in metrics.json and overlays/, and "
                            "smallmed.train.segment.load_segmentation_run(run_dir) rebuilds its model.")
    cfg = TrainConfig.from_dict({**ckpt["config"], "out": str(run_dir)}, source=str(run_dir / "best.pt"))
    kw = dict(ckpt["model_kwargs"])
    if "custom" in kw:
        raise SmallmedError(f"{run_dir}: trained with a custom model ({kw['custom']}); rebuild it and load best.pt yourself.")
    model = create_model(cfg.model, kw["num_classes"], in_chans=kw["in_chans"], norm=kw["norm"],
                         input_size=kw["input_size"], stem=kw["stem"])
    if cfg.conv != "conv":
        from ..reparam.factorized import factorize

        factorize(model, cfg.conv, rank_ratio=cfg.rank_ratio if cfg.conv != "dpc" else None)
    if cfg.method != "full":
        from ..methods import apply_method

        apply_method(model, cfg.method, svd_train=cfg.svd_train, svd_linear=cfg.svd_linear, prune=cfg.prune)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise SmallmedError(f"{run_dir / 'best.pt'}: weights do not fit {cfg.model} ({str(e).splitlines()[0]}).") from None
    model.to(resolve_device(device)).eval()
    return LoadedRun(model, cfg, ckpt)


def evaluate_run(run_dir: str | Path, data: str | None = None, split: str = "test", data_dir: str | None = None,
                 device: str = "auto") -> dict:
    """Metrics of a run's best model on a split of its own data or of another dataset with the same classes."""
    run = load_run(run_dir, device)
    cfg = run.config
    ds = load_dataset(data or cfg.data, data_dir=data_dir or cfg.data_dir, split_seed=cfg.split_seed)
    if ds.class_names != run.meta["class_names"] and ds.num_classes != len(run.meta["class_names"]):
        raise SmallmedError(f"{data}: has {ds.num_classes} classes but the run was trained on "
                            f"{len(run.meta['class_names'])} ({', '.join(run.meta['class_names'])}).")
    if split not in ds.splits:
        raise SmallmedError(f"split={split!r}: expected train, val or test.")
    loader = DataLoader(ArrayDataset(ds.splits[split], run.transform()), batch_size=cfg.batch_size)
    dev = next(run.model.parameters()).device
    return evaluate(run.model, loader, run.meta["task"], dev, cfg.fprs)


@torch.no_grad()
def predict_images(run_dir: str | Path, images: list[str | Path], device: str = "auto") -> list[dict]:
    """Class probabilities for image files (PNG/JPEG/TIFF/DICOM), one dict per image."""
    if not images:
        raise SmallmedError("no images given; expected one or more image files.")
    run = load_run(run_dir, device)
    chans = 1 if run.meta["model_kwargs"]["in_chans"] == 1 else 3
    arrays = np.stack([read_image(p, channels=chans, size=run.meta["image_size"]) for p in images])
    split = Split(arrays, np.zeros(len(arrays), dtype=np.int64))
    loader = DataLoader(ArrayDataset(split, run.transform()), batch_size=run.config.batch_size)
    dev = next(run.model.parameters()).device
    probs = torch.cat([probabilities(run.meta["task"], run.model(x.to(dev)).float()).cpu() for x, _ in loader]).numpy()
    classes = run.meta["class_names"]
    return [{"path": str(p), "pred": classes[int(pr.argmax())], **{f"p_{c}": float(v) for c, v in zip(classes, pr)}}
            for p, pr in zip(images, probs)]
