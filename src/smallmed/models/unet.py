"""U-Net (Ronneberger et al. 2015) for binary segmentation; its convs factorize like any others.

Encoder: ``depth`` stages of two 3x3 conv-BN-ReLU with max-pool between; decoder: bilinear
upsampling, concatenation with the skip, two 3x3 conv-BN-ReLU; a 1x1 head to ``num_classes``
logit maps (1 for a binary mask). Channel widths ``base * 2**i``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._layers import conv_norm_act
from .registry import register_model


def _double(cin: int, cout: int, norm: str) -> nn.Sequential:
    bias = norm == "none"  # with BatchNorm in the block a conv bias is redundant
    return nn.Sequential(*conv_norm_act(cin, cout, norm, bias=bias), *conv_norm_act(cout, cout, norm, bias=bias))


class UNet(nn.Module):
    def __init__(
        self, in_chans: int = 1, num_classes: int = 1, base: int = 16, depth: int = 4, norm: str = "bn"
    ) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [_double(in_chans, widths[0], norm)] + [_double(widths[i], widths[i + 1], norm) for i in range(depth)]
        )
        self.up = nn.ModuleList([_double(widths[i + 1] + widths[i], widths[i], norm) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def get_classifier(self) -> nn.Module:
        """The 1x1 output conv (timm's name for a model's head)."""
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)


@register_model(
    "unet",
    head="head",
    norms=("bn", "none", "bn-after-act"),
    description="U-Net, base 16, depth 4 (1.9M): binary segmentation",
    task="segmentation",
)
def unet(*, num_classes: int, in_chans: int, norm: str, **_) -> nn.Module:
    return UNet(in_chans, num_classes, norm=norm)
