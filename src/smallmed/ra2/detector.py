"""The seed's detector for hand joints: a torchvision Keypoint R-CNN (one box per hand, one keypoint per joint).

Seed 003 found joints with a Mask R-CNN, one box per joint; torchvision's Keypoint R-CNN is the same
two-stage detector with a keypoint head, which gives every joint of a hand from one detection. It is
trained here on the pediatric hand keypoint set (``weights_backbone=None`` offline: a ResNet-18 FPN
from scratch; ``"imagenet"`` where the user has torchvision's ResNet weights) and used through the
same ``locate(image, limb)`` interface as the heatmap U-Net (:class:`smallmed.ra2.localise.Localiser`).

Detection models take a list of images and return their own losses in training mode, so they have a
small loop of their own here (resume from ``last.pt``, best epoch by validation error, atomic files);
everything else (the hand data, the metrics, the pipeline) is shared with the U-Net.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import SmallmedError
from ..io import RunLock, atomic_write_csv, atomic_write_json
from ..metrics.keypoints import keypoint_errors
from .joints import to_left

log = logging.getLogger(__name__)


@dataclass
class DetectorConfig:
    """Settings of a Keypoint R-CNN localiser run (saved as ``detector.json``)."""

    data: str = ""
    epochs: int = 20
    image_size: int = 128  # the detector's input side (images are squashed to it, as the U-Net's are)
    backbone: str = "resnet18"
    weights_backbone: str | None = None  # None (from scratch) or "imagenet" (torchvision's file, where present)
    lr: float = 0.01
    batch_size: int = 8
    margin: float = 0.08  # the hand's box: the keypoints' bounding box grown by this fraction of the side
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "image_size", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SmallmedError(f"{name}={v!r}: expected a positive integer.")
        if self.image_size < 32:
            raise SmallmedError(f"image_size={self.image_size}: the detector needs at least 32 px.")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise SmallmedError(f"lr={self.lr!r}: expected a positive finite value.")
        if self.backbone not in ("resnet18", "resnet34", "resnet50"):
            raise SmallmedError(f"backbone={self.backbone!r}: expected resnet18, resnet34 or resnet50.")
        if self.weights_backbone not in (None, "imagenet"):
            raise SmallmedError(f"weights_backbone={self.weights_backbone!r}: expected none or 'imagenet'.")
        if not 0 <= self.margin < 1:
            raise SmallmedError(f"margin={self.margin}: expected a fraction in [0, 1).")


def build_detector(num_keypoints: int, cfg: DetectorConfig) -> torch.nn.Module:
    """A Keypoint R-CNN with a ResNet FPN backbone, sized for ``cfg.image_size`` inputs, one hand per image."""
    from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights
    from torchvision.models.detection import KeypointRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor

    weights = None
    if cfg.weights_backbone == "imagenet":
        weights = {"resnet18": ResNet18_Weights, "resnet34": ResNet34_Weights, "resnet50": ResNet50_Weights}[
            cfg.backbone
        ].IMAGENET1K_V1
    try:
        backbone = resnet_fpn_backbone(backbone_name=cfg.backbone, weights=weights, trainable_layers=5)
    except Exception as e:  # no network and no file in torch's hub cache
        raise SmallmedError(
            f"the ImageNet weights of {cfg.backbone} could not be had ({str(e).splitlines()[0][:160]}); "
            "train from scratch (weights_backbone none) or place the file in torch's hub cache."
        ) from None
    s = cfg.image_size
    # One hand per small image: torchvision's defaults (2,000 proposals, 512 sampled boxes, up to 128 of them
    # through eight 512-channel keypoint convolutions) cost over 10 minutes per epoch of 454 hands on 2 CPU
    # cores; a few hundred proposals, 64 sampled boxes and four 256-channel keypoint convolutions are enough for
    # one object and cut that about tenfold.
    width = 256
    return KeypointRCNN(
        backbone,
        num_classes=2,
        min_size=s,
        max_size=s,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        rpn_pre_nms_top_n_train=400,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=64,
        box_detections_per_img=1,
        keypoint_head=KeypointRCNNHeads(backbone.out_channels, (width,) * 4),
        keypoint_predictor=KeypointRCNNPredictor(width, num_keypoints),
    )


def _targets(keypoints: np.ndarray, size: int, scale: tuple[float, float], margin: float) -> dict:
    """The detection target of one hand: its box (keypoints' bounds + margin) and its keypoints, in input pixels."""
    kp = keypoints.astype(np.float32).copy()
    kp[:, 0] *= scale[0]
    kp[:, 1] *= scale[1]
    vis = kp[:, 2] > 0
    xs, ys = kp[vis, 0], kp[vis, 1]
    m = margin * size
    box = [max(0.0, xs.min() - m), max(0.0, ys.min() - m), min(size - 1.0, xs.max() + m), min(size - 1.0, ys.max() + m)]
    kp[:, 2] = np.where(vis, 2.0, 0.0)  # COCO: 2 = visible
    return {
        "boxes": torch.tensor([box], dtype=torch.float32),
        "labels": torch.tensor([1]),
        "keypoints": torch.from_numpy(kp)[None],
    }


def _as_input(image: np.ndarray, size: int) -> torch.Tensor:
    """A gray uint8 image squashed to ``size`` x ``size`` as a 3-channel float tensor in [0, 1]."""
    from PIL import Image

    small = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(small)[None].expand(3, -1, -1).contiguous()


def _predict(model, images: list[np.ndarray], size: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints [N, K, 2] in each image's own pixels and a confidence [N] (the box score; 0 without a detection,
    when the points fall back to the image centre)."""
    model.eval()
    pts = np.zeros((len(images), k, 2), np.float32)
    conf = np.zeros(len(images), np.float32)
    with torch.no_grad():
        for i in range(0, len(images), 16):
            batch = images[i : i + 16]
            outs = model([_as_input(im, size) for im in batch])
            for j, (im, o) in enumerate(zip(batch, outs)):
                h, w = im.shape[:2]
                if len(o["keypoints"]):
                    xy = o["keypoints"][0, :, :2].numpy()
                    pts[i + j] = xy * np.array([w / size, h / size], np.float32)
                    conf[i + j] = float(o["scores"][0])
                else:
                    pts[i + j] = np.array([w / 2, h / 2], np.float32)
    return pts, conf


def _gray(images) -> list:
    return [im[..., 0] if im.ndim == 3 else im for im in images]


def _detector_epoch(model, opt, x_all: list, t_all: list, cfg: DetectorConfig, epoch: int, out: Path) -> float:
    """One reseeded pass over the training images; the mean loss."""
    rng = np.random.default_rng(cfg.seed * 1000 + epoch)
    torch.manual_seed(cfg.seed * 1000 + epoch)
    model.train()
    total, n = 0.0, 0
    for idx in np.array_split(rng.permutation(len(x_all)), max(1, len(x_all) // cfg.batch_size)):
        losses = model([x_all[i] for i in idx], [t_all[i] for i in idx])
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise SmallmedError(
                f"{out}: the loss became {loss.item()} in epoch {epoch + 1}; lower --lr "
                f"(now {cfg.lr}); the last good epoch is in last.pt."
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, n = total + loss.item() * len(idx), n + len(idx)
    return total / max(n, 1)


def train_detector(cfg: DetectorConfig, out: str | Path) -> dict:
    """Train (or resume) a Keypoint R-CNN localiser on a keypoint npz; returns ``metrics.json``'s contents."""
    from ..data.keypoints import load_keypoints
    from ..io import atomic_save, load_checkpoint

    out = Path(out)
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    ds = load_keypoints(cfg.data)
    names = list(ds.names)
    tr, va, te = (ds.splits[s] for s in ("train", "val", "test"))
    side = tr.images.shape[2]
    scale = (cfg.image_size / tr.images.shape[2], cfg.image_size / tr.images.shape[1])
    torch.manual_seed(cfg.seed)
    model = build_detector(len(names), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    history: list[dict] = []
    start, best, best_epoch = 0, math.inf, -1
    with RunLock(out):
        if (out / "last.pt").exists():
            ck = load_checkpoint(out / "last.pt")
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            history, start, best, best_epoch = ck["history"], ck["epoch"] + 1, ck["best"], ck["best_epoch"]
            log.info("resuming %s after epoch %d", out, start)
        atomic_write_json(out / "detector.json", {"config": asdict(cfg), "names": names, "kind": "keypoint-rcnn"})
        x_all = [_as_input(im, cfg.image_size) for im in _gray(tr.images)]
        t_all = [_targets(k, cfg.image_size, scale, cfg.margin) for k in tr.keypoints]
        for epoch in range(start, cfg.epochs):
            t0 = time.time()
            train_loss = _detector_epoch(model, opt, x_all, t_all, cfg, epoch, out)
            sched.step()
            pv, _ = _predict(model, _gray(va.images), cfg.image_size, len(names))
            err = keypoint_errors(pv, va.keypoints[..., :2], va.keypoints[..., 2], side)
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_px_error": err["px_error"],
                "val_frac_error": err["frac_error"],
                "seconds": round(time.time() - t0, 2),
            }
            history.append(row)
            if err["px_error"] < best:
                best, best_epoch = err["px_error"], epoch
                atomic_save({"model": model.state_dict(), "epoch": epoch}, out / "best.pt")
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
            atomic_save(
                {**state, "epoch": epoch, "history": history, "best": best, "best_epoch": best_epoch}, out / "last.pt"
            )
            atomic_write_csv(out / "history.csv", history)
            log.info(
                "epoch %d/%d  train loss %.4f  val error %.2f px  %.1fs",
                epoch + 1,
                cfg.epochs,
                train_loss,
                err["px_error"],
                row["seconds"],
            )
        model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
        pt, _ = _predict(model, _gray(te.images), cfg.image_size, len(names))
        test = keypoint_errors(pt, te.keypoints[..., :2], te.keypoints[..., 2], side, names)
        metrics = {
            "task": "keypoints",
            "kind": "keypoint-rcnn",
            "test": test,
            "best_epoch": best_epoch + 1,
            "epochs": len(history),
            "wall_seconds": round(sum(r["seconds"] for r in history), 2),
            "image_px": side,
            "train_images": len(tr),
        }
        atomic_write_json(out / "metrics.json", metrics)
    return metrics


class DetectorLocaliser:
    """A trained Keypoint R-CNN run used on full radiographs: ``locate(image, limb) -> (points, confidence)``."""

    def __init__(self, run_dir: str | Path, device: str = "cpu") -> None:
        from ..io import load_checkpoint

        run_dir = Path(run_dir)
        info = json.loads((run_dir / "detector.json").read_text())
        self.cfg = DetectorConfig(**info["config"])
        self.names = list(info["names"])
        self.model = build_detector(len(self.names), self.cfg)
        self.model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
        self.model.eval()

    def locate(self, image: np.ndarray, limb: str) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
        h, w = image.shape[:2]
        pts, conf = _predict(self.model, [to_left(image, limb)], self.cfg.image_size, len(self.names))
        out, c = {}, {}
        for j, n in enumerate(self.names):
            x, y = float(pts[0, j, 0]), float(pts[0, j, 1])
            out[n] = (w - 1 - x if limb.startswith("R") else x, y)
            c[n] = float(conf[0])
        return out, c


def open_localiser(run_dir: str | Path, device: str = "cpu"):
    """The localiser of a run folder, whichever kind trained it (heatmap U-Net or Keypoint R-CNN)."""
    if (Path(run_dir) / "detector.json").exists():
        return DetectorLocaliser(run_dir, device)
    from .localise import Localiser

    return Localiser(run_dir, device)
