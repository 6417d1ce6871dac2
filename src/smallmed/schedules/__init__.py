"""Training schedules: which parameters train when. ``freezing``: freeze/unfreeze incl. BN statistics."""

from .freezing import Callback, TwoStage, freeze_bn_stats, set_trainable

__all__ = ["Callback", "TwoStage", "freeze_bn_stats", "set_trainable"]
