"""LoRA on convolutions (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models"), through
Hugging Face PEFT.

Every conv with a kernel larger than 1x1 gets a rank-``r`` update ``B @ A`` (``A``: a ``k x k`` conv
to ``r`` channels, ``B``: a 1x1 conv back), initialised so the model starts exactly as pretrained;
only the factors (and whatever else the method sets, e.g. the head) train. PEFT's
``inject_adapter_in_model`` adds the layers in place, so module names stay the model's own
(``layer1.0.conv1.base_layer.weight``, ``layer1.0.conv1.lora_A.default.weight``).

``peft`` is an optional extra: ``pip install 'smallmed[peft]'``.
"""

from __future__ import annotations

import copy
from typing import cast

from torch import nn

from ..errors import SmallmedError


def _peft():
    try:
        import peft
    except ImportError:
        raise SmallmedError(
            "method='lora' uses Hugging Face PEFT: pip install 'smallmed[peft]' (or pip install peft)."
        ) from None
    return peft


def lora_targets(model: nn.Module) -> list[str]:
    """Names of the convs LoRA adapts: every ``nn.Conv2d`` with a kernel larger than 1x1."""
    return [n for n, m in model.named_modules() if type(m) is nn.Conv2d and m.kernel_size != (1, 1)]


def apply_lora(model: nn.Module, rank: int = 4, alpha: float | None = None, *, dora: bool = False) -> dict:
    """Inject LoRA into every k > 1 conv of ``model`` (in place); returns a summary.

    ``alpha`` defaults to ``rank`` (a scale of 1). ``dora``: DoRA (Liu et al. 2024), PEFT's weight-decomposed
    variant with a learned magnitude per output channel (its magnitude vectors carry the same role). Only the LoRA factors are left trainable;
    the factors carry ``smallmed_role = "lora"`` for :mod:`smallmed.roles`.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        >>> apply_lora(m, rank=2)["trainable"]  # (1*9*2 + 2*8) + (8*9*2 + 2*8): the factors only
        194
    """
    peft = _peft()
    targets = lora_targets(model)
    if not targets:
        raise SmallmedError("method='lora': the model has no conv with a kernel larger than 1x1 to adapt.")
    cfg = peft.LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha if alpha is not None else rank),
        lora_dropout=0.0,
        target_modules=targets,
        bias="none",
        use_dora=bool(dora),
    )
    peft.inject_adapter_in_model(cfg, model)
    for m in lora_modules(model):
        for part in (m.lora_A, m.lora_B, getattr(m, "lora_magnitude_vector", {})):
            # PEFT's per-adapter nn.ModuleDicts (the {} default: no DoRA magnitudes)
            for sub in cast("nn.ModuleDict | dict[str, nn.Module]", part).values():
                # a plain str attribute, which Module.__setattr__'s annotation (Tensor | Module) leaves out
                sub.smallmed_role = "lora"  # type: ignore[assignment]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "rank": int(rank),
        "dora": bool(dora),
        "alpha": float(alpha if alpha is not None else rank),
        "layers": len(targets),
        "trainable": trainable,
    }


def lora_modules(model: nn.Module) -> list[nn.Module]:
    """The PEFT LoRA layers inside ``model``."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def merge_lora(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Add every LoRA update into its conv's weight and put the plain conv back (identical outputs).

    Returns a merged copy unless ``inplace``; every parameter of the result trains again.
    """
    if not lora_modules(model):
        raise SmallmedError("merge_lora: the model has no LoRA layers; call apply_lora first.")
    if not inplace:
        model = copy.deepcopy(model)
    layers = {id(m) for m in lora_modules(model)}
    for name, m in list(model.named_modules()):
        if id(m) in layers:
            m.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, m.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model
