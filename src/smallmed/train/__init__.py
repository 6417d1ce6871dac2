"""Training.

- ``loop``: the one fit/resume/evaluate for every task.  ``tasks``: the task registry (loss, metrics, test
  files, the options each refuses).  ``setup``: data + model before any write.  ``recipe``: build_model, shared
  by training and every reload.  ``optim``: optimizer and schedules by parameter role.
- ``finish``: end-of-run work (method report, merge, adapter).  ``inference``: run folders -> models.
- ``ensemble``: several runs as one model, ``predict_images``.  ``cell``: one study cell in a subprocess.
- ``tracking``: TensorBoard and MLflow mirrors of a run.  ``errors``: the confusion matrix and the gallery of
  the most confidently wrong test images of a classification run.
"""

from .loop import evaluate, fit, resume
from .recipe import build_model
from .setup import prepare
from .tasks import ClassificationTask, RegressionTask, SegmentationTask, Task

__all__ = [
    "ClassificationTask",
    "RegressionTask",
    "SegmentationTask",
    "Task",
    "build_model",
    "evaluate",
    "fit",
    "prepare",
    "resume",
]
