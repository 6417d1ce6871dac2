"""torchvision ResNets with a small-input stem and a choice of normalisation.

``norm``: ``"bn"`` (torchvision), ``"none"`` (every BatchNorm an Identity), or ``"bn-after-act"``:
each BN moved after the ReLU it preceded (stem conv-ReLU-BN; in a block conv-ReLU-BN, and the
block's last BN after the ReLU that follows the residual addition). The shortcut's conv-BN has no
activation and stays. Module names and shapes are torchvision's in every option.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet

from .pretrained import load_imagenet
from .registry import register_model


def _norm_layer(norm: str):
    return (lambda c: nn.Identity()) if norm == "none" else nn.BatchNorm2d


class PostActBasicBlock(resnet.BasicBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.relu(self.conv1(x)))
        return self.bn2(self.relu(self.conv2(out) + identity))


class PostActBottleneck(resnet.Bottleneck):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.bn2(self.relu(self.conv2(out)))
        return self.bn3(self.relu(self.conv3(out) + identity))


class PostActResNet(resnet.ResNet):
    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.bn1(self.relu(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_POST_ACT = {resnet.resnet18: (PostActBasicBlock, [2, 2, 2, 2]), resnet.resnet50: (PostActBottleneck, [3, 4, 6, 3])}


def _build(arch, *, num_classes: int, in_chans: int, norm: str, small_input: bool, **_) -> nn.Module:
    if norm == "bn-after-act":
        block, layers = _POST_ACT[arch]
        model = PostActResNet(block, layers, num_classes=num_classes)
    else:
        model = arch(weights=None, num_classes=num_classes, norm_layer=_norm_layer(norm))
    if small_input:
        # 28-64 px inputs: a 3x3 stride-1 stem without max-pool (as MedMNIST v2's ResNets),
        # otherwise a 28 px image is 1x1 after layer3
        model.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    return model


@register_model(
    "resnet18",
    head="fc",
    norms=("bn", "none", "bn-after-act"),
    pretrained={"imagenet": load_imagenet("resnet18")},
    description="torchvision ResNet-18 (11.2M); weights='imagenet'",
)
def resnet18(**kw) -> nn.Module:
    return _build(resnet.resnet18, **kw)


@register_model(
    "resnet50",
    head="fc",
    norms=("bn", "none", "bn-after-act"),
    pretrained={"imagenet": load_imagenet("resnet50")},
    description="torchvision ResNet-50 (23.5M); weights='imagenet'",
)
def resnet50(**kw) -> nn.Module:
    return _build(resnet.resnet50, **kw)
