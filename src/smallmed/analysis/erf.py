"""Effective receptive field (Luo et al. 2016) and occlusion sensitivity (Zeiler and Fergus 2014).

The *effective* receptive field is where a central output unit's gradient actually lands: the
mean absolute gradient of that unit (summed over channels) with respect to the input, averaged
over inputs. It is usually a Gaussian-like blob far smaller than the theoretical field.
Occlusion sensitivity slides a grey patch over an image and records how much the true-class
probability drops: where the model looks.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from ..errors import SmallmedError


def effective_receptive_field(
    model: nn.Module,
    inputs: torch.Tensor | tuple[int, int, int],
    *,
    layer: str | None = None,
    n: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """Mean |d unit / d input| over inputs, as an [H, W] map normalised to sum 1.

    Args:
        model: any CNN; ``layer`` names the module whose output holds the unit (default: the
            last spatial layer found by :func:`receptive_field`).
        inputs: a batch [N, C, H, W] (e.g. real images) or (C, H, W) for ``n`` random inputs.
    """
    from .receptive_field import receptive_field

    if isinstance(inputs, tuple):
        g = torch.Generator().manual_seed(seed)
        inputs = torch.randn(n, *inputs, generator=g)
    size = tuple(inputs.shape[1:])
    if layer is None:
        # inputs is a batch [N, C, H, W] here, so size is (C, H, W)
        layer = receptive_field(model, cast("tuple[int, int, int]", size))[-1].name.split("[")[0]
        if layer == "(model)":
            layer = ""
    try:
        target = model.get_submodule(layer) if layer else model
    except AttributeError:
        raise SmallmedError(f"layer {layer!r} is not a module of {type(model).__name__}.") from None
    feats: dict[str, torch.Tensor] = {}
    h = target.register_forward_hook(lambda m, i, o: feats.__setitem__("y", o))
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    total = torch.zeros(size[1:], dtype=torch.float64)
    try:
        for x in inputs.split(8):
            x = x.to(dev).requires_grad_(True)
            model(x)
            y = feats["y"]
            if y.dim() != 4:
                raise SmallmedError(f"layer {layer!r} outputs {tuple(y.shape)}, not a spatial map.")
            y[:, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
            total += x.grad.detach().abs().sum((0, 1)).double().cpu()
    finally:
        h.remove()
        model.train(was)
    s = total.sum()
    return (total / s if s > 0 else total).numpy()


def erf_radius(erf: np.ndarray, fraction: float = 0.5) -> float:
    """Radius (pixels) around the gradient-weighted centre that holds ``fraction`` of the mass."""
    if not 0 < fraction <= 1:
        raise SmallmedError(f"fraction={fraction}: expected a value in (0, 1].")
    h, w = erf.shape
    yy, xx = np.mgrid[0:h, 0:w]
    total = erf.sum()
    if total <= 0:
        return float("nan")
    cy, cx = (erf * yy).sum() / total, (erf * xx).sum() / total
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2).ravel()
    order = np.argsort(d)
    cum = np.cumsum(erf.ravel()[order]) / total
    return float(d[order][min(np.searchsorted(cum, fraction), len(d) - 1)])


def plot_erf(maps: dict[str, np.ndarray], path: str | Path, fraction: float = 0.5) -> Path:
    """Side-by-side heat maps (e.g. {"untrained": ..., "trained": ...}) with their radius."""
    from ..report.plots import _save, plt

    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], maps.items()):
        ax.imshow(m, cmap="magma")
        ax.set_title(f"{name}: r{int(fraction * 100)} = {erf_radius(m, fraction):.1f} px", fontsize=9)
        ax.axis("off")
    _save(fig, Path(path))
    return Path(path)


@torch.no_grad()
def occlusion_map(
    model: nn.Module,
    image: torch.Tensor,
    target: int,
    *,
    patch: int = 8,
    stride: int = 4,
    fill: float | None = None,
    batch: int = 64,
) -> np.ndarray:
    """Drop in the ``target`` class probability when a ``patch`` square centred at each position
    is replaced by ``fill`` (default: the image mean); an [H, W] map (positive = evidence)."""
    if image.dim() != 3:
        raise SmallmedError(f"occlusion_map expects one image [C, H, W], got {tuple(image.shape)}.")
    if patch < 1 or stride < 1:
        raise SmallmedError(f"patch={patch}, stride={stride}: expected positive integers.")
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    image = image.to(dev)
    c, h, w = image.shape
    fill_v = float(image.mean()) if fill is None else fill

    def prob(x):
        out = model(x).float()
        return torch.sigmoid(out[:, target]) if out.shape[1] == 1 else out.softmax(1)[:, target]

    base = float(prob(image[None])[0])
    ys, xs = list(range(0, h, stride)), list(range(0, w, stride))
    drops = torch.zeros(len(ys), len(xs))
    pos = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    for k in range(0, len(pos), batch):
        chunk = pos[k : k + batch]
        xb = image.repeat(len(chunk), 1, 1, 1)
        for b, (i, j) in enumerate(chunk):
            y0, x0 = max(0, ys[i] - patch // 2), max(0, xs[j] - patch // 2)
            xb[b, :, y0 : y0 + patch, x0 : x0 + patch] = fill_v
        p = prob(xb).cpu()
        for b, (i, j) in enumerate(chunk):
            drops[i, j] = base - p[b]
    model.train(was)
    up = torch.nn.functional.interpolate(drops[None, None], size=(h, w), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def save_overlay(image: np.ndarray, heat: np.ndarray, path: str | Path, title: str = "") -> Path:
    """The image in grey with the occlusion map on top (red: occluding hurts the prediction)."""
    from ..report.plots import _save, plt

    img = image if image.ndim == 2 else image.mean(0) if image.shape[0] in (1, 3) else image.mean(-1)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.2))
    axes[0].imshow(img, cmap="gray")
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(img, cmap="gray")
    lim = max(1e-6, float(np.abs(heat).max()))
    axes[1].imshow(heat, cmap="bwr", vmin=-lim, vmax=lim, alpha=0.5)
    axes[1].set_title(title or "probability drop when occluded", fontsize=9)
    for ax in axes:
        ax.axis("off")
    _save(fig, Path(path))
    return Path(path)
