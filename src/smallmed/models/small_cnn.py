"""The small CNN of seed 001 (SPEC.md section 3).

conv32-BN-ReLU-conv32-ReLU-maxpool-conv64-BN-ReLU-conv64-ReLU-maxpool-conv64-BN-ReLU-conv64-ReLU-
flatten-dense64-ReLU-dense(classes). 3x3 convs with padding 1; the flatten needs the input
size, so it is a builder argument (default 32, the CIFAR size of the seed). ``norm``: ``bn`` (as
above), ``none``, or ``bn-after-act`` (conv-ReLU-BN at the same three places).
"""

from __future__ import annotations

from torch import nn

from .registry import register_model


def _block(cin: int, cout: int, norm: str) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if norm == "bn":
        return layers + [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if norm == "bn-after-act":
        return layers + [nn.ReLU(inplace=True), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_chans: int = 3, input_size: int = 32, norm: str = "bn") -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(in_chans, 32, norm), *_block(32, 32, "none"), nn.MaxPool2d(2),
            *_block(32, 64, norm), *_block(64, 64, "none"), nn.MaxPool2d(2),
            *_block(64, 64, norm), *_block(64, 64, "none"),
        )
        side = input_size // 4
        self.fc1 = nn.Linear(64 * side * side, 64)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.act(self.fc1(self.features(x).flatten(1))))


@register_model("small_cnn", head="fc", norms=("bn", "none", "bn-after-act"), description="seed 001's 6-conv CNN (input size fixed)")
def small_cnn(*, num_classes: int, in_chans: int, norm: str, input_size: int | None = None, **_) -> nn.Module:
    return SmallCNN(num_classes, in_chans, input_size or 32, norm)
