"""The RA2 scorers of seed 003 (SPEC section 5): small DenseNets with specialised dropout.

Specialised dropout (Wan et al. 2018, scheme v3): before each dense layer's first conv, whole
feature maps of the concatenated input are dropped (per sample and channel, rescaled by
1/(1-p)), and *older* maps are dropped with higher probability: the block input has age l at
layer l, the previous layer's output age 1; p(age) = p_max * (age - 1) / (l - 1), so the newest
maps are never dropped and the oldest are dropped with ``p_max``.

- ``densenet_ra2_v1``: DenseNet-121 layout with a 3x3 stride-1 stem, the last dense block removed
  (blocks 6-12-24), growth 32, ReLU, p_max 0.875.
- ``densenet_ra2_v2``: growth 16, 7x7 stride-1 stem, LeakyReLU 0.2, blocks 6-12-18, p_max 0.25
  (~0.8M parameters).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register_model


def age_drop_probs(n_segments: int, p_max: float) -> list[float]:
    """Drop probability per input segment, oldest first (scheme v3).

    Example:
        >>> age_drop_probs(3, 0.5)
        [0.5, 0.25, 0.0]
    """
    if n_segments == 1:
        return [0.0]
    return [p_max * (n_segments - 1 - i) / (n_segments - 1) for i in range(n_segments)]


class AgeDropout(nn.Module):
    """Channel dropout whose probability grows with a feature map's age (see the module docstring)."""

    def __init__(self, p_max: float) -> None:
        super().__init__()
        self.p_max = p_max

    def forward(self, segments: list[torch.Tensor]) -> torch.Tensor:
        if not self.training or self.p_max == 0:
            return torch.cat(segments, 1)
        out = []
        for seg, p in zip(segments, age_drop_probs(len(segments), self.p_max)):
            if p > 0:
                keep = (torch.rand(seg.shape[0], seg.shape[1], 1, 1, device=seg.device) >= p).to(seg.dtype)
                seg = seg * keep / (1 - p)
            out.append(seg)
        return torch.cat(out, 1)


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, act: nn.Module, p_max: float) -> None:
        super().__init__()
        self.drop = AgeDropout(p_max)
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)
        self.act = act

    def forward(self, segments: list[torch.Tensor]) -> torch.Tensor:
        x = self.drop(segments)
        x = self.conv1(self.act(self.norm1(x)))
        return self.conv2(self.act(self.norm2(x)))


class _DenseBlock(nn.Module):
    def __init__(self, n: int, cin: int, growth: int, act: nn.Module, p_max: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_DenseLayer(cin + i * growth, growth, act, p_max) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        segments = [x]
        for layer in self.layers:
            segments.append(layer(segments))
        return torch.cat(segments, 1)


class RA2DenseNet(nn.Module):
    def __init__(
        self,
        *,
        in_chans: int = 1,
        num_classes: int = 1,
        blocks=(6, 12, 24),
        growth: int = 32,
        stem_kernel: int = 3,
        leaky: float | None = None,
        p_max: float = 0.875,
    ) -> None:
        super().__init__()
        act = nn.LeakyReLU(leaky) if leaky else nn.ReLU()
        width = 2 * growth
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, stem_kernel, 1, stem_kernel // 2, bias=False), nn.BatchNorm2d(width), act
        )
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            stages.append(_DenseBlock(n, width, growth, act, p_max))
            width += n * growth
            if i < len(blocks) - 1:  # transition: 1x1 conv halving the width, 2x2 average pool
                stages.append(
                    nn.Sequential(
                        nn.BatchNorm2d(width), act, nn.Conv2d(width, width // 2, 1, bias=False), nn.AvgPool2d(2)
                    )
                )
                width //= 2
        self.features = nn.Sequential(*stages)
        self.norm, self.act = nn.BatchNorm2d(width), act
        self.classifier = nn.Linear(width, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm(self.features(self.stem(x))))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model(
    "densenet_ra2_v1",
    head="classifier",
    description="RA2 scorer v1 (seed 003): DenseNet 6-12-24, growth 32, 3x3 stride-1 stem, age dropout 0.875",
)
def densenet_ra2_v1(*, num_classes: int, in_chans: int, **_) -> nn.Module:
    return RA2DenseNet(
        in_chans=in_chans, num_classes=num_classes, blocks=(6, 12, 24), growth=32, stem_kernel=3, p_max=0.875
    )


@register_model(
    "densenet_ra2_v2",
    head="classifier",
    description="RA2 scorer v2 (seed 003): DenseNet 6-12-18, growth 16, 7x7 stem, LeakyReLU 0.2, age dropout 0.25",
)
def densenet_ra2_v2(*, num_classes: int, in_chans: int, **_) -> nn.Module:
    return RA2DenseNet(
        in_chans=in_chans, num_classes=num_classes, blocks=(6, 12, 18), growth=16, stem_kernel=7, leaky=0.2, p_max=0.25
    )
