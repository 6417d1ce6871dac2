"""The one training loop: every task (classification, segmentation, regression), every option.

Determinism: the model is initialised from ``seed``, and every epoch reseeds all generators
from ``(seed, epoch)``, so a run resumed from the checkpoint of epoch e continues exactly as
the uninterrupted run would have (on the same device and thread count).

What differs between tasks lives in :mod:`smallmed.train.tasks`; what a fine-tuning method does
at the end lives in :func:`smallmed.train.finish.finish_run` (through the method's own ``report`` and ``merge``); the model is built by
:func:`smallmed.train.recipe.build_model` here and wherever a run is reloaded.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ..config import TrainConfig, dump_yaml, load_yaml, resolved
from ..errors import NonFiniteLossError, SmallmedError
from ..io import atomic_save, atomic_write_csv, atomic_write_json, atomic_write_text, load_checkpoint
from ..metrics import loss_variance
from ..report import plot_history, write_model_card, write_run_report
from ..roles import head_name, unwrap
from ..schedules import Callback, TwoStage
from .optim import build_optimizer, build_scheduler
from .setup import Setup, prepare
from .tasks import ClassificationTask, Task

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler
    from torch.optim.swa_utils import AveragedModel

    from .tasks import RegressionTask

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**31


def to_device(y, device):
    """A target tensor, or a dict of them (keypoints), on ``device``."""
    if isinstance(y, dict):
        return {k: v.to(device, non_blocking=True) for k, v in y.items()}
    return y.to(device, non_blocking=True)


def _cat(parts: list):
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
    return torch.cat(parts).numpy()


class Scoring(Protocol):
    """What :func:`run_loader` needs of a task: a :class:`~smallmed.train.tasks.Task`, or a view of one (a
    prediction's, whose loss is 0)."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def eval_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def collect(self, outputs: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def run_loader(
    model: nn.Module, loader: DataLoader, task: Scoring, device: torch.device | None = None, keep_inputs: int = 0
) -> dict:
    """Mean loss, what the task keeps of every batch, the targets (and the first inputs) in eval mode.

    Evaluation always runs in float32, also for runs trained under bf16 autocast: metrics such as
    TPR at a fixed FPR depend on exact score order.
    """
    device = device or next(model.parameters()).device
    model.eval()
    xs: list[torch.Tensor]  # the first inputs, kept for figures
    total, n, kept, ys, xs = 0.0, 0, [], [], []
    with parametrize.cached():  # rebuild reparametrised weights once, not once per batch
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), to_device(y, device)
            out = model(x).float()
            total += task.eval_loss(out, y).item() * len(x)  # without training-only terms (label smoothing)
            n += len(x)
            kept.append(task.collect(out).cpu())
            ys.append(to_device(y, "cpu"))
            if sum(len(a) for a in xs) < keep_inputs:
                xs.append(x.cpu())
    res = {"loss": total / max(n, 1), "kept": torch.cat(kept).numpy(), "targets": _cat(ys)}
    if xs:
        res["inputs"] = torch.cat(xs)[:keep_inputs].numpy()
    return res


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    task: Task | str,
    device: torch.device | str | None = None,
    fprs: tuple[float, ...] = (1e-3, 1e-2),
    class_names: list[str] | None = None,
) -> dict:
    """Loss and every metric of ``task`` for ``model`` on ``loader`` (device: the model's own by default).

    ``task`` is a :class:`~smallmed.train.tasks.Task` or a classification kind (``"binary"``,
    ``"multiclass"``, ``"multilabel"``).

    Example:
        >>> evaluate(model, test_loader, "binary")["auc"]   # doctest: +SKIP
        0.951
    """
    if isinstance(task, str):
        task = ClassificationTask(kind=task, class_names=class_names or [], fprs=tuple(fprs))
    res = run_loader(model, loader, task, torch.device(device) if device is not None else None)
    kept = np.asarray(res["kept"], dtype=np.float64)
    if not math.isfinite(res["loss"]) or not np.isfinite(kept).all():
        return {"loss": float("nan")}  # no metric of non-finite outputs: the caller's non-finite stop says why
    return {"loss": res["loss"], **task.metrics(res["kept"], res["targets"])}


def _distributed() -> tuple[bool, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1, int(os.environ.get("RANK", "0")), world


def _prepare_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    out = (
        Path(cfg.out)
        if cfg.out
        else Path("runs") / f"{cfg.model}-{Path(str(cfg.data)).stem}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if (
        not resume and out.exists() and any(p.name != "train.log" for p in out.iterdir())
    ):  # a study's log may come first
        raise SmallmedError(
            f"{out}: run folder already exists and is not empty; pass --resume {out} to continue it "
            "or choose another --out."
        )
    return out


def fit(
    cfg: TrainConfig,
    *,
    model: nn.Module | None = None,
    dataset=None,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
) -> dict:
    """Train, keep the best epoch by validation loss, evaluate it on the test split.

    Every task runs through this loop: the task follows from the data (labelled images: the
    dataset's classification kind or a regression score; image + mask pairs: segmentation).
    Writes ``config.yaml``, ``history.csv``, ``last.pt`` (every epoch), ``best.pt``,
    ``metrics.json``, ``test_predictions.csv``, ``loss_curves.png``, the task's plots and
    ``report.md`` to the run folder. ``cfg`` is not modified. Returns ``metrics.json``'s contents.
    To continue an interrupted run use :func:`resume`.

    Example:
        >>> from smallmed import TrainConfig, fit
        >>> m = fit(TrainConfig(data="pneumoniamnist", model="resnet18", epochs=10, out="runs/r18"))  # doctest: +SKIP
        >>> m["test"]["auc"]   # doctest: +SKIP
        0.95
    """
    return _run(copy.deepcopy(cfg), resuming=False, model=model, dataset=dataset, callbacks=callbacks)


def resume(
    run_dir: str | Path, *, epochs: int | None = None, callbacks: list[Callback] | tuple[Callback, ...] = ()
) -> dict:
    """Continue a run from its ``last.pt`` with the config it was started with.

    A finished run is left as it is (its metrics are returned) unless ``epochs`` asks for more than
    it was trained for: then it continues from its last epoch to ``epochs`` and is evaluated again
    (for the plateau and constant schedules, whose steps do not depend on the total). A folder with
    a config but no ``last.pt`` (killed before the first epoch ended) starts over, with a warning.

    Example:
        >>> smallmed.resume("runs/r18")              # doctest: +SKIP
        >>> smallmed.resume("runs/r18", epochs=20)   # doctest: +SKIP
    """
    import json

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise SmallmedError(f"{run_dir}: no config.yaml; not a smallmed run folder to resume.")
    saved = load_yaml(run_dir / "config.yaml")
    saved["out"] = str(run_dir)
    cfg = TrainConfig.from_saved(saved, source=str(run_dir / "config.yaml"))
    finished = run_dir / "metrics.json"
    if epochs is not None and epochs != cfg.epochs:
        if epochs < cfg.epochs:
            raise SmallmedError(
                f"--epochs {epochs}: the run was set up for {cfg.epochs}; a resumed run can only be "
                "extended, not shortened."
            )
        if cfg.scheduler in ("cosine", "step") and not (cfg.scheduler == "step" and cfg.step_size):
            raise SmallmedError(
                f"--epochs {epochs}: the run's {cfg.scheduler} schedule depends on the total number of "
                "epochs, so extending it would not continue the same run; start a new run instead."
            )
        cfg.epochs = epochs
        if finished.exists():
            finished.unlink()  # it is no longer the final result; the extended run writes it again
        log.info("extending %s to %d epochs", run_dir, epochs)
    elif finished.exists():
        log.warning("%s: already finished (%d epochs); nothing to do", run_dir, cfg.epochs)
        return json.loads(finished.read_text())
    if not (run_dir / "last.pt").exists():
        log.warning("%s: no last.pt (no epoch had finished); starting the run over", run_dir)
    return _run(cfg, resuming=True, model=None, dataset=None, callbacks=callbacks)


def _run(cfg: TrainConfig, *, resuming: bool, model, dataset, callbacks) -> dict:
    from ..io import RunLock, check_out_dir

    distributed, rank, world = _distributed()
    if cfg.out:
        check_out_dir(cfg.out)  # before the data is even loaded
    seed_everything(cfg.seed)
    setup = prepare(cfg, model=model, dataset=dataset)  # every input check happens here, before any write
    run_dir = _prepare_run_dir(cfg, resuming)
    cfg.out = str(run_dir)
    main = rank == 0
    if distributed and not dist.is_initialized():
        backend = "nccl" if setup.device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        if setup.device.type == "cuda":
            torch.cuda.set_device(setup.device)
    try:
        ranks = _Ranks(distributed, rank, world)
        if not main:
            return _fit(setup, run_dir, resuming, list(callbacks), ranks)
        existed = run_dir.exists()
        try:
            with RunLock(run_dir):
                return _fit(setup, run_dir, resuming, list(callbacks), ranks)
        except BaseException:
            # a failure before the first checkpoint leaves no half-written folder behind; a killed or
            # interrupted run with a last.pt keeps it, so that it can be resumed
            if not existed and run_dir.exists() and not (run_dir / "last.pt").exists():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            if not existed and run_dir.exists() and not any(run_dir.iterdir()):
                run_dir.rmdir()  # the lock's folder, when nothing else was written
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

    size = (setup.in_chans, setup.image_size, setup.image_size)
    layers = list(cfg.rff_layers) or rff_layers(model, size)
    cb = RFFreeze(model, layers, cfg.rff_epochs, cfg.rff_alternate)  # checks the names first
    cb.norms = following_norms(model, layers, size)
    return [cb]


def _balance(setup: Setup, train_ds, epoch_seed: int):
    """The epoch's training set under ``balance=sampling`` (seed 003); the set itself otherwise."""
    if setup.cfg.balance != "sampling":
        return train_ds
    from ..data.sampling import balanced_indices

    idx = balanced_indices(setup.train_split.labels, np.random.default_rng(epoch_seed))
    return Subset(train_ds, idx.tolist())


def _loss_weights(setup: Setup):
    """``balance=weights``: inverse-frequency weights in the task's loss (training and validation alike)."""
    if setup.cfg.balance != "weights":
        return
    # Task.loss_weights refuses every task but these two, the ones with loss weights
    cast("ClassificationTask | RegressionTask", setup.task).weights = setup.task.loss_weights(setup.train_split.labels)


def _batch_mix(cfg: TrainConfig, task):
    """MixUp / CutMix on training batches (torchvision transforms v2; one of the two per batch when both are
    on), for single-label classification only; None when off."""
    if not (cfg.mixup or cfg.cutmix) or task.kind not in ("binary", "multiclass"):
        return None
    from torchvision.transforms import v2

    k = len(task.class_names)
    ops = ([v2.MixUp(alpha=cfg.mixup, num_classes=k)] if cfg.mixup else []) + (
        [v2.CutMix(alpha=cfg.cutmix, num_classes=k)] if cfg.cutmix else []
    )
    choose = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)

    def mix(x, y):
        return choose(x, y)

    return mix


def _ema(model: nn.Module, cfg: TrainConfig):
    """An exponential moving average of the weights (and BatchNorm buffers), or None when ``ema`` is 0."""
    if not cfg.ema:
        return None
    from torch.optim.swa_utils import AveragedModel

    def avg(averaged, current, n):
        # timm's warmup of the decay: early on the average follows the weights, so a short run on a small set
        # is not scored on weights from its first steps
        d = min(cfg.ema, (1 + int(n)) / (10 + int(n)))
        return averaged * d + current * (1 - d)

    return AveragedModel(model, avg_fn=avg, use_buffers=True)


def _check_finite(
    value: float,
    what: str,
    epoch: int,
    step: int | None,
    history: list,
    resuming: bool,
    run_dir: Path,
    main: bool,
    device,
    distributed: bool,
) -> None:
    """Stop every rank together with one sentence when a loss is not finite."""
    bad = not math.isfinite(value)
    if distributed:
        flag = torch.tensor([1.0 if bad else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad = flag.item() > 0
    if not bad:
        return
    if not history and not resuming and main:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing good to keep: leave no half run
    kept = f"{run_dir / 'last.pt'} (after epoch {len(history)})" if history else "none (the run folder was removed)"
    where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else "")
    raise NonFiniteLossError(
        f"{what} became {value} at {where}; training stopped, last good checkpoint: {kept}. "
        "Lower --lr (or the regulariser's weight) or check the data."
    )


@dataclass
class _Ranks:
    """Where this process sits in a (possibly distributed) run."""

    distributed: bool
    rank: int
    world: int

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class _State:
    """What a checkpoint holds between epochs: the optimisation state and the history so far."""

    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | None  # ReduceLROnPlateau included
    on_val: bool
    ema: AveragedModel | None
    history: list[dict] = field(default_factory=list)
    start: int = 0
    best_loss: float = math.inf
    best_epoch: int = -1


def _init_state(setup: Setup, model: nn.Module, run_dir: Path, resuming: bool) -> _State:
    """The optimizer, schedule and weight average, restored from ``last.pt`` when resuming."""
    cfg = setup.cfg
    optimizer = build_optimizer(model, cfg)
    scheduler, on_val = build_scheduler(optimizer, cfg)
    st = _State(optimizer, scheduler, on_val, _ema(model, cfg))
    last = run_dir / "last.pt"
    if not (resuming and last.exists()):
        return st
    ckpt = load_checkpoint(last)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    st.history, st.start = ckpt["history"], ckpt["epoch"] + 1
    st.best_loss, st.best_epoch = ckpt["best_val_loss"], ckpt["best_epoch"]
    if st.ema is not None and ckpt.get("ema"):
        st.ema.load_state_dict(ckpt["ema"])
    log.info("resuming %s after epoch %d", run_dir, st.start)
    return st


def _fit(setup: Setup, run_dir: Path, resuming: bool, callbacks: list, ranks: _Ranks) -> dict:
    cfg, task, device, main = setup.cfg, setup.task, setup.device, ranks.main
    model = setup.model.to(device)
    names = setup.built.trainable_names
    schedule = TwoStage(
        head_name(model),
        resolved(cfg.head_epochs, "head_epochs"),
        rest=lambda n: n in names,
        freeze_bn=bool(cfg.freeze_bn_stats),  # set on construction; TwoStage reads only its truth
    )
    callbacks = [schedule, *_rff_callbacks(setup, model), *callbacks]
    if main and cfg.log:  # TensorBoard / MLflow mirror the run folder (train.tracking)
        from .tracking import loggers_for

        callbacks += loggers_for(cfg, run_dir)
    _loss_weights(setup)
    if not resuming:
        task.init_head(model, getattr(setup.train_split, "labels", None))
    if cfg.bn_stats == "recompute" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise SmallmedError(f"bn_stats='recompute': model={cfg.model!r} has no BatchNorm layer to recompute.")
    st = _init_state(setup, model, run_dir, resuming)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg.to_dict()))
    train_model: nn.Module = model
    if ranks.distributed:
        train_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=resolved(cfg.head_epochs, "head_epochs") > 0,
        )
    val_loader = setup.loader("val", train=False)
    check = dict(
        history=st.history, resuming=resuming, run_dir=run_dir, main=main, device=device, distributed=ranks.distributed
    )
    for epoch in range(st.start, cfg.epochs):
        if cfg.early_stop and st.best_epoch >= 0 and epoch - 1 - st.best_epoch >= cfg.early_stop:  # also on resume
            log.info(
                "early stop after epoch %d: %d epochs without validation-loss improvement (best epoch %d)",
                epoch,
                cfg.early_stop,
                st.best_epoch + 1,
            )
            break
        trained = _train_epoch(setup, model, train_model, st, epoch, callbacks, ranks, check)
        # with an EMA the averaged weights are the model that is validated, chosen and saved
        evaluated = st.ema.module if st.ema is not None else model
        if cfg.bn_stats == "recompute":
            _recompute_bn(setup, model, evaluated)
        row = _validate(setup, model, evaluated, val_loader, st, epoch, trained, check)
        st.history.append(row)
        # select_epoch="last": a fixed number of epochs; validation is only watched, never chooses
        improved = row["val_loss"] < st.best_loss or cfg.select_epoch == "last"
        if improved:
            st.best_loss, st.best_epoch = row["val_loss"], epoch
        log.info(
            "epoch %d/%d  train loss %.4f  val loss %.4f  val %s %.4f  %.1fs%s",
            epoch + 1,
            cfg.epochs,
            row["train_loss"],
            row["val_loss"],
            task.headline,
            row.get(f"val_{task.headline}", float("nan")),
            row["seconds"],
            "  *best" if improved else "",
        )
        if main:
            _save_epoch(setup, run_dir, model, evaluated, st, epoch, improved)
        for cb in callbacks:  # optional hook: callbacks written before it existed have none
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(epoch, row)
    if ranks.distributed:
        dist.barrier()
    if not main:
        return {}
    if st.best_epoch < 0:
        raise SmallmedError(f"{run_dir}: no epoch finished; nothing to evaluate.")
    metrics = _finish(setup, run_dir, model, st.history, st.best_epoch)
    for cb in callbacks:
        if hasattr(cb, "on_run_end"):
            cb.on_run_end(metrics, run_dir)
    return metrics


def _train_epoch(
    setup: Setup, model: nn.Module, train_model: nn.Module, st: _State, epoch: int, callbacks, ranks: _Ranks, check
) -> dict:
    """One pass over the epoch's (reseeded) training set: its mean loss and regulariser, the trainable count."""
    cfg, task, device = setup.cfg, setup.task, setup.device
    es = _epoch_seed(cfg.seed, epoch)
    seed_everything(es)
    gen = torch.Generator().manual_seed(es)
    train_ds = _balance(setup, setup.dataset_for("train", train=True), es)
    sampler: DistributedSampler | None = None
    if ranks.distributed:
        sampler = DistributedSampler(
            train_ds, num_replicas=ranks.world, rank=ranks.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        sampler.set_epoch(epoch)
    train_loader = setup.loader("train", train=True, sampler=sampler, generator=gen, dataset=train_ds)
    train_model.train()
    for cb in callbacks:  # after the epoch's reseeding: a callback that draws random numbers draws the same on resume
        cb.on_epoch_start(epoch, model)
    mix = _batch_mix(cfg, task)
    amp = cfg.amp and device.type == "cuda"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    t0 = time.time()  # the epoch's seconds: its batches and its validation
    total, seen, reg_total = 0.0, 0, 0.0
    bar = _progress(train_loader, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and ranks.main)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), to_device(y, device)
        if mix is not None:
            x, y = mix(x, y)  # soft targets: class probabilities that sum to one
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = train_model(x)
        loss = task.loss(out.float(), y)
        value = loss.item()
        _check_finite(value, "loss", epoch, step, **check)
        reg = _regulariser(model, cfg)  # a visible term of the loss, logged as its own column
        if reg is not None:
            r = reg.item()
            _check_finite(r, "regulariser", epoch, step, **check)
            reg_total += r * len(x)
            loss = loss + reg
            _check_finite(loss.item(), "total loss", epoch, step, **check)
        st.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        st.optimizer.step()
        if st.ema is not None:
            st.ema.update_parameters(model)
        total += value * len(x)
        seen += len(x)
        for cb in callbacks:
            cb.on_batch_end(epoch, step, value)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / seen:.4f}")
    if ranks.distributed:  # the epoch's training loss over every rank's shard
        t = torch.tensor([total, float(seen)], device=device)
        dist.all_reduce(t)
        total, seen = t[0].item(), int(t[1].item())
    return {
        "train_loss": total / max(seen, 1),
        "reg_loss": reg_total / max(seen, 1),
        "trainable_params": trainable,
        "t0": t0,
    }


@torch.no_grad()
def _recompute_bn(setup: Setup, model: nn.Module, evaluated: nn.Module) -> None:
    """Precise BN: each BatchNorm layer that trained this epoch (not one whose statistics a method froze) gets
    the plain average of its batch statistics over the training images (no augmentation), as torch's
    ``update_bn`` computes them; the running averages of a few fast-moving steps describe no weights the
    model has."""
    bn = nn.modules.batchnorm._BatchNorm
    live = {n for n, m in model.named_modules() if isinstance(m, bn) and m.training}
    layers = [m for n, m in evaluated.named_modules() if n in live and isinstance(m, bn) and m.track_running_stats]
    if not layers:
        return
    modes = {m: m.training for m in evaluated.modules()}
    evaluated.eval()
    momenta = {}
    for m in layers:
        m.train()
        m.reset_running_stats()
        momenta[m], m.momentum = m.momentum, None  # None: a cumulative (plain) average over the batches
    for x, _ in setup.loader("train", train=False):
        evaluated(x.to(setup.device, non_blocking=True))
    for mod, mode in modes.items():
        mod.train(mode)
    for m, momentum in momenta.items():
        m.momentum = momentum


def _validate(
    setup: Setup, model: nn.Module, evaluated: nn.Module, val_loader, st: _State, epoch: int, trained: dict, check
) -> dict:
    """Validate the epoch's model, step the schedule; the epoch's history row."""
    cfg, task = setup.cfg, setup.task
    val = evaluate(evaluated, val_loader, task)
    _check_finite(val["loss"], "validation loss", epoch, None, **check)
    lr = st.optimizer.param_groups[0]["lr"]
    if st.scheduler is not None:
        st.scheduler.step(val["loss"]) if st.on_val else st.scheduler.step()
    row = {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": trained["train_loss"],
        "val_loss": val["loss"],
        **{f"val_{k}": val[k] for k in task.columns},
        "trainable_params": trained["trainable_params"],
        "seconds": round(time.time() - trained["t0"], 3),
    }
    if st.ema is not None:  # the raw weights' validation loss beside the average's
        row["val_loss_raw"] = evaluate(model, val_loader, task)["loss"]
    if cfg.kl_weight or cfg.fd_weight:
        row["reg_loss"] = trained["reg_loss"]
    return row


def _save_epoch(
    setup: Setup, run_dir: Path, model: nn.Module, evaluated: nn.Module, st: _State, epoch: int, improved: bool
) -> None:
    """``best.pt`` when the epoch improved, ``last.pt`` and ``history.csv`` always."""
    if improved:
        atomic_save(
            {
                "model": evaluated.state_dict(),
                "epoch": epoch,
                "val_loss": st.best_loss,
                "weights": "ema" if st.ema is not None else "raw",
                **setup.checkpoint_meta(),
            },
            run_dir / "best.pt",
        )
    atomic_save(
        {
            "model": model.state_dict(),
            "ema": st.ema.state_dict() if st.ema is not None else None,
            "optimizer": st.optimizer.state_dict(),
            "scheduler": st.scheduler.state_dict() if st.scheduler is not None else None,
            "epoch": epoch,
            "history": st.history,
            "best_val_loss": st.best_loss,
            "best_epoch": st.best_epoch,
        },
        run_dir / "last.pt",
    )
    atomic_write_csv(run_dir / "history.csv", st.history)


def _finish(setup: Setup, run_dir: Path, model: nn.Module, history: list[dict], best_epoch: int) -> dict:
    cfg, ds, task = setup.cfg, setup.dataset, setup.task
    # SMALLMED_FIGURES=0 (CI, large grids): every number, no pictures; the run's config keeps what was asked
    figures = cfg.figures and os.environ.get("SMALLMED_FIGURES") != "0"
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    test_loader = setup.loader("test", train=False)
    res = run_loader(model, test_loader, task, setup.device, keep_inputs=8 if figures else 0)
    test = {"loss": res["loss"], **task.metrics(res["kept"], res["targets"])}
    val = None
    if getattr(task, "wants_val", False):  # operating threshold and calibration are fitted on validation only
        v = run_loader(model, setup.loader("val", train=False), task, setup.device)
        val = (v["kept"], v["targets"])
    test.update(
        task.finish(run_dir, res["kept"], res["targets"], cfg.seed, inputs=res.get("inputs"), val=val, figures=figures)
    )
    best = history[best_epoch]
    metrics = {
        "task": task.kind,
        "test": test,
        "val": {k: v for k, v in best.items() if k.startswith("val_")},
        "best_epoch": best_epoch + 1,
        "epochs": len(history),
        # from the history rows, so a run resumed after being killed in this final step reports it right
        "trainable_params": int(history[-1]["trainable_params"]),
        "total_params": int(setup.built.total_params),  # the plain model's size (SVD runs fold back to it)
        "val_loss_variance": loss_variance([r["val_loss"] for r in history]),
        "train_images": int(len(setup.train_idx)),
        "wall_seconds": round(sum(r["seconds"] for r in history), 2),
        "device": str(setup.device),
        "data": {
            "name": ds.name,
            "source": ds.source,
            "task": task.kind,
            "classes": list(getattr(ds, "class_names", [])),
            "image_size": setup.image_size,
            "normalize": setup.normalize,
            "split": ds.info.get("split"),
            "counts": _split_counts(setup),
        },
        "versions": {"torch": torch.__version__},
        "method": cfg.method,
    }
    from .finish import finish_run

    example = next(iter(test_loader))[0]
    metrics.update(finish_run(model, cfg=cfg, built=setup.built, run_dir=run_dir, example=example))
    if figures:
        plot_history(
            history,
            run_dir / "loss_curves.png",
            best_epoch=best_epoch + 1,
            title=f"{cfg.model} on {ds.name} (dashed: best epoch by validation loss)",
        )
    if figures and getattr(task, "single_label", False):
        from .errors import error_figures

        try:  # pictures of the errors: a failure here is one warning, never a lost run
            error_figures(run_dir, model, test_loader.dataset, test_metrics=test, image_size=setup.image_size)
        except Exception as e:
            log.warning("error gallery not drawn (%s: %s); the run's numbers are unaffected.", type(e).__name__, e)
    atomic_write_json(run_dir / "metrics.json", metrics)  # its presence means the run finished
    write_run_report(run_dir)
    write_model_card(run_dir)
    head = test.get(task.headline, float("nan"))
    read = "validation" if cfg.holdout == "val" or cfg.cv_folds else "test"  # a search's trial never reads test
    log.info("%s %s %.4f  (best epoch %d)  -> %s", read, task.headline, head, best_epoch + 1, run_dir)
    return metrics


def _split_counts(setup: Setup) -> dict:
    """Images per split (training: the subset used), and per class for single-label classification."""
    ds, out = setup.dataset, {}
    classes = list(getattr(ds, "class_names", []))
    for s, sp in ds.splits.items():
        idx = setup.train_idx if s == "train" else np.arange(len(sp))
        row: dict = {"images": int(len(idx))}
        labels = getattr(sp, "labels", None)
        if labels is not None and setup.task.kind in ("binary", "multiclass"):
            y = np.asarray(labels).reshape(len(sp), -1)[:, 0].astype(int)[idx]
            row["classes"] = {classes[k] if k < len(classes) else str(k): int((y == k).sum()) for k in np.unique(y)}
        out[s] = row
    return out


def _progress(it, desc: str, enabled: bool):
    """A bar per epoch on a terminal; in a log file or a pipe (``make demo | tee``) an update every 30 s, so a
    long epoch never looks hung."""
    if not enabled:
        return it
    import sys

    from tqdm import tqdm

    if getattr(sys.stderr, "isatty", lambda: False)():
        return tqdm(it, desc=desc, leave=False, dynamic_ncols=True)
    return tqdm(it, desc=desc, leave=False, ncols=100, mininterval=30)


__all__ = ["evaluate", "fit", "resume", "run_loader", "seed_everything", "unwrap"]
