"""``smallmed study bn``: seed 002's batch-norm ablation, scaled to a CPU.

The seed compares an ImageNet VGG16 with and without BN on prostate-biopsy tiles (SGD, lr 1e-2
divided by 10 after half the epochs) and reports ~+10 points of test accuracy and lower losses
with BN. Here: the same optimiser and schedule, three placements (``none``, ``bn`` before the
ReLU, ``bn-after-act``), several seeds, on the shipped MedMNIST sets; per variant the test
accuracy, balanced accuracy and mean AUC with t-intervals, loss curves, the epochs each needs to
reach a target validation loss, paired differences against ``none``, and the effect of BN's
batch statistics at inference on small batches.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..errors import SmallmedError
from ..fields import Checked, setting
from ..io import atomic_write_csv, atomic_write_text
from .base import register_study
from .runner import run_grid
from .stats import (
    RATE,
    compare_runs,
    comparison_figure,
    direction,
    fmt_bootstrap,
    fmt_ci,
    fmt_paired,
    mean_ci,
    paired,
)

NORMS = ("none", "bn", "bn-after-act")
SEED_GAIN = 0.10  # seed 002 (SPEC.md section 4): BN raised test accuracy by about 10 points


@dataclass
class BNStudy(Checked):
    data: tuple[str, ...] = setting(("retinamnist", "pneumoniamnist"), help="data sets, each its own table")
    model: str = "vgg16"
    norms: tuple[str, ...] = setting(NORMS, choices=NORMS, help="the arms: no BatchNorm, before or after the ReLU")
    seeds: tuple[int, ...] = setting((0, 1, 2), ge=0, lt=2**32)
    epochs: int = setting(8, ge=1, le=10**4)
    batch_size: int = setting(32, ge=1, le=10**5)
    lr: float = setting(1e-2, gt=0, le=100)
    image_size: int | None = setting(None, ge=4, le=4096, help="default: the data's own size")
    max_train: int = setting(1200, ge=0, help="training images per data set (a nested stratified fraction); 0: all")
    weights: str | None = None
    data_dir: str | None = None


PRESETS = {
    # 2 CPU cores, about 30 minutes: VGG16 (no ImageNet weights offline: from scratch) at 28 px,
    # RetinaMNIST's 1080 training images and 1200 of PneumoniaMNIST's 4708
    "quick": BNStudy(epochs=6, seeds=(0, 1, 2)),
    # longer, with more seeds and all images, for a GPU or a long CPU run (the seed itself trained 100 epochs)
    "paper": BNStudy(epochs=30, seeds=(0, 1, 2, 3, 4), max_train=0),
}


def data_name(data: str) -> str:
    """A folder-safe short name: the file stem for paths, the catalogue name otherwise."""
    return Path(data).stem if ("/" in data or data.endswith(".npz")) else data


def _fraction(study: BNStudy, data: str) -> float:
    if not study.max_train:
        return 1.0
    from ..data import load_dataset

    n = len(load_dataset(data, data_dir=study.data_dir).splits["train"].labels)
    return min(1.0, study.max_train / n)


def cells(study: BNStudy, out: Path) -> list[TrainConfig]:
    grid = []
    for data in study.data:
        fraction = _fraction(study, data)
        for norm in study.norms:
            for seed in study.seeds:
                grid.append(
                    TrainConfig(
                        data=data,
                        data_dir=study.data_dir,
                        model=study.model,
                        norm=norm,
                        weights=study.weights,
                        image_size=study.image_size,
                        fraction=fraction,
                        epochs=study.epochs,
                        batch_size=study.batch_size,
                        optimizer="sgd",
                        lr=study.lr,
                        momentum=0.9,
                        scheduler="step",
                        step_size=max(1, study.epochs // 2),
                        factor=0.1,
                        augment="flip",
                        seed=seed,
                        progress=False,
                        out=str(out / "runs" / data_name(data) / norm / f"s{seed}"),
                    )
                )
    return grid


def run_bn_study(
    study: BNStudy, out: str | Path, *, workers: int = 1, backend: str = "process", fresh: bool = False
) -> Path:
    """Run (or resume) the study and write ``out/report.md``; returns its path."""
    out = Path(out)
    if "none" not in study.norms or len(study.norms) < 2:
        raise SmallmedError("the BN study compares against norm='none': include it and at least one BN variant.")
    from ..data import resolve_data

    for d in study.data:
        resolve_data(d, study.data_dir)
    grid = cells(study, out)  # configs are checked before anything runs
    from .settings import check_settings

    check_settings(out, study, fresh=fresh)
    t0 = time.time()
    results = run_grid(grid, workers=workers, backend=backend)
    return write_report(study, out, grid, results, time.time() - t0)


def _history(run_dir: str) -> dict[str, list[float]]:
    with open(Path(run_dir) / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in ("train_loss", "val_loss")}


def epochs_to_reach(val_loss: list[float], target: float) -> int | None:
    """First epoch (1-based) whose validation loss is at or below ``target``; None if never."""
    for i, v in enumerate(val_loss):
        if v <= target:
            return i + 1
    return None


def bn_batch_effect(run_dir: str | Path, batch_sizes=(2, 8, 32, 256), split: str = "test") -> dict:
    """Accuracy of a trained BN model with its running (eval-mode) statistics vs the statistics
    of each test batch (train mode, as a model left in ``train()`` computes them), per batch size."""
    import torch
    from torch.utils.data import DataLoader

    from ..data import load_dataset
    from ..data.torchdata import ArrayDataset
    from ..train.inference import load_run

    run = load_run(run_dir)
    cfg = run.config
    ds = load_dataset(cfg.data, data_dir=cfg.data_dir, split_seed=cfg.split_seed)
    data = ArrayDataset(ds.splits[split], run.transform())
    out = {}
    if run.task.kind not in ("multiclass", "binary"):
        raise SmallmedError(f"{run_dir}: bn_batch_effect needs a single-label task, not {run.task.kind}.")
    for bs in [b for b in batch_sizes if b <= len(data)]:
        accs = {}
        for mode in ("eval", "batch"):
            model = run.model  # eval mode: running statistics, nothing changes
            if mode == "batch":
                model = copy.deepcopy(run.model)  # train-mode BN moves the copy's running statistics
                for m in model.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.train()  # normalise by this batch's statistics
            correct = n = 0
            with torch.no_grad():
                for x, y in DataLoader(data, batch_size=bs, drop_last=bs > 1):
                    correct += int((model(x).argmax(1) == y).sum())
                    n += len(y)
            accs[mode] = correct / max(n, 1)
        out[bs] = accs
    return out


def _data_section(study: BNStudy, out: Path, data: str, rows: list[dict]) -> tuple[list[str], list[str]]:
    """One data set's table, paired comparisons and loss curves; returns (lines, verdict lines)."""
    from ..report.plots import _save, plt

    lines: list[str] = []
    verdicts: list[str] = []
    dr = [r for r in rows if r["data"] == data]
    target = max(np.mean([r["best_val_loss"] for r in dr if r["norm"] == n]) for n in study.norms)
    none = {r["seed"]: r["acc"] for r in dr if r["norm"] == "none"}
    lines += [
        f"## {data_name(data)} ({dr[0]['train_images']} training images)",
        "",
        f"| norm | test accuracy | balanced accuracy | mean AUC | best val loss | epochs to target ({target:.3f}) | vs none (accuracy) |",
        "|---|---|---|---|---|---|---|",
    ]
    for norm in study.norms:
        nr = sorted((r for r in dr if r["norm"] == norm), key=lambda r: r["seed"])
        acc, bal, auc, vl = (
            mean_ci([r[k] for r in nr], bounds=None if k == "best_val_loss" else RATE)
            for k in ("acc", "balanced_acc", "auc", "best_val_loss")
        )
        reach = [epochs_to_reach(_history(r["run"])["val_loss"], target) for r in nr]
        reached = [e for e in reach if e is not None]
        reach_s = "-" if len(reached) < len(reach) else f"{np.mean(reached):.1f}"
        cmp = "-"
        if norm != "none":
            seeds = [r["seed"] for r in nr if r["seed"] in none]
            pr = paired([r["acc"] for r in nr if r["seed"] in none], [none[s] for s in seeds])
            cmp = fmt_paired(pr)
            word = direction(pr, "higher than", "lower than")
            boot, _ = compare_runs(
                {r["seed"]: r["run"] for r in nr}, {r["seed"]: r["run"] for r in dr if r["norm"] == "none"}
            )
            if boot:
                cmp += f"; AUC, paired bootstrap over test images: {fmt_bootstrap(boot)}"
            verdicts.append(
                f"- {data_name(data)}: {norm} accuracy {word} none ({pr['mean'] * 100:+.1f} points; the paper: about +{SEED_GAIN * 100:.0f} with ImageNet-pretrained VGG16 on prostate biopsy tiles, 100 epochs; here from scratch, {study.epochs} epochs)"
            )
        lines.append(f"| {norm} | {fmt_ci(acc)} | {fmt_ci(bal)} | {fmt_ci(auc)} | {fmt_ci(vl)} | {reach_s} | {cmp} |")
    lines.append("")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    for norm in study.norms:
        hs = [_history(r["run"]) for r in dr if r["norm"] == norm]
        for ax, key in zip(axes, ("train_loss", "val_loss")):
            curve = np.mean([h[key] for h in hs], axis=0)
            ax.plot(range(1, len(curve) + 1), curve, marker="o", label=norm)
    for ax, title in zip(axes, ("training loss (seed 002 fig. 1)", "validation loss (fig. 2)")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(f"{data}: mean over seeds")
    _save(fig, out / f"loss_{data_name(data)}.png")
    lines += [f"![loss curves {data_name(data)}](loss_{data_name(data)}.png)", ""]
    return lines, verdicts


def _batch_section(study: BNStudy, out: Path, rows: list[dict]) -> list[str]:
    """BN at inference on small batches: running vs batch statistics for the first seed's bn runs."""
    lines: list[str] = []
    bn_runs = [r for r in rows if r["norm"] == "bn" and r["seed"] == study.seeds[0]]
    if bn_runs:
        lines += [
            "## BN at inference on small batches",
            "",
            "A BN model evaluated in `train()` mode normalises each batch by its own statistics instead of "
            "the running averages; with small batches (and single-class batches) that changes predictions. "
            f"Test accuracy of the `bn` model, seed {study.seeds[0]}, running statistics (eval) vs batch statistics "
            "(the last incomplete batch is dropped, so each row covers slightly different images):",
            "",
            "| data | batch size | eval-mode accuracy | batch-statistics accuracy |",
            "|---|---|---|---|",
        ]
        effect = {}
        for r in bn_runs:
            e = bn_batch_effect(r["run"])
            effect[r["data"]] = e
            for bs, a in e.items():
                lines.append(f"| {data_name(r['data'])} | {bs} | {a['eval']:.4f} | {a['batch']:.4f} |")
        atomic_write_text(out / "bn_batch_effect.json", json.dumps(effect, indent=2))
        lines += [
            "",
            "Fine-tuning or predicting with tiny batches: call `model.eval()` (smallmed does) or "
            "freeze BN statistics (`--freeze-bn-stats`).",
            "",
        ]
    return lines


def write_report(study: BNStudy, out: Path, grid, results, seconds: float) -> Path:
    rows = []
    for cfg, m in zip(grid, results):
        t = m["test"]
        rows.append(
            {
                "data": cfg.data,
                "norm": cfg.norm,
                "seed": cfg.seed,
                "acc": t["acc"],
                "balanced_acc": t["balanced_acc"],
                "auc": t["auc"],
                "best_epoch": m["best_epoch"],
                "best_val_loss": min(_history(cfg.out)["val_loss"]),
                "seconds": m["wall_seconds"],
                "train_images": m["train_images"],
                "run": cfg.out,
            }
        )
    atomic_write_csv(out / "results.csv", rows)
    lines = [
        f"# Batch-norm ablation (seed 002): {study.model}, {', '.join(map(data_name, study.data))}",
        "",
        f"{study.model} from {'`' + study.weights + '`' if study.weights else 'random init (no ImageNet VGG16 weights are available offline; the seed fine-tuned ImageNet weights)'}; "
        f"norm variants {', '.join(study.norms)}; seeds {', '.join(map(str, study.seeds))}; SGD momentum 0.9, "
        f"lr {study.lr:g} divided by 10 after {max(1, study.epochs // 2)} of {study.epochs} epochs, batch "
        f"{study.batch_size}, flip augmentation, best epoch by validation loss; official test splits. The seed's "
        "prostate-biopsy tiles are not available offline: the shipped MedMNIST sets stand in. Training time "
        f"summed over runs {sum(r['seconds'] for r in rows) / 60:.1f} min (this invocation {seconds / 60:.1f} min).",
        "",
        "Cells: mean [95% t-interval over seeds]. 'vs none': paired difference in test accuracy over seeds "
        "(the same seed gives every variant the same data order and augmentation), its interval, paired t-test p "
        "and wins. 'epochs to target': first epoch whose validation loss reaches the target, the best "
        "validation loss of the worst variant (mean over seeds; '-' if a seed never reached it).",
        "",
    ]
    verdicts = []
    for data in study.data:
        section, said = _data_section(study, out, data, rows)
        lines += section
        verdicts += said
    lines += ["## Verdict", "", *verdicts, ""]
    lines += _batch_section(study, out, rows)
    if comparison_figure(
        [{**r, "data": data_name(r["data"])} for r in rows],
        group="data",
        arm="norm",
        metric="acc",
        path=out / "comparison.png",
        xlabel="test accuracy",
    ):
        lines += ["", "![the arms compared](comparison.png)", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


register_study(
    "bn",
    summary="seed 002: batch norm none / before / after the ReLU x seeds",
    presets=PRESETS,
    run=run_bn_study,
    parallel=True,
    help={
        "data": "datasets (default: retinamnist pneumoniamnist)",
        "model": "vgg16 (default), resnet18 or small_cnn",
        "norms": "subset of none bn bn-after-act",
        "weights": "pretrained weights for every variant (BN layers report as fresh)",
        "max_train": "training images per data set (0 = all)",
    },
)
