"""Export a (pruned) model as thin convolutions: each k x k conv becomes two convs of rank r.

Layers tuned with ``apply_svd(mode="full")`` have their low-rank structure in the
in x (out*h*w) unfolding, so they become a 1x1 conv (in -> r) followed by a k x k conv
(r -> out, the original stride/padding/dilation) and are exact when r is the number of
non-zero singular values. Every other conv is split on the out x (in*h*w) unfolding: a k x k
conv (in -> r) then a 1x1 conv (r -> out), from a truncated SVD. A layer is only replaced
when the two convs are smaller than the dense one.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import SmallmedError
from .svd import fold, svd_modules

log = logging.getLogger(__name__)


def _rank_for(sigma: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """Rank of one matrix: the non-zero count, capped by ``rank``, or the ``energy`` share of sigma^2."""
    nonzero = int((sigma > sigma.max() * 1e-6).sum()) if sigma.numel() else 0
    r = max(nonzero, 1)
    if energy is not None:
        e = torch.cumsum(sigma**2, 0) / (sigma**2).sum().clamp(min=1e-30)
        r = min(r, int((e < energy - 1e-9).sum()) + 1)
    if rank is not None:
        r = min(r, rank)
    return max(r, 1)


def _split_conv(conv: nn.Conv2d, r_max: int | None, energy: float | None, in_first: bool) -> tuple[nn.Module, int]:
    w = conv.weight.detach()
    out, in_g, kh, kw = w.shape
    g = conv.groups
    out_g = out // g
    wg = w.reshape(g, out_g, in_g, kh, kw).double()
    if in_first:  # full unfolding: in x (out*h*w)
        mats = wg.permute(0, 2, 1, 3, 4).reshape(g, in_g, out_g * kh * kw)
    else:  # out x (in*h*w)
        mats = wg.reshape(g, out_g, in_g * kh * kw)
    U, S, Vh = torch.linalg.svd(mats, full_matrices=False)
    r = max(_rank_for(S[i], r_max, energy) for i in range(g))
    U, S, Vh = U[:, :, :r], S[:, :r], Vh[:, :r, :]
    dt = w.dtype
    # keywords of nn.Conv2d, whose constructor is typed for 2-tuples where the conv stores tuple[int, ...]
    kw_: dict[str, Any] = dict(
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation, padding_mode=conv.padding_mode
    )
    if in_first:
        first = nn.Conv2d(in_g * g, r * g, 1, groups=g, bias=False)
        first.weight.data = U.transpose(1, 2).reshape(g * r, in_g, 1, 1).to(dt)
        second = nn.Conv2d(r * g, out, (kh, kw), groups=g, bias=conv.bias is not None, **kw_)
        # Vh[g, r, (o, a, b)] scaled by sigma -> weight [out, r, kh, kw] per group
        v = (S[:, :, None] * Vh).reshape(g, r, out_g, kh, kw).permute(0, 2, 1, 3, 4)
        second.weight.data = v.reshape(out, r, kh, kw).to(dt)
    else:
        first = nn.Conv2d(in_g * g, r * g, (kh, kw), groups=g, bias=False, **kw_)
        first.weight.data = Vh.reshape(g * r, in_g, kh, kw).to(dt)
        second = nn.Conv2d(r * g, out, 1, groups=g, bias=conv.bias is not None)
        second.weight.data = (U * S[:, None, :]).reshape(out, r, 1, 1).to(dt)
    if conv.bias is not None:
        assert second.bias is not None  # built with bias=True above
        second.bias.data = conv.bias.detach().clone()
    return nn.Sequential(first, second), r


@dataclass
class LowRankReport:
    rows: list[dict] = field(default_factory=list)
    params_dense: int = 0
    params_low_rank: int = 0
    flops_dense: int = 0
    flops_low_rank: int = 0
    images_per_s_dense: float = 0.0
    images_per_s_low_rank: float = 0.0
    max_abs_diff: float = 0.0

    @property
    def speedup(self) -> float:
        return self.images_per_s_low_rank / max(self.images_per_s_dense, 1e-9)

    def __str__(self) -> str:
        return (
            f"low-rank export: {len(self.rows)} layers replaced; params {self.params_dense:,} -> "
            f"{self.params_low_rank:,} ({self.params_low_rank / max(self.params_dense, 1):.2f}x); "
            f"GFLOPs per image {self.flops_dense / 1e9:.4f} -> {self.flops_low_rank / 1e9:.4f}; throughput "
            f"{self.images_per_s_dense:.0f} -> {self.images_per_s_low_rank:.0f} img/s ({self.speedup:.2f}x, "
            f"same process); max |output difference| {self.max_abs_diff:.2e}"
        )


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one image (see :func:`smallmed.analysis.cost.flops_per_image`)."""
    from ..analysis.cost import flops_per_image

    return flops_per_image(model, example)


def throughput(model: nn.Module, example: torch.Tensor, *, warmup: int = 3, repeats: int = 10) -> float:
    """Images/s (see :func:`smallmed.analysis.cost.throughput`)."""
    from ..analysis.cost import throughput as _throughput

    return _throughput(model, example, warmup=warmup, repeats=repeats)


def to_low_rank(
    model: nn.Module,
    example: torch.Tensor,
    *,
    rank: int | None = None,
    energy: float | None = None,
    layers: str = "svd",
    measure: bool = True,
) -> tuple[nn.Module, LowRankReport]:
    """A copy of ``model`` with convs rebuilt as two thin convs, and a cost comparison.

    Args:
        model: a model (SVD-parametrised or plain); it is not modified.
        example: an input batch for FLOPs, throughput and the output check.
        rank: cap on each layer's rank. energy: keep the smallest rank holding this share of
            sum(sigma^2). With neither, SVD layers keep their non-zero singular values (exact).
        layers: ``"svd"`` (the SVD-parametrised convs) or ``"all"`` (every conv with k > 1).
        measure: also measure CPU throughput of both models in this process.

    Example:
        >>> small, report = to_low_rank(model, torch.randn(32, 3, 64, 64))   # doctest: +SKIP
        >>> print(report)                                                     # doctest: +SKIP
    """
    if energy is not None and not 0 < energy <= 1:
        raise SmallmedError(f"energy={energy}: expected a fraction in (0, 1].")
    if rank is not None and rank < 1:
        raise SmallmedError(f"rank={rank}: expected at least 1.")
    if layers not in ("svd", "all"):
        raise SmallmedError(f"layers={layers!r}: expected 'svd' (the SVD-parametrised convs) or 'all'.")
    dense = copy.deepcopy(model).eval()
    modes = {name: p.mode for name, _, p in svd_modules(dense)}
    if modes:
        dense = fold(dense, inplace=True)
    if layers == "svd" and not modes:
        raise SmallmedError("to_low_rank(layers='svd'): the model has no SVD parametrizations; pass layers='all'.")
    low = copy.deepcopy(dense)
    example = example.to(next(dense.parameters()).device)
    report = LowRankReport()
    for name, m in list(low.named_modules()):
        if not isinstance(m, nn.Conv2d) or parametrize.is_parametrized(m):
            continue
        if layers == "svd" and name not in modes:
            continue
        if layers == "all" and m.kernel_size == (1, 1):
            continue
        new, r = _split_conv(m, rank, energy, in_first=modes.get(name) == "full")
        before = m.weight.numel()
        after = sum(p.numel() for p in new.parameters()) - (m.bias.numel() if m.bias is not None else 0)
        if after >= before:
            continue  # no saving: keep the dense conv
        parent = low.get_submodule(name.rsplit(".", 1)[0]) if "." in name else low
        setattr(parent, name.rsplit(".", 1)[-1], new)
        report.rows.append({"name": name, "rank": r, "params_before": before, "params_after": after})
    report.params_dense = sum(p.numel() for p in dense.parameters())
    report.params_low_rank = sum(p.numel() for p in low.parameters())
    report.flops_dense = count_flops(dense, example)
    report.flops_low_rank = count_flops(low, example)
    with torch.no_grad():
        report.max_abs_diff = float((dense(example) - low(example)).abs().max())
    if measure:
        # interleave the two so that machine noise hits both alike
        a, b = [], []
        for _ in range(3):
            a.append(throughput(dense, example))
            b.append(throughput(low, example))
        report.images_per_s_dense, report.images_per_s_low_rank = sorted(a)[1], sorted(b)[1]
    log.info("%s", report)
    return low, report
