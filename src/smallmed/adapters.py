"""One small adapter per task on a shared backbone: save and load only what a method trains.

An adapter is a safetensors file holding the tensors a fine-tuning method changes (singular
values, LoRA factors, norm affine parameters and statistics, biases, the head), the method and
its settings, and a fingerprint of the base weights it was trained from. Loading it onto another
base is refused in one sentence; loading it onto the right base gives the fine-tuned model's
outputs exactly.

Example:
    >>> base = create_model("resnet18", 2, in_chans=1, weights="source.safetensors")   # doctest: +SKIP
    >>> model = load_adapter(base, "runs/r18-svd/adapter.safetensors")                 # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import cast

import torch
from torch import nn

from .errors import SmallmedError
from .methods import apply_method, get_method
from .roles import ModelInfo, head_name, model_info, parameter_roles, unwrap

FORMAT = "smallmed-adapter/1"


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names, shapes and values of every tensor outside the head (16 hex digits).

    The head is left out: a base with another class count (ImageNet's 1000) is the same backbone.
    """
    model = unwrap(model)
    head = head_name(model) + "."
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if k.startswith(head) or k.endswith("num_batches_tracked"):
            continue
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _roles_of(method: str, settings: dict) -> set[str]:
    roles = get_method(method).trained_roles(settings)
    if roles is None:
        raise SmallmedError(
            f"method={method!r} has no adapter (it trains every weight); save the whole model, "
            "e.g. the run's folded.pt or best.pt."
        )
    return roles


def adapter_state(model: nn.Module, method: str, settings: dict | None = None) -> dict[str, torch.Tensor]:
    """The tensors ``method`` changes: parameters of its roles, plus norm statistics where they kept updating."""
    model = unwrap(model)
    settings = settings or {}
    roles = _roles_of(method, settings)
    found = parameter_roles(model)
    state = model.state_dict()
    keep = {k for k, r in found.items() if r in roles}
    if not settings.get("freeze_bn_stats", True):
        from .roles import NORM_TYPES

        for name, m in model.named_modules():
            if isinstance(m, NORM_TYPES):
                keep |= {f"{name}.{b}" for b, _ in m.named_buffers(recurse=False)}
    return {k: state[k].detach().cpu().contiguous() for k in sorted(keep) if k in state}


def save_adapter(
    model: nn.Module,
    path: str | Path,
    *,
    method: str | None = None,
    settings: dict | None = None,
    base_hash: str | None = None,
) -> Path:
    """Write ``model``'s adapter to ``path`` (atomic). Returns the path.

    ``method``, ``settings`` and ``base_hash`` default to what :func:`smallmed.fit` recorded on the model
    (its :class:`smallmed.roles.ModelInfo`).
    """
    model = unwrap(model)
    info = model_info(model, create=False) or ModelInfo()
    method = method or info.method
    settings = settings if settings is not None else info.method_settings
    base_hash = base_hash or info.base_hash
    if not method or not base_hash:
        raise SmallmedError(
            "save_adapter: the model does not record its method and base weights; pass method= and "
            "base_hash=base_fingerprint(base_model)."
        )
    tensors = adapter_state(model, method, settings)
    head = head_name(model)
    meta = {
        "format": FORMAT,
        "method": method,
        "settings": json.dumps(settings, sort_keys=True),
        "base_hash": base_hash,
        "head": head,
    }
    from safetensors.torch import save

    from .io import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of an adapter file (one sentence on a file that is not one)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise SmallmedError(f"{path}: adapter file not found.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise SmallmedError(f"{path}: not a readable safetensors file ({e}).") from None
    if meta.get("format") != FORMAT:
        raise SmallmedError(
            f"{path}: not a smallmed adapter (metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r})."
        )
    meta["settings"] = json.loads(meta.get("settings") or "{}")
    return tensors, meta


def load_adapter(base_model: nn.Module, path: str | Path) -> nn.Module:
    """Apply the adapter at ``path`` to ``base_model`` (in place) and return it, ready for inference.

    The base must be the weights the adapter was trained from (checked by fingerprint); a head of
    another size is replaced by the adapter's.
    """
    from .models import reset_classifier

    tensors, meta = read_adapter(path)
    got = base_fingerprint(base_model)
    if got != meta["base_hash"]:
        raise SmallmedError(
            f"{path}: trained on base weights {meta['base_hash']}, but this model's weights are {got}; "
            "load it onto the backbone it was trained from."
        )
    head = head_name(base_model)
    w = tensors.get(f"{head}.weight")
    if w is not None:
        # the head's weight is a tensor; torch's stub reads any module attribute as Tensor | Module
        current = cast(torch.Tensor, unwrap(base_model).get_submodule(head).weight)
        if tuple(current.shape) != tuple(w.shape):
            reset_classifier(base_model, int(w.shape[0]))
    s = meta["settings"]
    apply_method(base_model, meta["method"], s)
    extra = [k for k in tensors if k not in base_model.state_dict()]
    if extra:
        raise SmallmedError(f"{path}: tensors {', '.join(extra[:4])} have no place in this model.")
    # every tensor the method trains must come from the file: the rest of the model is the checked base
    lacking = sorted(set(adapter_state(base_model, meta["method"], s)) - set(tensors))
    if lacking:
        raise SmallmedError(
            f"{path}: the adapter lacks {', '.join(lacking[:4])}, which method {meta['method']!r} trains."
        )
    base_model.load_state_dict(tensors, strict=False)  # partial by design: exactly the method's tensors
    info = model_info(base_model)
    info.method, info.method_settings, info.base_hash = meta["method"], s, meta["base_hash"]
    return base_model.eval()


def method_settings(cfg) -> dict:
    """What :func:`load_adapter` needs to re-apply a run's method to a base model."""
    return {"freeze_bn_stats": bool(cfg.freeze_bn_stats), **get_method(cfg.method).settings(cfg)}


__all__ = ["adapter_state", "base_fingerprint", "load_adapter", "method_settings", "read_adapter", "save_adapter"]
