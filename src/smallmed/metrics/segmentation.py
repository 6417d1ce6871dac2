"""Dice and IoU for binary masks, per image (then averaged), from probabilities or logits."""

from __future__ import annotations

import numpy as np
import torch


def dice_iou(
    pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, eps: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of binary masks [N, H, W] (or [N, 1, H, W]). Two empty masks score 1."""
    p = torch.as_tensor(pred).bool().reshape(len(pred), -1)
    t = torch.as_tensor(target).bool().reshape(len(target), -1)
    inter = (p & t).sum(1).double()
    ps, ts = p.sum(1).double(), t.sum(1).double()
    union = ps + ts - inter
    dice = torch.where(ps + ts > 0, 2 * inter / (ps + ts).clamp(min=eps), torch.ones_like(inter))
    iou = torch.where(union > 0, inter / union.clamp(min=eps), torch.ones_like(inter))
    return dice.numpy(), iou.numpy()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) against a {0, 1} target, averaged over images."""
    p = torch.sigmoid(logits).reshape(len(logits), -1)
    t = target.reshape(len(target), -1).float()
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()
