"""Metrics. ``classification``: accuracy, balanced accuracy, ROC AUC, TPR at FPR, loss variance."""

from .classification import bootstrap_ci, classification_metrics, loss_variance, tpr_at_fpr

__all__ = ["bootstrap_ci", "classification_metrics", "loss_variance", "tpr_at_fpr"]
