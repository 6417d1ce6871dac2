"""``smallmed study svd``: seed 000's fraction study.

Methods x nested training fractions x seeds, every method on the same subsets (the fraction
subset depends on the seed only), from one pretrained source model; mean and 95% CI per cell,
paired comparison of each method against ``full`` at each fraction (paired over seeds), and a
report beside the seed's own numbers (different data: compare the shape of the claim).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig
from ..errors import SmallmedError
from ..train.checkpoint import atomic_write_csv, atomic_write_text
from .runner import run_cell, run_grid
from .stats import RATE, direction, fmt_ci, fmt_paired, mean_ci, paired

log = logging.getLogger(__name__)

# SPEC.md section 1, table 3/4 (CovidAID, DenseNet121, 50/10/40 split): mean ROC AUC
SEED_AUC = {
    1.0: {"fc-train": 0.9813, "full": 0.9938, "full-svd": 0.9962, "sp-svd": 0.9964, "sp-svd-9": 0.9955},
    0.5: {"fc-train": 0.9771, "full": 0.9889, "full-svd": 0.9952, "sp-svd": 0.9958, "sp-svd-9": 0.9937},
    0.25: {"fc-train": 0.9762, "full": 0.9904, "full-svd": 0.9937, "sp-svd": 0.9941, "sp-svd-9": 0.9928},
    0.125: {"fc-train": 0.9701, "full": 0.9645, "full-svd": 0.9916, "sp-svd": 0.9863, "sp-svd-9": 0.9907},
}


@dataclass
class SVDStudy:
    """A study grid. ``source_*`` describe the pretraining run made when ``weights`` is None."""

    data: str = "pneumoniamnist"
    model: str = "resnet18"
    image_size: int | None = 64
    methods: tuple[str, ...] = ("fc-train", "full", "full-svd", "sp-svd", "sp-svd-9")
    fractions: tuple[float, ...] = (1 / 8, 1 / 32)
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 4
    augment: str = "seed000"
    weights: str | None = None
    source_data: str = "rsna-boneage"
    source_epochs: int = 2
    source_image_size: int | None = None  # None: the study's image_size
    data_dir: str | None = None
    extra: dict = field(default_factory=dict)


PRESETS = {
    # 2 CPU cores, <= 10 minutes with the source pretraining: the shape of the claim, not its size
    "quick": SVDStudy(),
    # the seed's protocol, for a GPU: 224 px, 15 epochs, fractions 1..1/8, 5 seeds (pass --weights
    # for a chest-X-ray source, or let it pretrain on the bone-age hands for 10 epochs)
    # seed 000's CovidAID setting: the 575 COVID-era chest X-rays at native 224 px, patient-level
    # split, COVID-19 vs other findings; the source is pretrained on bone-age hands at 64 px
    # (224 px pretraining on 12.6k images is hours on a CPU). About 45 minutes on 2 CPU cores.
    "covid": SVDStudy(data="covid-ieee8023", image_size=224, methods=("fc-train", "full", "full-svd", "sp-svd-9"),
                      fractions=(1, 1 / 4), seeds=(0, 1, 2), epochs=6, source_epochs=3, source_image_size=64),
    "paper": SVDStudy(model="densenet121", image_size=224, fractions=(1, 1 / 2, 1 / 4, 1 / 8), seeds=(0, 1, 2, 3, 4),
                      epochs=15, source_epochs=10),
}


def _frac_name(f: float) -> str:
    """1 -> "1", 1/8 -> "1-8" (a folder name), anything else as written (invalid values are
    reported by TrainConfig)."""
    if f == 1:
        return "1"
    if 0 < f < 1 and abs(1 / f - round(1 / f)) < 1e-9:
        return f"1-{round(1 / f)}"
    return f"{f:g}"


def source_config(study: SVDStudy, out: Path) -> TrainConfig:
    return TrainConfig(data=study.source_data, data_dir=study.data_dir, model=study.model,
                       image_size=study.source_image_size or study.image_size, epochs=study.source_epochs, batch_size=64, augment="flip",
                       seed=0, out=str(out / "source"), progress=False)


def cells(study: SVDStudy, out: Path, weights: str) -> list[TrainConfig]:
    grid = []
    for frac in study.fractions:
        for method in study.methods:
            for seed in study.seeds:
                grid.append(TrainConfig.for_method(
                    method, data=study.data, data_dir=study.data_dir, model=study.model, weights=weights,
                    image_size=study.image_size, epochs=study.epochs, fraction=frac, seed=seed,
                    augment=study.augment, progress=False,
                    out=str(out / "runs" / f"f{_frac_name(frac)}" / method / f"s{seed}")))
    return grid


def run_svd_study(study: SVDStudy, out: str | Path, *, workers: int = 1, backend: str = "process", fresh: bool = False) -> Path:
    """Run (or resume) the study and write ``out/report.md``; returns its path."""
    out = Path(out)
    if "full" not in study.methods:
        raise SmallmedError("the SVD study compares against 'full': include it in --methods.")
    if study.weights is not None and study.weights != "imagenet" and not Path(study.weights).exists():
        raise SmallmedError(f"--weights {study.weights}: file not found.")
    t0 = time.time()
    weights = study.weights or str(out / "source" / "best.pt")
    grid = cells(study, out, weights)  # every cell's config is checked here, before anything runs
    from ..data import resolve_data

    resolve_data(study.data, study.data_dir)  # a missing target fails now, not after the source
    if study.weights is None:
        resolve_data(study.source_data, study.data_dir)
    from .settings import check_settings

    check_settings(out, study, fresh=fresh)
    if fresh:
        grid = cells(study, out, weights)
    if study.weights is None:
        log.info("pretraining the source model on %s (%d epochs)", study.source_data, study.source_epochs)
        run_cell(source_config(study, out).to_dict())
    results = run_grid(grid, workers=workers, backend=backend)
    return write_report(study, out, grid, results, time.time() - t0, weights)


def _rows(grid, results) -> list[dict]:
    rows = []
    for cfg, m in zip(grid, results):
        t = m["test"]
        rows.append({"fraction": cfg.fraction, "method": cfg.method, "seed": cfg.seed, "train_images": m["train_images"],
                     "auc": t["auc"], "acc": t["acc"], "tpr_at_fpr": t["tpr_at_fpr"],
                     "trainable_params": m["trainable_params"], "val_loss_variance": m["val_loss_variance"],
                     "best_epoch": m["best_epoch"], "seconds": m["wall_seconds"], "run": cfg.out})
    return rows


def _split_text(study) -> str:
    from ..data import load_dataset

    try:
        split = load_dataset(study.data, data_dir=study.data_dir).info.get("split")
    except Exception:
        split = None
    return f"split: {split}" if split else "the data's official split"


def _source_and_r(out: Path, grid, results) -> list[str]:
    """The source model's own test numbers and seed 000's R ratio of the fully fine-tuned runs."""
    lines = []
    src = out / "source" / "metrics.json"
    if src.exists():
        m = json.loads(src.read_text())
        lines.append(f"Source model (`{out / 'source'}`): {m['data']['name']}, {m['epochs']} epochs, test AUC "
                     f"{m['test'].get('auc', float('nan')):.4f}, accuracy {m['test'].get('acc', float('nan')):.4f}.")
    for frac in sorted({c.fraction for c in grid}, reverse=True):
        rs = [m["r_ratio"]["mean"] for c, m in zip(grid, results)
              if c.fraction == frac and c.method == "full" and m.get("r_ratio") and m["r_ratio"].get("n")]
        if rs:
            lines.append(f"R ratio of `full` (diagonal over off-diagonal energy of the tuned weights in the pretrained "
                         f"singular bases, full bases; mean over layers) at fraction {_frac_name(frac).replace('-', '/')}: "
                         + ", ".join(f"{r:.1f}" for r in rs) + f" (seeds {', '.join(str(c.seed) for c in grid if c.fraction == frac and c.method == 'full')}).")
    return lines + [""] if lines else []


def write_report(study: SVDStudy, out: Path, grid, results, seconds: float, weights: str) -> Path:
    rows = _rows(grid, results)
    atomic_write_csv(out / "results.csv", rows)
    lines = [
        f"# SVD fine-tuning study (seed 000) on {study.data}",
        "",
        f"Model {study.model} at {study.image_size} px from `{weights}`; methods {', '.join(study.methods)}; "
        f"training fractions {', '.join(_frac_name(f).replace('-', '/') for f in study.fractions)} (nested, the same subsets for every "
        f"method); seeds {', '.join(map(str, study.seeds))}; {study.epochs} epochs with seed 000's protocol "
        "(1 epoch head only, Adam (0.9, 0.99), lr 1e-3, plateau patience 4, batch 16, best epoch by validation "
        f"loss); augmentation `{study.augment}`; {_split_text(study)}. Training time summed over runs "
        f"{sum(r['seconds'] for r in rows) / 60:.1f} min (this invocation: {seconds / 60:.1f} min; finished runs are "
        "reused).",
        "",
        *_source_and_r(out, grid, results),
        "Cells: mean [95% t-interval over seeds, clipped to [0, 1]; unit of replication: the seed; none with fewer than 3 seeds]. 'vs full': paired difference in test AUC over seeds "
        "(same subset and seed), its 95% interval, paired t-test p and the number of seeds won. "
        "'seed 000' is the paper's AUC on CovidAID (other data and model: compare the shape of the claim). "
        "'trainable' counts every sigma tensor entry; with pruning only the unmasked ones can change "
        "(see each run's svd_diagnostics.json).",
        "",
    ]
    summary = {}
    for frac in study.fractions:
        fr = [r for r in rows if r["fraction"] == frac]
        n_img = fr[0]["train_images"]
        lines += [f"## Fraction {_frac_name(frac).replace('-', '/')} ({n_img} training images)", "",
                  "| method | test AUC | accuracy | TPR@FPR=1e-3 | trainable | val-loss var | vs full (AUC) | seed 000 AUC |",
                  "|---|---|---|---|---|---|---|---|"]
        full = {r["seed"]: r["auc"] for r in fr if r["method"] == "full"}
        for method in study.methods:
            mr = sorted((r for r in fr if r["method"] == method), key=lambda r: r["seed"])
            auc, acc, tpr = (mean_ci([r[k] for r in mr], bounds=RATE) for k in ("auc", "acc", "tpr_at_fpr"))
            var = mean_ci([r["val_loss_variance"] for r in mr], bounds=None)
            cmp = "-"
            if method != "full":
                seeds = [r["seed"] for r in mr if r["seed"] in full]
                pr = paired([r["auc"] for r in mr if r["seed"] in full], [full[s] for s in seeds])
                cmp = fmt_paired(pr)
                summary[(frac, method)] = pr
            seed_auc = SEED_AUC.get(round(frac, 6), {}).get(method)
            lines.append(f"| {method} | {fmt_ci(auc)} | {fmt_ci(acc)} | {fmt_ci(tpr)} | {mr[0]['trainable_params']:,} | "
                         f"{var['mean']:.3g} | {cmp} | {seed_auc if seed_auc else '-'} |")
        lines.append("")
    _plot(study, rows, out / "auc_vs_fraction.png")
    lines += ["![AUC vs training fraction](auc_vs_fraction.png)", "",
              "Per run: `runs/f*/METHOD/sSEED/` holds report.md, loss curves, ROC, and for SVD methods "
              "`sigma_hist.png` / `svd_diagnostics.json` (pretrained vs tuned singular values).", "",
              "## Verdict per fraction", ""]
    for frac in study.fractions:
        bits = []
        for method in study.methods:
            if (frac, method) in summary and "svd" in method:
                pr = summary[(frac, method)]
                word = direction(pr, "better than", "worse than")
                bits.append(f"{method} {word} full ({pr['mean']:+.4f})")
        lines.append(f"- fraction {_frac_name(frac).replace('-', '/')}: " + "; ".join(bits))
    lines.append("")
    lines += _bootstrap_section(rows, grid, results)
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    atomic_write_text(out / "study.json", json.dumps({k: (list(v) if isinstance(v, tuple) else v)
                                                      for k, v in study.__dict__.items()}, indent=2))
    return report


def _test_negatives(run_dir: str) -> int | None:
    """Negatives behind TPR@FPR in a run's test split (binary: label 0; multi-class: the
    smallest one-vs-rest negative count)."""
    path = Path(run_dir) / "test_predictions.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    classes = sorted(set(labels))
    if len(classes) <= 2:
        return labels.count("0")
    return min(len(labels) - labels.count(c) for c in classes)


def _bootstrap_section(rows, grid, results) -> list[str]:
    """Per-run test-set bootstrap intervals (1000 resamples, from each run's metrics.json), and
    what TPR at a low FPR means when the test split has few negatives."""
    neg = _test_negatives(rows[0]["run"])
    fpr = min(grid[0].fprs)
    lines = ["## Per-run bootstrap 95% intervals (test-set resampling)", ""]
    if neg is not None and neg * fpr < 1:
        lines += [f"The test split has {neg} negatives, so FPR = {fpr:g} allows {neg * fpr:.2g} false positives: "
                  f"TPR@FPR={fpr:g} here is the TPR at **zero false positives** (the threshold above every "
                  "negative's score). It is a strict, noisy number on a split this size; read it with its interval.", ""]
    lines += [f"| fraction | method | seed | test AUC [bootstrap 95%] | TPR@FPR={fpr:g} [bootstrap 95%] |", "|---|---|---|---|---|"]
    for r, m in zip(rows, results):
        ci = m["test"].get("ci95", {})
        auc_ci = ci.get("auc", [float("nan")] * 2)
        tpr_ci = ci.get("tpr_at_fpr", [float("nan")] * 2)
        lines.append(f"| {_frac_name(r['fraction']).replace('-', '/')} | {r['method']} | {r['seed']} | "
                     f"{r['auc']:.4f} [{auc_ci[0]:.4f}, {auc_ci[1]:.4f}] | "
                     f"{r['tpr_at_fpr']:.4f} [{tpr_ci[0]:.4f}, {tpr_ci[1]:.4f}] |")
    return lines + [""]



def _plot(study: SVDStudy, rows, path: Path) -> None:
    import numpy as np

    from ..report.plots import _save, plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in study.methods:
        xs, ys, es = [], [], []
        for frac in sorted(study.fractions):
            c = mean_ci([r["auc"] for r in rows if r["fraction"] == frac and r["method"] == method], bounds=RATE)
            xs.append(frac)
            ys.append(c["mean"])
            es.append(0 if np.isnan(c["lo"]) else c["mean"] - c["lo"])
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
    ax.set_ylim(0.3, 1.0)  # AUC lives here; two-seed t-intervals can run far outside it
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training fraction")
    ax.set_ylabel("test ROC AUC (mean, 95% t-CI over seeds)")
    ax.legend(fontsize=8)
    ax.set_title(f"{study.data}: AUC vs training fraction (seed 000 fig. 3)")
    _save(fig, path)
