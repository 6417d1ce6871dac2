"""The one place where a model's ``norm`` option decides the order of conv, BatchNorm and ReLU."""

from __future__ import annotations

from torch import nn


def conv_norm_act(cin: int, cout: int, norm: str, *, bias: bool = True) -> list[nn.Module]:
    """A 3x3 conv (padding 1) then ``bn``: BN-ReLU, ``bn-after-act``: ReLU-BN, ``none``: ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=bias)]
    if norm == "bn":
        return layers + [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if norm == "bn-after-act":
        return layers + [nn.ReLU(inplace=True), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU(inplace=True)]
