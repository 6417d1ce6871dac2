"""``bitfit``: BitFit (Ben Zaken et al. 2022): every bias and the norm layers' affine parameters, plus the head."""

from __future__ import annotations

from .base import Method, register_method


@register_method
class BitFit(Method):
    name = "bitfit"
    paper = "BitFit (Ben Zaken et al. 2022)"
    trains = "norm weights and biases, every bias, the classifier"
    roles = frozenset({"head", "bn", "bias"})
    protocol = {"freeze_bn_stats": False}  # parameter-efficient: BatchNorm statistics keep updating
