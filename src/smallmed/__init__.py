"""smallmed: get the most out of a pretrained CNN on a small medical image dataset.

Example:
    >>> import smallmed
    >>> ds = smallmed.load_dataset("pneumoniamnist")                                   # doctest: +SKIP
    >>> model = smallmed.create_model("resnet18", 2, in_chans=1, input_size=28)
    >>> cfg = smallmed.TrainConfig(data="pneumoniamnist", epochs=10, out="runs/r18")
    >>> metrics = smallmed.fit(cfg)                                                     # doctest: +SKIP
"""

from .adapters import load_adapter, save_adapter
from .config import TrainConfig
from .data import load_dataset
from .errors import SmallmedError
from .metrics import classification_metrics, tpr_at_fpr
from .models import create_model, list_models, load_weights
from .train import build_model, evaluate, fit, resume
from .train.inference import evaluate_run, load_run, predict_images
from .reparam import apply_svd, fold, to_low_rank
from .analysis.receptive_field import receptive_field
from .analysis.cost import cost
from .reparam import FactorizeConfig, SVDConfig, factorize, frobenius_decay, kl_flatten_loss

__version__ = "0.1.0"

__all__ = [
    "FactorizeConfig", "SVDConfig", "SmallmedError", "TrainConfig", "apply_svd", "load_adapter", "save_adapter", "build_model", "frobenius_decay",
    "resume", "classification_metrics", "cost", "create_model", "evaluate",
    "evaluate_run", "factorize", "fit", "fold", "kl_flatten_loss", "list_models", "load_dataset", "load_run", "load_weights", "predict_images",
    "receptive_field", "to_low_rank", "tpr_at_fpr",
]
