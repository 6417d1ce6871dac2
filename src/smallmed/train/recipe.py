"""One model recipe for training, loading, evaluation, prediction and the studies.

``build_model(cfg, ...)`` = ``create_model`` -> ``factorize`` (cheap convs) -> the fine-tuning
method (SVD, linear probe). The recipe (a small dict) is saved in every checkpoint; rebuilding a
run's model is ``build_model(cfg, **recipe, pretrained=False)`` followed by a strict
``load_state_dict``, so the four places that used to rebuild models are this one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import SmallmedError
from ..models import create_model, model_entry
from ..roles import model_info

log = logging.getLogger(__name__)


@dataclass
class Built:
    model: nn.Module
    recipe: dict  # num_classes, in_chans, input_size, stem (+ "custom" for a model passed in)
    trainable_names: set
    svd_summary: object = None
    pretrained_state: dict | None = None  # kept for seed 000's R ratio of fully fine-tuned runs
    total_params: int = 0  # the plain model's size, before any reparametrisation
    named_weights: bool = False  # cfg.weights names the registry's pretrained weights
    base_hash: str | None = None  # fingerprint of the weights the method starts from (smallmed.adapters)


def build_model(
    cfg: TrainConfig,
    *,
    num_classes: int,
    in_chans: int,
    input_size: int | None,
    stem: str | None = None,
    pretrained: bool = True,
    model: nn.Module | None = None,
    custom: str | None = None,
) -> Built:
    """Create (or take) the model, factorize its convs, apply the fine-tuning method.

    Args:
        cfg: the run's config (model, weights, norm, conv, rank_ratio, method, svd_* and seed).
        num_classes, in_chans, input_size: what the data asks of the model.
        stem: the resolved stem of a saved recipe (``cfg.stem`` otherwise).
        pretrained: load ``cfg.weights`` (False when a checkpoint's state dict follows).
        model: a user's own ``nn.Module`` instead of a registry name.

    Example:
        >>> b = build_model(TrainConfig(model="small_cnn", method="full-svd"), num_classes=2, in_chans=1, input_size=16)
        >>> sorted(b.recipe), sorted(b.svd_summary.groups)
        (['in_chans', 'input_size', 'num_classes', 'stem'], ['head', 'sigma'])
    """
    named = False
    if model is None:
        entry = model_entry(cfg.model)
        named = pretrained and bool(cfg.weights) and cfg.weights in (entry.pretrained or {})
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
        model = create_model(
            cfg.model,
            num_classes,
            in_chans=in_chans,
            norm=cfg.norm,
            input_size=input_size,
            stem=stem or cfg.stem,
            weights=cfg.weights if pretrained else None,
        )
        recipe = {
            "num_classes": num_classes,
            "in_chans": in_chans,
            "input_size": input_size,
            "stem": model_info(model).stem,
        }  # resolved from "auto": a reload builds the same layers
        if model_info(model).load_report is not None:
            log.info("weights %s: %s", cfg.weights, model_info(model).load_report)
    else:
        recipe = {
            "num_classes": num_classes,
            "in_chans": in_chans,
            "input_size": input_size,
            "stem": None,
            "custom": custom or type(model).__name__,
        }
    fcfg = cfg.factorize
    if fcfg is not None:
        from ..reparam.factorized import factorize

        log.info("%s", factorize(model, fcfg))
    total = sum(p.numel() for p in model.parameters())
    pretrained_state = None
    if pretrained and cfg.weights and cfg.method == "full":
        pretrained_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    from ..adapters import base_fingerprint, method_settings
    from ..methods import apply_method

    base_hash = base_fingerprint(model) if pretrained and cfg.method != "full" else None
    settings = method_settings(cfg)
    names, summary = apply_method(model, cfg.method, settings)
    info = model_info(model)
    info.method, info.method_settings, info.base_hash = cfg.method, settings, base_hash
    return Built(model, recipe, names, summary, pretrained_state, total, named, base_hash)


def rebuild(cfg: TrainConfig, recipe: dict, state: dict, *, where: str = "checkpoint") -> nn.Module:
    """A run's model from its recipe and state dict (strict key and shape check)."""
    if recipe.get("custom"):
        raise SmallmedError(
            f"{where}: trained with a custom model ({recipe['custom']}); rebuild it and load the state dict yourself."
        )
    built = build_model(
        cfg,
        num_classes=recipe["num_classes"],
        in_chans=recipe["in_chans"],
        input_size=recipe["input_size"],
        stem=recipe.get("stem"),
        pretrained=False,
    )
    try:
        built.model.load_state_dict(state)
    except RuntimeError as e:
        raise SmallmedError(f"{where}: weights do not fit {cfg.model} ({str(e).splitlines()[0]}).") from None
    return built.model
