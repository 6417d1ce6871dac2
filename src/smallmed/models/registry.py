"""The model registry: a builder per name plus what the trainer needs to know about it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    """``build(num_classes=, in_chans=, norm=, small_input=, input_size=)`` -> nn.Module.

    ``norms`` lists the ``norm=`` options the builder accepts; ``pretrained`` maps a weights name
    (``"imagenet"``) to a function that loads those weights into a built model.
    """

    build: Callable[..., nn.Module]
    head: str
    norms: tuple[str, ...] = ("bn",)
    pretrained: dict[str, Callable] | None = None
    pretrained_normalize: str | dict = "imagenet"  # or per weights name
    description: str = ""
    task: str = "classification"  # or "segmentation": logit maps [N, classes, H, W]

    def normalize_for(self, weights: str | None) -> str:
        """The input normalisation the named ``weights`` were trained with."""
        n = self.pretrained_normalize
        return n.get(weights, "imagenet") if isinstance(n, dict) else n


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(
    name: str,
    *,
    head: str,
    norms=("bn",),
    pretrained=None,
    pretrained_normalize="imagenet",
    description: str = "",
    task: str = "classification",
):
    def deco(fn):
        MODELS.add(name, ModelEntry(fn, head, tuple(norms), pretrained, pretrained_normalize, description, task))
        return fn

    return deco
