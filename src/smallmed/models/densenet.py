"""torchvision DenseNet-121 with a small-input stem."""

from __future__ import annotations

from torch import nn
from torchvision.models import densenet

from .registry import register_model


@register_model("densenet121", head="classifier", description="torchvision DenseNet-121 (7.0M); seed 000's backbone")
def densenet121(*, num_classes: int, in_chans: int, norm: str, small_input: bool, **_) -> nn.Module:
    model = densenet.densenet121(weights=None, num_classes=num_classes)
    if small_input:
        model.features.conv0 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        model.features.pool0 = nn.Identity()
    elif in_chans != 3:
        model.features.conv0 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    return model
