"""Training schedules: which parameters train when. ``freezing``: freeze/unfreeze incl. BN statistics."""

from .freezing import Callback, RFFreeze, TwoStage, following_norms, freeze_bn_stats, rff_layers, set_trainable

__all__ = ["Callback", "RFFreeze", "TwoStage", "following_norms", "freeze_bn_stats", "rff_layers", "set_trainable"]
