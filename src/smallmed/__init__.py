"""smallmed: get the most out of a pretrained CNN on a small medical image dataset.

Example:
    >>> import smallmed
    >>> ds = smallmed.load_dataset("pneumoniamnist")                                   # doctest: +SKIP
    >>> model = smallmed.create_model("resnet18", 2, in_chans=1, input_size=28)
    >>> cfg = smallmed.TrainConfig(data="pneumoniamnist", epochs=10, out="runs/r18")
    >>> metrics = smallmed.fit(cfg)                                                     # doctest: +SKIP
"""

import importlib
from typing import TYPE_CHECKING

# Public names and the module each lives in. They load on first use (PEP 562), so `import smallmed`
# and the `smallmed` command start without torchvision, scipy or scikit-learn until a name needs them.
_LAZY = {
    "load_adapter": "adapters",
    "save_adapter": "adapters",
    "TrainConfig": "config",
    "load_dataset": "data",
    "SmallmedError": "errors",
    "classification_metrics": "metrics",
    "tpr_at_fpr": "metrics",
    "create_model": "models",
    "list_models": "models",
    "load_weights": "models",
    "build_model": "train",
    "evaluate": "train",
    "fit": "train",
    "resume": "train",
    "evaluate_run": "train.inference",
    "load_run": "train.inference",
    "predict_images": "train.ensemble",
    "apply_svd": "reparam",
    "fold": "reparam",
    "to_low_rank": "reparam",
    "FactorizeConfig": "reparam",
    "SVDConfig": "reparam",
    "factorize": "reparam",
    "frobenius_decay": "reparam",
    "kl_flatten_loss": "reparam",
    "receptive_field": "analysis.receptive_field",
    "cost": "analysis.cost",
}

if TYPE_CHECKING:  # what static checkers and IDEs see
    from .adapters import load_adapter, save_adapter
    from .analysis.cost import cost
    from .analysis.receptive_field import receptive_field
    from .config import TrainConfig
    from .data import load_dataset
    from .errors import SmallmedError
    from .metrics import classification_metrics, tpr_at_fpr
    from .models import create_model, list_models, load_weights
    from .reparam import (
        FactorizeConfig,
        SVDConfig,
        apply_svd,
        factorize,
        fold,
        frobenius_decay,
        kl_flatten_loss,
        to_low_rank,
    )
    from .train import build_model, evaluate, fit, resume
    from .train.ensemble import predict_images
    from .train.inference import evaluate_run, load_run


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'smallmed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "FactorizeConfig",
    "SVDConfig",
    "SmallmedError",
    "TrainConfig",
    "apply_svd",
    "load_adapter",
    "save_adapter",
    "build_model",
    "frobenius_decay",
    "resume",
    "classification_metrics",
    "cost",
    "create_model",
    "evaluate",
    "evaluate_run",
    "factorize",
    "fit",
    "fold",
    "kl_flatten_loss",
    "list_models",
    "load_dataset",
    "load_run",
    "load_weights",
    "predict_images",
    "receptive_field",
    "to_low_rank",
    "tpr_at_fpr",
]
