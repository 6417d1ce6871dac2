"""Weight loading and the small adaptations every backbone needs: stems, heads, key checks.

Weights are only ever read from local files, safely (safetensors, or ``torch.load`` with
``weights_only=True``). Loading checks every key and shape and reports what it did instead of
silently skipping: a classifier of another class count is replaced, an RGB stem is summed into
a grayscale one (timm's ``adapt_input_conv``), anything else that does not fit is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ..errors import SmallmedError

log = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (weights only).

    Accepts plain state dicts, smallmed checkpoints (``{"model": ...}``), ``{"state_dict": ...}``
    wrappers, and DDP's ``module.`` prefixes.
    """
    path = Path(path)
    if not path.exists():
        raise SmallmedError(f"{path}: weights file not found.")
    state: object  # whatever the file holds (a wrapper, a state dict, anything): checked below
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:
            raise SmallmedError(f"{path}: not a readable safetensors file ({e}).") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            from ..io import load_failure

            raise SmallmedError(f"{path}: not a readable weights file ({load_failure(e)}).") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SmallmedError(f"{path}: expected a state dict of tensors, found {type(state).__name__}.")
    if any(".parametrizations." in k for k in state):
        hint = path.with_name("folded.pt")
        raise SmallmedError(f"{path}: holds SVD-parametrised weights; load the plain {hint} of the same run instead.")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


@dataclass
class LoadReport:
    """What :func:`load_weights` did, key by key."""

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    head_replaced: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    norm_skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.adapted:
            parts.append(f"adapted input channels of {', '.join(self.adapted)}")
        if self.head_replaced:
            parts.append(f"new classifier ({', '.join(self.head_replaced)} freshly initialised)")
        if self.missing:
            parts.append(f"freshly initialised (not in file): {_short(self.missing)}")
        if self.mismatched:
            parts.append(f"freshly initialised (shape differs): {_short(self.mismatched)}")
        if self.unexpected:
            parts.append(f"ignored (not in model): {_short(self.unexpected)}")
        if self.norm_skipped:
            parts.append(
                f"BatchNorm freshly initialised (the file's BN sat before the ReLU): {_short(self.norm_skipped)}"
            )
        return "; ".join(parts)


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def head_name(model: nn.Module) -> str:
    """Dotted name of the head (see :func:`smallmed.roles.head_name`)."""
    from ..roles import head_name as _head_name

    return _head_name(model)


def reset_classifier(model: nn.Module, num_classes: int) -> None:
    """Replace the classifier with a fresh Linear of ``num_classes`` outputs."""
    name = head_name(model)
    parent, attr = _parent(model, name)
    old = getattr(parent, attr)
    if not isinstance(old, nn.Linear):
        raise SmallmedError(f"Classifier '{name}' is {type(old).__name__}; expected nn.Linear.")
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, attr = name.split(".")
    parent = model.get_submodule(".".join(path)) if path else model
    return parent, attr


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB stem -> ``in_chans`` stem: sum for grayscale, repeat and rescale for more channels."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def checkpoint_norm(path: str | Path) -> str | None:
    """The ``norm`` a smallmed checkpoint was trained with (None for other files)."""
    path = Path(path)
    if path.suffix == ".safetensors" or not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None  # read_state_dict reports unreadable files
    cfg = ckpt.get("config") if isinstance(ckpt, dict) else None
    return cfg.get("norm") if isinstance(cfg, dict) else None


def load_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor] | str | Path,
    *,
    strict: bool = True,
    source: str | None = None,
    skip_norm: bool = False,
) -> LoadReport:
    """Load ``state`` into ``model`` key by key and return what happened.

    The classifier is replaced when its shape differs (another class count); a stem conv whose
    only difference is the input-channel count is adapted. With ``strict`` (default) missing or
    unexpected keys outside the classifier are an error; with ``strict=False`` they are reported
    (a VGG with batch norm loading plain VGG weights, say).

    Example:
        >>> report = load_weights(model, "source_run/best.pt")   # doctest: +SKIP
        >>> print(report)                                         # doctest: +SKIP
        loaded 120 tensors; new classifier (fc.weight, fc.bias freshly initialised)
    """
    if not isinstance(state, dict):
        source = source or str(state)
        state = read_state_dict(state)
    source = source or "state dict"
    if hasattr(model, "smallmed_remap_state"):
        # a model's own renaming of checkpoint keys (vgg), found by name: Module.__getattr__ types it Tensor | Module
        remap = cast("Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]", model.smallmed_remap_state)
        state = remap(state)
    head = head_name(model) + "."
    own = model.state_dict()
    report = LoadReport()
    merged = {}
    # as timm's adapt_input_conv: only the stem (the first conv weight) may differ in input channels
    stem = next((k for k, v in own.items() if v.ndim == 4), None)
    if skip_norm:
        bn = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
        report.norm_skipped = [k for k in own if k.startswith(bn) and not k.endswith("num_batches_tracked")]
        state = {k: v for k, v in state.items() if not k.startswith(bn)}
        own = {k: v for k, v in own.items() if not k.startswith(bn)}
    for k, v in state.items():
        if k not in own:
            report.unexpected.append(k)
            continue
        target = own[k]
        if v.shape == target.shape:
            merged[k] = v
            report.loaded.append(k)
        elif k.startswith(head):
            report.head_replaced.append(k)
        elif (
            k == stem
            and v.ndim == 4
            and target.ndim == 4
            and v.shape[0] == target.shape[0]
            and v.shape[2:] == target.shape[2:]
        ):
            merged[k] = adapt_input_conv(v, target.shape[1]).to(target.dtype)
            report.adapted.append(k)
            report.loaded.append(k)
        elif not strict:
            report.mismatched.append(k)
        else:
            raise SmallmedError(
                f"{source}: '{k}' has shape {tuple(v.shape)} but the model expects {tuple(target.shape)}; "
                "the weights do not fit this model (check --model, --stem, --norm and the input size)."
            )
    report.missing = [
        k for k in own if k not in state and not k.startswith(head) and not k.endswith("num_batches_tracked")
    ]
    if report.head_replaced:
        # a replaced head keeps its fresh init; if the file has no head at all, that is fine too
        pass
    if strict and (report.missing or report.unexpected):
        problems = []
        if report.missing:
            problems.append(f"missing {_short(report.missing)}")
        if report.unexpected:
            problems.append(f"unexpected {_short(report.unexpected)}")
        raise SmallmedError(f"{source}: keys do not match the model ({'; '.join(problems)}).")
    model.load_state_dict(merged, strict=False)
    log.info("weights from %s: %s", source, report)
    return report
