"""Training. ``loop``: fit/evaluate with resume; ``setup``: data+model before any write;
``optim``: optimizer and schedules by parameter role; ``checkpoint``: atomic files; ``inference``: runs -> predictions."""

from .loop import evaluate, fit
from .setup import prepare

__all__ = ["evaluate", "fit", "prepare"]
