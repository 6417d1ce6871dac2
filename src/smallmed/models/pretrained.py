"""Named pretrained weights: torchvision's ImageNet weights and torchxrayvision's chest X-ray models.

- ``weights="imagenet"`` for resnet18/50, densenet121 and vgg16 (with or without BN): the files
  torchvision's weight enums name, downloaded into torch's hub cache (``$TORCH_HOME/hub/checkpoints``)
  with torchvision's hash check (the SHA-256 prefix in the file name), read with
  ``weights_only=True`` and adapted to 1-channel inputs and new heads as local files are.
- ``weights="xrv:densenet121-res224-nih"`` (``-all``, ``-chex``, ``-pc``, ``-mimic_nb``,
  ``-mimic_ch``) for densenet121: the DenseNet-121 chest X-ray models of torchxrayvision (Cohen
  et al. 2022), downloaded once and converted to safetensors (the published files are whole
  pickled models; the one conversion reads them with ``weights_only=True`` and an allowlist of
  module class names, so no code from the file runs, and they are never unpickled again). Their
  inputs are 1-channel 224 px scaled to [-1024, 1024] (``normalize="xrv"``, recorded in the run).

Offline, or when a download fails: one sentence naming the file and the folder to place it in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SmallmedError
from ._adapt import LoadReport, load_weights

log = logging.getLogger(__name__)

# model name -> (weights enum for norm="bn" where the layout has one, the enum for no BN)
TORCHVISION = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "densenet121": "DenseNet121_Weights.IMAGENET1K_V1",
    "vgg16": "VGG16_Weights.IMAGENET1K_V1",
    "vgg16_bn": "VGG16_BN_Weights.IMAGENET1K_V1",
}

XRV_BASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
XRV = {
    "densenet121-res224-all": "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "densenet121-res224-nih": "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "densenet121-res224-pc": "pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "densenet121-res224-chex": "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "densenet121-res224-mimic_nb": "mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
    "densenet121-res224-mimic_ch": "mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
}


def hub_dir() -> Path:
    """torch's hub checkpoint folder (``$TORCH_HOME/hub/checkpoints``), where torchvision keeps its weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _enum(spec: str):
    from torchvision.models import get_weight

    return get_weight(spec)


def torchvision_file(spec: str) -> Path:
    """Download (or find) the file of a torchvision weights enum, hash-checked as torchvision does."""
    from ..hub import download_file

    url = _enum(spec).url
    name = url.rsplit("/", 1)[-1]
    m = re.search(r"-([a-f0-9]{8,})\.", name)
    return download_file(url, hub_dir() / name, sha256=m.group(1) if m else None, what=f"ImageNet weights ({spec})")


def _densenet_keys(state: dict) -> dict:
    """Old torchvision DenseNet files name ``norm.1``; the modules are ``norm1`` (torchvision's own fix)."""
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
    )
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def load_imagenet(name: str):
    """A ``pretrained`` loader of the registry for torchvision model ``name``."""

    def load(model: nn.Module) -> LoadReport:
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        spec = TORCHVISION["vgg16_bn" if name == "vgg16" and has_bn else name]
        path = torchvision_file(spec)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SmallmedError(f"{path}: not a readable weights file ({e}); delete it to download again.") from None
        if name == "densenet121":
            state = _densenet_keys(state)
        if name == "vgg16":  # smallmed's VGG has a GAP + one Linear head instead of the three 4096-wide layers
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        return load_weights(model, state, source=str(path), strict=name != "vgg16" or has_bn)

    return load


# ---------------------------------------------------------------------------------------------- torchxrayvision

_ALLOWED_PREFIXES = ("torch.nn.", "torchvision.models.", "torchxrayvision.", "models.")


def _stub(qualified: str) -> type:
    """An empty ``nn.Module`` subclass standing in for a pickled model class (no code of it runs)."""
    module, _, qualname = qualified.rpartition(".")
    return type(
        qualname, (nn.Module,), {"__module__": module, "__qualname__": qualname, "forward": lambda self, *a: None}
    )


def convert_pickled_model(src: str | Path, dst: str | Path) -> Path:
    """Read a whole pickled ``nn.Module`` with ``weights_only=True`` and an allowlist, write its state as safetensors.

    The allowlist holds the file's own class names (read from the pickle without running it):
    torch.nn classes are the real ones, model classes (torchxrayvision's DenseNet and its blocks)
    are empty stand-ins, so nothing but tensors and module attributes is rebuilt. Anything else in
    the file (a function, an unknown type) is refused.
    """
    import importlib

    from safetensors.torch import save

    src, dst = Path(src), Path(dst)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(src))
    except Exception as e:
        raise SmallmedError(f"{src}: not a readable PyTorch file ({e}); delete it to download again.") from None
    allow: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = []  # torch.serialization.safe_globals's type
    for q in names:
        if not q.startswith(_ALLOWED_PREFIXES):
            raise SmallmedError(f"{src}: holds {q}, which is not a model class; refusing to unpickle it.")
        module, _, attr = q.rpartition(".")
        obj = None
        if q.startswith("torch.nn."):
            try:
                obj = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                obj = None
        if obj is None or not (isinstance(obj, type) and issubclass(obj, nn.Module)):
            if q.startswith("torch.nn."):
                raise SmallmedError(f"{src}: holds {q}, which is not a torch.nn module class; refusing it.")
            obj = _stub(q)
        allow.append(obj)
    with torch.serialization.safe_globals(allow):
        try:
            obj = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SmallmedError(f"{src}: could not be read safely ({str(e).splitlines()[0]}).") from None
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SmallmedError(f"{src}: expected a model or a state dict of tensors, found {type(obj).__name__}.")
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    from ..io import atomic_write_bytes

    atomic_write_bytes(dst, save(tensors, metadata={"converted_from": src.name}))
    return dst


def xrv_file(name: str) -> Path:
    """The safetensors file of torchxrayvision model ``name``: downloaded and converted once, then reused."""
    from ..data.paths import cache_dir
    from ..hub import download_file

    if name not in XRV:
        raise SmallmedError(
            f"weights='xrv:{name}': torchxrayvision DenseNet-121 models are {', '.join('xrv:' + k for k in XRV)}."
        )
    folder = cache_dir() / "weights" / "xrv"
    out = folder / f"{name}.safetensors"
    if out.exists():
        return out
    raw = folder / XRV[name]
    download_file(XRV_BASE + XRV[name], raw, what=f"torchxrayvision weights ({name})")
    convert_pickled_model(raw, out)
    raw.unlink()  # the pickle is never read again
    log.info("converted %s to %s", raw.name, out)
    return out


def load_xrv(name: str):
    def load(model: nn.Module) -> LoadReport:
        from safetensors.torch import load_file

        path = xrv_file(name)
        state = {k: v for k, v in load_file(str(path)).items() if k != "op_threshs"}
        return load_weights(model, state, source=str(path))

    return load


def xrv_weights() -> dict:
    return {f"xrv:{k}": load_xrv(k) for k in XRV}
