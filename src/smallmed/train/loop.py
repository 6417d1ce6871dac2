"""The training loop: fit, evaluate, checkpoint every epoch, resume exactly.

Determinism: the model is initialised from ``seed``, and every epoch reseeds all generators
from ``(seed, epoch)``, so a run resumed from the checkpoint of epoch e continues exactly as
the uninterrupted run would have (on the same device and thread count).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, DistributedSampler

from ..config import TrainConfig, dump_yaml, load_yaml
from ..errors import NonFiniteLossError, SmallmedError
from ..metrics import bootstrap_ci, classification_metrics, loss_variance
from ..models import MODELS, head_name
from ..report import plot_history, plot_roc, write_run_report
from ..schedules import Callback, TwoStage
from .checkpoint import atomic_save, atomic_write_json, atomic_write_text, load_checkpoint
from .optim import build_optimizer, build_scheduler
from .setup import Setup, prepare

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**31


def loss_fn(task: str) -> nn.Module:
    return nn.BCEWithLogitsLoss() if task == "multilabel" else nn.CrossEntropyLoss()


def probabilities(task: str, logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


@torch.no_grad()
def predict_loader(model: nn.Module, loader: DataLoader, task: str, device: torch.device, amp: bool = False):
    """Mean loss, probabilities (N, K) and targets over a loader, in eval mode."""
    model.eval()
    crit = loss_fn(task)
    total, n, probs, ys = 0.0, 0, [], []
    with parametrize.cached():  # rebuild reparametrised weights once, not once per batch
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            total += crit(logits, y).item() * len(x)
            n += len(x)
            probs.append(probabilities(task, logits).cpu())
            ys.append(y.cpu())
    return total / max(n, 1), torch.cat(probs).numpy(), torch.cat(ys).numpy()


def evaluate(model: nn.Module, loader: DataLoader, task: str, device: torch.device | str = "cpu",
             fprs: tuple[float, ...] = (1e-3, 1e-2), amp: bool = False) -> dict:
    """Loss and every classification metric of ``model`` on ``loader``.

    Example:
        >>> evaluate(model, test_loader, "binary")["auc"]   # doctest: +SKIP
        0.951
    """
    device = torch.device(device)
    loss, probs, y = predict_loader(model, loader, task, device, amp)
    return {"loss": loss, **classification_metrics(task, y, probs, fprs=fprs)}


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _distributed() -> tuple[bool, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1, int(os.environ.get("RANK", "0")), world


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _prepare_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    out = Path(cfg.out) if cfg.out else Path("runs") / f"{cfg.model}-{Path(str(cfg.data)).stem}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not resume and out.exists() and any(out.iterdir()):
        raise SmallmedError(f"{out}: run folder already exists and is not empty; pass --resume {out} to continue it "
                            "or choose another --out.")
    return out


def fit(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    model: nn.Module | None = None,
    dataset=None,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
) -> dict:
    """Train, keep the best epoch by validation loss, evaluate it on the test split.

    Writes ``config.yaml``, ``history.csv``, ``last.pt`` (every epoch), ``best.pt``,
    ``metrics.json``, ``test_predictions.csv``, ``loss_curves.png``, ``roc_test.png`` and ``report.md`` to the
    run folder. With ``resume`` the run folder's config is used and training continues after
    its last completed epoch. Returns the contents of ``metrics.json``.

    Example:
        >>> from smallmed import TrainConfig, fit
        >>> m = fit(TrainConfig(data="pneumoniamnist", model="resnet18", epochs=10, out="runs/r18"))  # doctest: +SKIP
        >>> m["test"]["auc"]   # doctest: +SKIP
        0.95
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").exists():
            raise SmallmedError(f"{run_dir}: no config.yaml; not a smallmed run folder to resume.")
        saved = load_yaml(run_dir / "config.yaml")
        saved["out"] = str(run_dir)
        cfg = TrainConfig.from_dict(saved, source=str(run_dir / "config.yaml"))
    if model is None and MODELS.get(cfg.model).task == "segmentation":
        from .segment import fit_segmentation

        if resume is None:
            cfg.out = str(_prepare_run_dir(cfg, False))
        return fit_segmentation(cfg, resume=resume is not None)
    distributed, rank, world = _distributed()
    seed_everything(cfg.seed)
    setup = prepare(cfg, model=model, dataset=dataset)  # every input check happens here, before any write
    run_dir = _prepare_run_dir(cfg, resume is not None)
    cfg.out = str(run_dir)
    main = rank == 0
    if distributed and not dist.is_initialized():
        backend = "nccl" if setup.device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        if setup.device.type == "cuda":
            torch.cuda.set_device(setup.device)
    try:
        return _fit(setup, run_dir, resume is not None, callbacks, distributed, rank, world, main)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _regulariser(model: nn.Module, cfg: TrainConfig):
    """lambda * KL flattening (sfconv) or Frobenius decay (fconv); None when neither is on."""
    if cfg.kl_weight:
        from ..reparam.factorized import kl_flatten_loss

        return cfg.kl_weight * kl_flatten_loss(model)
    if cfg.fd_weight:
        from ..reparam.factorized import frobenius_decay

        return cfg.fd_weight * frobenius_decay(model)
    return None


def _rff_callbacks(setup: Setup, model: nn.Module) -> list[Callback]:
    cfg = setup.cfg
    if not (cfg.rff_epochs or cfg.rff_alternate):
        return []
    from ..schedules import RFFreeze, following_norms, rff_layers

    size = (setup.model_kwargs["in_chans"], setup.image_size, setup.image_size)
    layers = list(cfg.rff_layers) or rff_layers(model, size)
    cb = RFFreeze(model, layers, cfg.rff_epochs, cfg.rff_alternate)  # checks the names first
    cb.norms = following_norms(model, layers, size)
    return [cb]


def _fit(setup: Setup, run_dir: Path, resuming: bool, callbacks, distributed, rank, world, main) -> dict:
    cfg, ds, device = setup.cfg, setup.dataset, setup.device
    model = setup.model.to(device)
    head = head_name(model)
    names = setup.trainable_names
    schedule = TwoStage(head, cfg.head_epochs, rest=lambda n: n in names, freeze_bn=cfg.freeze_bn_stats)
    callbacks = [schedule, *_rff_callbacks(setup, model), *callbacks]
    optimizer = build_optimizer(model, cfg)
    scheduler, on_val = build_scheduler(optimizer, cfg)
    history: list[dict] = []
    start, best_loss, best_epoch = 0, math.inf, -1
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resuming and last_path.exists():
        ckpt = load_checkpoint(last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        history, start = ckpt["history"], ckpt["epoch"] + 1
        best_loss, best_epoch = ckpt["best_val_loss"], ckpt["best_epoch"]
        log.info("resuming %s after epoch %d", run_dir, start)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg.to_dict()))
    train_model: nn.Module = model
    sampler = None
    if distributed:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=cfg.head_epochs > 0)
    train_ds_len = len(setup.train_idx)
    crit = loss_fn(ds.task)
    val_loader = setup.loader("val", train=False)
    t_run = time.time()
    trainable = 0
    for epoch in range(start, cfg.epochs):
        es = _epoch_seed(cfg.seed, epoch)
        seed_everything(es)
        gen = torch.Generator().manual_seed(es)
        train_ds = setup.dataset_for("train", train=True)
        if distributed:
            sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                         drop_last=True)
            sampler.set_epoch(epoch)
        train_loader = setup.loader("train", train=True, sampler=sampler, generator=gen, dataset=train_ds)
        train_model.train()
        for cb in callbacks:
            cb.on_epoch_start(epoch, model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        t0 = time.time()
        total, seen, reg_total = 0.0, 0, 0.0
        bar = _progress(train_loader, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and main)
        for step, (x, y) in enumerate(bar):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, cfg.amp):
                logits = train_model(x)
            loss = crit(logits.float(), y)
            value = loss.item()
            if not math.isfinite(value):
                if not history and not resuming and main:
                    shutil.rmtree(run_dir, ignore_errors=True)  # nothing good to keep: leave no half run
                kept = f"{last_path} (after epoch {len(history)})" if history else "none (the run folder was removed)"
                raise NonFiniteLossError(
                    f"loss became {value} at epoch {epoch + 1}, step {step + 1}; training stopped, last good "
                    f"checkpoint: {kept}. Lower --lr or check the data."
                )
            reg = _regulariser(model, cfg)  # a visible term of the loss, logged as its own column
            if reg is not None:
                reg_total += reg.item() * len(x)
                loss = loss + reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += value * len(x)
            seen += len(x)
            for cb in callbacks:
                cb.on_batch_end(epoch, step, value)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / seen:.4f}")
        if distributed:  # the epoch's training loss over every rank's shard
            t = torch.tensor([total, float(seen)], device=device)
            dist.all_reduce(t)
            total, seen = t[0].item(), int(t[1].item())
        val = evaluate(model, val_loader, ds.task, device, cfg.fprs, cfg.amp)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step(val["loss"]) if on_val else scheduler.step()
        row = {
            "epoch": epoch + 1, "lr": lr, "train_loss": total / max(seen, 1), "val_loss": val["loss"],
            "val_acc": val["acc"], "val_balanced_acc": val["balanced_acc"], "val_auc": val["auc"],
            "trainable_params": trainable, "seconds": round(time.time() - t0, 3),
        }
        if cfg.kl_weight or cfg.fd_weight:
            row["reg_loss"] = reg_total / max(seen, 1)
        history.append(row)
        improved = val["loss"] < best_loss
        if improved:
            best_loss, best_epoch = val["loss"], epoch
        log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val auc %.4f  val acc %.4f  %.1fs%s",
                 epoch + 1, cfg.epochs, row["train_loss"], val["loss"], val["auc"], val["acc"], row["seconds"],
                 "  *best" if improved else "")
        if main:
            if improved:
                atomic_save(_best_payload(setup, model, epoch, best_loss), best_path)
            atomic_save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "epoch": epoch, "history": history, "best_val_loss": best_loss, "best_epoch": best_epoch,
            }, last_path)
            _write_history(run_dir / "history.csv", history)
    if distributed:
        dist.barrier()
    if not main:
        return {}
    return _finish(setup, run_dir, model, history, best_epoch, trainable, train_ds_len, time.time() - t_run)


def _best_payload(setup: Setup, model: nn.Module, epoch: int, val_loss: float) -> dict:
    return {
        "model": model.state_dict(), "epoch": epoch, "val_loss": val_loss,
        "config": setup.cfg.to_dict(), "model_kwargs": setup.model_kwargs,
        "task": setup.dataset.task, "class_names": setup.dataset.class_names,
        "image_size": setup.image_size, "normalize": setup.normalize,
        "mean": list(setup.mean) if setup.mean else None, "std": list(setup.std) if setup.std else None,
    }


def _finish(setup: Setup, run_dir: Path, model, history, best_epoch, trainable, n_train, seconds) -> dict:
    cfg, ds = setup.cfg, setup.dataset
    best = load_checkpoint(run_dir / "best.pt")
    model.load_state_dict(best["model"])
    test_loader = setup.loader("test", train=False)
    loss, probs, y = predict_loader(model, test_loader, ds.task, setup.device, cfg.amp)
    test = {"loss": loss, **classification_metrics(ds.task, y, probs, fprs=cfg.fprs)}
    # 95% bootstrap intervals over test images: how much one test set of this size can tell
    test["ci95"] = bootstrap_ci(ds.task, y, probs, n=1000, seed=cfg.seed, fpr=cfg.fprs[0])
    val_losses = [r["val_loss"] for r in history]
    metrics = {
        "test": test,
        "val": {k: history[best_epoch][k] for k in ("val_loss", "val_acc", "val_auc", "val_balanced_acc")},
        "best_epoch": best_epoch + 1,
        "epochs": len(history),
        "trainable_params": int(trainable),
        "total_params": int(setup.total_params),  # the plain model's size (SVD runs fold back to it)
        "val_loss_variance": loss_variance(val_losses),
        "train_images": int(n_train),
        "wall_seconds": round(sum(r["seconds"] for r in history), 2),
        "device": str(setup.device),
        "data": {"name": ds.name, "source": ds.source, "task": ds.task, "classes": ds.class_names,
                 "image_size": setup.image_size, "normalize": setup.normalize},
        "versions": {"torch": torch.__version__},
    }
    metrics["method"] = cfg.method
    metrics.update(_method_diagnostics(setup, run_dir, model, test_loader))
    _write_predictions(run_dir / "test_predictions.csv", y, probs, ds.class_names)
    plot_history(history, run_dir / "loss_curves.png", best_epoch=best_epoch + 1,
                 title=f"{cfg.model} on {ds.name} (dashed: best epoch by validation loss)")
    plot_roc(ds.task, y, probs, ds.class_names, run_dir / "roc_test.png",
             title=f"test ROC, AUC {test['auc']:.4f}")
    atomic_write_json(run_dir / "metrics.json", metrics)  # its presence means the run finished
    write_run_report(run_dir)
    log.info("test auc %.4f  acc %.4f  tpr@fpr=%g %.4f  (best epoch %d)  -> %s", test["auc"], test["acc"],
             cfg.fprs[0], test["tpr_at_fpr"], best_epoch + 1, run_dir)
    return metrics


def _method_diagnostics(setup: Setup, run_dir: Path, model: nn.Module, test_loader: DataLoader) -> dict:
    """Seed 000's diagnostics: sigma dynamics, a plain folded checkpoint and the low-rank export for
    SVD runs; the R ratio against the pretrained weights for fully fine-tuned runs."""
    import copy

    from ..analysis.svd import r_ratios, write_svd_diagnostics
    from ..reparam import fold, svd_modules, to_low_rank

    out: dict = {}
    model = _unwrap(model).cpu().eval()
    if svd_modules(model):
        out["svd"] = {"summary": {"mode": setup.svd_summary.mode, "prune": setup.svd_summary.prune,
                                  "layers": len(setup.svd_summary.rows), "sigma_active": setup.svd_summary.sigma_active,
                                  "trainable_by_role": setup.svd_summary.groups},
                      **write_svd_diagnostics(model, run_dir)}
        plain = fold(copy.deepcopy(model))
        atomic_save({"model": plain.state_dict(), "config": setup.cfg.to_dict(), "folded_from": setup.cfg.method},
                    run_dir / "folded.pt")
        if setup.svd_summary.prune > 0:
            x = next(iter(test_loader))[0][:32]
            _, rep = to_low_rank(model, x, layers="svd")
            out["low_rank"] = {k: getattr(rep, k) for k in ("params_dense", "params_low_rank", "flops_dense",
                                                             "flops_low_rank", "images_per_s_dense",
                                                             "images_per_s_low_rank", "max_abs_diff")}
            out["low_rank"]["speedup"] = rep.speedup
    elif setup.pretrained_state is not None:
        r = r_ratios(setup.pretrained_state, model.state_dict())
        out["r_ratio"] = {k: r[k] for k in ("mean", "median", "n")}
    model.to(setup.device)
    return out


def _write_history(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _write_predictions(path: Path, y: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "label", "pred", *[f"p_{c}" for c in classes]])
    for i, (yi, pi) in enumerate(zip(y, probs)):
        label = yi.tolist() if np.ndim(yi) else int(yi)
        w.writerow([i, label, int(np.argmax(pi)), *[f"{v:.6f}" for v in pi]])
    atomic_write_text(path, buf.getvalue())


def _progress(it, desc: str, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True, disable=None)
