"""Optimizer and LR schedule, built *after* the model is final, with parameter groups by role."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..config import TrainConfig, resolved

log = logging.getLogger(__name__)


NO_DECAY = ("sigma", "bn", "bias")  # decaying singular values or norms would shrink them towards 0


def param_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict]:
    """Groups by role (weight, head, sigma, bn, bias), found by module type, with their sizes.

    Every parameter is included, frozen or not: a frozen one has no gradient and the optimizer
    skips it, so a schedule can unfreeze it later without rebuilding the optimizer. Weight decay
    applies to conv/linear weights and the head only.
    """
    from ..roles import parameter_roles

    roles = parameter_roles(model)
    groups: dict[str, list] = {}
    for name, p in model.named_parameters():
        groups.setdefault(roles.get(name, "weight"), []).append(p)
    return [{"name": k, "params": v, "weight_decay": 0.0 if k in NO_DECAY else weight_decay} for k, v in groups.items()]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # the recipe's or the method's values when unset (filled when the config is built)
    lr, weight_decay = resolved(cfg.lr, "lr"), resolved(cfg.weight_decay, "weight_decay")
    groups = param_groups(model, weight_decay)
    sizes = ", ".join(
        f"{g['name']} {sum(p.numel() for p in g['params'] if p.requires_grad):,}"
        f"/{sum(p.numel() for p in g['params']):,}"
        for g in groups
    )
    log.info("optimizer %s lr %g, groups (trainable/all): %s", cfg.optimizer, lr, sizes)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=resolved(cfg.betas, "betas"), weight_decay=weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    """Returns a scheduler and whether it steps on the validation loss."""
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.factor, patience=cfg.patience
        ), True
    if cfg.scheduler == "step":
        step = cfg.step_size or max(1, cfg.epochs // 2)
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=cfg.factor), False
    if cfg.scheduler == "cosine":
        w = cfg.warmup_epochs or 0
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs - w)
        if not w:
            return cosine, False
        # a linear warmup from lr/10 over the first epochs, then the cosine decay (timm's and MedMNIST+'s shape)
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=w)
        return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cosine], milestones=[w]), False
    return None, False
