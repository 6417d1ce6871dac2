"""The contract every fine-tuning method meets, and the registry that holds them.

A method is one class in one file of this package: what it trains (parameter roles, see
:mod:`smallmed.roles`), the config fields it reads, the protocol it brings, how it changes a
model, how it merges back into a plain one, and what it reports at the end of a run. Adapters,
export, the config checks, the trainer and the studies ask the registry; none of them names a
method.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..errors import SmallmedError
from ..registry import check_choice

# seed 000's training protocol, beneath a user's own settings when a method other than ``full`` is chosen:
# 1 epoch head only, Adam betas (0.9, 0.99), lr 1e-3, plateau patience 4, batch 16
PROTOCOL = {
    "head_epochs": 1,
    "betas": [0.9, 0.99],
    "lr": 1e-3,
    "patience": 4,
    "batch_size": 16,
    "scheduler": "plateau",
    "optimizer": "adam",
}


class Method:
    """One fine-tuning method; subclass it, set the class attributes and :meth:`apply`, decorate with
    :func:`register_method`.

    Attributes:
        name: the ``--method`` value.
        paper: who proposed it (authors, year), shown in ``--help`` and reports.
        trains: one line on what trains.
        roles: parameter roles that train (an adapter file holds exactly these); ``None``: every parameter.
        uses: config fields only this kind of method reads; set with another method they are refused.
        protocol: config values beneath the user's own (on top of :data:`PROTOCOL`).
    """

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    trains: ClassVar[str] = ""
    roles: ClassVar[frozenset[str] | None] = None
    uses: ClassVar[tuple[str, ...]] = ()
    protocol: ClassVar[dict] = {}

    def settings(self, cfg) -> dict:
        """What :meth:`apply` needs, read from a config (JSON-able: adapters store it)."""
        return {}

    def trained_roles(self, settings: dict) -> set[str] | None:
        return set(self.roles) if self.roles is not None else None

    def apply(self, model: nn.Module, settings: dict) -> Any:
        """Change ``model`` in place (new modules or parametrizations) so that its outputs are unchanged;
        returns a summary for the log (or None). Which parameters train is set afterwards from the roles."""
        return None

    def merge(self, model: nn.Module) -> nn.Module | None:
        """A plain PyTorch copy with the same outputs (written as ``folded.pt``); None: nothing to merge."""
        return None

    def pruned(self, settings: dict) -> bool:
        """Whether the method leaves a low-rank model that exports to thin layers."""
        return False

    def report(self, model: nn.Module, *, built, run_dir, example) -> dict:
        """The method's own entries for ``metrics.json``, from the best model at the end of a run."""
        return {}


_METHODS: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to the registry (a second method of the same name raises)."""
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    """The registered method called ``name`` (one sentence with close matches otherwise)."""
    check_choice("method", name, method_names())
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def protocol_defaults(name: str) -> dict:
    """Seed 000's protocol for method ``name``, as config keys (the user's settings override them)."""
    return {**PROTOCOL, **get_method(name).protocol}


def method_fields() -> dict[str, tuple[str, ...]]:
    """Each config field some method reads, with the methods that read it (the others refuse it)."""
    out: dict[str, tuple[str, ...]] = {}
    for m in _METHODS.values():
        for f in m.uses:
            out[f] = (*out.get(f, ()), m.name)
    return out


def apply_method(model: nn.Module, name: str, settings: dict | None = None) -> tuple[set[str], Any]:
    """Prepare ``model`` for method ``name``; returns (names of the parameters that train, the method's summary).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
        >>> sorted(apply_method(m, "fc-train")[0])
        ['2.bias', '2.weight']
    """
    from ..roles import set_trainable

    method = get_method(name)
    settings = dict(settings or {})
    summary = method.apply(model, settings)
    roles = method.trained_roles(settings)
    if roles is None:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        set_trainable(model, roles)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if not names:
        raise SmallmedError(f"method={name!r} leaves no trainable parameter.")
    return names, summary
