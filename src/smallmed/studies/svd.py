"""``smallmed study svd``: SVD fine-tuning (Vaulin) against the parameter-efficient family.

Methods x nested training fractions x seeds, every method on the same subsets (the fraction
subset depends on the seed only), from one cached pretrained source model; every run stops early
on validation loss. Each method is compared with full fine-tuning by a paired bootstrap over
test images (seeds averaged) and DeLong's test, and the paper's numbers stand beside ours with
the difference in scale stated in the column header.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from ..config import TrainConfig
from ..errors import SmallmedError
from ..fields import Checked, setting
from ..io import atomic_write_csv, atomic_write_text
from ..methods import get_method
from .base import register_study
from .runner import cell_dir, run_cell, run_grid
from .stats import RATE, comparison_figure, fmt_ci, mean_ci

log = logging.getLogger(__name__)

# SPEC.md section 1, table 3/4 (CovidAID, DenseNet121, 50/10/40 split): mean ROC AUC
SEED_AUC = {
    1.0: {"fc-train": 0.9813, "full": 0.9938, "full-svd": 0.9962, "sp-svd": 0.9964, "sp-svd-9": 0.9955},
    0.5: {"fc-train": 0.9771, "full": 0.9889, "full-svd": 0.9952, "sp-svd": 0.9958, "sp-svd-9": 0.9937},
    0.25: {"fc-train": 0.9762, "full": 0.9904, "full-svd": 0.9937, "sp-svd": 0.9941, "sp-svd-9": 0.9928},
    0.125: {"fc-train": 0.9701, "full": 0.9645, "full-svd": 0.9916, "sp-svd": 0.9863, "sp-svd-9": 0.9907},
}


# how each method is named in the report: by its paper (the SVD variants are those of the restated paper)
NAMES = {
    "fc-train": "linear probe",
    "full": "full fine-tuning",
    "bitfit": "BitFit (Ben Zaken et al. 2022)",
    "lora": "LoRA (Hu et al. 2022, via PEFT)",
    "full-out-svd": "SVF (Sun et al. 2022)",
    "full-svd": "SVD, in x out*k*k (Vaulin)",
    "sp-svd": "SVD per kernel position (Vaulin)",
    "sp-svd-9": "SVD per position, 90% pruned (Vaulin)",
    "full-svd-9": "SVD in x out*k*k, 90% pruned",
}
PAPER_SCALE = "paper AUC: DenseNet-121 (CheXNet) at 224 px, CovidAID, 15 epochs"


def _methods() -> tuple[str, ...]:
    from ..methods import method_names

    return tuple(method_names())


@dataclass
class SVDStudy(Checked):
    """A study grid. ``source_*`` describe the pretraining run made when ``weights`` is None.

    Every run trains until its validation loss has not improved for ``early_stop`` epochs, at most
    ``epochs``; the report says how many runs were still improving at the cap. The source model is
    trained the same way and cached by the hash of its recipe and data (see :func:`source_dir`).
    """

    data: str = "pneumoniamnist"
    model: str = "resnet18"
    image_size: int | None = setting(64, ge=4, le=4096)
    methods: tuple[str, ...] = setting(
        ("fc-train", "bitfit", "lora", "full", "full-out-svd", "full-svd", "sp-svd", "sp-svd-9"), choices=_methods
    )
    fractions: tuple[float, ...] = setting((1 / 8, 1 / 32), gt=0, le=1, help="training fractions (nested subsets)")
    seeds: tuple[int, ...] = setting((0, 1, 2), ge=0, lt=2**32)
    epochs: int = setting(15, ge=1, le=10**4, help="the most; early stopping ends most runs sooner")
    early_stop: int = setting(3, ge=0, le=1000)
    augment: str = "seed000"
    lora_rank: int | None = setting(None, ge=1, le=4096, help="default: each LoRA-family method's own")
    weights: str | None = None
    source_data: str = setting(
        "auto", help="auto: ChestMNIST (NIH ChestX-ray14) where present or downloadable, else RSNA bone-age hands"
    )
    source_fraction: float = setting(1.0, gt=0, le=1, help="of the source's training split")
    source_epochs: int = setting(6, ge=1, le=10**4, help="the most; the source stops early too")
    source_early_stop: int = setting(2, ge=0, le=1000)
    source_image_size: int | None = setting(None, ge=4, le=4096, help="default: the study's image_size")
    data_dir: str | None = None
    bootstrap: int = setting(2000, ge=100, le=10**6, help="test-image resamples behind each paired comparison")
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_rank is not None and not any("lora_rank" in get_method(m).uses for m in self.methods):
            raise SmallmedError(
                f"lora_rank={self.lora_rank} has no effect: none of the methods {list(self.methods)} has a LoRA "
                "rank; it applies with lora or dora among --methods."
            )


PRESETS = {
    # 2 CPU cores, about an hour with the source: every method, two fractions, three seeds
    "quick": SVDStudy(),
    # make demo: four methods at 1/8 with one seed; its verdicts come from the paired bootstrap over the 624 test
    # images. A 3-epoch source (about 3 minutes on 2 cores, 6 took 6) keeps a fresh machine's first demo, setup
    # included, under 10 minutes; the verdicts are those of the 6-epoch source (README, make demo)
    "demo": SVDStudy(methods=("fc-train", "full", "full-svd", "lora"), fractions=(1 / 8,), seeds=(0,), source_epochs=3),
    # the seed paper's CovidAID setting: the 575 COVID-era chest X-rays at native 224 px, patient-level
    # split, COVID-19 vs other findings; the source is pretrained on bone-age hands at 64 px
    # (224 px pretraining on 12.6k images is hours on a CPU).
    "covid": SVDStudy(
        data="covid-ieee8023",
        image_size=224,
        methods=("fc-train", "bitfit", "lora", "full", "full-out-svd", "full-svd", "sp-svd-9"),
        fractions=(1, 1 / 4),
        seeds=(0, 1, 2),
        epochs=12,
        source_image_size=64,
    ),
    # the seed's protocol, for a GPU: 224 px, fractions 1..1/8, 5 seeds (pass --weights for a chest X-ray
    # source, e.g. xrv:densenet121-res224-nih)
    "paper": SVDStudy(
        model="densenet121",
        image_size=224,
        fractions=(1, 1 / 2, 1 / 4, 1 / 8),
        seeds=(0, 1, 2, 3, 4),
        epochs=30,
        early_stop=5,
        source_epochs=20,
    ),
}


def _frac_name(f: float) -> str:
    """1 -> "1", 1/8 -> "1-8" (a folder name), anything else as written (invalid values are
    reported by TrainConfig)."""
    if f == 1:
        return "1"
    if 0 < f < 1 and abs(1 / f - round(1 / f)) < 1e-9:
        return f"1-{round(1 / f)}"
    return f"{f:g}"


# source="auto": (data name, fraction of its training split) in order of preference. ChestMNIST is the seed's
# own source domain (NIH ChestX-ray14, 14 findings, multi-label); 15% of its 78k training images keeps a
# source epoch near the bone-age set's 12.6k.
SOURCES = (("chestmnist_64", 0.15), ("rsna-boneage", 1.0))


def resolve_source(study: SVDStudy, *, download: bool = True) -> SVDStudy:
    """``source_data="auto"`` made concrete: ChestMNIST where present (or, with ``download``, downloadable),
    else the RSNA bone-age hands; one sentence naming both when neither can be had."""
    import dataclasses

    from ..data import fetch, resolve_data

    if study.source_data != "auto":
        return study
    chest, bone = SOURCES
    tried = []
    for name, frac in (chest, bone) if not download else (chest,):
        try:
            resolve_data(name, study.data_dir)
            return dataclasses.replace(study, source_data=name, source_fraction=frac)
        except SmallmedError as e:
            tried.append(str(e))
    if download:
        try:
            from ..hub import offline

            if not offline():
                print(
                    "source: ChestMNIST (NIH ChestX-ray14) not found locally; trying the official download (MD5-checked)..."
                )
            fetch(chest[0])
            return dataclasses.replace(study, source_data=chest[0], source_fraction=chest[1])
        except SmallmedError as e:
            tried.append(str(e))
        try:
            resolve_data(bone[0], study.data_dir)
            return dataclasses.replace(study, source_data=bone[0], source_fraction=bone[1])
        except SmallmedError as e:
            tried.append(str(e))
    raise SmallmedError(
        "no source data for the pretraining: "
        + " ".join(tried)
        + " Run `smallmed data fetch chestmnist_64` where online, or pass --weights."
    )


def source_config(study: SVDStudy, out: Path | None = None) -> TrainConfig:
    """The source pretraining run (its folder: ``out`` or the shared cache, :func:`source_dir`)."""
    cfg = TrainConfig(
        data=study.source_data,
        data_dir=study.data_dir,
        model=study.model,
        image_size=study.source_image_size or study.image_size,
        epochs=study.source_epochs,
        early_stop=study.source_early_stop,
        fraction=study.source_fraction,
        batch_size=64,
        augment="flip",
        seed=0,
        progress=False,
    )
    return cfg.with_overrides(out=str(out if out is not None else source_dir(study, cfg)))


def source_dir(study: SVDStudy, cfg: TrainConfig | None = None) -> Path:
    """``<cache>/sources/<model>-<data>-<hash>``: one folder per source recipe and data file, shared by
    every study and the demo (the hash covers the training config and the data file's bytes)."""
    import hashlib

    from ..data import resolve_data
    from ..data.fetch import md5sum
    from ..data.paths import cache_dir
    from .settings import NEUTRAL_KEYS

    cfg = cfg or source_config(study, Path("."))
    # settings at their defaults are left out, so a field added to smallmed later keeps every cached source
    defaults = TrainConfig().to_dict()
    recipe = {k: v for k, v in cfg.to_dict().items() if k not in NEUTRAL_KEYS | {"data_dir"} and v != defaults.get(k)}
    data_file = resolve_data(study.source_data, study.data_dir)
    key = json.dumps({"recipe": recipe, "data_md5": md5sum(data_file)}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "sources" / f"{study.model}-{Path(str(study.source_data)).stem}-{digest}"


def cells(study: SVDStudy, out: Path, weights: str) -> list[TrainConfig]:
    grid = []
    for frac in study.fractions:
        for method in study.methods:
            for seed in study.seeds:
                extra = (
                    {"lora_rank": study.lora_rank} if study.lora_rank and "lora_rank" in get_method(method).uses else {}
                )
                grid.append(
                    TrainConfig.for_method(
                        method,
                        data=study.data,
                        data_dir=study.data_dir,
                        model=study.model,
                        weights=weights,
                        image_size=study.image_size,
                        epochs=study.epochs,
                        early_stop=study.early_stop,
                        fraction=frac,
                        seed=seed,
                        augment=study.augment,
                        progress=False,
                        out=str(out / "runs" / f"f{_frac_name(frac)}" / method / f"s{seed}"),
                        **extra,
                    )
                )
    return grid


def run_svd_study(
    study: SVDStudy,
    out: str | Path,
    *,
    workers: int = 1,
    backend: str = "process",
    fresh: bool = False,
    bar: bool = False,
) -> Path:
    """Run (or resume) the study and write ``out/report.md``; returns its path."""
    out = Path(out)
    if "full" not in study.methods:
        raise SmallmedError("the SVD study compares against 'full': include it in --methods.")
    if (
        study.weights is not None
        and not Path(study.weights).exists()
        and ":" not in study.weights
        and study.weights != "imagenet"
    ):
        raise SmallmedError(f"--weights {study.weights}: file not found.")
    t0 = time.time()
    from ..data import resolve_data

    cells(study, out, study.weights or "source.pt")  # every cell's config is checked before anything runs
    resolve_data(study.data, study.data_dir)  # a missing target fails now, not after the source
    src = None
    if study.weights is None:
        study = resolve_source(study)
        print(f"source: {study.source_data} (fraction {study.source_fraction:g} of its training split)")
        src = source_config(study)
    # src was made above whenever study.weights is None
    weights = study.weights or str(cell_dir(cast(TrainConfig, src)) / "best.pt")
    grid = cells(study, out, weights)
    from .settings import check_settings

    check_settings(out, study, fresh=fresh)
    if fresh:
        grid = cells(study, out, weights)
    if src is not None:
        done = (cell_dir(src) / "metrics.json").exists()
        log.info(
            "source model %s: %s",
            src.out,
            "cached"
            if done
            else f"pretraining on {study.source_data} (at most {study.source_epochs} epochs, early stop "
            f"{study.source_early_stop})",
        )
        if bar and not done:
            print(f"pretraining the source model on {study.source_data} once (cached in {src.out})")
        from .runner import quiet_console

        with quiet_console() if bar else contextlib.nullcontext():
            # under the demo's bar: one progress bar per source epoch (with tqdm's time estimate), never a silent wait
            run_cell({**source_config(study).to_dict(), "progress": bar})
    results = run_grid(grid, workers=workers, backend=backend, bar=bar)
    return write_report(study, out, grid, results, time.time() - t0, weights)


def _rows(grid, results) -> list[dict]:
    rows = []
    for cfg, m in zip(grid, results):
        t = m["test"]
        op = t.get("operating_point") or {}
        rows.append(
            {
                "fraction": cfg.fraction,
                "method": cfg.method,
                "seed": cfg.seed,
                "train_images": m["train_images"],
                "auc": t["auc"],
                "acc": t["acc"],
                "tpr_at_fpr": t["tpr_at_fpr"],
                "sensitivity": _num(op.get("sensitivity")),
                "specificity": _num(op.get("specificity")),
                "brier": t.get("brier", float("nan")),
                "ece": t.get("ece", float("nan")),
                "trainable_params": m["trainable_params"],
                "stored_bytes": m.get("stored_bytes", ""),
                "val_loss_variance": m["val_loss_variance"],
                "best_epoch": m["best_epoch"],
                "epochs": m["epochs"],
                "seconds": m["wall_seconds"],
                "run": cfg.out,
            }
        )
    return rows


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _split_text(study) -> str:
    from ..data import load_dataset

    try:
        split = load_dataset(study.data, data_dir=study.data_dir).info.get("split")
    except Exception:
        split = None
    return f"split: {split}" if split else "the data's official split"


def _source_and_r(weights: str, grid, results) -> list[str]:
    """The source model's own test numbers and the R ratio of the fully fine-tuned runs."""
    lines = []
    src = Path(weights).parent / "metrics.json"
    if src.exists():
        m = json.loads(src.read_text())
        lines.append(
            f"Source model (`{Path(weights).parent}`): {m['data']['name']}, best epoch {m['best_epoch']} of "
            f"{m['epochs']} (early stopping on validation loss{', still improving at the cap' if m['best_epoch'] == m['epochs'] else ''}), test AUC {m['test'].get('auc', float('nan')):.4f}, "
            f"accuracy {m['test'].get('acc', float('nan')):.4f}."
        )
    for frac in sorted({c.fraction for c in grid}, reverse=True):
        rs = [
            (c.seed, m["r_ratio"]["mean"])
            for c, m in zip(grid, results)
            if c.fraction == frac and c.method == "full" and m.get("r_ratio") and m["r_ratio"].get("n")
        ]
        if rs:
            lines.append(
                f"R ratio of `full` (diagonal over off-diagonal energy of the tuned weights in the pretrained "
                f"singular bases; mean over layers) at fraction {_frac_label(frac)}: "
                + ", ".join(f"{r:.1f} (seed {s})" for s, r in rs)
                + "."
            )
    return lines + [""] if lines else []


def _frac_label(f: float) -> str:
    return _frac_name(f).replace("-", "/")


def convergence(rows: list[dict], cap: int) -> dict:
    """Runs whose best epoch was their last one at the epoch cap: still improving when stopped."""
    capped = [r for r in rows if int(r["epochs"]) >= cap and int(r["best_epoch"]) == int(r["epochs"])]
    return {"runs": len(rows), "at_cap": len(capped), "share": len(capped) / max(len(rows), 1)}


def _kb(b) -> str:
    if b in ("", None):
        return "-"
    b = float(b)
    return f"{b / 1e6:.1f} MB" if b >= 1e6 else f"{b / 1e3:.0f} KB"


def _lora_text(grid) -> str:
    ranks = sorted({c.lora_rank for c in grid if c.lora_rank})
    return f"LoRA rank {', '.join(map(str, ranks))}; " if ranks else ""


def _compare(study, fr: list[dict], method: str, base: str) -> tuple[dict | None, list[float]]:
    """Paired bootstrap over test images (seeds averaged) and DeLong p per seed, ``method`` - ``base``."""
    from .stats import compare_runs

    return compare_runs(
        {r["seed"]: r["run"] for r in fr if r["method"] == method},
        {r["seed"]: r["run"] for r in fr if r["method"] == base},
        n=study.bootstrap,
    )


def _fraction_table(study: SVDStudy, rows: list[dict], frac: float, fpr: float, summary: dict) -> list[str]:
    """One training fraction's table (every method against full fine-tuning); the paired bootstrap results
    are added to ``summary`` by (fraction, method) for the verdict."""
    from .stats import MIN_SEEDS, fmt_bootstrap

    nseeds = len(study.seeds)
    lines: list[str] = []
    fr = [r for r in rows if r["fraction"] == frac]
    lines += [
        f"## Fraction {_frac_label(frac)} ({fr[0]['train_images']} training images)",
        "",
        f"| method | test AUC | vs full (AUC) | DeLong p | TPR@FPR={fpr:g} | sens / spec | trainable | stored "
        f"| best epoch | {PAPER_SCALE}; here {study.model}, {study.image_size} px, {fr[0]['train_images']} "
        f"images, at most {study.epochs} epochs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in study.methods:
        mr = sorted((r for r in fr if r["method"] == method), key=lambda r: r["seed"])
        if not mr:
            continue
        auc = mean_ci([r["auc"] for r in mr], bounds=RATE)
        if nseeds < MIN_SEEDS:
            ci = json.loads((Path(mr[0]["run"]) / "metrics.json").read_text())["test"].get("ci95", {}).get("auc")
            auc_txt = f"{auc['mean']:.4f} (n too small; bootstrap [{ci[0]:.4f}, {ci[1]:.4f}])" if ci else fmt_ci(auc)
        else:
            auc_txt = fmt_ci(auc)
        cmp_txt, dl_txt = "-", "-"
        if method != "full":
            boot, dl = _compare(study, fr, method, "full")
            if boot:
                summary[(frac, method)] = boot
                cmp_txt = fmt_bootstrap(boot)
                dl_txt = ", ".join(f"{p:.2g}" for p in dl) or "-"
        sens = np.nanmean([r["sensitivity"] for r in mr])
        spec = np.nanmean([r["specificity"] for r in mr])
        paper = SEED_AUC.get(round(frac, 6), {}).get(method)
        best = "/".join(
            f"{r['best_epoch']}" + ("*" if r["best_epoch"] == r["epochs"] >= study.epochs else "") for r in mr
        )
        lines.append(
            f"| {NAMES.get(method, method)} | {auc_txt} | {cmp_txt} | {dl_txt} | "
            f"{np.mean([r['tpr_at_fpr'] for r in mr]):.3f} | {sens:.3f} / {spec:.3f} | "
            f"{mr[0]['trainable_params']:,} | {_kb(mr[0]['stored_bytes'])} | {best} | {paper or '-'} |"
        )
    lines += ["", "(best epoch per seed; * = at the cap, still improving)", ""]
    return lines


def _verdict_line(study: SVDStudy, rows: list[dict], frac: float, summary: dict) -> list[str]:
    """The verdict for one fraction: each method against full fine-tuning by its paired interval."""
    lines: list[str] = []
    bits = []
    for method in study.methods:
        b = summary.get((frac, method))
        if b:
            word = "better than" if b["lo"] > 0 else "worse than" if b["hi"] < 0 else "not distinguishable from"
            bits.append(f"{NAMES.get(method, method)} {word} full ({b['diff']:+.4f} [{b['lo']:+.4f}, {b['hi']:+.4f}])")
    means = {m: np.mean([r["auc"] for r in rows if r["fraction"] == frac and r["method"] == m]) for m in study.methods}
    top = max(means, key=means.__getitem__)
    lines.append(
        f"- fraction {_frac_label(frac)}: highest mean AUC {NAMES.get(top, top)} ({means[top]:.4f}); "
        + "; ".join(bits)
        + "."
    )
    return lines


def write_report(study: SVDStudy, out: Path, grid, results, seconds: float, weights: str) -> Path:
    from .stats import MIN_SEEDS

    rows = _rows(grid, results)
    atomic_write_csv(out / "results.csv", rows)
    conv = convergence(rows, study.epochs)
    fpr = min(grid[0].fprs)
    nseeds = len(study.seeds)
    lines = [
        f"# SVD fine-tuning against the parameter-efficient family on {study.data}",
        "",
        f"Model {study.model} at {study.image_size} px from `{weights}`; training fractions "
        f"{', '.join(_frac_label(f) for f in study.fractions)} (nested, the same subsets for every method); seeds "
        f"{', '.join(map(str, study.seeds))}. Every run: 1 epoch head only, then Adam (0.9, 0.99), lr 1e-3, plateau "
        f"patience 4, batch 16, early stopping after {study.early_stop} epochs without validation-loss improvement "
        f"(at most {study.epochs}), best epoch by validation loss; augmentation `{study.augment}`; "
        f"{_lora_text(grid)}{_split_text(study)}. Training time summed over runs {sum(r['seconds'] for r in rows) / 60:.1f} "
        f"min (this invocation: {seconds / 60:.1f} min; finished runs are reused).",
        "",
        *_source_and_r(weights, grid, results),
        f"**Convergence check:** {conv['at_cap']} of {conv['runs']} runs ({conv['share']:.0%}) had their best epoch at the "
        f"cap of {study.epochs} epochs (still improving when stopped)."
        + (
            " **Warning: over a third; raise --epochs before trusting these verdicts.**"
            if conv["share"] > 1 / 3
            else ""
        ),
        "",
        "How to read the tables. *test AUC*: mean over seeds with its 95% t-interval (unit of replication: the seed, "
        "clipped to [0, 1])"
        + (
            f"; with fewer than {MIN_SEEDS} seeds no t-interval is printed (n too small) and the "
            "bracket is the run's own bootstrap interval over test images"
            if nseeds < MIN_SEEDS
            else ""
        )
        + f". *vs full*: AUC difference to full fine-tuning by a paired bootstrap over test images ({study.bootstrap} "
        "resamples, the same images for both methods, averaged over seeds; unit of replication: the test image), its "
        "95% interval and two-sided p; *DeLong p*: DeLong's test of the same difference, one per seed. *TPR@FPR*: read "
        f"off the test ROC (a test-chosen point); *sens / spec*: at the threshold fixed on the validation split by "
        "Youden's J. *stored*: what one more task costs to keep beside a shared backbone (the adapter file; the whole "
        "model for full fine-tuning).",
        "",
    ]
    summary: dict = {}
    tables: list[str] = []
    for frac in study.fractions:
        tables += _fraction_table(study, rows, frac, fpr, summary)
    _plot(study, rows, out / "auc_vs_fraction.png")
    verdicts = [
        "## Verdict per fraction",
        "",
        "Against full fine-tuning, by the paired bootstrap over test images (better / worse: the 95% interval "
        "excludes 0):",
        "",
    ]
    for frac in study.fractions:
        verdicts += _verdict_line(study, rows, frac, summary)
    # the tables and verdicts alone, for the console (smallmed demo prints this file)
    atomic_write_text(out / "summary.md", "\n".join([*tables, *verdicts]) + "\n")
    lines += [*tables, "![AUC vs training fraction](auc_vs_fraction.png)", "", *verdicts]
    lines += [
        "",
        "Per run: `runs/f*/METHOD/sSEED/` holds report.md (operating point, calibration), train.log, loss "
        "curves, ROC and reliability plots, the adapter, and for SVD methods `sigma_hist.png` / "
        "`svd_diagnostics.json`.",
        "",
    ]
    if comparison_figure(
        rows, group="fraction", arm="method", metric="auc", path=out / "comparison.png", xlabel="test AUC"
    ):
        lines += ["", "![the arms compared](comparison.png)", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


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


register_study(
    "svd",
    summary="seed 000: fine-tuning methods x training fractions x seeds, against full fine-tuning",
    presets=PRESETS,
    run=run_svd_study,
    parallel=True,
    help={
        "data": "target data (default: the preset's; pneumoniamnist, covid-ieee8023 for 'covid')",
        "weights": "pretrained source weights (default: pretrain on the preset's source first)",
        "source_image_size": "image size of the source pretraining (default: --image-size)",
        "methods": "registered methods (smallmed.methods), 'full' among them",
    },
)
