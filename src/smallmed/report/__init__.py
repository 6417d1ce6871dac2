"""Plots and tables, written only from the files in a run folder. ``plots``: loss and ROC curves."""

from .plots import plot_history, plot_roc

__all__ = ["plot_history", "plot_roc"]
