"""RA2: score rheumatoid-arthritis joint damage (Sharp/van der Heijde) from hand and foot radiographs.

- ``schema``: the 86 assessments (SCHEMA), read_scores / totals / write_table in the RA2 DREAM
  Challenge's CSV format.
- ``metrics``: the challenge's weighted MAE (totals) and weighted RMSE (joints).
- ``models``: the seed's DenseNet scorers (v1, v2) with specialised dropout (v3).
- ``joints``: landmark names, labelme files, flipping, crops, and the crop each assessment is scored from.
- ``localise``: joint points from a keypoint run, a mean shape or labelme files; crops around them.
- ``detector``: torchvision's Keypoint R-CNN as a hand localiser.
- ``pipeline``: the three scorers as CV ensembles: ``ra2 train`` and ``ra2 predict``.
"""

from .metrics import challenge_metrics
from .schema import COLUMNS, MAX_TOTAL, SCHEMA, Assessment, ScoreTable, read_scores, totals, write_table

__all__ = [
    "COLUMNS",
    "MAX_TOTAL",
    "SCHEMA",
    "Assessment",
    "ScoreTable",
    "challenge_metrics",
    "read_scores",
    "totals",
    "write_table",
]
