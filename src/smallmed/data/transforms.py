"""Augmentation and preprocessing on torchvision transforms v2 (image+mask safe).

Augmentations are named by a spec string: a preset (``none``, ``flip``, ``seed000``, ``ra2``)
or comma-separated terms such as ``hflip,scale=0.8-1.2,rotate=15,contrast=0.75-1.5``.
Randomness is sampled once per call, so an image and its mask get the same geometry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import SmallmedError
from ..registry import check_choice

NORMALIZE = ("dataset", "sample", "imagenet", "half", "xrv", "none")


def is_pure_tensor(x) -> bool:
    """A plain tensor (treated as an image), not a Mask or other tv_tensor."""
    return isinstance(x, torch.Tensor) and not isinstance(x, tv_tensors.TVTensor)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    """What random changes a training image gets. All off by default.

    ``scale`` is a zoom range: values below 1 zoom out (the border is padded with 0), above 1
    zoom in; this is the seed papers' "random crop with scale 0.8-1.2". ``multiply`` scales
    intensities (brightness), ``contrast`` stretches them around the mean, ``blur_p`` is the
    chance of a Gaussian blur, ``translate`` a fraction of the image size.
    """

    hflip: bool = False
    vflip: bool = False
    scale: tuple[float, float] | None = None
    rotate: float = 0.0
    translate: float = 0.0
    contrast: tuple[float, float] | None = None
    multiply: tuple[float, float] | None = None
    blur_p: float = 0.0
    trivial: bool = False  # TrivialAugmentWide (Müller and Hutter 2021), one random op per image

    def __post_init__(self) -> None:
        for name in ("scale", "contrast", "multiply"):
            rng = getattr(self, name)
            if rng is not None and not (0 < rng[0] <= rng[1]):
                raise SmallmedError(f"augment {name}={rng}: expected a range lo-hi with 0 < lo <= hi.")
        if not 0 <= self.blur_p <= 1:
            raise SmallmedError(f"augment blur={self.blur_p}: expected a probability in [0, 1].")
        if not 0 <= self.translate < 1:
            raise SmallmedError(f"augment translate={self.translate}: expected a fraction in [0, 1).")


PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "flip": AugmentConfig(hflip=True),
    # the strong recipe's: TrivialAugmentWide, which on grayscale images has no colour op to apply (saturation is
    # a no-op there); no flip (laterality can matter: add hflip where it does not)
    "trivial": AugmentConfig(trivial=True),
    # seed 000: random horizontal flip and random crop with scale 0.8-1.2
    "seed000": AugmentConfig(hflip=True, scale=(0.8, 1.2)),
    # seed 003's detector augmentation: blur 50%, contrast 0.75-1.5, multiply 0.8-1.2,
    # translate 5%, zoom 20%, rotate 15 degrees
    "ra2": AugmentConfig(
        scale=(0.8, 1.2), rotate=15, translate=0.05, contrast=(0.75, 1.5), multiply=(0.8, 1.2), blur_p=0.5
    ),
}


def parse_augment(spec: str | AugmentConfig | None) -> AugmentConfig:
    """``"seed000"`` or ``"hflip,scale=0.8-1.2,rotate=15"`` -> AugmentConfig.

    Example:
        >>> parse_augment("hflip,rotate=10").rotate
        10.0
    """
    if spec is None:
        return AugmentConfig()
    if isinstance(spec, AugmentConfig):
        return spec
    spec = spec.strip()
    if spec in PRESETS:
        return PRESETS[spec]
    kw: dict = {}
    names = {f.name for f in fields(AugmentConfig)} | {"blur"}
    for term in filter(None, (t.strip() for t in spec.split(","))):
        key, _, value = term.partition("=")
        if key in PRESETS and not value:
            kw.update({k: v for k, v in asdict(PRESETS[key]).items() if v not in (None, False, 0, 0.0)})
            continue
        if key not in names:
            check_choice("augment term", key, sorted(names | set(PRESETS)))
        try:
            if key in ("hflip", "vflip", "trivial"):
                kw[key] = value.lower() not in ("0", "false", "no") if value else True
            elif key in ("scale", "contrast", "multiply"):
                lo, _, hi = value.partition("-")
                kw[key] = (float(lo), float(hi or lo))
            elif key == "blur":
                kw["blur_p"] = float(value or 0.5)
            else:
                kw[key] = float(value)
        except ValueError:
            raise SmallmedError(f"augment term {term!r}: could not read the value {value!r}.") from None
    return AugmentConfig(**kw)


FITS = ("resize", "pad")  # how an image meets the model's input side: resized, or zero-padded around its centre


class PadTo(nn.Module):
    """Zero-pad an image to ``size`` x ``size`` around its centre (MedMNIST+'s way of enlarging small images);
    a larger image is resized down first."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.down = v2.Resize((size, size), antialias=True)

    def forward(self, *inputs):
        x = inputs[0] if len(inputs) == 1 else inputs
        h, w = (x[0] if isinstance(x, tuple) else x).shape[-2:]
        if h > self.size or w > self.size:
            return self.down(x)
        top, left = (self.size - h) // 2, (self.size - w) // 2
        pad = v2.Pad([left, top, self.size - w - left, self.size - h - top], fill=0)
        return pad(x)


class PerSampleStandardize(v2.Transform):
    """(x - mean(x)) / std(x) per image, over all pixels and channels (seed 003's preprocessing).

    Only images change; masks and other targets pass through.
    """

    _transformed_types = (tv_tensors.Image, is_pure_tensor)

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        flat = inpt.reshape(inpt.shape[:-3] + (-1,))
        mean = flat.mean(-1)[..., None, None, None]
        std = flat.std(-1)[..., None, None, None]
        return (inpt - mean) / (std + 1e-6)


class MatchChannels(v2.Transform):
    """Repeat a grayscale image to 3 channels or average RGB to 1, to fit the model's stem."""

    _transformed_types = (tv_tensors.Image, is_pure_tensor)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        c = inpt.shape[-3]
        if c == self.channels:
            return inpt
        if c == 1:
            out = inpt.expand(*inpt.shape[:-3], self.channels, *inpt.shape[-2:])
        else:
            out = inpt.float().mean(dim=-3, keepdim=True).to(inpt.dtype)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out


def dataset_mean_std(images: np.ndarray, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] of uint8 (N, H, W, C) images after channel matching."""
    x = images.astype(np.float64) / 255.0
    if x.shape[-1] != channels:
        x = x.mean(axis=-1, keepdims=True)
    mean = x.reshape(-1, x.shape[-1]).mean(0)
    std = x.reshape(-1, x.shape[-1]).std(0) + 1e-6
    if len(mean) != channels:
        mean, std = np.repeat(mean, channels), np.repeat(std, channels)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def build_transform(
    *,
    train: bool,
    image_size: int,
    channels: int,
    augment: str | AugmentConfig | None = None,
    normalize: str = "dataset",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    fit: str = "resize",
) -> v2.Compose:
    """The whole path from a uint8 (C, H, W) tensor to a normalised float model input.

    Order: resize to the model input, augment (training only), float in [0, 1], match
    channels, normalise. ``normalize`` is one of dataset (pass ``mean``/``std`` from the
    training split), sample (per-image standardisation), imagenet, half (mean = std = 0.5,
    as EfficientNet-Lite expects) or none.

    Example:
        >>> tf = build_transform(train=True, image_size=64, channels=3, augment="seed000", normalize="half")
        >>> tf(torch.zeros(1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([3, 64, 64])
    """
    check_choice("normalize", normalize, NORMALIZE)
    check_choice("fit", fit, FITS)
    aug = parse_augment(augment) if train else AugmentConfig()
    ops: list[nn.Module] = [
        v2.ToImage(),
        PadTo(image_size) if fit == "pad" else v2.Resize((image_size, image_size), antialias=True),
    ]
    if aug.trivial:
        ops.append(v2.TrivialAugmentWide())
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if aug.vflip:
        ops.append(v2.RandomVerticalFlip())
    if aug.scale or aug.rotate or aug.translate:
        ops.append(
            v2.RandomAffine(
                degrees=aug.rotate,
                translate=(aug.translate, aug.translate) if aug.translate else None,
                scale=aug.scale,
            )
        )
    if aug.multiply or aug.contrast:
        ops.append(v2.ColorJitter(brightness=aug.multiply, contrast=aug.contrast))
    if aug.blur_p:
        k = max(3, (image_size // 32) * 2 + 1)  # kernel grows with the image, always odd
        ops.append(v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=aug.blur_p))
    ops.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    ops.append(MatchChannels(channels))
    if normalize == "dataset":
        if mean is None or std is None:
            raise SmallmedError("normalize='dataset' needs mean and std from the training split.")
        ops.append(v2.Normalize(list(mean), list(std)))
    elif normalize == "imagenet":
        # one channel: the mean of the RGB statistics, as a grayscale stem summed from RGB expects
        mean_, std_ = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.449,), (0.226,))
        ops.append(v2.Normalize(list(mean_), list(std_)))
    elif normalize == "half":
        ops.append(v2.Normalize([0.5] * channels, [0.5] * channels))
    elif normalize == "xrv":  # torchxrayvision's models: [0, 1] -> [-1024, 1024]
        ops.append(v2.Normalize([0.5] * channels, [1 / 2048] * channels))
    elif normalize == "sample":
        ops.append(PerSampleStandardize())
    return v2.Compose(ops)
