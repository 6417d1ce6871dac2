"""Checkpoints: ``torch.save`` through an atomic file, and safe loading (``weights_only=True``).

The atomic writers and the run lock live in the leaf module :mod:`smallmed.io`; they are
re-exported here for code written against this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import SmallmedError
from ..io import (  # noqa: F401  (re-exported)
    RunLock,
    _atomic,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_file,
    atomic_write_json,
    atomic_write_text,
    check_out_dir,
)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a partial file."""
    _atomic(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path) -> dict:
    """Read a smallmed checkpoint safely (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise SmallmedError(f"{path}: checkpoint not found.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SmallmedError(f"{path}: not a readable checkpoint ({load_failure(e)}).") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise SmallmedError(f"{path}: not a smallmed checkpoint (no 'model' entry).")
    return ckpt


def load_failure(e: Exception) -> str:
    """torch.load's reason in a few words, without its advice to load unsafely."""
    text = str(e)
    if "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text:
        return "it holds Python objects that a safe load refuses; smallmed never unpickles arbitrary code"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:200]
