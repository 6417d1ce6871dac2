"""Studies: one file per paper protocol, registered once; the grid runner and statistics beside them.

- ``base``: the studies registry (:func:`register_study`, :func:`run_study`), from which the CLI is generated.
- ``runner``: resumable grid of runs, parallel processes or Ray.  ``stats``: CIs, paired tests.
  ``settings``: a study's settings saved and compared on reuse.
- ``svd``: seed 000's fraction study.  ``sfconv``: seed 004's cheap convolutions (classification and U-Net
  segmentation).  ``rff``: seed 001's receptive-field freeze transfer protocol.  ``bn``: seed 002's
  batch-norm ablation.  ``ra2``: seed 003's joint-damage scoring (``ra2_scoring``: its recipes and report).
- ``medmnist``: the baseline and strong recipes (and a tuned one) against the published MedMNIST results.

A new study is one file here that calls :func:`register_study`; it is imported below by discovery.
"""

import importlib
import pkgutil

from .base import configure, get_study, register_study, run_study, study_names
from .runner import run_grid

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name not in ("base", "runner", "stats", "settings") and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["configure", "get_study", "register_study", "run_grid", "run_study", "study_names"]
