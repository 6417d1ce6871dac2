"""The small CNN of seed 001 (SPEC.md section 3).

conv32-BN-ReLU-conv32-ReLU-maxpool-conv64-BN-ReLU-conv64-ReLU-maxpool-conv64-BN-ReLU-conv64-ReLU-
flatten-dense64-ReLU-dense(classes). 3x3 convs with padding 1; the flatten needs the input
size, so it is a builder argument (default 32, the CIFAR size of the seed). ``norm``: ``bn`` (as
above), ``none``, or ``bn-after-act`` (conv-ReLU-BN at the same three places).
"""

from __future__ import annotations

from torch import nn

from ._layers import conv_norm_act
from .registry import register_model


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_chans: int = 3, input_size: int = 32, norm: str = "bn") -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_norm_act(in_chans, 32, norm),
            *conv_norm_act(32, 32, "none"),
            nn.MaxPool2d(2),
            *conv_norm_act(32, 64, norm),
            *conv_norm_act(64, 64, "none"),
            nn.MaxPool2d(2),
            *conv_norm_act(64, 64, norm),
            *conv_norm_act(64, 64, "none"),
        )
        side = input_size // 4
        self.fc1 = nn.Linear(64 * side * side, 64)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.act(self.fc1(self.features(x).flatten(1))))


@register_model(
    "small_cnn", head="fc", norms=("bn", "none", "bn-after-act"), description="seed 001's 6-conv CNN (input size fixed)"
)
def small_cnn(*, num_classes: int, in_chans: int, norm: str, input_size: int | None = None, **_) -> nn.Module:
    return SmallCNN(num_classes, in_chans, input_size or 32, norm)
