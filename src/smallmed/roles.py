"""What each parameter of a model *is*: the one place that names roles and sets ``requires_grad`` by them.

Roles: ``head`` (the classifier or output layer), ``sigma`` (singular values of an SVD
parametrisation), ``factor`` (factors of a factorized conv), ``lora`` (LoRA factors), ``bn`` (the affine parameters of any
normalisation layer: BatchNorm, GroupNorm, LayerNorm, InstanceNorm), ``bias`` and ``weight``; a
method's own module may declare another (``smallmed_role = "ssf"`` on the module that holds the tensors).

Roles are found by module type and by the parametrizations themselves (a parametrization class
declares ``role = "sigma"``), never by name substrings. The head is found as timm does: a model's
``get_classifier()``, then the head a registry records (:class:`ModelInfo`), then the last ``nn.Linear``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, overload

from torch import nn

from .errors import SmallmedError

ROLES = ("head", "sigma", "factor", "lora", "bn", "bias", "weight")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel/DataParallel wrapper (itself otherwise)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


@dataclass
class ModelInfo:
    """What smallmed knows about a model it built or loaded, kept on the model as one record,
    ``model.smallmed_info`` (as timm keeps ``pretrained_cfg``), read through :func:`model_info`.

    Attributes:
        head: dotted name of the classifier head (from the model registry).
        stem: ``imagenet`` or ``small``, resolved from ``auto`` (a reload builds the same layers).
        load_report: what loading the weights did (:class:`smallmed.models.LoadReport`), or None.
        method: the fine-tuning method applied; ``method_settings`` its settings.
        base_hash: fingerprint of the base weights an adapter must be applied to.
    """

    head: str | None = None
    stem: str | None = None
    load_report: Any = None
    method: str | None = None
    method_settings: dict = field(default_factory=dict)
    base_hash: str | None = None


@overload
def model_info(model: nn.Module, *, create: Literal[True] = True) -> ModelInfo: ...


@overload
def model_info(model: nn.Module, *, create: bool) -> ModelInfo | None: ...


def model_info(model: nn.Module, *, create: bool = True) -> ModelInfo | None:
    """The model's :class:`ModelInfo` (made empty on first use unless ``create`` is False, so None only then)."""
    info = getattr(model, "smallmed_info", None)
    if info is None and create:
        info = ModelInfo()
        # nn.Module.__setattr__ takes any value; torch's stub declares only tensors and modules
        model.smallmed_info = info  # type: ignore[assignment]
    return info


def head_name(model: nn.Module) -> str:
    """Dotted name of the model's head.

    Order: ``model.get_classifier()`` (timm's contract; the returned module is looked up by
    identity), the head the model registry recorded (:class:`ModelInfo`), the last ``nn.Linear``.

    Example:
        >>> head_name(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)))
        '2'
    """
    get = getattr(model, "get_classifier", None)
    if callable(get):
        mod = get()
        if isinstance(mod, nn.Module):
            for n, m in model.named_modules():
                if m is mod and n:
                    return n
    info = model_info(model, create=False)
    if info is not None and info.head:
        return info.head
    last = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = n
    if last is None:
        raise SmallmedError(
            f"{type(model).__name__} has no nn.Linear head; give it a get_classifier() method "
            "(timm's contract) that returns its output layer."
        )
    return last


def _maybe_head(model: nn.Module) -> str | None:
    try:
        return head_name(model)
    except SmallmedError:
        return None


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """Map every parameter name to its role (see the module docstring).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4, 2))
        >>> sorted(set(parameter_roles(m).values()))
        ['bias', 'bn', 'head', 'weight']
    """
    model = unwrap(model)
    head = _maybe_head(model)
    modules = dict(model.named_modules())
    roles: dict[str, str] = {}
    for full, _ in model.named_parameters():
        mname, _, pname = full.rpartition(".")
        tensor = pname
        declared = None
        if ".parametrizations." in f".{mname}." and pname == "original":
            # a parametrized tensor: its owner is the module holding the parametrization list
            owner_name, _, tensor = mname.rpartition(".parametrizations.")
            if mname.startswith("parametrizations."):
                owner_name, tensor = "", mname.split(".", 1)[1]
            owner = modules[owner_name]
            declared = next((p.role for p in owner.parametrizations[tensor] if getattr(p, "role", None)), None)
            mname = owner_name
        owner = modules[mname]
        in_head = head is not None and (mname == head or mname.startswith(head + "."))
        if in_head:
            roles[full] = "head"
        elif declared:
            roles[full] = declared
        elif isinstance(owner, NORM_TYPES):
            roles[full] = "bn"
        elif tensor == "bias":
            roles[full] = "bias"
        else:
            roles[full] = getattr(owner, "smallmed_role", "weight")
    return roles


def set_trainable(model: nn.Module, roles: tuple[str, ...] | set[str]) -> dict[str, int]:
    """Let exactly the parameters of ``roles`` train; returns trainable counts by role.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
        >>> set_trainable(m, {"head"})
        {'head': 10}
    """
    found = parameter_roles(model)
    known = set(ROLES) | set(found.values())  # a method's own modules may declare a role (smallmed_role)
    unknown = set(roles) - known
    if unknown:
        raise SmallmedError(f"roles {sorted(unknown)}: expected some of {', '.join(sorted(known))}.")
    for name, p in unwrap(model).named_parameters():
        p.requires_grad_(found.get(name, "weight") in roles)
    return trainable_by_role(model, found)


def trainable_by_role(model: nn.Module, roles: dict[str, str] | None = None) -> dict[str, int]:
    """Trainable parameter counts by role."""
    roles = roles if roles is not None else parameter_roles(model)
    out: dict[str, int] = {}
    for name, p in unwrap(model).named_parameters():
        if p.requires_grad:
            r = roles.get(name, "weight")
            out[r] = out.get(r, 0) + p.numel()
    return out
