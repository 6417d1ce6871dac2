"""Analyses of trained models. ``svd``: the R ratio, singular-value dynamics and their plots."""

from .svd import r_ratio, r_ratios, sigma_dynamics, write_svd_diagnostics

__all__ = ["r_ratio", "r_ratios", "sigma_dynamics", "write_svd_diagnostics"]
