"""Optimizer and LR schedule, built *after* the model is final, with parameter groups by role."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..config import TrainConfig
from ..models import head_name

log = logging.getLogger(__name__)


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups, ``head`` (the classifier) and ``body`` (everything else), with their sizes.

    Every parameter is included, frozen or not: a frozen one has no gradient and the optimizer
    skips it, so a schedule can unfreeze it later without rebuilding the optimizer.
    """
    head = head_name(model) + "."
    groups: dict[str, list] = {"body": [], "head": []}
    for name, p in model.named_parameters():
        groups["head" if name.startswith(head) else "body"].append(p)
    return [{"name": k, "params": v} for k, v in groups.items() if v]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model)
    sizes = ", ".join(f"{g['name']} {sum(p.numel() for p in g['params']):,}" for g in groups)
    log.info("optimizer %s lr %g, groups: %s", cfg.optimizer, cfg.lr, sizes)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    """Returns a scheduler and whether it steps on the validation loss."""
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.factor, patience=cfg.patience), True
    if cfg.scheduler == "step":
        step = cfg.step_size or max(1, cfg.epochs // 2)
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=cfg.factor), False
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs), False
    return None, False
