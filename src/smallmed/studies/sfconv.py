"""``smallmed study sfconv``: seed 004's cheap-convolution comparison (classification part).

Six variants of one ResNet-type model (plain conv, sfconv with and without the KL flattening
term, fconv with Frobenius decay, fconvsn, depthwise-separable) x seeds on RetinaMNIST (fundus,
5 grades: the IDRiD analogue). Per variant: parameters, GMACs (FLOPs / 2) and eval throughput
measured in this process as a ratio to the plain-conv model, test accuracy and mean AUC with
t-intervals, the paired difference to plain conv; singular-value histograms of the factors with
and without KL (the seed's figure 3); intensity skewness / kurtosis of the data next to natural
photographs (the seed's figure 1).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import TrainConfig, applies
from ..errors import SmallmedError
from ..fields import Checked, setting
from ..io import atomic_write_csv, atomic_write_text
from .base import register_study
from .runner import run_grid
from .stats import RATE, compare_runs, comparison_figure, direction, fmt_bootstrap, fmt_ci, fmt_paired, mean_ci, paired

if TYPE_CHECKING:
    from ..data.dataset import ImageDataset
    from ..data.masks import SegmentationDataset

# name -> TrainConfig overrides
VARIANTS: dict[str, dict[str, Any]] = {
    "conv": {"conv": "conv"},
    "fconv": {"conv": "fconv", "fd_weight": 1e-4},
    "fconvsn": {"conv": "fconvsn"},
    "dpc": {"conv": "dpc"},
    "sfconv-nokl": {"conv": "sfconv"},
    "sfconv": {"conv": "sfconv", "kl_weight": 0.01},
}
SEED_DICE = {"conv": 0.7476, "sfconv": 0.7652, "dpc": 0.7738, "fconvsn": 0.7503, "fconv": 0.6770, "sfconv-nokl": 0.7327}
SEED_TABLE = {  # seed 004 table 1 (IDRiD, ResNet-type): params (M), FPS, FLOPs (G), accuracy
    "conv": (11.22, 222.23, 43.03, 0.8058),
    "fconv": (2.78, 38.12, 3.07, 0.7670),
    "fconvsn": (0.40, 84.67, 2.78, 0.7961),
    "dpc": (1.48, 204.27, 105.11, 0.8155),
    "sfconv-nokl": (0.27, 159.72, 20.08, 0.7379),
    "sfconv": (0.27, 158.15, 20.08, 0.8582),
}


@dataclass
class SFConvStudy(Checked):
    data: str = "retinamnist"
    model: str = "resnet18"
    image_size: int | None = setting(None, ge=4, le=4096)
    variants: tuple[str, ...] = setting(tuple(VARIANTS), choices=tuple(VARIANTS), help="the conv variants compared")
    seeds: tuple[int, ...] = setting((0, 1, 2), ge=0, lt=2**32)
    epochs: int = setting(5, ge=1, le=10**4)
    rank_ratio: float = setting(0.0625, gt=0, le=1, help="3x3 C->C convs: 14x fewer parameters at 0.0625")
    kl_weight: float = setting(0.01, ge=0, le=1e6)
    batch_size: int = setting(64, ge=1, le=10**5)
    data_dir: str | None = None
    lr: float = setting(1e-3, gt=0, le=100)


PRESETS = {
    "quick": SFConvStudy(),  # ResNet-18 (3x3 stride-1 stem) at 28 px from scratch: ~25 min on 2 CPU cores
    # lung segmentation: U-Net on the 451 COVID-era chest X-rays with lung masks, 64 px, patient-level split
    "seg": SFConvStudy(
        data="covid-lungseg", model="unet", image_size=64, seeds=(0, 1), epochs=8, batch_size=16, lr=3e-3
    ),
    "paper": SFConvStudy(image_size=224, epochs=50, seeds=(0, 1, 2, 3, 4)),  # a GPU
}


def cells(study: SFConvStudy, out: Path) -> list[TrainConfig]:
    grid = []
    for v in study.variants:
        if v not in VARIANTS:
            from ..registry import check_choice

            check_choice("variant", v, tuple(VARIANTS))
        over = dict(VARIANTS[v])
        if over.get("conv", "conv") in applies()["rank_ratio"][1]:  # the rank only means something for low-rank convs
            over["rank_ratio"] = study.rank_ratio
        if "kl_weight" in over:
            over["kl_weight"] = study.kl_weight
        for seed in study.seeds:
            grid.append(
                TrainConfig(
                    data=study.data,
                    data_dir=study.data_dir,
                    model=study.model,
                    image_size=study.image_size,
                    epochs=study.epochs,
                    batch_size=study.batch_size,
                    augment="flip",
                    seed=seed,
                    progress=False,
                    lr=study.lr,
                    out=str(out / "runs" / v / f"s{seed}"),
                    **over,
                )
            )
    return grid


def run_sfconv_study(
    study: SFConvStudy, out: str | Path, *, workers: int = 1, backend: str = "process", fresh: bool = False
) -> Path:
    out = Path(out)
    if "conv" not in study.variants:
        raise SmallmedError("the SFConv study compares against plain 'conv': include it in --variants.")
    from ..data import resolve_data

    grid = cells(study, out)
    resolve_data(study.data, study.data_dir)
    from .settings import check_settings

    check_settings(out, study, fresh=fresh)
    t0 = time.time()
    results = run_grid(grid, workers=workers, backend=backend)
    return write_report(study, out, grid, results, time.time() - t0)


def variant_costs(study: SFConvStudy, grid, batch: int = 32) -> dict[str, dict]:
    """Params, GMACs and throughput of each variant's trained model, timed against plain conv."""
    from ..analysis.cost import cost

    runs = {Path(cfg.out).parent.name: _model_of(cfg.out) for cfg in grid if cfg.seed == study.seeds[0]}
    base, size = runs["conv"]
    return {v: cost(m, size, baseline=base, batch=batch) for v, (m, _) in runs.items()}


def _model_of(run_dir: str):
    """(model, (C, H, W)) of a finished classification or segmentation run."""
    from ..train.inference import load_run

    run = load_run(run_dir)
    return run.model, (run.in_chans, run.image_size, run.image_size)


def factor_spectra(run_dir: str) -> np.ndarray:
    """Every factor's singular values, each normalised by its largest (seed 004 figure 3)."""
    import torch

    from ..reparam.factorized import factorized_modules

    model, _ = _model_of(run_dir)
    vals = []
    with torch.no_grad():
        for _, m in factorized_modules(model):
            for f in m.factors():
                s = torch.linalg.svdvals(f.float())
                vals.append((s / s.max()).numpy())
    return np.concatenate(vals) if vals else np.zeros(0)


def natural_reference() -> dict[str, float]:
    """Skewness / excess kurtosis of natural photographs bundled with scikit-image (if installed)."""
    try:
        from skimage import data as skdata
    except ImportError:
        return {}
    from ..data.stats import intensity_stats

    imgs = [skdata.camera(), skdata.astronaut().mean(-1), skdata.coffee().mean(-1), skdata.chelsea().mean(-1)]
    sts = [intensity_stats(np.asarray(i, dtype=np.float32)[None]) for i in imgs]
    return {k: float(np.mean([s[k] for s in sts])) for k in ("skewness", "kurtosis")}


def _spectra_lines(study: SFConvStudy, out: Path, grid) -> list[str]:
    """Singular values of the factors with and without the KL term (seed 004 fig. 3), first seed."""
    from ..report.plots import _save, plt

    lines: list[str] = []
    spectra = {
        v: factor_spectra(next(c.out for c in grid if Path(c.out).parent.name == v and c.seed == study.seeds[0]))
        for v in ("sfconv", "sfconv-nokl")
        if v in study.variants
    }
    if spectra:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for v, s in spectra.items():
            ax.hist(s, bins=30, range=(0, 1), alpha=0.5, label=f"{v} (median {np.median(s):.2f})")
        ax.set_xlabel("singular value / layer max (every factor)")
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
        ax.set_title("factor spectra with and without KL (seed 004 fig. 3)")
        _save(fig, out / "sv_hist.png")
        lines += ["![singular values](sv_hist.png)", ""]
    return lines


def _intensity_lines(study: SFConvStudy, seg: bool) -> list[str]:
    """Skewness and kurtosis of the training images beside natural photos (seed 004 figure 1)."""
    from ..data import load_dataset
    from ..data.stats import intensity_stats

    ds: ImageDataset | SegmentationDataset
    if seg:
        from ..data.masks import load_segmentation

        ds = load_segmentation(study.data, data_dir=study.data_dir)
    else:
        ds = load_dataset(study.data, data_dir=study.data_dir)
    st = intensity_stats(ds.splits["train"].images)
    ref = natural_reference()
    lines = [
        "## Intensity statistics (seed 004 figure 1)",
        "",
        "| images | skewness | excess kurtosis |",
        "|---|---|---|",
        f"| {study.data} (train) | {st['skewness']:.3f} | {st['kurtosis']:.3f} |",
    ]
    if ref:
        lines.append(
            f"| natural photos (scikit-image camera, astronaut, coffee, chelsea) | {ref['skewness']:.3f} | {ref['kurtosis']:.3f} |"
        )
    else:
        lines.append("| natural photos | (install scikit-image for the reference) | |")
    lines.append("")
    return lines


def _vs_conv(rows: list[dict], vr: list[dict], q1: str, q2: str, seg: bool) -> tuple[dict, str]:
    """A variant against plain conv, paired over seeds on both metrics (and by a paired bootstrap over the
    test images for classification): the first metric's paired result and the table cell."""
    base = {r["seed"]: r for r in rows if r["variant"] == "conv"}
    pr = paired([r[q1] for r in vr], [base[r["seed"]][q1] for r in vr])
    pr2 = paired([r[q2] for r in vr], [base[r["seed"]][q2] for r in vr])
    cmp = fmt_paired(pr, wins=False) + f"; {q2}: " + fmt_paired(pr2, wins=False)
    if not seg:
        boot, _ = compare_runs({r["seed"]: r["run"] for r in vr}, {s: r["run"] for s, r in base.items()})
        if boot:
            cmp += f"; AUC, paired bootstrap over test images: {fmt_bootstrap(boot)}"
    return pr, cmp


def _claims_lines(study: SFConvStudy, rows: list[dict], verdict: dict, costs: dict, q1: str, seg: bool) -> list:
    """The verdict on the seed's three claims (KL helps, quality matches conv, speed)."""
    if "sfconv" not in verdict or "sfconv-nokl" not in study.variants:
        return []
    kl = paired(
        [r[q1] for r in sorted((r for r in rows if r["variant"] == "sfconv"), key=lambda r: r["seed"])],
        [r[q1] for r in sorted((r for r in rows if r["variant"] == "sfconv-nokl"), key=lambda r: r["seed"])],
    )
    sf, cv = verdict["sfconv"], costs["sfconv"]
    return [
        "## Verdict on the seed's claims",
        "",
        f"- KL helps (sfconv - sfconv w/o KL, {q1}): {kl['mean']:+.4f} [{kl['lo']:+.4f}, {kl['hi']:+.4f}], "
        f"p={kl['p_t']:.2g} -> {direction(kl, 'yes', 'no', 'not shown')} here (seed: {'+0.03 Dice' if seg else '+0.12 accuracy'}).",
        f"- SFConv matches plain conv quality: {sf['mean']:+.4f} [{sf['lo']:+.4f}, {sf['hi']:+.4f}] -> "
        f"{direction(sf, 'better', 'worse', 'not distinguishable')} here, with "
        f"{costs['conv']['params'] / cv['params']:.1f}x fewer parameters in total.",
        f"- Speed ~0.7x plain conv: measured {cv['speed_ratio']:.2f}x on this CPU (goal >= 0.9x).",
        "",
    ]


def write_report(study: SFConvStudy, out: Path, grid, results, seconds: float) -> Path:
    seg = results[0].get("task") == "segmentation"
    q1, q2, q1_name, q2_name = (
        ("dice", "iou", "test Dice", "test IoU") if seg else ("acc", "auc", "test accuracy", "mean AUC")
    )
    rows = []
    for cfg, m in zip(grid, results):
        rows.append(
            {
                "variant": Path(cfg.out).parent.name,
                "seed": cfg.seed,
                q1: m["test"][q1],
                q2: m["test"][q2],
                "params": m["total_params"],
                "seconds": m["wall_seconds"],
                "run": cfg.out,
            }
        )
    atomic_write_csv(out / "results.csv", rows)
    costs = variant_costs(study, grid)
    atomic_write_text(out / "costs.json", json.dumps(costs, indent=1))
    lines = [
        f"# SFConv and cheap convolutions (seed 004) on {study.data}",
        "",
        f"{study.model} from scratch at {grid[0].image_size or 'the data' + chr(39) + 's native'} px ({'BCE + soft Dice loss, ' if seg else ''}lr {study.lr:g}); every conv with k > 1 replaced (rank ratio "
        f"{study.rank_ratio:g} of min(C_out, C_in*k*k) for the factorized variants; sfconv KL weight "
        f"{study.kl_weight:g}; fconv Frobenius decay 1e-4); {study.epochs} epochs, Adam, batch "
        f"{study.batch_size}, flip augmentation, best epoch by validation loss; seeds {', '.join(map(str, study.seeds))}; "
        f"{'patient-level 60/20/20 split' if seg else 'official test split'}. Costs from the seed-{study.seeds[0]} models on this machine: parameters, GMACs per "
        "image (FLOPs = 2 x MACs, torch.utils.flop_counter), eval images/s at batch 32 timed interleaved with the "
        f"plain-conv model in one process (ratio = variant / conv). Wall time of this invocation {seconds / 60:.1f} min "
        "(finished runs are reused).",
        "",
        f"| variant | params | GMACs | images/s | speed vs conv | {q1_name} | {q2_name} | vs conv ({q1}; {q2}, paired over seeds) | "
        f"paper ({'Dice; U-Net on ROSE-1 OCTA vessels, GPU' if seg else 'params M / FPS / FLOPs G / ACC; ResNet-type on IDRiD fundus grading, full resolution, GPU'}; here {study.model} at {grid[0].image_size or 'native'} px, {study.epochs} epochs, CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdict = {}
    for v in study.variants:
        vr = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["seed"])
        acc, auc = mean_ci([r[q1] for r in vr], bounds=RATE), mean_ci([r[q2] for r in vr], bounds=RATE)
        c = costs[v]
        cmp = "-"
        if v != "conv":
            verdict[v], cmp = _vs_conv(rows, vr, q1, q2, seg)
        seed = (SEED_DICE.get(v),) if seg else SEED_TABLE.get(v)
        lines.append(
            f"| {v} | {c['params']:,} | {c['gmacs']:.4f} | {c['images_per_s']:.0f} | {c['speed_ratio']:.2f} | "
            f"{fmt_ci(acc)} | {fmt_ci(auc)} | {cmp} | {' / '.join(map(str, seed)) if seed else '-'} |"
        )
    lines.append("")
    lines += _claims_lines(study, rows, verdict, costs, q1, seg)
    lines += _spectra_lines(study, out, grid)
    lines += _intensity_lines(study, seg)
    if comparison_figure(rows, group=None, arm="variant", metric=q1, path=out / "comparison.png", xlabel=q1_name):
        lines += ["", "![the arms compared](comparison.png)", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


register_study(
    "sfconv",
    summary="seed 004: conv / sfconv (+-KL) / fconv / fconvsn / dpc x seeds",
    presets=PRESETS,
    run=run_sfconv_study,
    parallel=True,
    help={
        "data": "default: retinamnist (seg preset: covid-lungseg)",
        "variants": "subset of conv fconv fconvsn dpc sfconv-nokl sfconv",
    },
)
