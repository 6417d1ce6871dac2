"""Use a finished run: rebuild its model from ``best.pt`` (one recipe) and evaluate or predict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..data import read_image
from ..data.dataset import Split
from ..data.transforms import build_transform
from ..errors import SmallmedError
from ..io import load_checkpoint
from ..roles import model_info
from .loop import evaluate, run_loader
from .recipe import rebuild
from .setup import resolve_device
from .tasks import Task, task_from_info

if TYPE_CHECKING:
    from .tasks import KeypointTask


@dataclass
class LoadedRun:
    model: nn.Module
    config: TrainConfig
    meta: dict
    task: Task

    @property
    def in_chans(self) -> int:
        return int(self.meta["recipe"]["in_chans"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def class_names(self) -> list[str]:
        return list(getattr(self.task, "class_names", []))

    def transform(self):
        m = self.meta
        return build_transform(
            train=False,
            image_size=m["image_size"],
            channels=self.in_chans,
            normalize=m["normalize"],
            mean=m["mean"],
            std=m["std"],
            fit=m.get("fit", "resize"),
        )


def _legacy_meta(ckpt: dict, where: Path) -> dict:
    """Checkpoints written before the recipe existed (classification only)."""
    if ckpt.get("task") == "segmentation" or "model_kwargs" not in ckpt:
        raise SmallmedError(f"{where}: written by an older smallmed without a model recipe; retrain the run.")
    kw = ckpt["model_kwargs"]
    return {
        **ckpt,
        "recipe": {k: kw.get(k) for k in ("num_classes", "in_chans", "input_size", "stem")}
        | ({"custom": kw["custom"]} if "custom" in kw else {}),
        "task_info": {"kind": ckpt["task"], "class_names": ckpt["class_names"]},
    }


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """Rebuild the best model of any run folder (classification, segmentation, regression).

    Example:
        >>> run = load_run("runs/r18")   # doctest: +SKIP
        >>> run.task.kind, run.image_size   # doctest: +SKIP
        ('binary', 28)
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SmallmedError(f"{run_dir}: run folder not found.")
    where = run_dir / "best.pt"
    ckpt = load_checkpoint(where)
    if "recipe" not in ckpt:
        ckpt = _legacy_meta(ckpt, where)
    cfg = TrainConfig.from_saved({**ckpt["config"], "out": str(run_dir)}, source=str(where))
    model = rebuild(cfg, ckpt["recipe"], ckpt["model"], where=str(where))
    model_info(model).base_hash = ckpt.get("base_hash")
    model.to(resolve_device(device)).eval()
    return LoadedRun(model, cfg, ckpt, task_from_info(ckpt["task_info"]))


def evaluate_run(
    run_dir: str | Path, data: str | None = None, split: str = "test", data_dir: str | None = None, device: str = "auto"
) -> dict:
    """Metrics of a run's best model on a split of its own data or of another dataset with the same classes."""
    run = load_run(run_dir, device)
    cfg = run.config
    ds = dataset_for_run(run, run_dir, data, data_dir, split)
    if split not in ds.splits:
        raise SmallmedError(f"split={split!r}: expected train, val or test.")
    loader = DataLoader(run.task.torch_dataset(ds.splits[split], run.transform()), batch_size=cfg.eval_batch_size)
    if run.task.kind not in ("binary", "multiclass"):
        return evaluate(run.model, loader, run.task)
    res = run_loader(run.model, loader, run.task)
    out = {"loss": res["loss"], **run.task.metrics(res["kept"], res["targets"])}
    out.update(_at_run_threshold(Path(run_dir), res["targets"], res["kept"]))
    return out


def dataset_for_run(run: LoadedRun, run_dir, data: str | None = None, data_dir: str | None = None, split: str = "test"):
    """The run's own dataset, or another one checked to have the same task and classes; asked for the test
    split, a run trained with ``holdout='val'`` or on a cross-validation fold gets the data's own splits."""
    from .setup import load_data

    cfg = run.config
    other = cfg.with_overrides(data=data, data_dir=data_dir) if (data or data_dir) else cfg
    if split == "test" and (cfg.holdout == "val" or cfg.cv_folds):
        other = other.with_overrides(holdout="test", cv_folds=0, cv_fold=0)
    ds = load_data(other, "segmentation" if run.task.kind == "segmentation" else "labels")
    if run.task.kind == "regression" and getattr(ds, "task", None) in ("binary", "multiclass"):
        from ..data.dataset import as_regression

        ds = as_regression(ds)
    if run.task.kind in ("binary", "multiclass", "multilabel", "ordinal"):
        if list(ds.class_names) != run.class_names:
            raise SmallmedError(
                f"{data or cfg.data}: classes ({', '.join(ds.class_names)}) differ from the run's "
                f"({', '.join(run.class_names)}) in number or order; evaluate on data with the same classes."
            )
    elif getattr(ds, "task", run.task.kind) != run.task.kind:
        raise SmallmedError(
            f"{data or cfg.data}: a {getattr(ds, 'task', '?')} dataset, but the run is a {run.task.kind} run."
        )
    return ds


def _at_run_threshold(run_dir: Path, y, probs) -> dict:
    """Calibration, and the rates at the threshold the run fixed on its own validation split (never refitted here)."""
    import json

    from ..metrics.clinical import apply_temperature, calibration, rates_at

    try:
        t = json.loads((run_dir / "metrics.json").read_text())["test"]
    except (OSError, ValueError, KeyError):
        return {}
    y = np.asarray(y).astype(int)
    cal = t.get("calibration")
    if cal and cal.get("temperature"):
        probs = apply_temperature(probs, cal["temperature"])
    out = calibration(y, probs, int(t.get("ece_bins", 10)))
    if t.get("operating_point"):
        op = t["operating_point"]
        out["operating_point"] = {
            "rule": op["rule"],
            "threshold": op["threshold"],
            "fixed_on": "the run's validation split",
            **rates_at(y, probs[:, 1], op["threshold"]),
        }
    elif t.get("operating_point_per_class"):
        out["operating_point_per_class"] = [
            None
            if op is None
            else {"rule": op["rule"], "threshold": op["threshold"], **rates_at(y == k, probs[:, k], op["threshold"])}
            for k, op in enumerate(t["operating_point_per_class"])
        ]
    return out


def read_for_prediction(run: LoadedRun, images) -> tuple:
    """(a split of the image files read as ``run`` expects them, their own (width, height)); an image with no
    contrast (constant or not finite) is refused: no model output means anything for it."""
    if not images:
        raise SmallmedError("no images given; expected one or more image files.")
    chans = 1 if run.in_chans == 1 else 3
    arrays, sizes = [], []
    for p in images:
        full = read_image(p, channels=chans)
        if full.min() == full.max():
            raise SmallmedError(f"{p}: the image is constant (every pixel {int(full.min())}); nothing to predict from.")
        sizes.append((full.shape[1], full.shape[0]))
        # fit="pad": the run's transform pads the image as it is; otherwise it is read at the input side
        arrays.append(full if run.meta.get("fit") == "pad" else read_image(p, channels=chans, size=run.image_size))
    if len({a.shape for a in arrays}) > 1:
        raise SmallmedError(
            f"the images have different sizes ({', '.join(sorted({str(a.shape[:2]) for a in arrays}))}); "
            "a padding run (fit='pad') predicts one size at a time."
        )
    if run.task.kind == "keypoints":
        from ..data.keypoints import KeypointSplit

        names = cast("KeypointTask", run.task).names  # a keypoints run's task
        return KeypointSplit(np.stack(arrays), np.zeros((len(arrays), len(names), 3), np.float32)), sizes
    return Split(np.stack(arrays), np.zeros(len(arrays), dtype=np.int64)), sizes


class _Predict:
    """A task view whose loss is 0: predictions have no targets."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def loss(self, out, y):
        return torch.zeros(())

    eval_loss = loss

    def collect(self, out):
        return self.task.collect(out)
