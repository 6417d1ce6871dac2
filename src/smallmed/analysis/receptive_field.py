"""Receptive fields of any PyTorch model, from its real forward pass (seed 001, SPEC.md section 3).

The arithmetic is Araujo, Norris and Sim (Distill 2019), per axis. From the input (r = 1, S = 1,
P = 0), a layer with kernel k, dilation d (effective kernel k' = d(k - 1) + 1), stride s and
padding p gives::

    r_l = r_{l-1} + (k' - 1) * S_{l-1}     receptive-field size
    P_l = P_{l-1} + p * S_{l-1}            effective padding
    S_l = S_{l-1} * s                      effective stride
    [u0, v0] = [-P_l, -P_l + r_l - 1]      input pixels seen by the first output unit

Sequential-only tools get skip and concat models wrong. Here every torch function call of one
forward pass is intercepted (``TorchFunctionMode``), so branches are followed as they really run:
convolutions and pools (also functional ones and explicit ``F.pad``) update the field, element-wise
ops with several inputs (ResNet additions) and concatenations (DenseNet, Inception) merge their
inputs' fields as the union of the regions they see; a merge whose inputs' regions have different
centres (or strides) is flagged as misaligned. Global/adaptive pooling ends the spatial part.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import cast

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import SmallmedError

Pair = tuple[float, float]


def _hw(values: Iterable[float]) -> Pair:
    """``tuple(values)`` for a (height, width) pair built by a generator (whose length the type checker cannot see)."""
    return cast(Pair, tuple(values))


@dataclass
class RF:
    """Receptive field of one tensor, per axis (height, width)."""

    r: Pair = (1, 1)
    S: Pair = (1, 1)
    P: Pair = (0, 0)
    aligned: bool = True

    def layer(self, k, s, p, d) -> RF:
        keff = tuple(d[i] * (k[i] - 1) + 1 for i in range(2))
        return RF(
            r=_hw(self.r[i] + (keff[i] - 1) * self.S[i] for i in range(2)),
            S=_hw(self.S[i] * s[i] for i in range(2)),
            P=_hw(self.P[i] + p[i] * self.S[i] for i in range(2)),
            aligned=self.aligned,
        )

    @property
    def u0(self) -> Pair:
        return _hw(-x for x in self.P)

    @property
    def v0(self) -> Pair:
        return _hw(-self.P[i] + self.r[i] - 1 for i in range(2))

    def center(self) -> Pair:
        return _hw(-self.P[i] + (self.r[i] - 1) / 2 for i in range(2))


def merge(fields: list[RF]) -> tuple[RF, bool]:
    """Union of the regions seen by unit 0 of each input; (field, aligned)."""
    u0 = tuple(min(f.u0[i] for f in fields) for i in range(2))
    v0 = tuple(max(f.v0[i] for f in fields) for i in range(2))
    aligned = (
        len({f.center() for f in fields}) == 1 and len({f.S for f in fields}) == 1 and all(f.aligned for f in fields)
    )
    S = _hw(max(f.S[i] for f in fields) for i in range(2))
    return RF(r=_hw(v0[i] - u0[i] + 1 for i in range(2)), S=S, P=_hw(-x for x in u0), aligned=aligned), aligned


@dataclass
class RFRow:
    """One layer on the way to the output. Values are (height, width) pairs; ``str`` collapses equal pairs."""

    name: str
    kind: str
    k: Pair
    s: Pair
    p: Pair
    d: Pair
    r: Pair
    S: Pair
    P: Pair
    u0: Pair
    v0: Pair
    out: tuple[int, int]
    aligned: bool = True
    inputs: int = 1
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _pair(v, default=None) -> Pair:
    if v is None:
        v = default
    if isinstance(v, int | float):
        return (v, v)
    v = tuple(v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _arg(args, kwargs, i, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


_MERGE = {
    "add",
    "__add__",
    "__radd__",
    "add_",
    "__iadd__",
    "sub",
    "__sub__",
    "mul",
    "__mul__",
    "mul_",
    "__imul__",
    "cat",
    "concat",
    "concatenate",
    "stack",
    "maximum",
    "minimum",
    "where",
    "div",
    "__truediv__",
}


class _Tracer(TorchFunctionMode):
    def __init__(self, names: list[str]):
        super().__init__()
        self.names = names  # stack of module names, kept by forward hooks
        self.fields: dict[int, RF] = {}
        self.keep: list[torch.Tensor] = []  # ids stay unique while the tensors live
        self.rows: list[RFRow] = []

    def _get(self, t):
        return self.fields.get(id(t)) if isinstance(t, torch.Tensor) else None

    def _set(self, t, f: RF | None) -> None:
        if isinstance(t, torch.Tensor) and f is not None and t.dim() == 4:
            self.fields[id(t)] = f
            self.keep.append(t)

    def _row(self, kind, f: RF, out, k=(1, 1), s=(1, 1), p=(0, 0), d=(1, 1), inputs=1, aligned=True):
        name = self.names[-1] if self.names else ""
        self.rows.append(
            RFRow(
                name or "(model)", kind, k, s, p, d, f.r, f.S, f.P, f.u0, f.v0, tuple(out.shape[-2:]), aligned, inputs
            )
        )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        fname = getattr(func, "__name__", "")
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if fname in ("cat", "concat", "concatenate", "stack") and args and isinstance(args[0], list | tuple):
            tensors = [t for t in args[0] if isinstance(t, torch.Tensor)]
        ins = [f for f in (self._get(t) for t in tensors) if f is not None]
        res = out[0] if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor) else out
        if not ins or not isinstance(res, torch.Tensor):
            return out
        x = ins[0]
        if "adaptive" in fname:
            if tuple(res.shape[-2:]) != tuple(tensors[0].shape[-2:]):
                return out  # global / adaptive pooling: the spatial part ends here
            f = x
        elif fname in ("conv2d",):
            w = _arg(args, kwargs, 1, "weight")
            k = tuple(w.shape[-2:])
            s = _pair(_arg(args, kwargs, 3, "stride", 1))
            pad = _arg(args, kwargs, 4, "padding", 0)
            d = _pair(_arg(args, kwargs, 5, "dilation", 1))
            if isinstance(pad, str):
                pad = (0, 0) if pad == "valid" else tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
            p = _pair(pad)
            f = x.layer(k, s, p, d)
            self._row("conv", f, res, k, s, p, d)
        elif "max_pool2d" in fname or "avg_pool2d" in fname or "lp_pool2d" in fname:
            k = _pair(_arg(args, kwargs, 1, "kernel_size"))
            s = _pair(_arg(args, kwargs, 2, "stride", None) or k)
            p = _pair(_arg(args, kwargs, 3, "padding", 0)) if "lp_pool" not in fname else (0, 0)
            d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if "max_pool" in fname else (1, 1)
            f = x.layer(k, s, p, d)
            self._row("maxpool" if "max" in fname else "pool", f, res, k, s, p, d)
        elif fname == "pad":
            pad = _arg(args, kwargs, 1, "pad")
            left = (pad[2] if len(pad) >= 4 else 0, pad[0])  # (top, left)
            f = RF(r=x.r, S=x.S, P=tuple(x.P[i] + left[i] * x.S[i] for i in range(2)), aligned=x.aligned)
        elif fname in _MERGE and len(ins) > 1:
            f, aligned = merge(ins)
            self._row(
                "cat" if fname in ("cat", "concat", "concatenate", "stack") else "merge",
                f,
                res,
                inputs=len(ins),
                aligned=aligned,
            )
        elif fname in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"):
            scale = tuple(res.shape[-2:][i] / tensors[0].shape[-2:][i] for i in range(2))
            f = RF(r=x.r, S=tuple(x.S[i] / scale[i] for i in range(2)), P=x.P, aligned=x.aligned)
            self._row("upsample", f, res, s=tuple(1 / v for v in scale))
        else:
            f = x  # element-wise, normalisation, activation, dropout, views: the field passes through
        if res.dim() == 4:
            self._set(res, f)
        return out


def receptive_field(model: nn.Module, input_size: tuple[int, int, int] | int = (3, 224, 224)) -> list[RFRow]:
    """Receptive field after every conv/pool (and merge) of ``model``, in forward order.

    Args:
        model: any ``nn.Module`` taking one image batch [N, C, H, W].
        input_size: (channels, height, width), or one int for a square 3-channel input.

    Returns:
        One :class:`RFRow` per layer (``name``, ``kind``, ``k``, ``s``, ``p``, ``d``, ``r``, ``S``,
        ``P``, ``u0``, ``v0``, output size, ``aligned``); the last is the last spatial layer.

    Example:
        >>> from torchvision.models import alexnet
        >>> receptive_field(alexnet().features, (3, 224, 224))[-1].r
        (195, 195)
    """
    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
    if len(input_size) != 3 or min(input_size) < 1:
        raise SmallmedError(f"input_size={input_size}: expected (channels, height, width).")
    names: list[str] = []
    hooks = []
    for name, m in model.named_modules():
        hooks.append(m.register_forward_pre_hook(lambda mod, inp, name=name: names.append(name)))
        hooks.append(m.register_forward_hook(lambda mod, inp, out: names.pop() and None))  # None: keep the output
    tracer = _Tracer(names)
    x = torch.zeros(1, *input_size)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = x.to(dev)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tracer:
            tracer._set(x, RF())
            model(x)
    except RuntimeError as e:
        raise SmallmedError(
            f"input size {tuple(input_size)} does not fit {type(model).__name__}: {str(e).splitlines()[0]}"
        ) from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rows = tracer.rows
    if not any(r.kind in ("conv", "pool", "maxpool") for r in rows):
        raise SmallmedError(
            f"{type(model).__name__} has no conv or pooling layer on its forward path: no receptive field to compute."
        )
    return _name_functional(rows)


def _name_functional(rows: list[RFRow]) -> list[RFRow]:
    """Rows made by functional calls inside one module share its name: number them."""
    seen: dict[str, int] = {}
    for r in rows:
        seen[r.name] = seen.get(r.name, 0) + 1
    count: dict[str, int] = {}
    for r in rows:
        if seen[r.name] > 1:
            count[r.name] = count.get(r.name, 0) + 1
            r.name = f"{r.name}[{r.kind}#{count[r.name]}]"
    return rows


def _fmt(v) -> str:
    if isinstance(v, tuple) and len(v) == 2:
        a, b = (int(x) if float(x).is_integer() else round(x, 3) for x in v)
        return str(a) if a == b else f"{a}x{b}"
    return str(v)


def format_table(rows: list[RFRow]) -> str:
    """The rows as an aligned text table (also valid Markdown)."""
    head = ["layer", "kind", "k", "s", "p", "d", "r", "S", "P", "u0", "v0", "out", "aligned"]
    body = [
        [
            r.name,
            r.kind,
            *(_fmt(getattr(r, c)) for c in ("k", "s", "p", "d", "r", "S", "P", "u0", "v0", "out")),
            "yes" if r.aligned else "NO",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def final(rows: list[RFRow]) -> RFRow:
    """The last row (the model's last spatial layer)."""
    return rows[-1]


def _probe_copy(model: nn.Module) -> nn.Module:
    """A float64 eval copy with positive weights, max pools as average pools and BN as identity."""
    import copy

    m = copy.deepcopy(model).eval()
    for _, mod in list(m.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(mod, cname, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
            elif isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(mod, cname, nn.Identity())
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.full_like(p, 1.0 / max(1, p[0].numel() if p.dim() > 1 else 1)))
    return m.double()


def gradient_extent(model: nn.Module, input_size: tuple[int, int, int], unit: tuple[int, int] | None = None):
    """Brute-force check: (rows, cols) of input pixels with non-zero gradient for one output unit.

    Every weight is made positive, max pools become average pools (a max passes gradient to one
    pixel only) and BatchNorm is the identity, so the gradient is non-zero exactly on the receptive
    field (clipped to the image). ``unit`` defaults to the central output unit. Works on a copy.
    """
    m = _probe_copy(model)
    x = torch.rand(1, *input_size, dtype=torch.float64) + 0.5
    x.requires_grad_(True)
    y = m(x)
    if unit is None:
        unit = (y.shape[-2] // 2, y.shape[-1] // 2)
    y[0, :, unit[0], unit[1]].sum().backward()
    assert x.grad is not None  # filled by the backward pass just above (x requires grad)
    nz = x.grad[0].abs().sum(0) > 0
    rows = torch.nonzero(nz.any(1)).flatten()
    cols = torch.nonzero(nz.any(0)).flatten()
    return (int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max())), unit, tuple(y.shape[-2:])


def expected_extent(row: RFRow, unit: tuple[int, int], size: tuple[int, int]):
    """The region [u, v] per axis seen by ``unit`` according to ``row``, clipped to the image."""
    out = []
    for i in range(2):
        u = row.u0[i] + unit[i] * row.S[i]
        v = u + row.r[i] - 1
        out.append((max(0, math.ceil(u)), min(size[i] - 1, math.floor(v))))
    return tuple(out)


def gradient_extents(model: nn.Module, input_size: tuple[int, int, int], names: list[str]) -> dict:
    """:func:`gradient_extent` for the output of every named module, from one forward pass.

    Returns ``{name: (rows, cols, unit, out_hw)}`` for the central unit of each module's output.
    """
    m = _probe_copy(model)
    mods = dict(m.named_modules())
    outs: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_hook(lambda mod, i, o, n=n: outs.setdefault(n, o)) for n in names if n in mods]
    x = (torch.rand(1, *input_size, dtype=torch.float64) + 0.5).requires_grad_(True)
    try:
        m(x)
    finally:
        for h in hooks:
            h.remove()
    res = {}
    for n, y in outs.items():
        if not isinstance(y, torch.Tensor) or y.dim() != 4:
            continue
        unit = (y.shape[-2] // 2, y.shape[-1] // 2)
        (g,) = torch.autograd.grad(y[0, :, unit[0], unit[1]].sum(), x, retain_graph=True)
        nz = g[0].abs().sum(0) > 0
        rows, cols = torch.nonzero(nz.any(1)).flatten(), torch.nonzero(nz.any(0)).flatten()
        res[n] = ((int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max())), unit, tuple(y.shape[-2:]))
    return res
