"""``ssf``: SSF (Lian et al. 2022, "Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning").

Every conv's output gets a learned scale and shift per channel, ``y = gamma * conv(x) + beta``; only
those two vectors (and the classifier) train. Both fold exactly into the conv before them
(``W' = gamma W``, ``b' = gamma b + beta``), so the merged model is the plain architecture with biases.
The paper starts gamma and beta near 1 and 0 (normal, std 0.02); here they start at exactly 1 and 0,
so applying the method leaves the model's outputs unchanged.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import nn

from ..errors import SmallmedError
from ..roles import head_name
from .base import Method, register_method


class SSFConv2d(nn.Module):
    """A conv followed by a per-channel scale and shift (parameters of role ``ssf``)."""

    smallmed_role = "ssf"

    def __init__(self, base_layer: nn.Conv2d) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.ssf_scale = nn.Parameter(torch.ones(base_layer.out_channels))
        self.ssf_shift = nn.Parameter(torch.zeros(base_layer.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * self.ssf_scale.view(1, -1, 1, 1) + self.ssf_shift.view(1, -1, 1, 1)

    def merged(self) -> nn.Conv2d:
        conv = self.base_layer
        # nn.Conv2d stores its geometry as tuple[int, ...] but its constructor is typed for the 2-tuples they are
        out = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            cast(tuple[int, int], conv.kernel_size),
            cast(tuple[int, int], conv.stride),
            cast("str | tuple[int, int]", conv.padding),
            cast(tuple[int, int], conv.dilation),
            conv.groups,
            bias=True,
            padding_mode=conv.padding_mode,
        ).to(conv.weight)
        with torch.no_grad():
            g = self.ssf_scale.detach()
            out.weight.copy_(conv.weight * g.view(-1, 1, 1, 1))
            bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(g)
            assert out.bias is not None  # built with bias=True above
            out.bias.copy_(g * bias + self.ssf_shift.detach())
        return out


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


@register_method
class SSF(Method):
    name = "ssf"
    paper = "SSF (Lian et al. 2022)"
    trains = "a scale and a shift per output channel of every conv, the classifier"
    roles = frozenset({"head", "ssf"})
    protocol = {"freeze_bn_stats": False}  # parameter-efficient: BatchNorm statistics keep updating

    def apply(self, model, settings):
        head = head_name(model)
        targets = [n for n, m in model.named_modules() if type(m) is nn.Conv2d and n != head]
        if not targets:
            raise SmallmedError("method='ssf': the model has no conv to scale and shift.")
        for n in targets:
            _swap(model, n, SSFConv2d(model.get_submodule(n)))
        return {"layers": len(targets), "trainable": 2 * sum(model.get_submodule(n).ssf_scale.numel() for n in targets)}

    def merge(self, model):
        model = copy.deepcopy(model)
        for n, m in list(model.named_modules()):
            if isinstance(m, SSFConv2d):
                _swap(model, n, m.merged())
        for p in model.parameters():
            p.requires_grad_(True)
        return model
