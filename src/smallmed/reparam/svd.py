"""SVD fine-tuning (seed 000): train only the singular values of pretrained weights.

Each eligible weight W is decomposed once, from its pretrained values, into matrices
M = U diag(sigma) Vh; U and Vh become frozen buffers and the trainable tensor is theta with
sigma = theta**2 (so singular values stay non-negative), initialised to sqrt(sigma). The
module's ``weight`` is rebuilt from them by ``torch.nn.utils.parametrize``, so this works on
torchvision, timm or hand-written models alike.

Unfoldings of a conv weight [out, in, h, w] (per group for grouped/depthwise convs):

- ``full`` (the seed's): M = in x (out*h*w), min(in, out*h*w) singular values.
- ``full-out``: M = out x (in*h*w), the usual im2col matrix, min(out, in*h*w) values.
- ``spatial``: one in x out matrix per kernel position, min(in, out)*h*w values.

``prune=p`` zeroes the smallest fraction p of each matrix's singular values and keeps them at
exactly zero (a fixed mask; at least one value per matrix is always kept), e.g. the seed's ``sp-svd-9`` is spatial with p = 0.9.
"""

from __future__ import annotations

import fnmatch
import logging
import types
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from ..errors import SmallmedError
from ..registry import check_choice
from ..roles import set_trainable, trainable_by_role

log = logging.getLogger(__name__)

MODES = ("full", "full-out", "spatial")
TRAINABLE = ("sigma", "head", "bn", "bias")


class SVDWeight(nn.Module):
    """Parametrization ``theta -> W`` with U, Vh and the prune mask fixed at construction.

    Example:
        >>> conv = nn.Conv2d(8, 16, 3)
        >>> _ = parametrize.register_parametrization(conv, "weight", SVDWeight(conv.weight, 1, "full"), unsafe=True)
        >>> tuple(conv.parametrizations.weight.original.shape)   # one sigma per singular value
        (1, 8)
    """

    role = "sigma"  # smallmed.roles: the tensor this parametrization owns is a vector of singular values

    # buffers, registered in __init__ and _slice_factors (declared so they read as tensors, not Module.__getattr__'s
    # Tensor | Module); Vt, Ut exist for mode "spatial" only, Uk, Vhk are None when every singular value is kept
    U: torch.Tensor
    Vh: torch.Tensor
    mask: torch.Tensor
    sigma0: torch.Tensor
    Vt: torch.Tensor
    Ut: torch.Tensor
    Uk: torch.Tensor | None
    Vhk: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, groups: int = 1, mode: str = "full", prune: float = 0.0) -> None:
        super().__init__()
        check_choice("mode", mode, MODES)
        if not 0 <= prune < 1:
            raise SmallmedError(f"prune={prune}: expected a fraction in [0, 1).")
        self.mode, self.groups, self.prune = mode, groups, prune
        self.linear = weight.ndim == 2
        w = weight.detach()
        self.shape = tuple(w.shape)
        U, S, Vh = torch.linalg.svd(self._unfold(w).double(), full_matrices=False)  # float64: exact round trip
        mask = torch.ones_like(S)
        n_prune = min(int(round(prune * S.shape[-1])), S.shape[-1] - 1)  # keep at least one per matrix
        if n_prune:
            mask[:, S.shape[-1] - n_prune :] = 0  # svd sorts descending: the tail is the smallest
        self.kept = S.shape[-1] - n_prune  # the rebuild uses only these (the rest are exactly 0)
        self.factorable = mode in ("full", "full-out") and not self.linear
        self.register_buffer("U", U.to(w.dtype))
        self.register_buffer("Vh", Vh.to(w.dtype))
        self.register_buffer("mask", mask.to(w.dtype))
        self.register_buffer("sigma0", S.to(w.dtype))  # the pretrained values (unpruned), for diagnostics
        self._slice_factors()

    def _slice_factors(self) -> None:
        """Non-persistent, contiguous copies of the factors in the layout the rebuild wants:
        the kept columns only (slicing in every forward would copy U, Vh each step), and for
        ``spatial`` transposed so the product comes out as [kernel position, out, in], which
        becomes a (channels-last) conv weight with a cache-friendly copy."""
        k = self.kept
        if self.mode == "spatial":
            self.register_buffer("Vt", self.Vh[:, :k].transpose(1, 2).contiguous(), persistent=False)
            self.register_buffer("Ut", self.U[..., :k].transpose(1, 2).contiguous(), persistent=False)
        if k < self.U.shape[-1]:
            self.register_buffer("Uk", self.U[..., :k].contiguous(), persistent=False)
            self.register_buffer("Vhk", self.Vh[:, :k].contiguous(), persistent=False)
        else:
            self.Uk = self.Vhk = None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, Vh) restricted to the kept singular vectors."""
        # Uk and Vhk are set together (both tensors or both None); testing both lets the checker see it
        return (self.U, self.Vh) if self.Uk is None or self.Vhk is None else (self.Uk, self.Vhk)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._slice_factors()  # U, Vh may have been replaced

    # --- unfolding --------------------------------------------------------------------------
    def _dims(self):
        out, in_g, kh, kw = self.shape if not self.linear else (*self.shape, 1, 1)
        return out, in_g, kh, kw, self.groups, out // self.groups

    def _unfold(self, w: torch.Tensor) -> torch.Tensor:
        out, in_g, kh, kw, g, out_g = self._dims()
        wg = w.reshape(g, out_g, in_g, kh, kw)
        if self.mode == "full":
            return wg.permute(0, 2, 1, 3, 4).reshape(g, in_g, out_g * kh * kw)
        if self.mode == "full-out":
            return wg.reshape(g, out_g, in_g * kh * kw)
        return wg.permute(0, 3, 4, 2, 1).reshape(g * kh * kw, in_g, out_g)

    def _fold(self, mats: torch.Tensor) -> torch.Tensor:
        out, in_g, kh, kw, g, out_g = self._dims()
        if self.mode == "full":
            w = mats.reshape(g, in_g, out_g, kh, kw).permute(0, 2, 1, 3, 4)
        elif self.mode == "full-out":
            w = mats
        else:
            w = mats.reshape(g, kh, kw, in_g, out_g).permute(0, 4, 3, 1, 2)
        return w.reshape(self.shape)

    # --- parametrization --------------------------------------------------------------------
    def sigma(self, theta: torch.Tensor) -> torch.Tensor:
        return theta * theta * self.mask

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        sig = self.sigma(theta)[:, : self.kept]  # pruned values are exactly 0: skipping them is exact
        if self.mode == "spatial":
            out, in_g, kh, kw, g, out_g = self._dims()
            mats = (self.Vt * sig[:, None, :]) @ self.Ut  # [g*kh*kw, out_g, in_g]
            w = mats.reshape(g, kh, kw, out_g, in_g).permute(0, 3, 1, 2, 4).reshape(out, kh, kw, in_g)
            return w.permute(0, 3, 1, 2)  # [out, in, kh, kw] with channels-last strides
        U, Vh = self.factors()
        return self._fold((U * sig[:, None, :]) @ Vh)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """theta from a weight: sqrt of diag(U^T M V), the weight's singular values in this basis."""
        s = torch.einsum("bmr,bmn,brn->br", self.U, self._unfold(weight.to(self.U.dtype)), self.Vh)
        return s.clamp(min=0).sqrt() * self.mask

    def extra_repr(self) -> str:
        return f"mode={self.mode}, groups={self.groups}, matrices={self.U.shape[0]}, rank={self.U.shape[-1]}, prune={self.prune}"


FACTORED_PATH = "auto"  # "always" / "never": force one path (tests, benchmarks)


def _weight_parametrizations(module: nn.Module) -> parametrize.ParametrizationList:
    """``module.parametrizations.weight``: the list ``parametrize`` adds at runtime (which the type checker only
    sees through ``Module.__getattr__``, as ``Tensor | Module``)."""
    return cast(parametrize.ParametrizationList, cast(nn.Module, module.parametrizations).weight)


def _factored_conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A wrapped conv's forward that runs the factors as two convs when that is cheaper.

    Rebuilding W = U diag(sigma) Vh costs about in*r*out*h*w multiply-adds per step (twice with
    the backward pass) whatever the batch; running the factors as a 1x1 conv and a k x k conv
    costs the original conv plus one thin conv over the activations. Small images and deep
    layers favour the factors, large activations favour the rebuild; the cheaper is chosen per
    call from the input's shape. Both compute the same function (float tolerance).
    """
    p = cast(SVDWeight, _weight_parametrizations(self)[0])
    if parametrize._cache_enabled or not p.factorable or x.dim() != 4:
        return self._conv_forward(x, self.weight, self.bias)
    out, in_g, kh, kw, g, out_g = p._dims()
    k = p.kept
    n, _, h, w = x.shape
    ho, wo = h // self.stride[0], w // self.stride[1]  # close enough for a cost estimate
    rebuild = g * in_g * k * out_g * kh * kw
    if p.mode == "full":  # 1x1 (in -> k) at input resolution, then k x k (k -> out) as the original
        factor = n * h * w * g * in_g * k + n * ho * wo * g * out_g * kh * kw * (k - in_g)
    else:  # full-out: k x k (in -> k), then 1x1 (k -> out)
        factor = n * ho * wo * g * k * (out_g + in_g * kh * kw) - n * ho * wo * out * in_g * kh * kw
    if (factor >= rebuild and FACTORED_PATH != "always") or FACTORED_PATH == "never":
        return self._conv_forward(x, self.weight, self.bias)
    theta = _weight_parametrizations(self).original
    sig = p.sigma(theta)[:, :k]  # [g, k]
    U, Vh = p.factors()
    if p.mode == "full":
        a = (U * sig[:, None, :]).transpose(1, 2).reshape(g * k, in_g, 1, 1)
        z = F.conv2d(x, a, groups=g)
        b = Vh.reshape(g, k, out_g, kh, kw).transpose(1, 2).reshape(out, k, kh, kw)
        return self._conv_forward(z, b, self.bias)
    a = Vh.reshape(g * k, in_g, kh, kw)
    z = self._conv_forward(x, a, None)
    b = (U * sig[:, None, :]).reshape(out, k, 1, 1)
    y = F.conv2d(z, b, groups=g)
    return y if self.bias is None else y + self.bias[:, None, None]


def svd_modules(model: nn.Module) -> list[tuple[str, nn.Module, SVDWeight]]:
    """(name, module, parametrization) for every weight under an :class:`SVDWeight`, found by type."""
    found = []
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            for p in m.parametrizations.weight:
                if isinstance(p, SVDWeight):
                    found.append((name, m, p))
    return found


@dataclass
class SVDSummary:
    """What :func:`apply_svd` changed. ``rows``: one per wrapped layer."""

    mode: str
    prune: float
    rows: list[dict] = field(default_factory=list)
    trainable: int = 0
    total: int = 0  # parameters of the plain model (after fold), not of the reparametrised one
    sigma_params: int = 0
    sigma_active: int = 0
    groups: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        pct = 100 * self.trainable / max(self.total, 1)
        parts = ", ".join(f"{k} {v:,}" for k, v in self.groups.items())
        return (
            f"apply_svd(mode={self.mode}, prune={self.prune}): {len(self.rows)} layers; trainable "
            f"{self.trainable:,} of {self.total:,} ({pct:.3f}%): {parts}; active sigma {self.sigma_active:,}"
        )


def _eligible(model: nn.Module, include, exclude, linear: bool) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    from ..roles import _maybe_head

    head = _maybe_head(model)
    kinds = (nn.Conv2d, nn.Linear) if linear else (nn.Conv2d,)
    out: list[tuple[str, nn.Conv2d | nn.Linear]] = []
    for name, m in model.named_modules():
        if not isinstance(m, kinds) or name == head or parametrize.is_parametrized(m, "weight"):
            continue
        if include and not any(fnmatch.fnmatch(name, pat) for pat in include):
            continue
        if exclude and any(fnmatch.fnmatch(name, pat) for pat in exclude):
            continue
        out.append((name, m))
    return out


@dataclass(frozen=True)
class SVDConfig:
    """Settings of :func:`apply_svd` as one object (PEFT's style): pass it instead of keywords.

    Example:
        >>> SVDConfig(mode="spatial", prune=0.9).train
        ('sigma', 'head')
    """

    mode: str = "full"
    prune: float = 0.0
    train: tuple[str, ...] = ("sigma", "head")
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    linear: bool = False
    factored: bool = True

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        if not 0 <= self.prune < 1:
            raise SmallmedError(f"prune={self.prune}: expected a fraction in [0, 1).")


def apply_svd(
    model: nn.Module,
    mode: str | SVDConfig = "full",
    prune: float = 0.0,
    train: tuple[str, ...] | list[str] = ("sigma", "head"),
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    linear: bool = False,
    factored: bool = True,
) -> SVDSummary:
    """Reparametrise every eligible conv (and optionally linear) weight by its singular values.

    Args:
        model: any ``nn.Module``; its weights should be the pretrained ones.
        mode: ``full``, ``full-out`` or ``spatial`` (see the module docstring).
        prune: fraction of the smallest singular values of each matrix fixed at zero.
        train: what stays trainable: ``sigma`` (the singular values), ``head`` (the classifier),
            ``bn`` (BatchNorm affine), ``bias`` (conv/linear biases). Everything else is frozen.
        include, exclude: glob patterns over module names (``"layer4.*"``).
        linear: also wrap ``nn.Linear`` layers other than the classifier.
        factored: for ``full``/``full-out`` convs, run the factors as two convs when that is
            cheaper than rebuilding the weight (chosen per call; same outputs).

    Returns:
        An :class:`SVDSummary` with the layers wrapped and trainable/total parameter counts.

    Example:
        >>> model = create_model("resnet18", 2, weights="src/best.pt")   # doctest: +SKIP
        >>> print(apply_svd(model, mode="spatial", prune=0.9))            # doctest: +SKIP
        >>> print(apply_svd(model, SVDConfig(mode="spatial", prune=0.9)))  # doctest: +SKIP
    """
    if isinstance(mode, SVDConfig):
        c = mode
        mode, prune, train, linear, factored = c.mode, c.prune, c.train, c.linear, c.factored
        include = list(c.include) if c.include else include
        exclude = list(c.exclude) if c.exclude else exclude
    check_choice("mode", mode, MODES)
    train = tuple(train)
    for t in train:
        check_choice("train", t, TRAINABLE)
    if not 0 <= prune < 1:
        raise SmallmedError(f"prune={prune}: expected a fraction in [0, 1).")
    dense_total = sum(p.numel() for p in model.parameters())
    layers = _eligible(model, include, exclude, linear)
    if not layers:
        kinds = sorted({type(m).__name__ for m in model.modules()} - {type(model).__name__})[:12]
        raise SmallmedError(
            f"apply_svd found no eligible layer (Conv2d{' or Linear' if linear else ''}"
            f"{', matching include/exclude' if include or exclude else ''}); the model has: {', '.join(kinds)}."
        )
    summary = SVDSummary(mode=mode, prune=prune)
    for name, m in layers:
        groups = getattr(m, "groups", 1)
        p = SVDWeight(m.weight, groups, mode, prune)
        parametrize.register_parametrization(m, "weight", p, unsafe=True)
        if p.factorable and factored:
            # an instance attribute of its own (fold pops it again): assigned through nn.Module, which declares
            # forward as an assignable attribute, where Conv2d's is a method
            cast(nn.Module, m).forward = types.MethodType(_factored_conv_forward, m)
        theta = _weight_parametrizations(m).original
        summary.rows.append(
            {
                "name": name,
                "shape": list(p.shape),
                "groups": groups,
                "matrices": p.U.shape[0],
                "rank": p.U.shape[-1],
                "sigma": theta.numel(),
                "active": int(p.mask.sum().item()),
            }
        )
    _set_trainable(model, train)
    sigma = [_weight_parametrizations(m).original for _, m, _ in svd_modules(model)]
    summary.sigma_params = sum(t.numel() for t in sigma)
    summary.sigma_active = sum(r["active"] for r in summary.rows)
    summary.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary.total = dense_total  # the deployable (folded) model's size, not theta + the rest
    summary.groups = trainable_groups(model)
    log.info("%s", summary)
    return summary


def trainable_groups(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts by role: sigma, head, bn, bias, other."""
    return trainable_by_role(model)


def _set_trainable(model: nn.Module, train: tuple[str, ...]) -> None:
    set_trainable(model, tuple(train))


def fold(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Bake the singular values back into plain weights (identical outputs) and drop U, Vh.

    Returns a folded copy (the SVD model stays as it was) unless ``inplace``. The result is
    ordinary PyTorch: its ``state_dict`` loads into the unmodified architecture, and every
    parameter trains again (no half-frozen state is carried over).

    Example:
        >>> conv = nn.Sequential(nn.Conv2d(2, 4, 3))
        >>> _ = apply_svd(conv, train=("sigma",))
        >>> plain = fold(conv)
        >>> type(plain[0]).__name__, all(p.requires_grad for p in plain.parameters()), bool(svd_modules(conv))
        ('Conv2d', True, True)
    """
    import copy

    if not svd_modules(model):
        raise SmallmedError("fold: the model has no SVD parametrizations; call apply_svd first.")
    if not inplace:
        model = copy.deepcopy(model)
    for _, m, _ in svd_modules(model):
        _own_class(m)
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        m.__dict__.pop("forward", None)  # back to the class's own forward
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _own_class(module: nn.Module) -> None:
    """Give a parametrised module a class of its own before removing its parametrization.

    ``copy.deepcopy`` of a parametrised model shares the generated ``ParametrizedConv2d`` class
    between original and copy, and ``remove_parametrizations`` deletes the ``weight`` property
    from that class: folding a copy would break the original. A private class avoids it.
    """
    cls = module.__class__
    namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)
