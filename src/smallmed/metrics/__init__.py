"""Metrics.

- ``classification``: accuracy, balanced accuracy, ROC AUC, TPR at FPR, loss variance.
- ``clinical``: operating points chosen on validation, sensitivity/specificity/PPV/NPV, Brier, ECE, temperature.
- ``regression``: MAE, RMSE, accuracy and QWK of graded scores.  ``segmentation``: Dice and IoU.
- ``keypoints``: pixel error and PCK.  ``bootstrap``: the one percentile bootstrap behind every interval.
"""

from .classification import bootstrap_ci, classification_metrics, loss_variance, tpr_at_fpr

__all__ = ["bootstrap_ci", "classification_metrics", "loss_variance", "tpr_at_fpr"]
