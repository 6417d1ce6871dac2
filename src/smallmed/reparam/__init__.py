"""Reparametrisations of pretrained weights.

- ``svd``: singular-value fine-tuning (apply_svd, fold, parameter roles).
- ``lowrank``: export to thin two-conv layers with parameter/FLOP/throughput comparison.
"""

from .lowrank import LowRankReport, count_flops, throughput, to_low_rank
from .svd import MODES, SVDSummary, SVDWeight, apply_svd, fold, parameter_roles, svd_modules

__all__ = ["MODES", "LowRankReport", "SVDSummary", "SVDWeight", "apply_svd", "count_flops", "fold",
           "parameter_roles", "svd_modules", "throughput", "to_low_rank"]
