"""What a task adds to the one training loop: its loss, its metrics, its test files.

:func:`smallmed.train.fit` is the same loop for every task; a :class:`Task` supplies

- ``outputs(ds)``: how many output channels the model needs;
- ``torch_dataset(split, transform)``: a ``Dataset`` of (input, target) for one split;
- ``loss(outputs, targets)``: the training criterion (float32);
- ``collect(outputs)``: what evaluation keeps of a batch (probabilities, masks, scores);
- ``metrics(kept, targets)``: the metrics of a split, as a dict (the loop adds ``loss``);
- ``columns``: which metrics go into ``history.csv`` as ``val_<name>``;
- ``finish(run_dir, kept, targets, seed)``: test intervals, predictions and plots.

- ``summary``: the metrics of the one-line summary of a finished run;
- ``from_info(info)``: the task rebuilt from what a checkpoint recorded (:meth:`info`);
- ``check_options(cfg)``: the settings it does not use, refused in one sentence;
- ``loss_weights(labels)``: per-class weights for ``balance='weights'`` (or a refusal).

The tasks register their kinds (:func:`register_task`): :class:`ClassificationTask` (binary, multiclass,
multilabel), :class:`OrdinalTask` (CORN), :class:`RegressionTask` (a bounded score, e.g. a joint-damage grade:
sigmoid output scaled to the score range, MAE, log-cosh or MSE), :class:`SegmentationTask` (binary masks; BCE +
soft Dice) and :class:`KeypointTask` (integral regression).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import SmallmedError
from ..io import atomic_write_text
from ..metrics import bootstrap_ci, classification_metrics

_TASKS: dict[str, type[Task]] = {}


def register_task(*kinds: str):
    """Class decorator: the task class that handles these ``kind`` values (a checkpoint's ``task_info``)."""

    def deco(cls):
        for k in kinds:
            if k in _TASKS:
                raise ValueError(f"task kind {k!r} is registered twice")
            _TASKS[k] = cls
        return cls

    return deco


def task_class(kind: str) -> type[Task]:
    from ..registry import check_choice

    check_choice("task kind", kind, tuple(_TASKS))
    return _TASKS[kind]


def task_from_info(info: dict) -> Task:
    """Rebuild a task from the ``task_info`` a checkpoint recorded."""
    return task_class(str(info.get("kind"))).from_info(info)


class Task:
    """Base class; see the module docstring for the protocol."""

    kind: str = ""
    columns: tuple[str, ...] = ()
    headline: str = "loss"  # the metric the CLI and logs print first
    summary: ClassVar[tuple[str, ...]] = ("loss",)  # the one-line summary of a finished run
    dense: ClassVar[bool] = False  # a target per pixel (masks, keypoint maps) rather than a label per image

    @property
    def single_label(self) -> bool:
        """One class per image (binary or multiclass): what MixUp, label smoothing and thresholds assume."""
        return self.kind in ("binary", "multiclass")

    @classmethod
    def from_info(cls, info: dict) -> Task:
        return cls()

    def check_options(self, cfg) -> None:
        """Refuse, in one sentence, a setting this task does not use (never drop it silently)."""
        from ..config import RECIPES
        from ..data.transforms import parse_augment

        kind = self.kind
        if cfg.loss != "auto" and not isinstance(self, RegressionTask):
            raise SmallmedError(
                f"loss={cfg.loss!r} applies to regression tasks; this is a {kind} task, whose loss is fixed."
            )
        for name in ("label_smoothing", "mixup", "cutmix"):
            # the recipe's own value is for classification and simply not used by other tasks; a user's is refused
            value = getattr(cfg, name)
            if value and not self.single_label and value != RECIPES[cfg.recipe][name]:
                raise SmallmedError(
                    f"{name}={value} mixes or softens class labels of single-label classification; this is a "
                    f"{kind} task: set it to 0 (recipe='strong' sets it for classification only)."
                )
        if not self.single_label and (cfg.calibrate != "none" or cfg.operating_point != "youden"):
            raise SmallmedError(
                f"calibrate / operating_point apply to single-label classification; this is a {kind} task."
            )
        if not self.dense:
            return
        if cfg.rff_epochs or cfg.rff_alternate:
            raise SmallmedError(
                "rff_epochs/rff_alternate: receptive-field freezing is defined for classification "
                "backbones (seed 001), not for a U-Net's encoder-decoder; drop the RFF options."
            )
        if cfg.balance != "none":
            raise SmallmedError(f"balance={cfg.balance!r} balances classes or scores of labelled images, not masks.")
        if parse_augment(cfg.augment).trivial:
            raise SmallmedError(
                f"augment={cfg.augment!r}: TrivialAugmentWide is for labelled images, not masks or keypoints; "
                "use --augment flip or terms such as scale=0.9-1.1,rotate=10."
            )

    def eval_loss(self, outputs, targets):
        """The loss validation reads (the best epoch, early stopping, a search's objective): the training loss
        without its training-only regularisers."""
        return self.loss(outputs, targets)

    def loss_weights(self, labels: np.ndarray):
        """``balance='weights'``: the task's per-class loss weights from the training labels."""
        raise SmallmedError(
            f"balance='weights' is defined for binary, multiclass and regression tasks; this is a {self.kind} task."
        )

    def outputs(self, ds) -> int:
        raise NotImplementedError

    def torch_dataset(self, split, transform) -> Dataset:
        from ..data.torchdata import ArrayDataset

        return ArrayDataset(split, transform)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def collect(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs

    def metrics(self, kept: np.ndarray, targets: np.ndarray) -> dict:
        raise NotImplementedError

    def finish(self, run_dir: Path, kept: np.ndarray, targets: np.ndarray, seed: int, **kw) -> dict:
        return {}

    def init_head(self, model, train_labels) -> None:
        """Optionally start the head at a sensible output for the training targets (before epoch 1)."""

    def info(self) -> dict:
        """What a checkpoint must record to rebuild and use this task."""
        return {"kind": self.kind}

    def prediction(self, kept: np.ndarray, size: tuple[int, int]) -> dict:
        """One image's row of ``smallmed predict`` from what :meth:`collect` kept of it (``size``: the
        image's own width and height)."""
        raise SmallmedError(
            f"a {self.kind} run: predict writes one table row per image, which this task has no "
            "form for; use smallmed.load_run(run_dir).model."
        )


# --------------------------------------------------------------------------------------------- classification


@register_task("binary", "multiclass", "multilabel")
@dataclass
class ClassificationTask(Task):
    kind: str = "binary"  # binary | multiclass | multilabel
    class_names: list[str] = field(default_factory=list)
    fprs: tuple[float, ...] = (1e-3, 1e-2)
    columns: tuple[str, ...] = ("acc", "balanced_acc", "auc")
    headline: str = "auc"
    weights: list[float] | None = None  # per-class loss weights (balance="weights")
    rule: str = "youden"  # operating threshold chosen on validation (smallmed.metrics.clinical)
    calibrate: str = "none"  # none | temperature
    wants_val: bool = True  # finish() receives the best model's validation predictions
    graded: bool = False  # classes are ordered grades 0..K-1: also the graded metrics (MAE, QWK, ...)
    label_smoothing: float = 0.0
    summary: ClassVar[tuple[str, ...]] = ("auc", "acc", "tpr_at_fpr")

    @classmethod
    def from_info(cls, info: dict) -> Task:
        return cls(
            kind=info["kind"],
            class_names=list(info["class_names"]),
            fprs=tuple(info.get("fprs", (1e-3, 1e-2))),
            rule=info.get("rule", "youden"),
            calibrate=info.get("calibrate", "none"),
            graded=bool(info.get("graded", False)),
        )

    def loss_weights(self, labels):
        if not self.single_label:
            return super().loss_weights(labels)
        from ..data.sampling import inverse_frequency

        return [float(v) for v in inverse_frequency(labels, len(self.class_names))]

    def outputs(self, ds) -> int:
        return len(self.class_names)

    def loss(self, outputs, targets):
        return self._cross_entropy(outputs, targets, self.label_smoothing)

    def eval_loss(self, outputs, targets):
        # label smoothing is a training regulariser: the smoothed loss has a floor that grows with the smoothing,
        # so runs (or a search's trials) with different smoothing could not be compared on it
        return self._cross_entropy(outputs, targets, 0.0)

    def _cross_entropy(self, outputs, targets, smoothing: float):
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(outputs.float(), targets)
        w = None if self.weights is None else torch.tensor(self.weights, dtype=torch.float32, device=outputs.device)
        # targets: class indices, or class probabilities after MixUp / CutMix
        return F.cross_entropy(outputs.float(), targets, weight=w, label_smoothing=smoothing)

    def collect(self, outputs):
        o = outputs.float()
        return torch.sigmoid(o) if self.kind == "multilabel" else torch.softmax(o, dim=1)

    def metrics(self, kept, targets):
        m = classification_metrics(self.kind, targets, kept, fprs=self.fprs)
        if self.graded:
            from ..metrics.regression import graded_metrics

            grades = np.arange(kept.shape[1])
            m = {**graded_metrics(targets, kept @ grades, kept.argmax(1)), **m}  # acc is the same either way
        return m

    def finish(self, run_dir, kept, targets, seed, **kw):
        from ..report import plot_roc

        # 95% bootstrap intervals over test images: how much one test set of this size can tell
        ci = bootstrap_ci(self.kind, targets, kept, n=1000, seed=seed, fpr=self.fprs[0])
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            ["index", "label", "pred", *[f"p_{c}" for c in self.class_names], *(["score"] if self.graded else [])]
        )
        for i, (yi, pi) in enumerate(zip(targets, kept)):
            label = yi.tolist() if np.ndim(yi) else int(yi)
            score = [f"{float(pi @ np.arange(len(pi))):.6f}"] if self.graded else []  # the expected grade
            w.writerow([i, label, int(np.argmax(pi)), *[f"{v:.6f}" for v in pi], *score])
        atomic_write_text(run_dir / "test_predictions.csv", buf.getvalue())
        auc = classification_metrics(self.kind, targets, kept, fprs=self.fprs)["auc"]
        if kw.get("figures", True):
            plot_roc(
                self.kind, targets, kept, self.class_names, run_dir / "roc_test.png", title=f"test ROC, AUC {auc:.4f}"
            )
        out = {"ci95": ci}
        if self.graded:
            out["ci95"].update(_graded_ci(targets, kept @ np.arange(kept.shape[1]), kept.argmax(1), seed))
        val = kw.get("val")
        if val is not None and self.kind in ("binary", "multiclass"):
            from ..metrics.clinical import clinical_summary
            from ..report import plot_reliability

            out.update(
                clinical_summary(
                    self.kind, val[1], val[0], targets, kept, rule=self.rule, calibrate=self.calibrate, seed=seed
                )
            )
            if out.get("reliability") and kw.get("figures", True):
                plot_reliability(
                    out["reliability"],
                    run_dir / "reliability_test.png",
                    title=f"test reliability, ECE {out['ece']:.3f} ({out['ece_bins']} equal-mass bins)",
                )
        return out

    def info(self):
        return {
            "kind": self.kind,
            "class_names": list(self.class_names),
            "fprs": list(self.fprs),
            "rule": self.rule,
            "calibrate": self.calibrate,
            "graded": self.graded,
        }

    def prediction(self, kept, size):
        row = {
            "pred": self.class_names[int(kept.argmax())],
            **{f"p_{c}": float(v) for c, v in zip(self.class_names, kept)},
        }
        if self.graded:
            row["score"] = float(kept @ np.arange(len(kept)))  # the expected grade
        return row


def _graded_ci(targets, score, grade, seed: int, n: int = 1000) -> dict:
    """95% bootstrap intervals over test images of the graded metrics (MAE, accuracy, QWK)."""
    from ..metrics.bootstrap import bootstrap
    from ..metrics.regression import graded_metrics

    keys = ("mae", "acc", "qwk", "mae_rounded")
    return bootstrap(
        lambda i: {k: graded_metrics(targets[i], score[i], grade[i])[k] for k in keys}, len(targets), n=n, seed=seed
    )


# ----------------------------------------------------------------------------------------------- segmentation


def _image(array) -> tv_tensors.Image:
    """An [H, W] or [H, W, C] uint8 array as a (C, H, W) tv_tensors.Image."""
    im = np.asarray(array)
    im = im[..., None] if im.ndim == 2 else im
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1))


class _SplitDataset(Dataset):
    """A torch view of one split through one transform."""

    def __init__(self, split, transform=None) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)


class MaskDataset(_SplitDataset):
    """(image, mask) pairs through one transform: geometry is sampled once for both (transforms v2)."""

    def __getitem__(self, i: int):
        img = _image(self.split.images[i])
        mask = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(self.split.masks[i]))[None])
        if self.transform is not None:
            img, mask = self.transform(img, mask)
        return img.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).float()


@register_task("segmentation")
@dataclass
class SegmentationTask(Task):
    kind: str = "segmentation"
    columns: tuple[str, ...] = ("dice", "iou")
    headline: str = "dice"
    summary: ClassVar[tuple[str, ...]] = ("dice", "iou")
    dense: ClassVar[bool] = True
    overlays: int = 4

    def outputs(self, ds) -> int:
        return 1

    def torch_dataset(self, split, transform):
        return MaskDataset(split, transform)

    def loss(self, outputs, targets):
        from ..metrics.segmentation import soft_dice_loss as sdl

        o = outputs.float()
        return F.binary_cross_entropy_with_logits(o, targets) + sdl(o, targets)

    def collect(self, outputs):
        return outputs.float() > 0

    def metrics(self, kept, targets):
        from ..metrics.segmentation import dice_iou

        dice, iou = dice_iou(torch.as_tensor(kept[:, 0]), torch.as_tensor(targets[:, 0]))
        return {"dice": float(dice.mean()), "iou": float(iou.mean()), "n": int(len(kept))}

    def finish(self, run_dir, kept, targets, seed, inputs=None, **kw):
        from ..metrics.segmentation import dice_iou

        dice, _ = dice_iou(torch.as_tensor(kept[:, 0]), torch.as_tensor(targets[:, 0]))
        dice = np.asarray(dice)
        from ..metrics.bootstrap import bootstrap

        ci = bootstrap(lambda i: {"dice": dice[i].mean()}, len(dice), seed=seed)["dice"]
        if inputs is not None:
            save_overlays(
                inputs[: self.overlays],
                targets[: self.overlays],
                kept[: self.overlays],
                dice[: self.overlays],
                run_dir / "overlays",
            )
        buf = io.StringIO()
        buf.write("index,dice\n" + "".join(f"{i},{d:.6f}\n" for i, d in enumerate(dice)))
        atomic_write_text(run_dir / "test_predictions.csv", buf.getvalue())
        return {"ci95": {"dice": ci}}


def save_overlays(x, y, pred, dice, out: Path) -> None:
    """Image, true mask (green) and predicted mask (red) per test image."""
    from ..report.plots import _save, plt

    for k in range(len(x)):
        img = np.asarray(x[k]).mean(0)
        fig, ax = plt.subplots(figsize=(3.4, 3.4))
        ax.imshow(img, cmap="gray")
        ax.contour(np.asarray(y[k, 0]), levels=[0.5], colors="lime", linewidths=1)
        ax.contour(np.asarray(pred[k, 0]).astype(float), levels=[0.5], colors="red", linewidths=1)
        ax.set_title(f"test {k}: Dice {dice[k]:.3f} (green truth, red prediction)", fontsize=8)
        ax.axis("off")
        _save(fig, out / f"test_{k}.png")


# ------------------------------------------------------------------------------------------------- regression

REGRESSION_LOSSES = ("mae", "logcosh", "mse")


def log_cosh(x: torch.Tensor) -> torch.Tensor:
    """log(cosh(x)) computed stably: |x| + log1p(exp(-2|x|)) - log 2."""
    a = x.abs()
    return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)


@register_task("regression")
@dataclass
class RegressionTask(Task):
    """A bounded score in ``[low, high]`` (seed 003: a sigmoid output scaled to the score range).

    ``weights`` maps a rounded true score to a loss weight (sample weights instead of resampling);
    ``metric_weights`` do the same for the weighted RMSE (default: inverse frequency in the split).
    """

    low: float = 0.0
    high: float = 1.0
    loss_name: str = "mae"
    weights: dict[int, float] | None = None
    kind: str = "regression"
    columns: tuple[str, ...] = ("mae", "rmse", "acc", "qwk")
    headline: str = "mae"
    summary: ClassVar[tuple[str, ...]] = ("mae", "rmse", "acc", "qwk")

    @classmethod
    def from_info(cls, info: dict) -> Task:
        return cls(low=info["low"], high=info["high"], loss_name=info.get("loss", "mae"))

    def loss_weights(self, labels):
        from ..data.sampling import inverse_frequency

        return {k: float(v) for k, v in enumerate(inverse_frequency(labels, int(self.high) + 1))}

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise SmallmedError(f"target range [{self.low}, {self.high}]: expected low < high.")
        if self.loss_name not in REGRESSION_LOSSES:
            from ..registry import check_choice

            check_choice("loss", self.loss_name, REGRESSION_LOSSES)

    def outputs(self, ds) -> int:
        return 1

    def scale(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(outputs.float().reshape(len(outputs), -1)[:, 0])

    def loss(self, outputs, targets):
        err = self.scale(outputs) - targets.float()
        per = {"mae": err.abs(), "mse": err.pow(2), "logcosh": log_cosh(err)}[self.loss_name]
        if self.weights:
            idx = targets.round().long().clamp(int(self.low), int(self.high))
            table = torch.zeros(int(self.high) + 1, device=per.device)
            for k, v in self.weights.items():
                if 0 <= int(k) <= int(self.high):
                    table[int(k)] = float(v)
            per = per * table[idx]
        return per.mean()

    def collect(self, outputs):
        return self.scale(outputs)

    def init_head(self, model, train_labels) -> None:
        """Start at the mean training score, not at the middle of the range: damage scores are mostly 0,
        and a sigmoid head that starts at mid-range needs many epochs to get there."""
        from ..roles import head_name

        head = model.get_submodule(head_name(model))
        bias = getattr(head, "bias", None)
        if bias is None:
            return
        q = (float(np.mean(train_labels)) - self.low) / (self.high - self.low)
        q = min(max(q, 0.02), 0.98)
        with torch.no_grad():
            bias.fill_(math.log(q / (1 - q)))

    def metrics(self, kept, targets):
        from ..metrics.regression import regression_metrics

        return regression_metrics(targets, kept, low=self.low, high=self.high)

    def finish(self, run_dir, kept, targets, seed, **kw):
        from ..metrics.bootstrap import bootstrap
        from ..metrics.regression import regression_metrics

        def stat(i):
            m = regression_metrics(targets[i], kept[i], low=self.low, high=self.high)
            return {k: m[k] for k in ("mae", "rmse", "acc", "qwk")}

        ci = bootstrap(stat, len(kept), seed=seed)
        buf = io.StringIO()
        buf.write("index,label,pred\n" + "".join(f"{i},{t:g},{p:.6f}\n" for i, (t, p) in enumerate(zip(targets, kept))))
        atomic_write_text(run_dir / "test_predictions.csv", buf.getvalue())
        if kw.get("figures", True):
            from ..report.plots import plot_regression

            plot_regression(targets, kept, run_dir / "regression_test.png", low=self.low, high=self.high)
        return {"ci95": ci}

    def info(self):
        return {"kind": self.kind, "low": self.low, "high": self.high, "loss": self.loss_name}

    def prediction(self, kept, size):
        return {"score": float(np.asarray(kept).reshape(-1)[0])}


# ---------------------------------------------------------------------------------------------------- ordinal


@register_task("ordinal")
@dataclass
class OrdinalTask(Task):
    """Ordered grades 0..K-1 with a CORN head (Shi et al. 2023, through ``coral-pytorch``): K-1 binary
    tasks P(y > k | y > k-1); the grade is the number of cumulative probabilities P(y > k) above 0.5 and
    the score is their sum, the expected grade."""

    class_names: list[str] = field(default_factory=list)
    kind: str = "ordinal"
    columns: tuple[str, ...] = ("mae", "acc", "qwk")
    headline: str = "qwk"
    summary: ClassVar[tuple[str, ...]] = ("mae_rounded", "acc", "qwk")

    @classmethod
    def from_info(cls, info: dict) -> Task:
        return cls(class_names=list(info["class_names"]))

    def __post_init__(self) -> None:
        if len(self.class_names) < 3:
            raise SmallmedError(
                f"an ordinal head needs at least 3 grades; this data has {len(self.class_names)} classes."
            )
        _coral()  # a missing package is said before any training

    def outputs(self, ds) -> int:
        return len(self.class_names) - 1

    def loss(self, outputs, targets):
        corn_loss = _coral().losses.corn_loss
        return corn_loss(outputs.float(), targets.long(), num_classes=len(self.class_names))

    def collect(self, outputs):
        return torch.cumprod(torch.sigmoid(outputs.float()), dim=1)  # P(y > k), k = 0..K-2

    @staticmethod
    def grades(kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(expected grade, predicted grade) from the cumulative probabilities."""
        return kept.sum(1), (kept > 0.5).sum(1)

    def metrics(self, kept, targets):
        from ..metrics.regression import graded_metrics

        score, grade = self.grades(kept)
        return graded_metrics(targets, score, grade)

    def finish(self, run_dir, kept, targets, seed, **kw):
        score, grade = self.grades(kept)
        buf = io.StringIO()
        names = [f"p_gt_{c}" for c in self.class_names[:-1]]
        buf.write(",".join(["index", "label", "pred", "score", *names]) + "\n")
        for i, (t, g, sc, p) in enumerate(zip(targets, grade, score, kept)):
            buf.write(f"{i},{int(t)},{int(g)},{sc:.6f}," + ",".join(f"{v:.6f}" for v in p) + "\n")
        atomic_write_text(run_dir / "test_predictions.csv", buf.getvalue())
        return {"ci95": _graded_ci(targets, score, grade, seed)}

    def info(self):
        return {"kind": self.kind, "class_names": list(self.class_names)}

    def prediction(self, kept, size):
        score, grade = self.grades(np.asarray(kept)[None])
        return {
            "grade": self.class_names[int(grade[0])],
            "score": float(score[0]),
            **{f"p_gt_{c}": float(v) for c, v in zip(self.class_names, kept)},
        }


def _coral():
    try:
        import coral_pytorch.dataset
        import coral_pytorch.losses
    except ImportError:
        raise SmallmedError("the ordinal head needs coral-pytorch: pip install 'smallmed[ordinal]'.") from None
    import coral_pytorch

    return coral_pytorch


# ------------------------------------------------------------------------------------------------- keypoints


class KeypointTorchDataset(_SplitDataset):
    """(image, {"xy": [K, 2], "vis": [K]}): keypoints follow every geometric augmentation (transforms v2)."""

    def __getitem__(self, i: int):
        img = _image(self.split.images[i])
        h, w = img.shape[-2:]
        kp = torch.as_tensor(self.split.keypoints[i], dtype=torch.float32)
        pts = tv_tensors.KeyPoints(kp[:, :2], canvas_size=(h, w))
        if self.transform is not None:
            img, pts = self.transform(img, pts)
        xy = pts.as_subclass(torch.Tensor).float()
        hh, ww = img.shape[-2:]
        inside = (xy[:, 0] >= 0) & (xy[:, 0] <= ww - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= hh - 1)
        vis = ((kp[:, 2] > 0) & inside).float()
        return img.as_subclass(torch.Tensor), {"xy": xy, "vis": vis}


def soft_argmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Expected (x, y) in pixels of softmax(logits) over each [H, W] map: [N, K, H, W] -> [N, K, 2].

    Example:
        >>> m = torch.full((1, 1, 5, 5), -1e4); m[0, 0, 1, 3] = 0.0
        >>> soft_argmax(m).tolist()
        [[[3.0, 1.0]]]
    """
    n, k, h, w = logits.shape
    p = torch.softmax(logits.float().reshape(n, k, -1) / temperature, dim=-1).reshape(n, k, h, w)
    xs = torch.arange(w, device=logits.device, dtype=p.dtype)
    ys = torch.arange(h, device=logits.device, dtype=p.dtype)
    return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], dim=-1)


@register_task("keypoints")
@dataclass
class KeypointTask(Task):
    """Joint localisation by integral regression: one logit map per keypoint (a U-Net's output), its
    soft-argmax is the predicted position, the loss is the L1 distance in units of the image side."""

    names: list[str] = field(default_factory=list)
    kind: str = "keypoints"
    columns: tuple[str, ...] = ("px_error", "frac_error")
    headline: str = "px_error"
    summary: ClassVar[tuple[str, ...]] = ("px_error", "frac_error", "pck_0.05")
    dense: ClassVar[bool] = True

    @classmethod
    def from_info(cls, info: dict) -> Task:
        return cls(names=list(info["names"]))

    def check_options(self, cfg) -> None:
        super().check_options(cfg)
        if cfg.fit == "pad":
            raise SmallmedError(
                "fit='pad' is for labelled images; keypoint runs squash images to the input side (fit='resize')."
            )

    def outputs(self, ds) -> int:
        return len(self.names)

    def torch_dataset(self, split, transform):
        return KeypointTorchDataset(split, transform)

    def loss(self, outputs, targets):
        side = float(max(outputs.shape[-2:]))
        err = (soft_argmax(outputs) - targets["xy"]).abs().sum(-1) / side
        vis = targets["vis"]
        return (err * vis).sum() / vis.sum().clamp(min=1)

    def collect(self, outputs):
        xy = soft_argmax(outputs)
        side = torch.full(xy.shape[:2] + (1,), float(max(outputs.shape[-2:])), device=xy.device)
        return torch.cat([xy, side], -1)  # x, y and the image side they were measured on

    def metrics(self, kept, targets):
        from ..metrics.keypoints import keypoint_errors

        return keypoint_errors(kept[..., :2], targets["xy"], targets["vis"], kept[..., 2], self.names)

    def finish(self, run_dir, kept, targets, seed, **kw):
        buf = io.StringIO()
        buf.write("index,joint,x_true,y_true,x_pred,y_pred,visible\n")
        for i in range(len(kept)):
            for j, name in enumerate(self.names):
                t, p = targets["xy"][i, j], kept[i, j]
                buf.write(f"{i},{name},{t[0]:.2f},{t[1]:.2f},{p[0]:.2f},{p[1]:.2f},{int(targets['vis'][i, j])}\n")
        atomic_write_text(run_dir / "test_predictions.csv", buf.getvalue())
        err = np.linalg.norm(kept[..., :2] - targets["xy"], axis=-1)[targets["vis"] > 0]
        from ..metrics.bootstrap import bootstrap

        if not len(err):
            return {"ci95": {"px_error": [float("nan")] * 2}}
        return {"ci95": bootstrap(lambda i: {"px_error": err[i].mean()}, len(err), seed=seed)}

    def info(self):
        return {"kind": self.kind, "names": list(self.names)}

    def prediction(self, kept, size):
        """Every point in the image's own pixels (the model saw it squashed to a square)."""
        w, h = size
        side = float(kept[0, 2])
        row = {}
        for n, (x, y, _) in zip(self.names, kept):
            row[f"{n}_x"], row[f"{n}_y"] = float(x) * w / side, float(y) * h / side
        return row


def task_for(ds, cfg) -> Task:
    """The task of a loaded dataset under a run config."""
    from ..data.keypoints import KeypointDataset
    from ..data.masks import SegmentationDataset

    if isinstance(ds, SegmentationDataset):
        return SegmentationTask()
    if isinstance(ds, KeypointDataset):
        return KeypointTask(names=list(ds.names))
    if ds.task == "regression":
        lo, hi = ds.info.get("range", (float(ds.splits["train"].labels.min()), float(ds.splits["train"].labels.max())))
        loss = cfg.loss if cfg.loss != "auto" else "mae"
        return RegressionTask(low=float(lo), high=float(hi), loss_name=loss)
    if cfg.task in ("ordinal", "classification") and ds.task not in ("binary", "multiclass"):
        raise SmallmedError(
            f"task={cfg.task!r} is a head for graded labels (one integer grade per image); "
            f"{cfg.data} holds {ds.task} labels."
        )
    if cfg.task == "ordinal":
        return OrdinalTask(class_names=list(ds.class_names))
    return ClassificationTask(
        kind=ds.task,
        class_names=list(ds.class_names),
        fprs=tuple(cfg.fprs),
        rule=cfg.operating_point,
        calibrate=cfg.calibrate,
        graded=cfg.task == "classification",
        columns=("acc", "balanced_acc", "auc", "mae", "qwk")
        if cfg.task == "classification"
        else ClassificationTask.columns,
        label_smoothing=cfg.label_smoothing if ds.task in ("binary", "multiclass") else 0.0,
    )
