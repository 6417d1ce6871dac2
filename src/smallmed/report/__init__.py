"""Plots and tables, written only from the files in a run folder.

- ``plots``: loss, ROC and reliability curves.  ``run_report``: report.md of one run.
- ``model_card``: model_card.md: intended use, data, metrics with intervals, limits.
"""

from .model_card import write_model_card
from .plots import plot_history, plot_reliability, plot_roc
from .run_report import write_run_report

__all__ = ["plot_history", "plot_reliability", "plot_roc", "write_model_card", "write_run_report"]
