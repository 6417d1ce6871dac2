"""Training. ``loop``: the one fit/resume/evaluate for every task; ``tasks``: what each task adds
(loss, metrics, test files); ``recipe``: build_model, shared by training and every reload;
``setup``: data+model before any write; ``optim``: optimizer and schedules by parameter role;
``checkpoint``: atomic files; ``inference``: runs -> predictions."""

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
