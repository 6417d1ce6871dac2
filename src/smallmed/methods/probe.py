"""``fc-train``: a linear probe; only the classifier trains and BatchNorm statistics stay pretrained."""

from __future__ import annotations

from .base import Method, register_method


@register_method
class LinearProbe(Method):
    name = "fc-train"
    paper = "linear probe"
    trains = "the classifier only (BatchNorm statistics frozen)"
    roles = frozenset({"head"})
    protocol = {"head_epochs": 0}
