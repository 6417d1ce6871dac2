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

    def __init__(self, head: str, head_epochs: int, rest: Callable[[str], bool] | None = None,
                 freeze_bn: bool = True) -> None:
        self.head = head + "."
        self.head_epochs = head_epochs
        self.rest = rest or (lambda name: True)
        self.freeze_bn = freeze_bn

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        if epoch < self.head_epochs:
            pred = lambda n: n.startswith(self.head)  # noqa: E731
            stage = "head only"
        else:
            pred = lambda n: n.startswith(self.head) or self.rest(n)  # noqa: E731
            stage = "main"
        trainable, total = set_trainable(_unwrap(model), pred)
        frozen_bn = freeze_bn_stats(model) if self.freeze_bn else []
        log.info("epoch %d (%s): %s of %s parameters train; %d BatchNorm layers frozen",
                 epoch + 1, stage, f"{trainable:,}", f"{total:,}", len(frozen_bn))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
