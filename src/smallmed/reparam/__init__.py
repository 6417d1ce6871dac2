"""Reparametrisations of pretrained weights.

- ``svd``: singular-value fine-tuning (apply_svd, SVDConfig, fold).
- ``factorized``: cheap convs (factorize, FactorizeConfig, kl_flatten_loss, frobenius_decay).
- ``lowrank``: export to thin two-conv layers with parameter/FLOP/throughput comparison.
- ``lora``: LoRA/DoRA injection on the k > 1 convs through PEFT, and its merge.
- ``diagnostics``: singular-value spectra and effective rank of an SVD-parametrised model.
"""

from ..roles import parameter_roles
from .factorized import FactorizeConfig, factorize, frobenius_decay, kl_flatten_loss
from .lowrank import LowRankReport, count_flops, throughput, to_low_rank
from .svd import MODES, SVDConfig, SVDSummary, SVDWeight, apply_svd, fold, svd_modules

__all__ = [
    "MODES",
    "FactorizeConfig",
    "LowRankReport",
    "SVDConfig",
    "SVDSummary",
    "SVDWeight",
    "apply_svd",
    "count_flops",
    "factorize",
    "fold",
    "frobenius_decay",
    "kl_flatten_loss",
    "parameter_roles",
    "svd_modules",
    "throughput",
    "to_low_rank",
]
