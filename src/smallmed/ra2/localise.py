"""Joint localisation for the RA2 pipeline: a heatmap U-Net trained by :func:`smallmed.fit` (the
keypoint task: integral regression over one logit map per joint), and a mean-shape baseline.

Images are squashed to the model's square input (as the 100 px hand set was made) and coordinates
scaled back to the original pixels. Right limbs are mirrored to the left first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from ..errors import SmallmedError
from .joints import HAND21, to_left

if TYPE_CHECKING:
    from ..train.tasks import KeypointTask


def unet_localiser_config(data: str | Path, out: str | Path, *, epochs: int, image_size: int, seed: int = 0):
    """The heatmap U-Net localiser's recipe, one place for ``smallmed ra2 localiser`` and the RA2 study."""
    from ..config import TrainConfig

    return TrainConfig(
        data=str(data),
        model="unet",
        epochs=epochs,
        batch_size=16,
        image_size=image_size,
        augment="scale=0.9-1.1,rotate=10,translate=0.05",
        seed=seed,
        progress=False,
        out=str(out),
    )


def hand_keypoints_npz(src: str | Path, out: str | Path) -> Path:
    """The 10 RA2 hand joints from a 21-point hand keypoint file, right hands mirrored to the left."""
    from ..data.npz import open_npz
    from ..io import _atomic

    src = Path(src)
    npz = open_npz(src, ("images", "keypoints_xyv", "keypoint_names"))
    names = [str(n) for n in npz["keypoint_names"]]
    missing = [v for v in HAND21.values() if v not in names]
    if missing:
        raise SmallmedError(f"{src}: keypoint(s) {', '.join(missing)} missing; expected a 21-point hand set.")
    images = npz["images"].copy()
    kp = npz["keypoints_xyv"][:, [names.index(v) for v in HAND21.values()]].astype(np.float32).copy()
    if "hand_side" in npz.files:
        right = np.asarray(npz["hand_side"]).astype(str) == "right"
        images[right] = images[right][:, :, ::-1]
        kp[right, :, 0] = images.shape[2] - 1 - kp[right, :, 0]
    arrays = {"images": images, "keypoints_xyv": kp, "keypoint_names": np.array(list(HAND21))}
    if "split" in npz.files:
        arrays["split"] = npz["split"]
    out = Path(out)
    _atomic(out, lambda f: np.savez(f, **arrays))
    return out


class Localiser:
    """A trained keypoint run used on full radiographs: ``locate(image, limb) -> {point: (x, y)}``."""

    def __init__(self, run_dir: str | Path, device: str = "cpu") -> None:
        from ..train.inference import load_run

        self.run = load_run(run_dir, device)
        if self.run.task.kind != "keypoints":
            raise SmallmedError(f"{run_dir}: a {self.run.task.kind} run, not a joint localiser.")
        self.names = list(cast("KeypointTask", self.run.task).names)  # a keypoints run: checked just above
        self.transform = self.run.transform()

    @torch.no_grad()
    def locate(self, image: np.ndarray, limb: str) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
        """Joint positions in the original image's pixels and a confidence per joint (peak softmax mass)."""
        from PIL import Image

        from ..train.tasks import soft_argmax

        h, w = image.shape[:2]
        left = to_left(image, limb)
        s = self.run.image_size
        small = np.asarray(Image.fromarray(left).resize((s, s), Image.Resampling.BILINEAR))
        x = self.transform(torch.from_numpy(small.copy())[None])[None].to(next(self.run.model.parameters()).device)
        logits = self.run.model(x).float()
        xy = soft_argmax(logits)[0].cpu().numpy()
        prob = torch.softmax(logits.flatten(2), -1).amax(-1)[0].cpu().numpy()
        pts, conf = {}, {}
        for j, n in enumerate(self.names):
            px, py = xy[j, 0] * w / s, xy[j, 1] * h / s
            if limb.startswith("R"):
                px = w - 1 - px
            pts[n], conf[n] = (float(px), float(py)), float(prob[j])
        return pts, conf


def mean_shape(
    landmarks: list[tuple[dict[str, tuple[float, float]], tuple[int, int]]],
) -> dict[str, tuple[float, float]]:
    """Mean landmark position in units of the image size over left-oriented examples: the baseline a
    localiser has to beat (it needs no training data beyond the landmarks themselves)."""
    acc: dict[str, list] = {}
    for pts, (w, h) in landmarks:
        for n, (x, y) in pts.items():
            acc.setdefault(n, []).append((x / w, y / h))
    return {n: tuple(np.mean(v, axis=0).tolist()) for n, v in acc.items()}


def landmark_npz(train: list, val: list, test: list, names: list[str], size: int, out: str | Path) -> Path:
    """A keypoint ``.npz`` from radiographs and their landmarks: each sample ``(gray image, {point: (x, y)}, limb)``
    in the image's own pixels is mirrored to the left and squashed to ``size`` x ``size`` (as the localiser sees
    it); a sample may appear in two lists (e.g. as training and validation image when there are too few)."""
    from PIL import Image

    from ..io import _atomic
    from .joints import flip_points

    images, kps, split = [], [], []
    for part, samples in (("train", train), ("val", val), ("test", test)):
        for img, pts, limb in samples:
            h, w = img.shape[:2]
            left = flip_points(pts, w) if limb.startswith("R") else pts
            images.append(
                np.asarray(Image.fromarray(to_left(img, limb)).resize((size, size), Image.Resampling.BILINEAR))
            )
            kps.append(
                [[left[n][0] * size / w, left[n][1] * size / h, 2.0] if n in left else [0.0, 0.0, 0.0] for n in names]
            )
            split.append(part)
    # Any: numpy's stub of savez would match a key of **arrays against its allow_pickle: bool
    arrays: dict[str, Any] = {
        "images": np.stack(images).astype(np.uint8),
        "keypoints_xyv": np.array(kps, np.float32),
        "keypoint_names": np.array(names),
        "split": np.array(split),
    }
    out = Path(out)
    _atomic(out, lambda f: np.savez(f, **arrays))
    return out


MIN_EPOCH_SAMPLES = 64


def fit_landmark_localiser(
    train: list,
    val: list,
    test: list,
    names: list[str],
    out: str | Path,
    *,
    size: int = 96,
    epochs: int = 60,
    init: str | None = None,
    seed: int = 0,
) -> dict:
    """Train (or fine-tune from ``init``, a localiser run) a heatmap U-Net on a group's own landmarks.

    Without validation samples the training samples stand in for them and every epoch runs (the last one is
    kept): the test samples never choose anything. Returns the run's metrics (``test``: errors on ``test``).
    """
    from ..config import TrainConfig
    from ..train.cell import run_cell

    out = Path(out)
    # a handful of images (the RA2 examples: two hands per patient) is repeated to at least MIN_EPOCH_SAMPLES per
    # epoch, each copy augmented afresh, so that an epoch is several optimizer steps rather than one
    reps = max(1, -(-MIN_EPOCH_SAMPLES // max(1, len(train))))
    data = landmark_npz(
        train * reps, val or train, test or train, names, size, out.parent / f".{out.name}-landmarks.npz"
    )
    cfg = TrainConfig(
        data=str(data),
        model="unet",
        epochs=epochs,
        batch_size=min(16, len(train) * reps),
        image_size=size,
        lr=1e-3,
        augment="scale=0.85-1.15,rotate=15,translate=0.08",
        seed=seed,
        progress=False,
        weights=init,
        select_epoch="val_loss" if val else "last",
        out=str(out),
    )
    from ..train.cell import check_cell

    check_cell(cfg.to_dict())  # a folder trained with other settings is refused, never silently reused
    return run_cell(cfg.to_dict())
