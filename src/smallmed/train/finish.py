"""What every run does with its best model once training ends, whatever the method.

The method reports its own entries (:meth:`smallmed.methods.Method.report`) and merges into a plain
model (``folded.pt``, loadable without smallmed's parametrizations); a run fine-tuned from shared
base weights also writes its adapter, and the bytes a task costs to keep are counted.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..adapters import save_adapter
from ..io import atomic_save
from ..methods import get_method
from ..roles import unwrap


def finish_run(model: nn.Module, *, cfg, built, run_dir: Path, example: torch.Tensor) -> dict:
    """Called once by :func:`smallmed.fit` on the best model; returns what goes into ``metrics.json``."""
    method = get_method(cfg.method)
    model = unwrap(model)
    device = next(model.parameters()).device
    model = model.cpu().eval()
    try:
        out = dict(method.report(model, built=built, run_dir=run_dir, example=example))
        merged = method.merge(model)
        if merged is not None:
            atomic_save(
                {"model": merged.state_dict(), "config": cfg.to_dict(), "folded_from": cfg.method},
                run_dir / "folded.pt",
            )
        out["stored_bytes"] = _stored_bytes(model, cfg, built, run_dir)
    finally:
        model.to(device)
    return out


def _stored_bytes(model: nn.Module, cfg, built, run_dir: Path) -> int:
    """Bytes a task costs to keep: its adapter file (written here) beside a shared base, or the whole model."""
    method = get_method(cfg.method)
    if built.base_hash and method.trained_roles(method.settings(cfg)) is not None:
        return save_adapter(model, run_dir / "adapter.safetensors").stat().st_size
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))
