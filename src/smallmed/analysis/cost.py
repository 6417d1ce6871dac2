"""Parameters, FLOPs and measured speed of a model, always against a baseline in the same process."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..errors import SmallmedError


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _images_per_s(model: nn.Module, x: torch.Tensor) -> float:
    """Images/s of one eval forward pass of ``x`` (CUDA synchronised before and after)."""
    with torch.no_grad():
        _sync(x)
        t = time.perf_counter()
        model(x)
        _sync(x)
    return len(x) / (time.perf_counter() - t)


def flops_per_image(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one image's forward pass (torch.utils.flop_counter; FLOPs = 2 x multiply-accumulates).

    Example:
        >>> flops_per_image(nn.Conv2d(1, 2, 3), torch.zeros(4, 1, 5, 5))   # 2 * 2*9 MACs * 9 positions
        324
    """
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(example[:1])
    return int(fc.get_total_flops())


def throughput(model: nn.Module, example: torch.Tensor, *, warmup: int = 3, repeats: int = 10) -> float:
    """Images per second of eval-mode forward passes: median of ``repeats`` after ``warmup``."""
    model.eval()
    for _ in range(warmup):
        _images_per_s(model, example)
    times = sorted(_images_per_s(model, example) for _ in range(repeats))
    return times[len(times) // 2]


def cost(
    model: nn.Module,
    input_size: tuple[int, int, int],
    *,
    baseline: nn.Module | None = None,
    batch: int = 32,
    warmup: int = 3,
    repeats: int = 15,
) -> dict:
    """Cost of ``model`` on inputs of ``input_size`` (C, H, W).

    Returns params (total, trainable), FLOPs of one image from ``torch.utils.flop_counter``
    (FLOPs = 2 x multiply-accumulates; ``gmacs`` is FLOPs / 2e9) and eval-mode throughput in
    images/s (median of ``repeats`` after ``warmup``). With ``baseline`` (e.g. the plain-conv
    model), both are timed interleaved in this process and ``speed_ratio`` = model / baseline.
    """
    if len(input_size) != 3:
        raise SmallmedError(f"input_size={input_size}: expected (channels, height, width).")
    if batch < 1 or warmup < 0 or repeats < 1:
        raise SmallmedError(f"batch={batch}, warmup={warmup}, repeats={repeats}: expected batch and repeats of at "
                            "least 1 and warmup of at least 0.")  # fmt: skip
    check_input_size(model, input_size[0], input_size[1], type(model).__name__)
    dev = next(model.parameters()).device
    x = torch.randn(batch, *input_size, device=dev)
    models = {"model": model.eval()}
    if baseline is not None:
        models["baseline"] = baseline.eval().to(dev)
    out: dict[str, dict[str, Any]] = {}
    for k, m in models.items():
        flops = flops_per_image(m, x)
        out[k] = {
            "params": sum(p.numel() for p in m.parameters()),
            "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad),
            "flops": flops,
            "gmacs": flops / 2e9,
            "times": [],
        }
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


def check_input_size(model: nn.Module, in_chans: int, size: int, name: str) -> None:
    """One forward pass of a blank ``size`` px image: a model whose layers shrink it to nothing is refused in one
    sentence naming the smallest side that works (found by doubling), instead of a shape error inside torch."""

    def fits(side: int) -> bool:
        try:
            with torch.no_grad():
                model(torch.zeros(1, in_chans, side, side))
            return True
        except RuntimeError as e:
            if "size" in str(e).lower() or "kernel" in str(e).lower():
                return False
            raise

    was = model.training
    model.eval()
    try:
        if fits(size):
            return
        side = size
        while side < 1024 and not fits(side):
            side *= 2
        raise SmallmedError(f"{name} cannot take {size} px images: its layers shrink them to nothing; "
                            f"use at least {side} px (--image-size, or --input for cost).")  # fmt: skip
    finally:
        model.train(was)
