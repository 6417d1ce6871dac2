"""Training for binary segmentation (U-Net): BCE + soft Dice, Dice/IoU, overlays.

The same run-folder contract as classification: ``config.yaml``, ``history.csv``, atomic
``last.pt`` every epoch (exact resume), ``best.pt`` (lowest validation loss), ``metrics.json``
written last, plus ``overlays/`` PNGs of test predictions. Reached through :func:`smallmed.fit`
when the model's task is segmentation (``--model unet``).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..config import TrainConfig, dump_yaml
from ..errors import NonFiniteLossError, SmallmedError
from ..metrics.segmentation import dice_iou, soft_dice_loss
from .checkpoint import atomic_save, atomic_write_json, atomic_write_text, load_checkpoint

log = logging.getLogger(__name__)


def _tensors(split, size: int, mean: float, std: float):
    x = torch.from_numpy(np.asarray(split.images)).float()
    x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
    y = torch.from_numpy(np.asarray(split.masks)).float()[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        y = F.interpolate(y, size=(size, size), mode="nearest")
    return (x - mean) / std, y


def seg_loss(logits, y):
    return F.binary_cross_entropy_with_logits(logits, y) + soft_dice_loss(logits, y)


@torch.no_grad()
def evaluate_segmentation(model, x, y, batch: int = 32) -> dict:
    model.eval()
    dev = next(model.parameters()).device
    losses, preds = [], []
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch].to(dev)).float().cpu()
        losses.append(seg_loss(logits, y[i:i + batch]).item() * len(logits))
        preds.append(logits > 0)
    pred = torch.cat(preds)
    dice, iou = dice_iou(pred[:, 0], y[:, 0])
    return {"loss": sum(losses) / len(x), "dice": float(dice.mean()), "iou": float(iou.mean()),
            "dice_per_image": dice, "pred": pred}


def fit_segmentation(cfg: TrainConfig, *, resume: bool = False) -> dict:
    from ..data.masks import load_segmentation
    from ..models import create_model
    from .loop import _epoch_seed, _regulariser, _write_history, seed_everything
    from .optim import build_optimizer, build_scheduler
    from .setup import resolve_device

    ds = load_segmentation(cfg.data, data_dir=cfg.data_dir, split_seed=cfg.split_seed)
    size = cfg.image_size or ds.image_size
    tr = ds.splits["train"]
    mean, std = float(tr.images.mean()), float(tr.images.std()) or 1.0
    (xtr, ytr), (xva, yva), (xte, yte) = (_tensors(ds.splits[s], size, mean, std) for s in ("train", "val", "test"))
    if cfg.fraction < 1:
        g = torch.Generator().manual_seed(cfg.seed)
        keep = torch.randperm(len(xtr), generator=g)[: max(2, int(round(cfg.fraction * len(xtr))))]
        xtr, ytr = xtr[keep], ytr[keep]
    seed_everything(cfg.seed)
    model = create_model(cfg.model, 1, in_chans=xtr.shape[1], norm=cfg.norm, input_size=size, weights=cfg.weights)
    if cfg.conv != "conv":
        from ..reparam.factorized import factorize

        log.info("%s", factorize(model, cfg.conv, rank_ratio=cfg.rank_ratio if cfg.conv != "dpc" else None))
    device = resolve_device(cfg.device)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    scheduler, on_val = build_scheduler(optimizer, cfg)
    run_dir = Path(cfg.out or "runs/seg")
    history, start, best_loss, best_epoch = [], 0, math.inf, -1
    if resume and (run_dir / "last.pt").exists():
        ck = load_checkpoint(run_dir / "last.pt")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None and ck.get("scheduler"):
            scheduler.load_state_dict(ck["scheduler"])
        history, start, best_loss, best_epoch = ck["history"], ck["epoch"] + 1, ck["best_val_loss"], ck["best_epoch"]
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg.to_dict()))
    t_run = time.time()
    for epoch in range(start, cfg.epochs):
        es = _epoch_seed(cfg.seed, epoch)
        seed_everything(es)
        gen = torch.Generator().manual_seed(es)
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total, seen, reg_total, t0 = 0.0, 0, 0.0, time.time()
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            x, y = xtr[idx], ytr[idx]
            if cfg.augment != "none":
                flip = torch.rand(len(idx), generator=gen) < 0.5  # image and mask flipped together
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                y = torch.where(flip[:, None, None, None], y.flip(-1), y)
            x, y = x.to(device), y.to(device)
            loss = seg_loss(model(x).float(), y)
            if not math.isfinite(loss.item()):
                if not history and not resume:
                    shutil.rmtree(run_dir, ignore_errors=True)  # nothing good to keep: leave no half run
                kept = f"{run_dir / 'last.pt'} (after epoch {len(history)})" if history else "none (the run folder was removed)"
                raise NonFiniteLossError(f"loss became {loss.item()} at epoch {epoch + 1}; training stopped, last good "
                                         f"checkpoint: {kept}. Lower --lr or check the data.")
            total += loss.item() * len(idx)
            seen += len(idx)
            reg = _regulariser(model, cfg)
            if reg is not None:
                reg_total += reg.item() * len(idx)
                loss = loss + reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val = evaluate_segmentation(model, xva, yva)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step(val["loss"]) if on_val else scheduler.step()
        history.append({"epoch": epoch + 1, "lr": lr, "train_loss": total / max(seen, 1), "val_loss": val["loss"],
                        "val_dice": val["dice"], "val_iou": val["iou"], "seconds": round(time.time() - t0, 3)})
        if cfg.kl_weight or cfg.fd_weight:
            history[-1]["reg_loss"] = reg_total / max(seen, 1)
        log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val dice %.4f", epoch + 1, cfg.epochs,
                 history[-1]["train_loss"], val["loss"], val["dice"])
        if val["loss"] < best_loss:
            best_loss, best_epoch = val["loss"], epoch
            atomic_save({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": epoch, "mean": mean, "std": std,
                         "image_size": size, "in_chans": int(xtr.shape[1]), "task": "segmentation"}, run_dir / "best.pt")
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler is not None else None, "epoch": epoch,
                     "history": history, "best_val_loss": best_loss, "best_epoch": best_epoch}, run_dir / "last.pt")
        _write_history(run_dir / "history.csv", history)
    if best_epoch < 0:
        raise SmallmedError(f"{run_dir}: no epoch finished; nothing to evaluate.")
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    test = evaluate_segmentation(model, xte, yte)
    rng = np.random.default_rng(cfg.seed)
    boots = [test["dice_per_image"][rng.integers(0, len(xte), len(xte))].mean() for _ in range(1000)]
    save_overlays(xte[:4], yte[:4], test["pred"][:4], test["dice_per_image"][:4], run_dir / "overlays")
    metrics = {"test": {"loss": test["loss"], "dice": test["dice"], "iou": test["iou"], "n": len(xte),
                        "ci95": {"dice": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}},
               "best_epoch": best_epoch + 1, "epochs": cfg.epochs, "task": "segmentation",
               "total_params": sum(p.numel() for p in model.parameters()),
               "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "train_images": len(xtr), "wall_seconds": round(time.time() - t_run, 2), "data": {"name": ds.name,
               "source": ds.source, "split": ds.info.get("split")}}
    atomic_write_json(run_dir / "metrics.json", metrics)
    log.info("test dice %.4f  iou %.4f  (best epoch %d)  -> %s", test["dice"], test["iou"], best_epoch + 1, run_dir)
    return metrics


def save_overlays(x, y, pred, dice, out: Path) -> None:
    """Image, true mask (green) and predicted mask (red) per test image."""
    from ..report.plots import _save, plt

    for k in range(len(x)):
        img = x[k].mean(0).numpy()
        fig, ax = plt.subplots(figsize=(3.4, 3.4))
        ax.imshow(img, cmap="gray")
        ax.contour(y[k, 0].numpy(), levels=[0.5], colors="lime", linewidths=1)
        ax.contour(pred[k, 0].numpy().astype(float), levels=[0.5], colors="red", linewidths=1)
        ax.set_title(f"test {k}: Dice {dice[k]:.3f} (green truth, red prediction)", fontsize=8)
        ax.axis("off")
        _save(fig, out / f"test_{k}.png")


def load_segmentation_run(run_dir: str | Path, device: str = "cpu"):
    """(model, (C, H, W)) of a finished segmentation run's best epoch."""
    from ..models import create_model

    ck = load_checkpoint(Path(run_dir) / "best.pt")
    cfg = TrainConfig.from_dict({**ck["config"], "out": str(run_dir)}, source=str(Path(run_dir) / "best.pt"))
    in_chans = ck.get("in_chans")
    if in_chans is None:  # runs saved before in_chans was recorded: ask the data
        from ..data.masks import load_segmentation

        in_chans = load_segmentation(cfg.data, data_dir=cfg.data_dir, split_seed=cfg.split_seed).in_chans
    model = create_model(cfg.model, 1, in_chans=in_chans, norm=cfg.norm, input_size=ck["image_size"])
    if cfg.conv != "conv":
        from ..reparam.factorized import factorize

        factorize(model, cfg.conv, rank_ratio=cfg.rank_ratio if cfg.conv != "dpc" else None)
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), (in_chans, ck["image_size"], ck["image_size"])
