"""Models: one registry over torchvision/timm backbones adapted to small medical images.

- ``registry``: names -> builders.  ``_adapt``: safe weight loading, stems, classifier heads.  ``_layers``: shared
  building blocks: the one place where ``norm`` orders conv, BatchNorm and ReLU.
  ``pretrained``: named weights (ImageNet, torchxrayvision) fetched on request with a hash check.
- ``resnet``, ``densenet``, ``densenet_ra2``, ``vgg``, ``small_cnn``, ``efficientnet``, ``unet``: one file per
  family, each registering its builders; every module here is imported by discovery, so a new family is a
  new file.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from pathlib import Path

from torch import nn

from ..analysis.cost import check_input_size
from ..errors import SmallmedError
from ..registry import check_choice
from ..roles import model_info
from ._adapt import (
    LoadReport,
    checkpoint_norm,
    head_name,
    load_weights,
    read_state_dict,
    reset_classifier,
)
from .registry import MODELS, ModelEntry

__all__ = [
    "MODELS",
    "LoadReport",
    "create_model",
    "head_name",
    "list_models",
    "load_weights",
    "model_entry",
    "read_state_dict",
    "reset_classifier",
]

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_") and _m.name not in ("registry", "pretrained"):
        importlib.import_module(f"{__name__}.{_m.name}")  # each family file registers its builders

log = logging.getLogger(__name__)
STEMS = ("auto", "imagenet", "small")


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those of one ``task`` (classification, segmentation)."""
    return [n for n in MODELS.names() if task is None or MODELS.get(n).task == task]


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ``timm:<architecture>`` builds any timm model (see :func:`timm_entry`)."""
    if isinstance(name, str) and name.startswith("timm:"):
        return timm_entry(name[len("timm:") :])
    return MODELS.get(name)


def timm_entry(arch: str) -> ModelEntry:
    """An entry for timm architecture ``arch``: ``weights="imagenet"`` is timm's own pretrained file
    (``pretrained=True``, from timm's cache or the Hugging Face Hub); timm adapts the input channels
    and the head (found by ``get_classifier()``)."""
    try:
        import timm
    except ImportError:
        raise SmallmedError(f"model='timm:{arch}' needs timm: pip install timm.") from None
    if not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise SmallmedError(
            f"model='timm:{arch}': timm has no such architecture"
            + (f"; did you mean {', '.join(close)}?" if close else ".")
        )

    def build(*, num_classes: int, in_chans: int, **_) -> nn.Module:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)

    def load_pretrained(model: nn.Module) -> LoadReport:
        head = head_name(model)
        try:
            ref = timm.create_model(
                arch, pretrained=True, num_classes=model.get_submodule(head).out_features, in_chans=_in_chans(model)
            )
        except Exception as e:
            raise SmallmedError(
                f"timm could not get the pretrained weights of {arch} ({str(e).splitlines()[0][:200]}); "
                "timm downloads them once into the Hugging Face cache (HF_HOME): run once online, "
                "or pass --weights FILE."
            ) from None
        state = {k: v for k, v in ref.state_dict().items() if not k.startswith(head + ".")}
        return load_weights(model, state, source=f"timm:{arch} (pretrained)")

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
        mean = tuple(cfg.mean) if cfg is not None else None  # no pretrained config: no mean, as in the except
    except Exception:
        mean = None
    return ModelEntry(
        build,
        head="",
        pretrained={"imagenet": load_pretrained},
        pretrained_normalize="half" if mean == (0.5, 0.5, 0.5) else "imagenet",
        description=f"timm {arch}",
    )


def _in_chans(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


def _resolve_weights(name: str, entry: ModelEntry, weights: str | Path | None) -> tuple[str | Path | None, bool]:
    """``weights`` as a file or a known name (a run folder becomes its best model); whether it is a name."""
    if (
        weights is not None
        and not (isinstance(weights, str) and weights in (entry.pretrained or {}))
        and Path(weights).is_dir()
    ):  # a run folder: start from its best model (--init RUN)
        run = Path(weights)
        best = run / ("folded.pt" if (run / "folded.pt").exists() else "best.pt")
        if not best.exists():
            raise SmallmedError(
                f"weights={weights}: a folder without best.pt; expected a finished run folder or a weights file."
            )
        weights = str(best)
    named = isinstance(weights, str) and weights in (entry.pretrained or {})
    if (
        isinstance(weights, str)
        and not named
        and not Path(weights).exists()
        and "/" not in weights
        and "." not in weights
    ):
        offers = ", ".join(entry.pretrained or {}) or "none"
        raise SmallmedError(f"weights={weights!r} is neither a file nor a known name for {name} (offers: {offers}).")
    return weights, named


def create_model(
    name: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    weights: str | Path | None = None,
    norm: str = "bn",
    input_size: int | None = None,
    stem: str = "auto",
    strict: bool = True,
) -> nn.Module:
    """Build a registered model, optionally loading weights from a local file or a known name.

    Args:
        name: a registered model (see :func:`list_models`).
        num_classes: outputs of the classifier; a loaded classifier of another size is replaced.
        in_chans: input channels; a loaded RGB stem is summed into a grayscale one.
        weights: ``None`` (random init), a file (safetensors, state dict or smallmed checkpoint),
            or a name such as ``"imagenet"`` where the model offers one.
        norm: ``"bn"``, ``"none"`` or ``"bn-after-act"`` (BN after the ReLU), where the model
            supports it (vgg16, resnet18/50, small_cnn).
        input_size: the side of the input images; needed by models with a fixed flatten and
            used by ``stem="auto"``.
        stem: ``"small"`` (3x3 stride-1, no max-pool: for inputs under 64 px), ``"imagenet"``
            (the original stem), or ``"auto"`` (small below 64 px unless ImageNet weights are named).
        strict: missing/unexpected keys in ``weights`` are errors (the classifier excepted).

    Example:
        >>> model = create_model("resnet18", num_classes=2, in_chans=1, input_size=28)
        >>> model.conv1
        Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    entry: ModelEntry = model_entry(name)
    check_choice(f"norm for {name}", norm, entry.norms)
    if name.startswith("timm:"):
        if stem == "small":
            raise SmallmedError(f"stem='small' is for smallmed's own ResNet/DenseNet/VGG; {name} keeps timm's stem.")
        stem = "imagenet"
    check_choice("stem", stem, STEMS)
    if num_classes < 1:
        raise SmallmedError(f"num_classes={num_classes}: expected at least 1.")
    if in_chans < 1:
        raise SmallmedError(f"in_chans={in_chans}: expected at least 1.")
    weights, named = _resolve_weights(name, entry, weights)
    if stem == "auto":
        stem = "small" if (input_size is not None and input_size < 64 and not named) else "imagenet"
    if named and stem == "small":
        raise SmallmedError(
            f"stem='small' conflicts with weights={weights!r}, which were trained with the ImageNet stem."
        )
    if name == "small_cnn" and input_size is not None and input_size < 4:
        raise SmallmedError(f"input_size={input_size}: small_cnn needs at least 4 px.")
    model = entry.build(
        num_classes=num_classes, in_chans=in_chans, norm=norm, small_input=stem == "small", input_size=input_size
    )
    if input_size is not None and input_size < 64:  # every registered family takes 64 px; below, one blank pass
        check_input_size(model, in_chans, input_size, name)
    info = model_info(model)
    info.head, info.stem = entry.head or None, stem
    if named:
        assert entry.pretrained is not None and isinstance(weights, str)  # named: a key of entry.pretrained
        report = entry.pretrained[weights](model)
    elif weights is not None:
        # BN statistics fitted before a ReLU do not describe activations after it: keep them fresh,
        # unless the file is a smallmed checkpoint trained with the same placement
        skip = norm == "bn-after-act" and checkpoint_norm(weights) != "bn-after-act"
        report = load_weights(model, weights, strict=strict, skip_norm=skip)
    else:
        report = None
    info.load_report = report
    return model
