"""VGG-16 in torchvision's layouts (``vgg16`` without, ``vgg16_bn`` with batch norm).

``norm``: ``"none"`` is torchvision's ``vgg16`` (conv-ReLU), ``"bn"`` its ``vgg16_bn``
(conv-BN-ReLU), ``"bn-after-act"`` puts each BN after its ReLU (conv-ReLU-BN). The conv indices
in ``features`` are the same in the two BN layouts, so ``vgg16`` weights load into all three.

The head is global average pooling + one Linear (512 -> classes) rather than torchvision's
three 4096-wide layers (120M parameters a few hundred images cannot fit); the convolutional
``features`` keep torchvision's module names, so ImageNet ``vgg16``/``vgg16_bn`` weights load.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import vgg

from ._layers import conv_norm_act
from .pretrained import load_imagenet
from .registry import register_model


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def smallmed_remap_state(self, state: dict) -> dict:
        """Map ``features.N`` conv weights by conv order, so ``vgg16`` and ``vgg16_bn`` files load into
        either layout (the indices shift when BN layers are inserted); BN entries then stay fresh."""
        own = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        theirs = sorted(
            {
                int(k.split(".")[1])
                for k, v in state.items()
                if k.startswith("features.") and k.endswith(".weight") and v.ndim == 4
            }
        )
        if theirs == own or len(theirs) != len(own):
            return state
        index = dict(zip(theirs, own))
        out = {}
        for k, v in state.items():
            parts = k.split(".")
            if parts[0] == "features" and int(parts[1]) in index:
                out[".".join(["features", str(index[int(parts[1])]), *parts[2:]])] = v
            elif parts[0] != "features":
                out[k] = v
            else:
                out[k] = v  # a BN entry of the other layout: reported as unexpected
        return out

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def make_features(cfg: list, norm: str) -> nn.Sequential:
    """torchvision's ``make_layers`` with the BN placement as a choice (see the module doc)."""
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers += conv_norm_act(cin, v, norm)
        cin = v
    return nn.Sequential(*layers)


@register_model(
    "vgg16",
    head="fc",
    norms=("bn", "none", "bn-after-act"),
    pretrained={"imagenet": load_imagenet("vgg16")},
    description="VGG-16 features (14.7M) + GAP + linear head; weights='imagenet' (vgg16 or vgg16_bn by --norm)",
)
def vgg16(
    *, num_classes: int, in_chans: int, norm: str, small_input: bool, input_size: int | None = None, **_
) -> nn.Module:
    features = make_features(vgg.cfgs["D"], norm)
    if in_chans != 3:
        features[0] = nn.Conv2d(in_chans, 64, 3, padding=1)
    if input_size is not None and input_size < 32:
        # five 2x2 pools need >= 32 px; drop the last one for MNIST-sized inputs
        features = features[:-1]
    return VGG(features, num_classes)
