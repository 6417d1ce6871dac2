"""torchvision DenseNet-121 with a small-input stem."""

from __future__ import annotations

from torch import nn
from torchvision.models import densenet

from .pretrained import XRV, load_imagenet, xrv_weights
from .registry import register_model


@register_model(
    "densenet121",
    head="classifier",
    pretrained={"imagenet": load_imagenet("densenet121"), **xrv_weights()},
    pretrained_normalize={"imagenet": "imagenet", **{f"xrv:{k}": "xrv" for k in XRV}},
    description="torchvision DenseNet-121 (7.0M); weights='imagenet' or a chest X-ray model 'xrv:densenet121-res224-nih' (-all, -chex, ...)",
)
def densenet121(*, num_classes: int, in_chans: int, norm: str, small_input: bool, **_) -> nn.Module:
    model = densenet.densenet121(weights=None, num_classes=num_classes)
    if small_input:
        model.features.conv0 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        model.features.pool0 = nn.Identity()
    elif in_chans != 3:
        model.features.conv0 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    return model
