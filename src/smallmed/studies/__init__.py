"""Studies: one file per paper protocol, plus the grid runner and statistics.

- ``runner``: resumable grid of runs, parallel processes or Ray.  ``stats``: CIs, paired tests.
- ``svd``: seed 000's fraction study.  ``sfconv``: seed 004's cheap convolutions (classification and U-Net
  segmentation).  ``rff``: seed 001's receptive-field freeze transfer protocol.  ``bn``: seed 002's
  batch-norm ablation.
"""

from .runner import run_grid
from .svd import PRESETS, SVDStudy, run_svd_study

__all__ = ["PRESETS", "SVDStudy", "run_grid", "run_svd_study"]
