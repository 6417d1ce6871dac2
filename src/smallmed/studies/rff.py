"""``smallmed study rff``: seed 001's receptive-field-freeze transfer protocol on real data.

For each class split (base classes / held-out transfer classes) and seed:

1. base training for ``n`` epochs on the base classes;
2. epoch n+1 branches: model A trains normally, model B with the receptive-field-expanding
   layers frozen (:func:`smallmed.schedules.rff_layers`), on the same batches;
3. transfer: each gets the same new classifier (same initial weights, same random generator),
   and only that classifier trains on the transfer classes; the metric is accuracy on 20% of
   each transfer class held out.

The report gives the mean paired delta (B - A) with a 95% t-interval and a paired test over all
(split, seed) cells, the time overhead of the RFF epoch, and effective-receptive-field maps
before and after base training. Each cell's result is written atomically, so a killed study
resumes without redoing finished cells. The training loop is deliberately small and explicit:
the branch needs two models stepping on identical batches, which ``fit`` does not do.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SmallmedError
from ..fields import Checked, setting
from ..io import atomic_write_text
from ..roles import head_name
from .base import register_study
from .stats import MIN_CLUSTERS, RATE, cluster_bootstrap, comparison_figure, mean_ci, paired

SEED_DELTA = {"small_cnn": 0.012, "resnet50": 0.052}  # SPEC.md section 3


@dataclass
class RFFStudy(Checked):
    data: str = setting("rsna-boneage", help="12.6k real hand radiographs in 5 age groups (the shipped default)")
    model: str = "small_cnn"
    image_size: int = setting(32, ge=4, le=4096)
    transfer_classes: int = setting(2, ge=1, help="classes held out for the transfer task")
    splits: int = setting(5, ge=1, le=1000, help="class splits (distinct transfer sets)")
    seeds: tuple[int, ...] = setting((0, 1), ge=0, lt=2**32)
    base_epochs: int = setting(4, ge=1, le=10**4, help="n: base training, then the branch epoch n+1")
    transfer_epochs: int = setting(5, ge=1, le=10**4)
    max_train: int = setting(3000, ge=0, help="base-class training images per cell; 0: all")
    batch_size: int = setting(64, ge=1, le=10**5)
    lr: float = setting(1e-3, gt=0, le=100)
    data_dir: str | None = None


PRESETS = {
    "quick": RFFStudy(),  # small CNN, ~10 minutes on 2 CPU cores
    "resnet": RFFStudy(model="resnet18", image_size=64, splits=3, seeds=(0, 1), max_train=2000),
}


def class_splits(num_classes: int, transfer: int, count: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``count`` distinct (base, transfer) class partitions, transfer sets of size ``transfer``."""
    if transfer < 2:
        raise SmallmedError(f"transfer_classes={transfer}: the transfer task needs at least two classes.")
    if num_classes - transfer < 2:
        raise SmallmedError(
            f"{num_classes} classes leave {num_classes - transfer} base classes for "
            f"{transfer} transfer classes; expected at least two base classes."
        )
    combos = list(itertools.combinations(range(num_classes), transfer))
    rng = np.random.default_rng(seed)
    rng.shuffle(combos)
    return [([c for c in range(num_classes) if c not in t], list(t)) for t in combos[:count]]


def _tensors(study: RFFStudy):
    """All train-split images at the study size, standardised, as one float tensor + labels."""
    from ..data import load_dataset

    ds = load_dataset(study.data, data_dir=study.data_dir)
    if ds.task != "multiclass":
        raise SmallmedError(f"{study.data}: the RFF study needs a multi-class data set, not {ds.task}.")
    sp = ds.splits["train"]
    x = torch.from_numpy(np.asarray(sp.images)).float()
    x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(
        x, size=(study.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
    )
    x = (x - x.mean()) / x.std().clamp(min=1e-6)
    y = torch.from_numpy(np.asarray(sp.labels).reshape(-1)).long()
    return x, y, ds.class_names


def _epoch(model, x, y, opt, gen, batch, trainable=None):
    model.train()
    if trainable is not None:
        trainable(model)
    perm = torch.randperm(len(y), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    for i in range(0, len(perm) - batch + 1, batch):  # drop the last partial batch (BatchNorm)
        idx = perm[i : i + batch]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()


@torch.no_grad()
def _accuracy(model, x, y) -> float:
    model.eval()
    return float(sum((model(x[i : i + 256]).argmax(1) == y[i : i + 256]).sum() for i in range(0, len(y), 256)) / len(y))


def _branches(study: RFFStudy, model, opt, layers: list[str], norms, bx, by, g) -> dict:
    """One more epoch of base training from the same state, plain and with the RFF freeze, on identical
    batches: each branch's model and its seconds."""
    from ..schedules import RFFreeze

    branch = {}
    state = g.get_state()
    for name in ("normal", "rff"):
        m = copy.deepcopy(model)
        o = torch.optim.Adam(m.parameters(), lr=study.lr)
        o.load_state_dict(opt.state_dict())
        cb = RFFreeze(m, layers, epochs=(study.base_epochs + 1,), norms=norms) if name == "rff" else None

        def trainable(mm, cb=cb):
            for p in mm.parameters():
                p.requires_grad_(True)
            if cb is not None:
                cb.on_epoch_start(study.base_epochs, mm)

        gb = torch.Generator()
        gb.set_state(state)  # identical batches for both branches
        t = time.perf_counter()
        _epoch(m, bx, by, o, gb, study.batch_size, trainable)
        branch[name] = (m, time.perf_counter() - t)
    return branch


def _transfer_split(ty, classes: int, seed: int, max_train: int):
    """80/20 per class of the transfer images (validation first), the training part capped at ``max_train``."""
    gt = torch.Generator().manual_seed(1000 + seed)
    val_idx, train_idx = [], []
    for c in range(classes):
        idx = torch.nonzero(ty == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gt)]
        k = max(1, int(round(0.2 * len(idx))))
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    vi, ti = torch.cat(val_idx), torch.cat(train_idx)
    if max_train and len(ti) > max_train:
        ti = ti[torch.randperm(len(ti), generator=gt)[:max_train]]
    return vi, ti


def run_cell(study: RFFStudy, x, y, base: list[int], transfer: list[int], seed: int) -> dict:
    from ..models import create_model, reset_classifier
    from ..schedules import following_norms, rff_layers

    g = torch.Generator().manual_seed(seed)
    bmask = torch.isin(y, torch.tensor(base))
    bx, by = x[bmask], y[bmask]
    by = torch.tensor([base.index(int(v)) for v in by])
    if study.max_train and len(by) > study.max_train:
        keep = torch.randperm(len(by), generator=g)[: study.max_train]
        bx, by = bx[keep], by[keep]
    torch.manual_seed(seed)
    size = (x.shape[1], study.image_size, study.image_size)
    model = create_model(study.model, len(base), in_chans=x.shape[1], input_size=study.image_size)
    opt = torch.optim.Adam(model.parameters(), lr=study.lr)
    for _ in range(study.base_epochs):
        _epoch(model, bx, by, opt, g, study.batch_size)
    layers = rff_layers(model, size)
    norms = following_norms(model, layers, size)
    branch = _branches(study, model, opt, layers, norms, bx, by, g)
    # transfer: a new classifier only, 80/20 per class, same init and generator for both
    tmask = torch.isin(y, torch.tensor(transfer))
    tx, ty = x[tmask], torch.tensor([transfer.index(int(v)) for v in y[tmask]])
    vi, ti = _transfer_split(ty, len(transfer), seed, study.max_train)
    head_init = None
    out: dict[str, Any] = {
        "base": base,
        "transfer": transfer,
        "seed": seed,
        "layers": layers,
        "base_train_images": len(by),
        "transfer_train_images": len(ti),
        "transfer_val_images": len(vi),
    }
    for name, (m, secs) in branch.items():
        reset_classifier(m, len(transfer))
        head = m.get_submodule(head_name(m))
        if head_init is None:
            torch.manual_seed(2000 + seed)
            for p in head.parameters():
                nn.init.normal_(p, std=0.01)
            head_init = copy.deepcopy(head.state_dict())
        head.load_state_dict(head_init)
        for n_, p in m.named_parameters():
            p.requires_grad_(n_.startswith(head_name(m) + "."))
        o = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=study.lr)
        gtr = torch.Generator().manual_seed(3000 + seed)

        def probe(mm):
            mm.eval()  # frozen features: BatchNorm statistics stay as they are

        for _ in range(study.transfer_epochs):
            _epoch(m, tx[ti], ty[ti], o, gtr, min(study.batch_size, len(ti)), probe)
        out[f"acc_{name}"] = _accuracy(m, tx[vi], ty[vi])
        out[f"branch_seconds_{name}"] = secs
    out["delta"] = out["acc_rff"] - out["acc_normal"]
    return out


def run_rff_study(study: RFFStudy, out: str | Path, *, fresh: bool = False) -> Path:
    """Run (or resume) every (split, seed) cell and write ``out/report.md``."""
    from ..models import MODELS
    from .settings import check_settings

    MODELS.get(study.model)  # a clear error before loading data
    if study.splits < 1 or not study.seeds:
        raise SmallmedError(
            f"splits={study.splits}, seeds={list(study.seeds)}: expected at least one split and one seed."
        )
    out = Path(out)
    x, y, names = _tensors(study)
    splits = class_splits(len(names), study.transfer_classes, study.splits)
    check_settings(out, study, fresh=fresh)
    results = []
    t0 = time.time()
    for k, (base, transfer) in enumerate(splits):
        for seed in study.seeds:
            path = out / "cells" / f"split{k}_s{seed}.json"
            if path.exists():
                results.append(json.loads(path.read_text()))
                continue
            r = run_cell(study, x, y, base, transfer, seed)
            r["split"] = k
            atomic_write_text(path, json.dumps(r, indent=1))
            results.append(r)
    _erf_maps(study, x, y, out)
    return write_report(study, out, results, names, time.time() - t0)


def _erf_maps(study: RFFStudy, x, y, out: Path) -> None:
    """ERF of the model before and after two epochs on all classes, probed with real images."""
    from ..analysis.erf import effective_receptive_field, plot_erf
    from ..models import create_model

    path = out / "erf.png"
    if path.exists():
        return
    torch.manual_seed(0)
    model = create_model(study.model, int(y.max()) + 1, in_chans=x.shape[1], input_size=study.image_size)
    probe = x[:32]
    before = effective_receptive_field(model, probe)
    opt = torch.optim.Adam(model.parameters(), lr=study.lr)
    g = torch.Generator().manual_seed(0)
    sub = torch.randperm(len(x), generator=g)[:2000]
    for _ in range(2):
        _epoch(model, x[sub], y[sub], opt, g, study.batch_size)
    after = effective_receptive_field(model, probe)
    plot_erf({"untrained": before, "trained 2 epochs": after}, path)


def write_report(study: RFFStudy, out: Path, results: list[dict], names: list[str], seconds: float) -> Path:
    pr = paired([r["acc_rff"] for r in results], [r["acc_normal"] for r in results])
    a, b = (
        mean_ci([r["acc_normal"] for r in results], bounds=RATE),
        mean_ci([r["acc_rff"] for r in results], bounds=RATE),
    )
    overhead = mean_ci([r["branch_seconds_rff"] / r["branch_seconds_normal"] - 1 for r in results])
    seed_delta = SEED_DELTA.get(study.model, SEED_DELTA["resnet50"])
    cb = cluster_bootstrap([r["delta"] for r in results], [r["split"] for r in results])
    if cb["clusters"] < MIN_CLUSTERS:
        word = f"not measurable against (n too small: fewer than {MIN_CLUSTERS} class splits)"
        delta_ci = (
            f"n too small ({cb['clusters']} class splits; a bootstrap over so few has almost no distinct "
            "resamples): no interval"
        )
    else:
        word = "higher than" if cb["lo"] > 0 else "lower than" if cb["hi"] < 0 else "not distinguishable from"
        delta_ci = (
            f"[{cb['lo']:+.4f}, {cb['hi']:+.4f}] bootstrap over {cb['clusters']} class splits (seeds averaged "
            f"within each), p={cb['p']:.2g}"
        )
    lines = [
        f"# RFF transfer study (seed 001): {study.model} on {study.data}",
        "",
        f"Data: `{study.data}` train split ({len(names)} classes: {', '.join(names)}), {study.image_size} px, "
        f"standardised. {len(set(r['split'] for r in results))} class splits x seeds {', '.join(map(str, study.seeds))}; "
        f"{study.transfer_classes} transfer classes per split, the rest base. Base training {study.base_epochs} epochs "
        f"(Adam lr {study.lr:g}, batch {study.batch_size}, at most {study.max_train or 'all'} images), then epoch "
        f"{study.base_epochs + 1} branches: normal vs RFF (frozen: {', '.join(results[0]['layers'])}; BN after them "
        f"keeps its statistics); then {study.transfer_epochs} epochs of transfer training of a new classifier only "
        "(same initial weights and generator for both), accuracy on 20% of each transfer class held out. "
        f"Wall time of this invocation {seconds / 60:.1f} min.",
        "",
        "Unit of replication: the class split (the cluster); cells of one split share their classes and are not "
        "independent, so the delta's interval resamples whole splits.",
        "",
        "| | transfer accuracy (mean over cells) | 95% interval |",
        "|---|---|---|",
        f"| normal | {a['mean']:.4f} | (per-cell spread: sd {a['sd']:.4f}) |",
        f"| RFF | {b['mean']:.4f} | (per-cell spread: sd {b['sd']:.4f}) |",
        f"| **delta (RFF - normal)** | **{cb['mean']:+.4f}** | {delta_ci}; RFF better in {pr['wins']}/{pr['n']} cells |",
        "",
        f"Verdict: RFF transfer accuracy is {word} normal training here ({cb['mean']:+.4f}). The paper reports "
        f"{seed_delta:+.3f} ({'its small CNN on CIFAR-100 at 32 px, 10 class splits, 4 base epochs' if study.model == 'small_cnn' else 'ResNet50 on 10 ImageNet classes at 224 px, 17 base epochs'}; "
        f"here {study.model} at {study.image_size} px on {study.data}, {study.base_epochs} base epochs). Time overhead of the "
        f"RFF epoch vs the normal one: {overhead['mean'] * 100:+.1f}% [{overhead['lo'] * 100:+.1f}, "
        f"{overhead['hi'] * 100:+.1f}] (seed: +0.1 to +0.7%).",
        "",
        "## Cells",
        "",
        "| split | base classes | transfer classes | seed | normal | RFF | delta |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["split"], r["seed"])):
        lines.append(
            f"| {r['split']} | {', '.join(map(str, r['base']))} | {', '.join(map(str, r['transfer']))} | "
            f"{r['seed']} | {r['acc_normal']:.4f} | {r['acc_rff']:.4f} | {r['delta']:+.4f} |"
        )
    lines += [
        "",
        "## Effective receptive field",
        "",
        "Mean |gradient| of the central unit of the last spatial layer w.r.t. real input images "
        "(Luo et al. 2016), untrained vs after two epochs on all classes; the title gives the radius "
        "holding half of the gradient mass.",
        "",
        "![ERF](erf.png)",
        "",
    ]
    atomic_write_text(out / "study.json", json.dumps(asdict(study), indent=1))
    arms = [{"arm": a, "acc": r[f"acc_{a}"]} for r in results for a in ("normal", "rff")]
    if comparison_figure(
        arms, group=None, arm="arm", metric="acc", path=out / "comparison.png", xlabel="test accuracy"
    ):
        lines += ["", "![the arms compared](comparison.png)", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


register_study(
    "rff",
    summary="seed 001: receptive-field freeze, transfer to held-out classes",
    presets=PRESETS,
    run=run_rff_study,
    tracked=False,  # its cells train in this file's own loop: no run folders for --log to mirror
    help={
        "data": "a multi-class data set (default: rsna-boneage, 5 age groups)",
        "splits": "number of class splits",
        "base_epochs": "n: base epochs before the branch epoch n+1",
    },
)
