"""Parameters, FLOPs and measured speed of a model, always against a baseline in the same process."""

from __future__ import annotations

import time

import torch
from torch import nn

from ..errors import SmallmedError


def _images_per_s(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        if x.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
    return len(x) / (time.perf_counter() - t)


def cost(model: nn.Module, input_size: tuple[int, int, int], *, baseline: nn.Module | None = None, batch: int = 32,
         warmup: int = 3, repeats: int = 15) -> dict:
    """Cost of ``model`` on inputs of ``input_size`` (C, H, W).

    Returns params (total, trainable), FLOPs of one image from ``torch.utils.flop_counter``
    (FLOPs = 2 x multiply-accumulates; ``gmacs`` is FLOPs / 2e9) and eval-mode throughput in
    images/s (median of ``repeats`` after ``warmup``). With ``baseline`` (e.g. the plain-conv
    model), both are timed interleaved in this process and ``speed_ratio`` = model / baseline.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if len(input_size) != 3:
        raise SmallmedError(f"input_size={input_size}: expected (channels, height, width).")
    dev = next(model.parameters()).device
    x = torch.randn(batch, *input_size, device=dev)
    models = {"model": model.eval()}
    if baseline is not None:
        models["baseline"] = baseline.eval().to(dev)
    out = {}
    for k, m in models.items():
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(x[:1])
        out[k] = {"params": sum(p.numel() for p in m.parameters()),
                  "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad),
                  "flops": int(fc.get_total_flops()), "gmacs": fc.get_total_flops() / 2e9, "times": []}
    for _ in range(warmup):
        for m in models.values():
            _images_per_s(m, x)
    for _ in range(repeats):  # interleaved: machine noise hits both alike
        for k, m in models.items():
            out[k]["times"].append(_images_per_s(m, x))
    for v in out.values():
        t = sorted(v.pop("times"))
        v["images_per_s"] = t[len(t) // 2]
    res = out["model"]
    if baseline is not None:
        b = out["baseline"]
        res["baseline"] = b
        res["speed_ratio"] = res["images_per_s"] / b["images_per_s"]
        res["param_ratio"] = res["params"] / b["params"]
    return res
