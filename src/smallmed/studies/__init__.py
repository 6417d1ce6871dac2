"""Studies: one file per paper protocol, plus the grid runner and statistics.

- ``runner``: resumable grid of runs, parallel processes or Ray.  ``stats``: CIs, paired tests.
- ``svd``: seed 000's fraction study.  ``bn``: seed 002's batch-norm ablation.
"""

from .runner import run_grid
from .svd import PRESETS, SVDStudy, run_svd_study

__all__ = ["PRESETS", "SVDStudy", "run_grid", "run_svd_study"]
