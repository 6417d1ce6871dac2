"""Cheap convolutions (seed 004): replace ``nn.Conv2d`` layers of any model by factorized ones.

Methods (``factorize(model, method)``):

- ``sfconv``: a k x k conv C_in -> r (the original stride, padding, dilation) then a 1x1 conv
  r -> C_out; no dense weight is rebuilt in the forward pass. Train with
  ``loss + lambda * kl_flatten_loss(model)``: the KL divergence between each factor's normalised
  singular values and the uniform distribution (singular-value flattening).
- ``fconv`` (Khodak et al. 2021): the same two-conv shape with spectral initialisation and
  Frobenius decay ``frobenius_decay(model)`` = sum of ||V U||_F^2 (the product, not the factors).
- ``fconvsn``: the factors under spectral normalisation (``torch.nn.utils.parametrizations``).
- ``dpc``: depthwise k x k + pointwise 1x1 (depthwise-separable; takes no rank).
- ``conv``: unchanged (the reference).

With trained weights, factors come from the truncated SVD of each dense weight on the
out x (in*k*k) unfolding, i.e. the conv weight's own [out, in, kh, kw] memory order, which is
the order the first conv's weight is reshaped back into, so at full rank the two convs reproduce
the dense layer exactly (the public reference code reshapes inconsistently and scrambles
pretrained weights). Factors are split sqrt(S) to each side. From scratch, the dense layer's own
(Kaiming) initialisation is factorized the same way (spectral initialisation).
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
from torch import nn

from ..errors import SmallmedError
from ..registry import check_choice
from .svd import _weight_parametrizations

log = logging.getLogger(__name__)

CONV_VARIANTS = (
    "conv",
    "sfconv",
    "fconv",
    "fconvsn",
    "dpc",
)  # distinct from the fine-tuning methods (smallmed.methods)


class FactorizedConv2d(nn.Module):
    """k x k conv (in -> rank) then 1x1 conv (rank -> out). ``kind``: sfconv, fconv or fconvsn."""

    gain: torch.Tensor  # a buffer, registered for kind fconvsn only

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        *,
        rank: int,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",  # nn.Conv2d's choices
        kind: str = "sfconv",
    ) -> None:
        super().__init__()
        self.kind, self.rank = kind, rank
        self.first = nn.Conv2d(
            in_channels, rank, kernel_size, stride, padding, dilation, bias=False, padding_mode=padding_mode
        )
        self.second = nn.Conv2d(rank, out_channels, 1, bias=bias)
        # smallmed.roles; a plain str attribute, which Module.__setattr__'s annotation (Tensor | Module) leaves out
        self.first.smallmed_role = self.second.smallmed_role = "factor"  # type: ignore[assignment]
        # fconvsn: spectral normalisation divides each factor by its top singular value; the product of
        # the two values at construction is carried as a fixed gain so the layer starts equal to the dense conv
        if kind == "fconvsn":
            self.register_buffer("gain", torch.ones(()))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, kind: str) -> FactorizedConv2d:
        f = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            rank=rank,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            kind=kind,
        )
        w = conv.weight.detach()
        out, cin, kh, kw = w.shape
        U, S, Vh = torch.linalg.svd(w.reshape(out, cin * kh * kw).double(), full_matrices=False)
        root = S[:rank].sqrt()
        with torch.no_grad():
            f.first.weight.copy_((root[:, None] * Vh[:rank]).reshape(rank, cin, kh, kw).to(w.dtype))
            f.second.weight.copy_((U[:, :rank] * root).reshape(out, rank, 1, 1).to(w.dtype))
            if conv.bias is not None:
                assert f.second.bias is not None  # built with bias=True just above
                f.second.bias.copy_(conv.bias.detach())
        f.to(w.device)
        if kind == "fconvsn":
            from torch.nn.utils.parametrizations import spectral_norm

            spectral_norm(f.first)
            spectral_norm(f.second)
            with torch.no_grad():
                was = f.training
                f.eval()  # eval mode: the normalised weight is W / sigma_hat with the stored power-iteration vectors
                s1 = _weight_parametrizations(f.first).original.norm() / f.first.weight.norm()
                s2 = _weight_parametrizations(f.second).original.norm() / f.second.weight.norm()
                f.gain.fill_(float(s1 * s2))
                f.train(was)
        return f

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as matrices: A = first [r, in*k*k], B = second [out, r]; the dense weight is B @ A."""
        return self.first.weight.reshape(self.rank, -1), self.second.weight.reshape(-1, self.rank)

    def dense_weight(self) -> torch.Tensor:
        a, b = self.factors()
        w = (b @ a).reshape(self.second.out_channels, *self.first.weight.shape[1:])
        return w * self.gain if self.kind == "fconvsn" else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        return self.second(h * self.gain if self.kind == "fconvsn" else h)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, rank={self.rank}"


def depthwise_separable(conv: nn.Conv2d) -> nn.Sequential:
    """Depthwise k x k (stride, padding, dilation kept) + pointwise 1x1 (with the conv's bias)."""
    c = conv.in_channels
    # nn.Conv2d stores its geometry as tuple[int, ...] but its constructor is typed for the 2-tuples they are
    return nn.Sequential(
        nn.Conv2d(
            c,
            c,
            cast(tuple[int, int], conv.kernel_size),
            cast(tuple[int, int], conv.stride),
            cast("str | tuple[int, int]", conv.padding),
            cast(tuple[int, int], conv.dilation),
            groups=c,
            bias=False,
            padding_mode=conv.padding_mode,
        ),
        nn.Conv2d(c, conv.out_channels, 1, bias=conv.bias is not None),
    ).to(conv.weight.device)


@dataclass
class FactorizeSummary:
    method: str
    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    def __str__(self) -> str:
        conv_b = sum(r["params_before"] for r in self.rows)
        conv_a = sum(r["params_after"] for r in self.rows)
        return (
            f"factorize(method={self.method}): {len(self.rows)} layers replaced; their parameters "
            f"{conv_b:,} -> {conv_a:,} ({conv_b / max(conv_a, 1):.1f}x fewer); model {self.params_before:,} -> "
            f"{self.params_after:,}" + (f"; skipped {len(self.skipped)} (grouped)" if self.skipped else "")
        )


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@dataclass(frozen=True)
class FactorizeConfig:
    """Settings of :func:`factorize` as one object (PEFT's style).

    Example:
        >>> FactorizeConfig("sfconv", rank_ratio=0.25).rank_ratio
        0.25
    """

    method: str = "sfconv"
    rank: int | None = None
    rank_ratio: float | None = None
    layers: tuple[str, ...] | None = None
    all_kernels: bool = False

    def __post_init__(self) -> None:
        check_choice("method", self.method, CONV_VARIANTS)


def _eligible_convs(model: nn.Module, layers: list[str] | None, all_kernels: bool, skipped: list[str]) -> list:
    """The plain ``nn.Conv2d`` layers to replace, by name; grouped convs go to ``skipped``."""
    candidates = []
    for name, m in model.named_modules():
        if type(m) is not nn.Conv2d:
            continue
        if layers and not any(fnmatch.fnmatch(name, p) for p in layers):
            continue
        if not all_kernels and max(m.kernel_size) == 1:
            continue
        if m.groups != 1:
            skipped.append(name)
            continue
        candidates.append((name, m))
    return candidates


def factorize(
    model: nn.Module,
    method: str | FactorizeConfig = "sfconv",
    *,
    rank: int | None = None,
    rank_ratio: float | None = None,
    layers: list[str] | None = None,
    all_kernels: bool = False,
) -> FactorizeSummary:
    """Replace eligible ``nn.Conv2d`` layers of ``model`` in place.

    Args:
        method: ``sfconv``, ``fconv``, ``fconvsn``, ``dpc`` or ``conv`` (no change).
        rank: the same rank for every layer (must be <= min(C_out, C_in*k*k) of each), or
        rank_ratio: rank = max(1, floor(ratio * min(C_out, C_in*k*k))) per layer (default 1/8).
        layers: glob patterns over module names (``"layer3.*"``); default every eligible conv.
        all_kernels: also 1x1 convs (default: only k > 1). Grouped convs are skipped and listed.

    Returns:
        A :class:`FactorizeSummary` (per layer: name, shape, rank, params before/after).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1))
        >>> print(factorize(m, "sfconv", rank_ratio=0.25))
        factorize(method=sfconv): 1 layers replaced; their parameters 4,640 -> 1,440 (3.2x fewer); model 4,640 -> 1,440
    """
    if isinstance(method, FactorizeConfig):
        c = method
        method, rank, rank_ratio, all_kernels = c.method, c.rank, c.rank_ratio, c.all_kernels
        layers = list(c.layers) if c.layers else layers
    check_choice("method", method, CONV_VARIANTS)
    if rank is not None and rank_ratio is not None:
        raise SmallmedError("give rank or rank_ratio, not both.")
    if rank is not None and rank < 1:
        raise SmallmedError(f"rank={rank}: expected a positive integer.")
    if rank_ratio is not None and not 0 < rank_ratio <= 1:
        raise SmallmedError(f"rank_ratio={rank_ratio}: expected a value in (0, 1].")
    if rank is None and rank_ratio is None:
        rank_ratio = 0.125
    summary = FactorizeSummary(method, params_before=_params(model))
    candidates = _eligible_convs(model, layers, all_kernels, summary.skipped)
    if not candidates:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][:8]
        raise SmallmedError(
            f"factorize found no eligible conv (k > 1{', matching ' + str(layers) if layers else ''}, "
            f"groups 1); the model's convs: {', '.join(convs) or 'none'}."
        )
    if method == "conv":
        summary.params_after = summary.params_before
        return summary
    for name, conv in candidates:
        new: nn.Module
        out, cin, kh, kw = conv.weight.shape
        full = min(out, cin * kh * kw)
        if method == "dpc":
            new, r = depthwise_separable(conv), None
        else:
            r = rank if rank is not None else max(1, math.floor(rank_ratio * full))
            if r > full:
                raise SmallmedError(f"rank={r} for layer {name!r} exceeds its limit min(C_out, C_in*k*k) = {full}.")
            new = FactorizedConv2d.from_conv(conv, r, method)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        summary.rows.append(
            {
                "name": name,
                "shape": [out, cin, kh, kw],
                "rank": r,
                "full_rank": full,
                "params_before": _params(conv),
                "params_after": _params(new),
            }
        )
    summary.params_after = _params(model)
    log.info("%s", summary)
    return summary


def factorized_modules(model: nn.Module, kinds: tuple[str, ...] = ("sfconv", "fconv", "fconvsn")):
    """(name, module) of every :class:`FactorizedConv2d` of the given kinds, found by type."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FactorizedConv2d) and m.kind in kinds]


def _kl_to_uniform(s: torch.Tensor) -> torch.Tensor:
    p = s / s.sum().clamp(min=1e-12)
    n = p.numel()
    return (p * (p.clamp(min=1e-12) * n).log()).sum()


def kl_flatten_loss(model: nn.Module, kinds: tuple[str, ...] = ("sfconv",)) -> torch.Tensor:
    """Sum over factorized layers and both factors of KL(normalised singular values || uniform).

    Zero for a flat spectrum, positive otherwise, differentiable (``torch.linalg.svdvals``).
    Add ``lambda * kl_flatten_loss(model)`` to the task loss (the trainer's ``--kl-weight``).
    """
    return _sum_over_layers(
        model,
        kinds,
        "kl_flatten_loss",
        lambda a, b: _kl_to_uniform(torch.linalg.svdvals(a.float())) + _kl_to_uniform(torch.linalg.svdvals(b.float())),
    )


def frobenius_decay(model: nn.Module, kinds: tuple[str, ...] = ("fconv",)) -> torch.Tensor:
    """Sum of ||B A||_F^2 over factorized layers, computed as tr((B^T B)(A A^T)) (r x r matrices)."""
    return _sum_over_layers(model, kinds, "frobenius_decay", lambda a, b: torch.trace((b.T @ b) @ (a @ a.T)))


def _sum_over_layers(model: nn.Module, kinds: tuple[str, ...], what: str, term) -> torch.Tensor:
    """``term(A, B)`` summed over the factorized layers of ``kinds``; an error if there are none."""
    mods = factorized_modules(model, kinds)
    if not mods:
        raise SmallmedError(f"{what}: the model has no {kinds[0]} layers; call factorize(model, {kinds[0]!r}) first.")
    return sum(term(*m.factors()) for _, m in mods)
