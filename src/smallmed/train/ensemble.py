"""Several finished runs as one predictor, with test-time augmentation.

An ensemble is the mean of what each member's task keeps of an image (class probabilities, a score,
cumulative grade probabilities), each member reading the image at its own size and normalisation;
``tta="flip"`` adds the horizontally mirrored image to every member. Members must be runs of the same
task with the same classes: seeds of one recipe, the fold models of a cross-validation, the top trials
of a search. For a binary or multi-class ensemble the operating point is chosen on the validation split
of the first member's data, by the first member's rule, exactly as one run's is; the test split is
only scored.

Example:
    >>> ens = Ensemble.load(["runs/s0", "runs/s1", "runs/s2"], tta="flip")   # doctest: +SKIP
    >>> ens.evaluate()["auc"]                                                 # doctest: +SKIP
    0.97
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import SmallmedError
from .inference import _Predict, dataset_for_run, load_run, read_for_prediction

TTA = ("none", "flip")


class _Flipped(nn.Module):
    """A model that sees its input mirrored left-right."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.flip(x, dims=[-1]))


@dataclass
class Ensemble:
    runs: list  # LoadedRun
    dirs: list[Path]
    tta: str = "none"

    @classmethod
    def load(cls, run_dirs, *, tta: str = "none", device: str = "auto") -> Ensemble:
        from ..registry import check_choice

        check_choice("tta", tta, TTA)
        dirs = [Path(d) for d in run_dirs]
        if not dirs:
            raise SmallmedError("no run folders given; expected one or more.")
        runs = [load_run(d, device) for d in dirs]
        first = runs[0].task.info()
        for d, r in zip(dirs[1:], runs[1:]):
            info = r.task.info()
            if info.get("kind") != first.get("kind") or info.get("class_names") != first.get("class_names"):
                raise SmallmedError(
                    f"{d}: a {info.get('kind')} run with classes {info.get('class_names')}, but {dirs[0]} "
                    f"is a {first.get('kind')} run with classes {first.get('class_names')}; an ensemble "
                    "needs runs of one task with the same classes."
                )
        if runs[0].task.kind in ("segmentation", "keypoints") and tta == "flip":
            raise SmallmedError(
                f"tta='flip' mirrors the image, which would swap left and right {runs[0].task.kind}; "
                "use tta='none' for this run."
            )
        return cls(runs, dirs, tta)

    @property
    def task(self):
        return self.runs[0].task

    def _views(self, model: nn.Module) -> list[nn.Module]:
        return [model, _Flipped(model)] if self.tta == "flip" else [model]

    def kept(self, split_for) -> tuple[np.ndarray, Any]:
        """(mean kept over members and views, targets: the task's, an array or a dict of arrays); ``split_for(run)``
        gives each member its split."""
        from .loop import run_loader

        outs, targets = [], None
        for run in self.runs:
            loader = DataLoader(
                run.task.torch_dataset(split_for(run), run.transform()), batch_size=run.config.eval_batch_size
            )
            for view in self._views(run.model):
                res = run_loader(view, loader, _Predict(run.task), device=next(run.model.parameters()).device)
                outs.append(res["kept"])
                targets = res["targets"]
        return np.mean(outs, axis=0), targets

    def evaluate(
        self, data: str | None = None, split: str = "test", data_dir: str | None = None, operating_point: bool = True
    ) -> dict:
        """Metrics of the ensemble on a split (its own operating point fixed on the validation split; with
        ``operating_point=False`` none, e.g. for fold models that trained on that split)."""

        ds = dataset_for_run(self.runs[0], self.dirs[0], data, data_dir, split)
        if split not in ds.splits:
            raise SmallmedError(f"split={split!r}: expected train, val or test.")
        kept, y = self.kept(lambda run: ds.splits[split])
        task = self.task
        out = {"members": len(self.runs), "tta": self.tta, **task.metrics(kept, y)}
        if operating_point and task.kind in ("binary", "multiclass") and split != "val" and "val" in ds.splits:
            from ..metrics.clinical import clinical_summary

            kv, yv = self.kept(lambda run: ds.splits["val"])
            summary = clinical_summary(task.kind, yv, kv, y, kept, rule=task.rule, calibrate="none", seed=0)
            out.update({k: v for k, v in summary.items() if k != "reliability"})
        return out

    def predict(self, images) -> list[dict]:
        """One row per image file (as ``smallmed predict``), from the ensemble."""

        sizes, per_run = None, {}
        for run in self.runs:
            split, sizes = read_for_prediction(run, images)
            per_run[id(run)] = split
        kept, _ = self.kept(lambda run: per_run[id(run)])
        if sizes is None:  # Ensemble.load refuses an empty list of runs
            raise SmallmedError("an ensemble of no runs has nothing to predict with.")
        return [{"path": str(p), **self.task.prediction(k, s)} for p, k, s in zip(images, kept, sizes)]


def predict_images(run_dirs, images: list[str | Path], device: str = "auto", tta: str = "none") -> list[dict]:
    """Predictions for image files (PNG/JPEG/TIFF/DICOM), one dict per image, from one run folder or a list of
    them (an ensemble), optionally with flip test-time augmentation.

    Classification: the predicted class and one probability per class; regression: the score; ordinal: the grade
    and the expected grade; keypoints: every point in the image's own pixels.
    """
    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    ens = Ensemble.load(dirs, tta=tta, device=device)
    if ens.task.kind == "segmentation":
        raise SmallmedError(
            f"{dirs[0]}: a segmentation run; predict writes class or score tables (masks: "
            "smallmed.load_run(run_dir).model)."
        )
    return ens.predict(images)
