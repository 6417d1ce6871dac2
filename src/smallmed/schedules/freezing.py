"""Freezing: no gradient, no optimizer update, and (optionally) no BatchNorm statistics update.

A schedule is a small object with ``on_epoch_start(epoch, model)``; the trainer calls it before
each epoch, after putting the model in train mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

log = logging.getLogger(__name__)


class Callback:
    """Hooks the trainer calls; override what you need."""

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None: ...

    def on_batch_end(self, epoch: int, step: int, loss: float) -> None: ...

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        """After the epoch's validation and checkpoints; ``row`` is its history row (``val_loss`` ...).
        A search's pruner raises here to stop a trial."""


def set_trainable(model: nn.Module, predicate: Callable[[str], bool]) -> tuple[int, int]:
    """``requires_grad = predicate(name)`` for every parameter; returns (trainable, total) counts."""
    trainable = total = 0
    for name, p in model.named_parameters():
        p.requires_grad_(bool(predicate(name)))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def freeze_bn_stats(model: nn.Module) -> list[str]:
    """Put every BatchNorm whose parameters are all frozen in eval mode (statistics fixed).

    Call after ``model.train()``. A BN layer without affine parameters is left training.
    """
    frozen = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
                frozen.append(name)
    return frozen


class TwoStage(Callback):
    """Epochs ``< head_epochs`` train only the classifier (a linear probe); then ``rest`` decides.

    Args:
        head: dotted name of the classifier module.
        head_epochs: how many epochs train the head alone.
        rest: which parameters train afterwards (default: all).
    """

    def __init__(
        self, head: str, head_epochs: int, rest: Callable[[str], bool] | None = None, freeze_bn: bool = True
    ) -> None:
        self.head = head + "."
        self.head_epochs = head_epochs
        self.rest = rest or (lambda name: True)
        self.freeze_bn = freeze_bn

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        if epoch < self.head_epochs:
            pred = lambda n: n.startswith(self.head)
            stage = "head only"
        else:
            pred = lambda n: n.startswith(self.head) or self.rest(n)
            stage = "main"
        trainable, total = set_trainable(_unwrap(model), pred)
        frozen_bn = freeze_bn_stats(model) if self.freeze_bn else []
        log.info(
            "epoch %d (%s): %s of %s parameters train; %d BatchNorm layers frozen",
            epoch + 1,
            stage,
            f"{trainable:,}",
            f"{total:,}",
            len(frozen_bn),
        )


def _unwrap(model: nn.Module) -> nn.Module:
    from ..roles import unwrap

    return unwrap(model)


def rff_layers(model: nn.Module, input_size: tuple[int, int, int]) -> list[str]:
    """Receptive-field-expanding layers (seed 001): every strided conv with a kernel > 1, and the
    first conv with a kernel > 1 after each pooling layer; the network's first conv (the stem,
    which sees raw pixels) is left out.

    torchvision ResNet-50: layer1.0.conv2 (after the max-pool), layer2/3/4.0.conv2 (the strided
    3x3s: the four downsampling stages); the seed's small CNN: the convs right after each max-pool;
    VGG16: the first conv after each of the first four pools.
    """
    from ..analysis.receptive_field import receptive_field

    rows = receptive_field(_unwrap(model), input_size)
    convs = [r for r in rows if r.kind == "conv"]
    stem = convs[0].name if convs else None
    out, after_pool = [], False
    for r in rows:
        if r.kind in ("pool", "maxpool"):
            after_pool = True
        elif r.kind == "conv" and max(r.k) > 1:
            if r.name != stem and (after_pool or max(r.s) > 1) and r.name not in out:
                out.append(r.name)
            after_pool = False
    return out


def following_norms(model: nn.Module, layers: list[str], input_size: tuple[int, int, int]) -> dict[str, str]:
    """For each named layer, the BatchNorm called right after it in the forward pass (if any)."""
    import torch

    model = _unwrap(model)
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
        for n, m in model.named_modules()
        if not list(m.children())
    ]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    mods = dict(model.named_modules())
    out = {}
    for i, n in enumerate(order[:-1]):
        nxt = order[i + 1]
        if n in layers and isinstance(mods[nxt], nn.modules.batchnorm._BatchNorm):
            out[n] = nxt
    return out


class RFFreeze(Callback):
    """Freeze the receptive-field-expanding layers at chosen epochs (seed 001's RFF).

    Freezing means no gradient, hence no optimizer update, and the BatchNorm right after each
    layer keeps its running statistics (eval mode) during those epochs.

    Args:
        layers: module names (from :func:`rff_layers`, or your own; unknown names are an error).
        epochs: 1-based epochs during which they are frozen (``at_epoch=n+1`` is ``epochs=[n+1]``).
        alternate: freeze on every other epoch instead (even 1-based epochs: 2, 4, ...).
        norms: layer -> BatchNorm name (see :func:`following_norms`).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[str],
        epochs=(),
        alternate: bool = False,
        norms: dict[str, str] | None = None,
    ) -> None:
        from ..errors import SmallmedError

        names = dict(_unwrap(model).named_modules())
        for n in layers:
            if n not in names:
                import difflib

                close = difflib.get_close_matches(n, list(names), n=3)
                raise SmallmedError(
                    f"RFF layer {n!r} is not a module of the model"
                    + (f"; did you mean {', '.join(map(repr, close))}?" if close else ".")
                )
        if not layers:
            raise SmallmedError("RFF: no layers to freeze.")
        self.layers = list(layers)
        self.epochs = {int(e) for e in epochs}
        self.alternate = alternate
        self.norms = norms or {}
        self._restore: list[tuple[nn.Parameter, bool]] = []  # what this callback froze, to give back
        self._bn_restore: list[tuple[nn.Module, bool]] = []

    def frozen_at(self, epoch: int) -> bool:
        """``epoch`` is 0-based (the trainer's)."""
        return (epoch + 1) in self.epochs or (self.alternate and (epoch + 1) % 2 == 0)

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        if not self.frozen_at(epoch):
            self.restore()
            return
        if self._restore:  # frozen in consecutive epochs: keep the first epoch's record
            return
        m = _unwrap(model)
        n_params = 0
        for name in self.layers:
            for p in m.get_submodule(name).parameters():
                self._restore.append((p, p.requires_grad))
                p.requires_grad_(False)
                n_params += p.numel()
            if name in self.norms:
                bn = m.get_submodule(self.norms[name])
                self._bn_restore.append((bn, bn.training))
                bn.eval()
                for p in bn.parameters():
                    self._restore.append((p, p.requires_grad))
                    p.requires_grad_(False)
                    n_params += p.numel()
        log.info(
            "epoch %d: RFF froze %d layers (%s parameters): %s",
            epoch + 1,
            len(self.layers),
            f"{n_params:,}",
            ", ".join(self.layers),
        )

    def restore(self) -> None:
        """Give the frozen layers back the trainability and BatchNorm mode they had before this callback
        froze them (a schedule that owns its freezing also undoes it, whatever runs beside it)."""
        for p, req in self._restore:
            p.requires_grad_(req)
        for bn, training in self._bn_restore:
            bn.train(training)
        self._restore, self._bn_restore = [], []
