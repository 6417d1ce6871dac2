"""torchvision ResNets with a small-input stem and optional normalisation removal."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet

from .registry import register_model


def _norm_layer(norm: str):
    return nn.BatchNorm2d if norm == "bn" else (lambda c: nn.Identity())


def _build(arch, *, num_classes: int, in_chans: int, norm: str, small_input: bool, **_) -> nn.Module:
    model = arch(weights=None, num_classes=num_classes, norm_layer=_norm_layer(norm))
    if small_input:
        # 28-64 px inputs: a 3x3 stride-1 stem without max-pool (as MedMNIST v2's ResNets),
        # otherwise a 28 px image is 1x1 after layer3
        model.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    return model


@register_model("resnet18", head="fc", norms=("bn", "none"), description="torchvision ResNet-18 (11.2M)")
def resnet18(**kw) -> nn.Module:
    return _build(resnet.resnet18, **kw)


@register_model("resnet50", head="fc", norms=("bn", "none"), description="torchvision ResNet-50 (23.5M)")
def resnet50(**kw) -> nn.Module:
    return _build(resnet.resnet50, **kw)
