"""``smallmed study ra2``: seed 003's RA2 pipeline measured on the real data that exists offline.

(a) Joint localisation: a heatmap U-Net trained on the 454 pediatric hand radiographs with joint
    keypoints (the 10 RA2 hand joints among their 21 points), its pixel error on their test split
    and on the two adult RA2 example patients' hands (hand-placed landmarks are the truth), against
    a mean-shape baseline; feet have no training set offline: the mean shape of the example feet,
    left one image out.
(b) The scoring recipe on real ordinal joint-damage grades (Kellgren-Lawrence 0-4 of knee
    radiographs, patient-disjoint split): DenseNet v2 with MAE and the seed's sampling scheme as the
    base, one factor changed at a time (v1, log-cosh, sample weights), and the CV ensemble of fold
    models, over seeds; accuracy of the rounded grade, MAE, inverse-frequency weighted RMSE.
(c) The pipeline end to end on the two RA2 example patients, one left out at a time: per-joint and
    total error against predicting no damage.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..errors import SmallmedError
from ..fields import Checked, setting
from ..io import _atomic, atomic_write_csv, atomic_write_text
from .base import register_study
from .ra2_scoring import RECIPES, _is_densenet, _seeds, _sizes, check_recipes, recipe_config, val_mae
from .runner import cell_dir, run_grid

log = logging.getLogger(__name__)

# Chen et al. 2019 (knee KL grading, 224 px, the same OAI-derived set): accuracy and MAE
CHEN_2019 = {"acc": 0.697, "mae": 0.344}


@dataclass
class RA2Study(Checked):
    hands: str = setting("hand_xray_keypoints_100px.npz", help="hand keypoints for the localiser")
    examples: str = setting("ra2_examples", help="the RA2 example patients (challenge table and landmarks)")
    knee: str = setting("knee_oa_kl_96.npz", help="knee radiographs with KL grades (the scorer's grades)")
    data_dir: str | None = None
    localiser_epochs: int = setting(12, ge=1, le=10**4)
    localiser_size: int = setting(96, ge=16, le=1024)
    localiser_kinds: tuple[str, ...] = setting(
        ("unet",), choices=("unet", "keypoint-rcnn"), help="the U-Net and/or torchvision's Keypoint R-CNN (128 px)"
    )
    adult_epochs: int = setting(
        0, ge=0, le=10**4, help="fine-tune on the RA2 example landmarks (leave one patient out); 0: skip"
    )
    knee_sizes: tuple[int, ...] = setting((32,), ge=8, le=1024, help="every recipe at each size, largest first")
    knee_max_train: int = setting(600, ge=0, help="0: all 5,778 training knees")
    knee_max_val: int = setting(300, ge=0, help="validation knees (for picking the best epoch; test stays whole)")
    knee_epochs: int = setting(3, ge=1, le=10**4, help="the most; with knee_early_stop the run stops earlier")
    knee_early_stop: int = setting(0, ge=0, le=1000, help="epochs without validation improvement (0: never stop)")
    knee_scheduler: str = setting(
        "none", choices=("none", "plateau"), help="the seed's constant learning rate, or plateau (x0.1)"
    )
    densenet_epochs: int = setting(0, ge=0, le=10**4, help="cap for the DenseNet recipes (0: knee_epochs)")
    folds: int = setting(3, ge=2, le=100)
    seeds: tuple[int, ...] = setting((0, 1, 2), ge=0, lt=2**32)
    variants: tuple[str, ...] = setting(("base", "v1", "logcosh", "weights"), choices=tuple(RECIPES))
    one_seed: tuple[str, ...] = setting((), choices=tuple(RECIPES), help="recipes run with the first seed only")
    ensemble: str = setting(
        "base", choices=("best", *RECIPES), help="recipe of the CV fold ensemble; best: lowest validation MAE"
    )
    ensemble_seeds: int = setting(0, ge=0, le=1000, help="0: every seed")
    ensemble_size: int = setting(0, ge=0, le=1024, help="knee size of the fold ensemble (0: the largest)")
    spread_sizes: tuple[int, ...] = setting(
        (), ge=8, le=1024, help="sizes at which the main recipes' other seeds run (empty: every size)"
    )
    tta: bool = setting(False, help="also score the ensemble with horizontal-flip test-time augmentation")
    boneage_size: int = setting(0, ge=0, le=1024, help="bone age in months (RSNA hands) at this size; 0: not run")
    boneage_epochs: int = setting(12, ge=1, le=10**4)
    boneage_seeds: tuple[int, ...] = setting((0, 1, 2), ge=0, lt=2**32)
    e2e_epochs: int = setting(8, ge=1, le=10**4)
    crop: int = setting(48, ge=8, le=1024, help="joint crop side in pixels")


PRESETS = {
    # 2 CPU cores, about 30 minutes: knee grades at 32 px, 600 training and 300 validation knees, 3 epochs
    "quick": RA2Study(),
    # 2 CPU cores, about 8-10 hours, resumable run by run (measured: ResNet-18 ~110 s per epoch of 7,580 sampled
    # knees at 64 px, ~200 s at 96 px; DenseNet v2 ~930 s at 64 px): all 5,778 training knees, the official
    # validation split for early stopping, the official test split once; the ordering puts the cheapest
    # recipe that can show skill first, so a study cut short still reports it
    "full": RA2Study(
        knee_sizes=(96, 64),
        knee_max_train=0,
        knee_max_val=0,
        knee_epochs=16,
        knee_early_stop=3,
        knee_scheduler="plateau",
        densenet_epochs=3,
        folds=5,
        variants=(
            "r18-hands",
            "r18",
            "r18-hands-ordinal",
            "r18-hands-cls",
            "r18-hands-lora",
            "r18-hands-svd",
            "base",
            "v1",
        ),
        one_seed=("r18-hands-ordinal", "r18-hands-cls", "r18-hands-lora", "r18-hands-svd", "base", "v1"),
        ensemble="best",
        ensemble_seeds=1,
        # measured: a 96 px ResNet-18 run takes about 65 minutes (16 epochs of ~230 s), a 64 px one about 10;
        # the other seeds and the 5-fold ensemble at 96 px (about 9 CPU-hours more) were cut to fit
        ensemble_size=64,
        spread_sizes=(64,),
        tta=True,
        boneage_size=100,
        boneage_epochs=12,
        boneage_seeds=(0, 1, 2),
        localiser_epochs=30,
        localiser_kinds=("unet", "keypoint-rcnn"),
        adult_epochs=40,  # 40 x 64 augmented samples: about 2.5 minutes per held-out image on 2 cores
    ),
    # closer to the seed (64 px crops, all knee images, longer training): for a GPU
    "paper": RA2Study(
        localiser_epochs=40,
        knee_sizes=(64,),
        knee_max_train=0,
        knee_max_val=0,
        knee_epochs=30,
        folds=5,
        seeds=(0, 1, 2, 3, 4),
        e2e_epochs=30,
        crop=64,
    ),
}


def _path(study: RA2Study, name: str) -> Path:
    from ..data.paths import resolve_data

    return resolve_data(name, study.data_dir)


# ------------------------------------------------------------------------------------------ (a) localisation


def _train_localisers(study: RA2Study, out: Path, data: Path, kinds: tuple[str, ...]) -> tuple[dict, dict]:
    """Each localiser kind trained (or reused) on the pediatric hands: run folders and metrics by kind."""
    from ..ra2.detector import DetectorConfig, train_detector
    from ..ra2.localise import unet_localiser_config

    runs, metrics = {}, {}
    for kind in kinds:
        if kind == "unet":
            cfg = unet_localiser_config(
                data, out / "runs" / "localiser-hands", epochs=study.localiser_epochs, image_size=study.localiser_size
            )
            metrics[kind] = run_grid([cfg])[0]
            runs[kind] = cfg.out
        else:
            runs[kind] = str(out / "runs" / "localiser-hands-rcnn")
            metrics[kind] = train_detector(
                DetectorConfig(data=str(data), epochs=study.localiser_epochs, image_size=128), runs[kind]
            )
    return runs, metrics


def _ra2_example_errors(study: RA2Study, runs: dict, first: str, shape: dict) -> tuple[list[dict], list[dict]]:
    """Joint errors on the two adult RA2 patients: their hands by each localiser (trained on pediatric hands)
    and the mean shape; their feet by a leave-one-image-out mean shape."""
    from ..ra2.detector import open_localiser
    from ..ra2.joints import FOOT_POINTS, HAND21, flip_points, read_landmarks
    from ..ra2.localise import mean_shape
    from ..ra2.pipeline import _gray, find_images

    ex = _path(study, study.examples)
    locs = {k: open_localiser(r) for k, r in runs.items()}
    rows, feet = [], []
    for _pid, limbs in find_images(ex).items():
        for limb, p in limbs.items():
            lm = ex / "landmarks" / f"{p.stem}.json"
            if not lm.exists():
                continue
            img = _gray(p)
            h, w = img.shape
            truth = read_landmarks(lm, limb)
            if not limb.endswith("H"):
                feet.append((p.name, flip_points(truth, w) if limb.startswith("R") else truth, (w, h)))
                continue
            preds = {("localiser" if k == first else k): loc.locate(img, limb)[0] for k, loc in locs.items()}
            ms = {n: (shape[n][0] * w, shape[n][1] * h) for n in HAND21}
            preds["mean_shape"] = flip_points(ms, w) if limb.startswith("R") else ms
            for n in HAND21:
                if n in truth:
                    for how, pts in preds.items():
                        d = float(np.hypot(pts[n][0] - truth[n][0], pts[n][1] - truth[n][1]))
                        rows.append({"image": p.name, "joint": n, "method": how, "px": d, "frac": d / w})
    frows = []
    for i, (name, pts, (w, h)) in enumerate(feet):  # leave one foot image out
        shape_f = mean_shape([(q, s) for j, (_, q, s) in enumerate(feet) if j != i])
        for n in FOOT_POINTS:
            if n in pts and n in shape_f:
                d = float(np.hypot(shape_f[n][0] * w - pts[n][0], shape_f[n][1] * h - pts[n][1]))
                frows.append({"image": name, "joint": n, "method": "mean_shape", "px": d, "frac": d / w})
    return rows, frows


def _hand10(study: RA2Study, out: Path) -> Path:
    """The 10 RA2 hand joints of the pediatric keypoint set (written once into the study folder)."""
    from ..ra2.localise import hand_keypoints_npz

    data = out / "data" / "hand10.npz"
    if not data.exists():
        hand_keypoints_npz(_path(study, study.hands), data)
    return data


def _training_shape(ds) -> dict:
    """The mean shape of the pediatric training hands (fractions of the image side)."""
    from ..ra2.joints import HAND21
    from ..ra2.localise import mean_shape

    tr = ds.splits["train"]
    side = tr.images.shape[2]
    return mean_shape([({n: tuple(k[j, :2]) for j, n in enumerate(HAND21)}, (side, side)) for k in tr.keypoints])


def localiser_summary(study: RA2Study, out: Path, run: str) -> dict:
    """One localiser run's errors as a fraction of the width: on the pediatric test hands (its metrics) and on
    the adult RA2 example hands (located here, about a minute)."""
    from ..data.keypoints import load_keypoints

    rows, _ = _ra2_example_errors(study, {"unet": run}, "unet", _training_shape(load_keypoints(_hand10(study, out))))
    test = json.loads((Path(run) / "metrics.json").read_text())["test"]
    return {"run": run, "hands_test_frac": test["frac_error"], "hands_ra2_frac": _summ(rows)["localiser"]["frac_error"]}


def localisation(study: RA2Study, out: Path, kinds: tuple[str, ...] | None = None) -> dict:
    """The localisers (``kinds``, default the study's) on the pediatric test hands against the training mean
    shape, then on the RA2 patients."""
    from ..data.keypoints import load_keypoints
    from ..metrics.keypoints import keypoint_errors
    from ..ra2.joints import HAND21

    data = _hand10(study, out)
    runs, metrics = _train_localisers(study, out, data, kinds or study.localiser_kinds)
    ds = load_keypoints(data)
    names = list(HAND21)
    tr, te = ds.splits["train"], ds.splits["test"]
    side = tr.images.shape[2]
    shape = _training_shape(ds)
    base_pred = np.broadcast_to(
        np.array([[shape[n][0] * side, shape[n][1] * side] for n in names]), te.keypoints[..., :2].shape
    )
    base = keypoint_errors(base_pred, te.keypoints[..., :2], te.keypoints[..., 2], side, names)
    first = next(iter(runs))
    res = {
        "hands_test": {
            "localiser": {
                k: metrics[first]["test"][k] for k in ("px_error", "frac_error", "pck_0.05", "n", "per_joint")
            },
            "ci95": metrics[first]["test"].get("ci95", {}),
            "mean_shape": base,
            "image_px": side,
            "by_kind": {
                k: {
                    **{x: m["test"][x] for x in ("px_error", "frac_error", "pck_0.05", "n")},
                    "seconds": m["wall_seconds"],
                }
                for k, m in metrics.items()
            },
        },
        "localiser_run": runs[first],
        "localiser_runs": runs,
    }
    rows, frows = _ra2_example_errors(study, runs, first, shape)
    res["hands_ra2"], res["feet_ra2"] = _summ(rows), _summ(frows)
    if rows or frows:
        atomic_write_csv(out / "localisation_ra2.csv", rows + frows)
    return res


def adult_localisation(study: RA2Study, out: Path, pediatric_run: str) -> dict:
    """Localisers on the adult RA2 example images: the pediatric U-Net fine-tuned on one patient's hands and tested on
    the other's (leave one patient out), and a foot U-Net (from the pediatric hand model's weights) trained on three
    feet images and tested on the fourth; each against the mean shape of the same training images and, for hands,
    the pediatric model as it is. Errors as a fraction of the image width, per joint."""
    from ..ra2.joints import FOOT_POINTS, HAND21, HAND_POINTS, flip_points, read_landmarks
    from ..ra2.localise import Localiser, fit_landmark_localiser, mean_shape
    from ..ra2.pipeline import _gray, _kind, find_images

    ex = _path(study, study.examples)
    samples: list[tuple[str, str, tuple]] = []  # (patient, image name, sample)
    for pid, limbs in find_images(ex).items():
        for limb, p in sorted(limbs.items()):
            lm = ex / "landmarks" / f"{p.stem}.json"
            if lm.exists():
                samples.append((pid, p.name, (_gray(p), read_landmarks(lm, limb), limb)))
    pediatric = Localiser(pediatric_run)
    rows: list[dict] = []

    def score(method: str, test: list, predict) -> None:
        for name, (img, truth, limb) in test:
            w = img.shape[1]
            pts = predict(img, limb)
            for n, (x, y) in truth.items():
                if n in pts:
                    d = float(np.hypot(pts[n][0] - x, pts[n][1] - y))
                    rows.append({"kind": _kind(limb), "image": name, "joint": n, "method": method, "frac": d / w})

    def shape_of(train: list):
        ms = mean_shape(
            [
                (flip_points(p, img.shape[1]) if limb.startswith("R") else p, (img.shape[1], img.shape[0]))
                for img, p, limb in train
            ]
        )

        def predict(img, limb):
            h, w = img.shape
            pts = {n: (x * w, y * h) for n, (x, y) in ms.items()}
            return flip_points(pts, w) if limb.startswith("R") else pts

        return predict

    for kind, names in (("hand", HAND_POINTS), ("foot", FOOT_POINTS)):
        group = [(pid, name, smp) for pid, name, smp in samples if _kind(smp[2]) == kind]
        # hands: leave one patient out; feet: leave one image out (as many as there are)
        units = sorted({pid for pid, _, _ in group}) if kind == "hand" else [name for _, name, _ in group]
        for u in units:
            held = [(name, smp) for pid, name, smp in group if (pid if kind == "hand" else name) == u]
            train = [smp for pid, name, smp in group if (pid if kind == "hand" else name) != u]
            run = out / "runs" / f"adult-{kind}" / f"without-{u}"
            fit_landmark_localiser(
                train, [], [smp for _, smp in held], list(names), run, epochs=study.adult_epochs, init=pediatric_run
            )
            tuned = Localiser(run)
            score("fine-tuned", held, lambda img, limb, t=tuned: t.locate(img, limb)[0])
            score("mean shape", held, shape_of(train))
            if kind == "hand":
                score("pediatric U-Net", held, lambda img, limb: pediatric.locate(img, limb)[0])
    # like for like with the pediatric U-Net: the fine-tuned and mean-shape errors on its 10 joints (no wrist)
    rows += [
        {**r, "method": f"{r['method']}, 10 joints"}
        for r in list(rows)
        if r["kind"] == "hand" and r["method"] != "pediatric U-Net" and r["joint"] in HAND21
    ]
    if rows:
        atomic_write_csv(out / "localisation_adult.csv", rows)
    res: dict = {}
    for r in rows:
        res.setdefault(r["kind"], {}).setdefault(r["method"], []).append(r)
    return {
        k: {
            m: {
                "frac_error": float(np.mean([r["frac"] for r in v])),
                "within_2pct": float(np.mean([r["frac"] <= 0.02 for r in v])),
                "n": len(v),
                "per_joint": {
                    j: float(np.mean([r["frac"] for r in v if r["joint"] == j]))
                    for j in dict.fromkeys(r["joint"] for r in v)
                },
            }
            for m, v in d.items()
        }
        for k, d in res.items()
    }


def _adult_lines(study: RA2Study, adult: dict) -> list[str]:
    lines = [
        "### Adult RA2 hands and feet",
        "",
        f"U-Nets fine-tuned for {study.adult_epochs} epochs of at least 64 augmented samples (the few training "
        "images repeated; the last epoch kept: no validation image is left) from "
        "the pediatric hand U-Net of the table above, on the two RA2 example patients' own landmarks: hands leave "
        "one patient out (train on the other patient's two hands, 13 points with the wrist), feet leave one image "
        "out (train on the other three feet, 6 points; the encoder from the hand model, a new head). The mean "
        "shape is that of the same training images. Errors as a fraction of the image width; goal for hands: "
        "at most 2 %.",
        "",
        "| limb | method | error / width | within 2 % of width | joints |",
        "|---|---|---|---|---|",
    ]
    for kind, d in adult.items():
        for m, v in d.items():
            lines.append(f"| {kind} | {m} | {v['frac_error']:.4f} | {v['within_2pct']:.2f} | {v['n']} |")
    return lines + [""]


def _summ(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r["method"], {"px": [], "frac": [], "per_joint": {}})
        o = out[r["method"]]
        o["px"].append(r["px"])
        o["frac"].append(r["frac"])
        o["per_joint"].setdefault(r["joint"], []).append(r["frac"])
    return {
        k: {
            "px_error": float(np.mean(v["px"])),
            "frac_error": float(np.mean(v["frac"])),
            "n": len(v["px"]),
            "per_joint_frac": {j: float(np.mean(x)) for j, x in v["per_joint"].items()},
        }
        for k, v in out.items()
    }


# ----------------------------------------------------------------------------------------------- (b) knee


def _knee_subset(study: RA2Study, out: Path) -> tuple[Path, list[Path]]:
    """The nested training subset (official val and test kept) and the CV fold files, written once."""
    from ..data import load_dataset, nested_fraction

    sub = out / "data" / "knee_subset.npz"
    folds = [out / "data" / f"knee_fold{k}.npz" for k in range(study.folds)]
    if sub.exists() and all(f.exists() for f in folds):
        return sub, folds
    src = _path(study, study.knee)
    ds = load_dataset(src)
    tr = ds.splits["train"]
    raw = np.load(src, allow_pickle=False)
    pids = (
        np.asarray(raw["train_patient_ids"]).astype(str)
        if "train_patient_ids" in raw.files
        else np.arange(len(tr)).astype(str)
    )
    frac = 1.0 if not study.knee_max_train else min(1.0, study.knee_max_train / len(tr))
    idx = nested_fraction(tr.labels, frac, seed=0, groups=pids)
    va = ds.splits["val"]
    vidx = np.arange(len(va))
    if study.knee_max_val and study.knee_max_val < len(va):
        vidx = nested_fraction(va.labels, study.knee_max_val / len(va), seed=0)
    # Any: numpy's stub of savez would match a key of **arrays against its allow_pickle: bool
    arrays: dict[str, Any] = {
        "val_images": va.images[vidx][..., 0],
        "val_labels": va.labels[vidx],
        "test_images": ds.splits["test"].images[..., 0],
        "test_labels": ds.splits["test"].labels,
    }
    x, y, g = tr.images[idx][..., 0], tr.labels[idx], pids[idx]
    _atomic(sub, lambda f: np.savez(f, train_images=x, train_labels=y, **arrays))
    # folds by patient: no knee of one person on both sides of a fold boundary
    pats = np.unique(g)
    order = np.random.default_rng(0).permutation(pats)
    for k, path in enumerate(folds):
        held = np.isin(g, order[k :: study.folds])
        _atomic(
            path,
            lambda f, held=held: np.savez(
                f,
                train_images=x[~held],
                train_labels=y[~held],
                val_images=x[held],
                val_labels=y[held],
                test_images=arrays["test_images"],
                test_labels=arrays["test_labels"],
            ),
        )
    return sub, folds


AUGMENT = "scale=0.9-1.1,translate=0.1,rotate=30"  # seed 003: zoom/shift 10 %, rotation 30


def _common(study: RA2Study) -> dict:
    """The protocol every knee run shares (a recipe changes one thing on top of it)."""
    c = dict(
        batch_size=32,
        lr=1e-3,
        scheduler=study.knee_scheduler,
        weight_decay=1e-4,
        normalize="sample",
        augment=AUGMENT,
        early_stop=study.knee_early_stop,
        progress=False,
    )
    if study.knee_scheduler == "plateau":
        c["patience"] = 1
    return c


def knee_cell(study: RA2Study, out: Path, recipe: str, size: int, seed: int, source: str | None) -> TrainConfig:
    sub, _ = _knee_subset(study, out)
    epochs = study.densenet_epochs if _is_densenet(recipe) and study.densenet_epochs else study.knee_epochs
    return recipe_config(
        recipe,
        data=str(sub),
        size=size,
        seed=seed,
        common=_common(study),
        source=source,
        epochs=epochs,
        out=str(out / "runs" / f"knee{size}" / recipe / f"s{seed}"),
    )


def knee_stages(study: RA2Study, out: Path, source: str | None) -> list[list[TrainConfig]]:
    """The knee runs in the order they are worth having: the first seed of the recipes run with every seed,
    then the first seed of the rest at the largest size, then at the other sizes, then the other seeds."""
    main = [r for r in study.variants if r not in study.one_seed]
    rest = [r for r in study.variants if r in study.one_seed]
    first = study.seeds[0]
    s1 = [knee_cell(study, out, r, z, first, source) for r in main for z in _sizes(study, r)]
    # the one-seed recipes at the largest size first, then the smaller sizes
    top = max(study.knee_sizes)
    s2 = [knee_cell(study, out, r, top, first, source) for r in rest if top in _sizes(study, r)]
    s2b = [knee_cell(study, out, r, z, first, source) for r in rest for z in _sizes(study, r) if z != top]
    s3 = [
        knee_cell(study, out, r, z, s, source)
        for s in study.seeds[1:]
        for r in main
        for z in _sizes(study, r)
        if not study.spread_sizes or z in study.spread_sizes
    ]
    return [s1, s2, s2b, s3]


def ensemble_size(study: RA2Study, recipe: str | None = None) -> int:
    """The fold ensemble's knee size: ``ensemble_size``, else the largest size its recipe runs at."""
    return study.ensemble_size or max(_sizes(study, recipe) if recipe else study.knee_sizes)


def ensemble_recipe(study: RA2Study, out: Path) -> str:
    """The ensemble's recipe; ``best`` is the lowest mean validation MAE among the recipes finished at the
    ensemble's size (never a test number), chosen once and recorded in ``ensemble_choice.json``."""
    if study.ensemble != "best":
        return study.ensemble
    path = out / "ensemble_choice.json"
    size = ensemble_size(study)
    if path.exists():
        chosen = json.loads(path.read_text())
        if chosen.get("size", size) != size:
            raise SmallmedError(
                f"{path}: the ensemble's recipe was chosen at {chosen['size']} px, not at ensemble_size={size}; "
                "rerun with the saved settings or choose another --out."
            )
        return chosen["recipe"]
    scores = {}
    for r in study.variants:
        runs = [out / "runs" / f"knee{size}" / r / f"s{s}" for s in _seeds(study, r, size)]
        done = [x for x in runs if (x / "metrics.json").exists()]
        if done:
            scores[r] = float(np.mean([val_mae(x) for x in done]))
    if not scores:
        raise SmallmedError(f"no finished recipe at {size} px to choose the ensemble's recipe from.")
    best = min(scores, key=scores.__getitem__)
    atomic_write_text(path, json.dumps({"recipe": best, "size": size, "val_mae": scores}, indent=2) + "\n")
    return best


def ensemble_cells(study: RA2Study, out: Path, source: str | None) -> list[TrainConfig]:
    recipe = ensemble_recipe(study, out)
    _, folds = _knee_subset(study, out)
    size = ensemble_size(study, recipe)
    seeds = study.seeds[: study.ensemble_seeds] if study.ensemble_seeds else study.seeds
    cells = []
    for s in seeds:
        for k, f in enumerate(folds):
            c = knee_cell(study, out, recipe, size, s, source)
            cells.append(c.with_overrides(data=str(f), out=str(out / "runs" / "ensemble" / f"s{s}" / f"fold{k}")))
    return cells


def boneage_cells(study: RA2Study, out: Path, seeds) -> list[TrainConfig]:
    """Bone age in months on the RSNA hands: the scorers' regression recipe (ResNet-18 from scratch)."""
    if not study.boneage_size:
        return []
    return [
        TrainConfig(
            data="rsna-boneage-months",
            data_dir=study.data_dir,
            model="resnet18",
            task="regression",
            loss="mae",
            image_size=study.boneage_size,
            epochs=study.boneage_epochs,
            seed=s,
            **{**_common(study), "early_stop": study.knee_early_stop or 3},
            out=str(out / "runs" / "boneage" / f"s{s}"),
        )
        for s in seeds
    ]


def _source_config(study: RA2Study) -> TrainConfig:
    from .svd import SVDStudy, source_config

    return source_config(SVDStudy(source_data="rsna-boneage", model="resnet18", image_size=64, data_dir=study.data_dir))


def hand_source_path(study: RA2Study) -> str | None:
    """Where the bone-age hand source's weights are (trained or not); None when no recipe starts from it."""
    if not any(RECIPES[r][1] for r in study.variants):
        return None
    return str(cell_dir(_source_config(study)) / "best.pt")


def hand_source(study: RA2Study) -> str | None:
    """The bone-age hand source (the SVD study's cached ResNet-18, 5 age groups at 64 px), trained once."""
    path = hand_source_path(study)
    if path is None:
        return None
    from .runner import run_cell

    src = _source_config(study)
    if not (cell_dir(src) / "metrics.json").exists():
        print(f"pretraining the bone-age hand source once (cached in {src.out})")
    run_cell(src.to_dict())
    return path


# --------------------------------------------------------------------------------------------- (c) end to end


def end_to_end(study: RA2Study, out: Path, localiser_run: str) -> dict:
    from ..ra2.pipeline import RA2Config, find_images, landmark_mean_shapes, predict_pipeline, train_pipeline
    from ..ra2.schema import SCHEMA, ScoreTable, read_scores, totals, write_table

    ex = _path(study, study.examples)
    table = read_scores(ex / "training.csv")
    images = find_images(ex)
    res = {}
    for held in table.patients:
        train_p = [p for p in table.patients if p != held]
        work = out / "e2e" / f"without-{held}"
        if (work / "pred.csv").exists():
            pred = read_scores(work / "pred.csv", require_all=False)
        else:
            if work.exists():
                shutil.rmtree(work)  # an unfinished attempt: start it again
            (work / "images").mkdir(parents=True)
            for p in train_p:
                for path in images[p].values():
                    shutil.copy(path, work / "images" / path.name)
            write_table(ScoreTable({p: table.scores[p] for p in train_p}), work / "scores.csv")
            cfg = RA2Config(
                folds=1,
                epochs=study.e2e_epochs,
                crop=study.crop,
                localisers={"hand": localiser_run},
                localiser_epochs=study.e2e_epochs,
                mean_shape=landmark_mean_shapes(find_images(work / "images"), ex / "landmarks"),
            )
            train_pipeline(work / "images", work / "scores.csv", work / "run", landmarks=ex / "landmarks", cfg=cfg)
            (work / "test").mkdir()
            for path in images[held].values():
                shutil.copy(path, work / "test" / path.name)
            predict_pipeline(work / "run", work / "test", work / "pred.csv", joints_out=work / "joints.json")
            pred = read_scores(work / "pred.csv", require_all=False)
        t, pr = table.scores[held], pred.scores[held]
        err: dict[str, list[float]] = {k: [] for k in ("erosion", "narrowing")}
        zero: dict[str, list[float]] = {k: [] for k in ("erosion", "narrowing")}
        for a in SCHEMA:
            pv, tv = pr.get(a.column), t.get(a.column)
            if pv is not None and tv is not None:
                err[a.kind].append(abs(pv - tv))
                zero[a.kind].append(abs(tv))
        tt, tp = totals(table)[held]["Overall_Tol"], totals(pred)[held]["Overall_Tol"]
        res[held] = {
            "trained_on": train_p,
            "total_true": tt,
            "total_pred": tp,
            # no error where either total is undefined (training.csv may leave a joint of the held-out patient empty)
            "total_error": None if tp is None or tt is None else abs(tp - tt),
            **{f"mae_{k}": float(np.mean(v)) if v else None for k, v in err.items()},
            **{f"mae_{k}_if_zero": float(np.mean(v)) if v else None for k, v in zero.items()},
        }
    return res


# --------------------------------------------------------------------------------------------------- study


def run_ra2_study(study: RA2Study, out: str | Path, *, fresh: bool = False) -> Path:
    """Run (or resume) the study stage by stage; after each stage ``report.md`` is rewritten from the runs
    finished so far, so a study cut short still reports what it has."""
    out = Path(out).resolve()  # run folders are recorded by absolute path (a localiser used from another folder)
    check_recipes(study.variants)
    bad = [k for k in study.localiser_kinds if k not in ("unet", "keypoint-rcnn")] or (
        [] if study.localiser_kinds else ["none"]
    )
    if bad:
        raise SmallmedError(
            f"localiser_kinds={list(study.localiser_kinds)}: expected one or both of unet, keypoint-rcnn."
        )
    if study.adult_epochs and "unet" not in study.localiser_kinds:
        raise SmallmedError(
            f"adult_epochs={study.adult_epochs} fine-tunes the pediatric U-Net: include unet in localiser_kinds."
        )
    if study.ensemble != "best":
        check_recipes([study.ensemble])
    if not study.seeds or study.folds < 2:
        raise SmallmedError("the RA2 study needs at least one seed and 2 folds.")
    if not study.knee_sizes or min(study.knee_sizes) < 8:
        raise SmallmedError(f"knee_sizes={list(study.knee_sizes)}: expected one or more sizes of at least 8 px.")
    odd = [z for z in study.spread_sizes if z not in study.knee_sizes]
    if odd:
        raise SmallmedError(f"spread_sizes={odd}: expected sizes from knee_sizes={list(study.knee_sizes)}.")
    if study.ensemble_size and study.ensemble_size not in study.knee_sizes:
        raise SmallmedError(
            f"ensemble_size={study.ensemble_size}: expected 0 or a size from knee_sizes={list(study.knee_sizes)}."
        )
    if study.ensemble != "best" and ensemble_size(study, study.ensemble) not in _sizes(study, study.ensemble):
        raise SmallmedError(
            f"ensemble_size={study.ensemble_size}: the ensemble's recipe {study.ensemble} runs at "
            f"{', '.join(f'{z} px' for z in _sizes(study, study.ensemble))} only."
        )
    for name in (study.hands, study.knee, study.examples):
        _path(study, name)  # every input is found before anything runs
    from .settings import check_settings

    check_settings(out, study, fresh=fresh)
    t0 = time.time()
    # the hand source (about 50 minutes on 2 cores) is trained only when a run still to do starts from it
    source = hand_source_path(study)
    stages = knee_stages(study, out, source)
    state: dict = {"loc": None, "e2e": None}

    def report() -> Path:
        return write_report(study, out, state, time.time() - t0)

    def grid(cells: list[TrainConfig]) -> list[dict]:
        if any(c.weights == source and not (cell_dir(c) / "metrics.json").exists() for c in cells):
            hand_source(study)
        return run_grid(cells)

    # localisation results recorded by an earlier invocation are reused: they need no model weights, which a
    # study folder copied elsewhere (or checked in without its weights) no longer has
    recorded = _recorded(out)
    quick = ("unet",) if "unet" in study.localiser_kinds else study.localiser_kinds
    state["adult"] = recorded.get("adult") if study.adult_epochs else None
    state["loc"] = _recorded_localisation(recorded, quick, out)
    if any((cell_dir(c) / "metrics.json").exists() for st in stages for c in st):
        report()  # what earlier invocations finished, before anything new runs
    grid(stages[0])
    grid(boneage_cells(study, out, study.boneage_seeds[:1]))  # no source needed: runs while it is still cold
    report()
    # the U-Net first (minutes); the Keypoint R-CNN (about an hour on 2 cores) after the largest knee size's recipes
    state["loc"] = state["loc"] or localisation(study, out, quick)
    if study.adult_epochs and not state["adult"]:
        state["adult"] = adult_localisation(study, out, state["loc"]["localiser_runs"]["unet"])
    report()
    grid(stages[1])
    report()
    if quick != study.localiser_kinds:
        state["loc"] = _recorded_localisation(recorded, study.localiser_kinds, out) or localisation(
            study, out, study.localiser_kinds
        )
        report()
    # the one-seed recipes at the smaller sizes (the seed's DenseNet at 64 px, about 10 minutes per epoch: the
    # scorer's default is chosen between it and the ResNet-18), then the spread (the main recipes' other seeds),
    # the fold ensemble, bone age's other seeds
    grid(stages[2])
    report()
    grid(stages[3])
    report()
    grid(ensemble_cells(study, out, source))
    report()
    grid(boneage_cells(study, out, study.boneage_seeds[1:]))
    report()
    state["e2e_localiser"] = _e2e_localiser(study, out, state["loc"], recorded)
    state["e2e"] = end_to_end(study, out, state["e2e_localiser"]["run"])
    return report()


def _e2e_localiser(study: RA2Study, out: Path, loc: dict, recorded: dict) -> dict:
    """The localiser of the end-to-end stage: the default kind's run, or its U-Net trained again when only its
    results were kept (then with its own errors: two trainings of one recipe differ). A finished end-to-end
    stage keeps the localiser it recorded."""
    kind = default_localiser_kind(study, loc)
    done = recorded.get("e2e_localiser")
    if done and "kind" in done and recorded.get("end_to_end") and _e2e_finished(out):
        return {**done, "run": _under(out, done["run"])}
    run, _ = _with_weights(study, out, kind, loc["localiser_runs"][kind])
    res = {"run": run, "kind": kind, "retrained": run != loc["localiser_runs"][kind]}
    if res["retrained"]:
        res.update(localiser_summary(study, out, run))
    return res


def _e2e_finished(out: Path) -> bool:
    held = [d for d in (out / "e2e").glob("without-*") if d.is_dir()]
    return bool(held) and all((d / "pred.csv").exists() for d in held)


def _recorded(out: Path) -> dict:
    """``results.json`` of an earlier invocation (empty when there is none or it is unreadable)."""
    try:
        return json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}


def _recorded_localisation(recorded: dict, kinds: tuple[str, ...], out: Path) -> dict | None:
    """The recorded localisation results when they cover ``kinds`` (they were measured with this study's
    settings: ``check_settings`` refused any other), their run folders found under ``out`` (the study folder
    may have moved since)."""
    loc = recorded.get("localisation")
    if not loc or not set(kinds) <= set(loc.get("localiser_runs", {})):
        return None
    runs = {k: _under(out, r) for k, r in loc["localiser_runs"].items()}
    return {**loc, "localiser_runs": runs, "localiser_run": _under(out, loc["localiser_run"])}


def _under(out: Path, run: str) -> str:
    """A recorded run folder found under the study folder ``out`` (which may have moved since)."""
    return str(out / "runs" / Path(run).name)


def _with_weights(study: RA2Study, out: Path, kind: str, run: str) -> tuple[str, bool]:
    """A localiser run folder with weights and whether it was trained here: ``run`` itself, or (a U-Net of
    which only the results were kept) the same recipe trained again in ``<run>-retrained``, leaving the recorded
    run as it is. A Keypoint R-CNN without weights is refused (about an hour to train again)."""
    from ..ra2.localise import unet_localiser_config

    if (Path(run) / "best.pt").exists():
        return run, False
    if kind != "unet":
        raise SmallmedError(
            f"{run}: the {LOCALISER_NAMES.get(kind, kind)} localiser's weights were not kept; train it again with "
            "`smallmed ra2 localiser` into that folder, or set localiser_kinds to unet."
        )
    again = Path(run).with_name(Path(run).name + "-retrained")
    if (again / "best.pt").exists():
        return str(again), False
    log.warning("the U-Net localiser in %s has no weights (only its results were kept): training it again", run)
    (again / "metrics.json").unlink(missing_ok=True)  # a run without weights starts over in its folder
    cfg = unet_localiser_config(
        _hand10(study, out), again, epochs=study.localiser_epochs, image_size=study.localiser_size
    )
    run_grid([cfg])
    return str(again), True


def ensemble_predictions(study: RA2Study, out: Path) -> dict | None:
    """The fold ensemble's test predictions (mean score of the fold models, seeds averaged), with and
    without horizontal-flip TTA; None until every fold model has finished."""
    from .ra2_scoring import predict_graded, read_predictions, seed_mean

    path = out / "ensemble_choice.json"
    recipe = (
        study.ensemble
        if study.ensemble != "best"
        else (json.loads(path.read_text())["recipe"] if path.exists() else None)
    )
    if recipe is None:
        return None
    seeds = study.seeds[: study.ensemble_seeds] if study.ensemble_seeds else study.seeds
    runs = [out / "runs" / "ensemble" / f"s{s}" / f"fold{k}" for s in seeds for k in range(study.folds)]
    if not all((r / "metrics.json").exists() for r in runs):
        return None
    preds = [read_predictions(r) for r in runs]
    plain = seed_mean(preds)  # the members' probabilities averaged where the head gives them
    res = {
        "recipe": recipe,
        "folds": study.folds,
        "seeds": list(seeds),
        "size": ensemble_size(study, recipe),
        "seconds": sum(json.loads((r / "metrics.json").read_text())["wall_seconds"] for r in runs),
        "plain": plain,
    }
    if study.tta:
        cache = out / "ensemble_flip.npy"  # rows: score, grade
        if cache.exists():
            flip = np.load(cache)
        else:
            test = np.load(out / "data" / "knee_subset.npz")["test_images"]
            got = predict_graded(runs, test, "flip")
            flip = np.stack([got["score"], got["grade"]])
            _atomic(cache, lambda f: np.save(f, flip))
        res["flip"] = {"label": plain["label"], "score": flip[0], "grade": flip[1]}
    return res


def _seed_plan(study: RA2Study) -> str:
    """Which recipes run with which seeds, at which sizes (what was cut to fit is said, not hidden)."""
    main = [r for r in study.variants if r not in study.one_seed]
    seeds = ", ".join(str(x) for x in study.seeds)
    where = (
        f" at {', '.join(f'{z} px' for z in study.spread_sizes)} (seed {study.seeds[0]} only at the other sizes, "
        "to fit the compute plan)"
        if study.spread_sizes and set(study.spread_sizes) != set(study.knee_sizes)
        else ""
    )
    rest = [r for r in study.variants if r in study.one_seed]
    return (
        f"Seeds: {', '.join(main) or 'no recipe'} with seeds {seeds}{where}"
        + (f"; {', '.join(rest)} with seed {study.seeds[0]}" if rest else "")
        + "."
    )


def _knee_protocol(study: RA2Study) -> list[str]:
    """The knee section's heading and the protocol its table was measured with."""
    n_sizes = ", ".join(f"{z} px" for z in sorted(study.knee_sizes, reverse=True))
    return [
        "## (b) Scoring recipes on knee Kellgren-Lawrence grades",
        "",
        f"Real ordinal joint-damage grades 0-4 (OAI knees, the official patient-disjoint split): "
        f"{study.knee_max_train or 'all 5,778'} training knees, {study.knee_max_val or 'all 826'} validation knees "
        f"(the best epoch{' and early stopping after ' + str(study.knee_early_stop) + ' epoch(s) without improvement' if study.knee_early_stop else ''}), "
        f"the official test split once; {n_sizes}. Common protocol: Adam lr 1e-3 "
        f"({'x0.1 after an epoch without validation-loss improvement' if study.knee_scheduler == 'plateau' else 'constant, as the seed'}), "
        f"L2 1e-4, batch 32, at most {study.knee_epochs} epochs"
        + (
            f" ({study.densenet_epochs} for the DenseNets, which cost ~8x a ResNet-18 epoch and run at "
            f"{min(study.knee_sizes)} px only)"
            if study.densenet_epochs
            else ""
        )
        + ", per-image standardisation, zoom/shift 10 % and rotation 30, the seed's sampling (the most frequent grade "
        "undersampled to the second's count, the rest oversampled). The base is the seed's: DenseNet v2 (growth 16, 7x7 "
        "stride-1 stem, blocks 6-12-18, age-dependent dropout), sigmoid scaled to 0-4, MAE. Each other row changes one "
        "thing: 'hand source' = the ResNet-18 pretrained on the 12,611 RSNA bone-age hands (5 age groups, 64 px, the SVD "
        "study's cached source); 'classification' = softmax over the 5 grades (grade = argmax, score = expected grade); "
        "'ordinal' = CORN (Shi et al. 2023, coral-pytorch; grade = count of P(y>k) > 0.5, score = their sum); LoRA rank 4 "
        "and SVD follow the SVD study's protocol (1 epoch head only, batch 32 here).",
        "",
        _seed_plan(study),
        "",
        "Cells: mean over seeds, with a 95 % t-interval from 3 seeds (one seed: the value). Accuracy, QWK (quadratic "
        "weighted kappa, scikit-learn) and balanced accuracy are of the integer grade; 'MAE (grade)' is comparable to "
        "the published MAEs; 'MAE (score)' is of the continuous output. 'vs training median': paired bootstrap over the "
        "test knees (2,000 resamples; predictions averaged over seeds) of the difference to predicting the training "
        "median for every knee (negative ΔMAE and positive ΔQWK = better than the constant).",
        "",
    ]


def write_report(study: RA2Study, out: Path, state: dict, seconds: float) -> Path:
    from .ra2_scoring import GOAL, PUBLISHED, boneage_section, knee_section
    from .stats import comparison_figure

    with np.load(out / "data" / "knee_subset.npz") as z:
        train_y = z["train_labels"].ravel()
        val = (z["val_images"], z["val_labels"].ravel())
    ens = ensemble_predictions(study, out)
    knee_lines, rows, summ = knee_section(study, out, train_y, ens, val)
    if rows:
        atomic_write_csv(out / "knee_results.csv", rows)
    lines = [
        "# RA2 joint-damage scoring (seed 003), measured on the real data available offline",
        "",
        f"Wall time of this invocation {seconds / 60:.1f} min on this machine (finished runs are reused); "
        f"training time summed over the finished knee runs {summ['seconds'] / 3600:.2f} h.",
        "",
    ]
    if state.get("loc"):
        lines += _localisation_lines(study, state["loc"])
    if state.get("adult"):
        lines += _adult_lines(study, state["adult"])
    lines += [
        *_knee_protocol(study),
        *knee_lines,
        f"Convergence: {summ['at_cap']} of {summ['runs']} finished knee runs had their best epoch at the cap"
        + (
            " (**more than a third: the cap limits these results**)"
            if summ["runs"] and summ["at_cap"] > summ["runs"] / 3
            else ""
        )
        + ".",
        "",
        f"Published at higher resolution: {PUBLISHED}. Goals of this study at 96 px: accuracy >= {GOAL['acc']}, "
        f"MAE <= {GOAL['mae_rounded']}, QWK >= {GOAL['qwk']}.",
        "",
    ]
    if summ["missing"]:
        lines += [
            f"Not run yet ({len(summ['missing'])} runs; the same command resumes): " + ", ".join(summ["missing"]) + ".",
            "",
        ]
    bone_lines, bone = boneage_section(study, out)
    lines += bone_lines
    if state.get("e2e"):
        lines += _e2e_lines(study, state["e2e"], state.get("e2e_localiser"))
    lines += _verdict(study, state, summ, bone)
    if comparison_figure(
        [{**r, "size": f"{r['size']} px"} for r in rows if r["seed"] != ""],
        group="size",
        arm="recipe",
        metric="mae_rounded",
        path=out / "comparison.png",
        xlabel="test MAE of the grade (lower is better)",
    ):
        lines += ["", "![the arms compared](comparison.png)", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    atomic_write_text(
        out / "results.json",
        json.dumps(
            {
                "localisation": state.get("loc"),
                "adult": state.get("adult"),
                "knee": summ,
                "boneage": bone,
                "end_to_end": state.get("e2e"),
                "e2e_localiser": state.get("e2e_localiser"),
            },
            indent=2,
            default=_jsonable,
        ),
    )
    return report


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _verdict(study: RA2Study, state: dict, summ: dict, bone: dict) -> list[str]:
    lines = ["## Verdict", ""]
    loc = state.get("loc")
    if loc:
        lh, ht = loc["hands_ra2"], loc["hands_test"]
        if "localiser" in lh and "mean_shape" in lh:
            better = lh["localiser"]["frac_error"] < lh["mean_shape"]["frac_error"]
            lines.append(
                f"- Localisation: on the pediatric test hands the U-Net is off by {ht['localiser']['frac_error'] * 100:.1f} % of the "
                f"width (mean shape {ht['mean_shape']['frac_error'] * 100:.1f} %); on the adult RA2 hands "
                f"{lh['localiser']['frac_error'] * 100:.1f} % vs {lh['mean_shape']['frac_error'] * 100:.1f} %: the "
                f"pediatric-trained localiser {'transfers better than' if better else 'does not beat'} the mean shape there."
            )
        lines += _default_localiser_lines(study, loc)
    for size, recipes in sorted(summ["sizes"].items(), reverse=True):
        chosen = {r: v for r, v in recipes.items() if "val_mae" in v}  # recipes, chosen on validation
        best = (
            min(chosen, key=lambda r: chosen[r]["val_mae"])
            if chosen
            else min(recipes, key=lambda r: recipes[r]["mae_rounded"])
        )
        b = recipes[best]
        skill = b["vs_median"]["mae"]["hi"] < 0 and b["vs_median"]["qwk"]["lo"] > 0
        lines.append(
            f"- Knee grades at {size} px: the recipe with the lowest validation MAE is {best} (test accuracy {b['acc']:.3f}, MAE {b['mae_rounded']:.3f}, "
            f"QWK {b['qwk']:.3f}); against the training median {'it shows skill: both paired intervals exclude 0' if skill else 'its paired intervals do not both exclude 0'} "
            f"(ΔMAE {_ci_text(b['vs_median']['mae'])}, ΔQWK {_ci_text(b['vs_median']['qwk'])})"
            + (
                ". Goals (accuracy >= 0.70, MAE <= 0.34, QWK >= 0.85): "
                + ", ".join(
                    f"{k} {'met' if (b[k] >= g if k != 'mae_rounded' else b[k] <= g) else 'not met'}"
                    for k, g in (("acc", 0.70), ("mae_rounded", 0.34), ("qwk", 0.85))
                )
                if size == 96
                else ""
            )
            + "."
        )
    if bone:
        ratio = bone["mae"] / bone["mean_age_mae"]
        lines.append(
            f"- Bone age: MAE {bone['mae']:.2f} months against {bone['mean_age_mae']:.2f} for the mean age, "
            f"ratio {ratio:.3f} ({'meets' if ratio < 1 / 3 else 'misses'} the goal of under 1/3)."
        )
    return lines + [""]


def _ci_text(d: dict) -> str:
    return f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


LOCALISER_NAMES = {"unet": "U-Net", "keypoint-rcnn": "Keypoint R-CNN", "mean_shape": "mean shape"}


def _localiser_errors(study: RA2Study, loc: dict) -> tuple[dict, dict] | None:
    """({kind: pediatric test metrics with training seconds}, {kind: adult RA2 hand metrics}) when more than one
    localiser kind was measured on both; None otherwise."""
    kinds = loc["hands_test"].get("by_kind", {})
    adult = {k: loc["hands_ra2"].get("localiser" if k == study.localiser_kinds[0] else k) for k in kinds}
    if len(kinds) < 2 or any(v is None for v in adult.values()):
        return None
    return kinds, adult


def default_localiser_kind(study: RA2Study, loc: dict) -> str:
    """The default localiser (the end-to-end runs use it): the cheapest to train unless another is at least 10 %
    lower in error on the adult RA2 hands (the hands the pipeline is for); the first kind when there is one."""
    both = _localiser_errors(study, loc)
    if both is None:
        return study.localiser_kinds[0]
    kinds, adult = both
    cheap = min(kinds, key=lambda k: kinds[k]["seconds"])
    pick = min(adult, key=lambda k: adult[k]["frac_error"])
    return pick if adult[pick]["frac_error"] <= 0.9 * adult[cheap]["frac_error"] else cheap


def _default_localiser_lines(study: RA2Study, loc: dict) -> list[str]:
    both = _localiser_errors(study, loc)
    if both is None:
        return []
    kinds, adult = both
    pick = default_localiser_kind(study, loc)
    desc = "; ".join(
        f"{LOCALISER_NAMES.get(k, k)} {adult[k]['frac_error'] * 100:.2f} % on the adult hands, "
        f"{kinds[k]['frac_error'] * 100:.2f} % on the pediatric test hands, {kinds[k]['seconds'] / 60:.0f} min of training"
        for k in kinds
    )
    return [
        f"- Default localiser: the {LOCALISER_NAMES.get(pick, pick)} ({desc}). The rule: the cheapest to train unless "
        "another is at least 10 % lower in error on the adult RA2 hands."
    ]


def _localisation_lines(study: RA2Study, loc: dict) -> list[str]:
    lines = [
        "## (a) Joint localisation",
        "",
        f"Heatmap U-Net (integral regression, base 16) trained {study.localiser_epochs} epochs at {study.localiser_size} px on the "
        "454 training hands of the 21-point hand keypoint set (10 RA2 joints: thumb IP, PIP 2-5, MCP 1-5; right hands "
        "mirrored to the left). Errors are Euclidean, in pixels of the image they were measured on and as a fraction "
        "of its width. The mean-shape baseline puts every joint at its mean relative position in the training images.",
        "",
        "| images | method | px error | error / width | within 5 % of width | joints |",
        "|---|---|---|---|---|---|",
    ]
    ht = loc["hands_test"]
    ci = ht["ci95"]["px_error"]
    name = {**LOCALISER_NAMES, "localiser": LOCALISER_NAMES[study.localiser_kinds[0]]}
    lines.append(
        f"| hand set test split (34 pediatric hands, {ht['image_px']} px) | {name['localiser']} | "
        f"{ht['localiser']['px_error']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] | {ht['localiser']['frac_error']:.4f} | "
        f"{ht['localiser']['pck_0.05']:.3f} | {ht['localiser']['n']} |"
    )
    for kind, v in ht.get("by_kind", {}).items():
        if kind != study.localiser_kinds[0]:
            lines.append(
                f"| hand set test split | {name.get(kind, kind)} | {v['px_error']:.2f} | {v['frac_error']:.4f} | "
                f"{v['pck_0.05']:.3f} | {v['n']} |"
            )
    lines.append(
        f"| hand set test split | mean shape | {ht['mean_shape']['px_error']:.2f} | {ht['mean_shape']['frac_error']:.4f} | "
        f"{ht['mean_shape']['pck_0.05']:.3f} | {ht['mean_shape']['n']} |"
    )
    for method, v in loc["hands_ra2"].items():
        lines.append(
            f"| RA2 example hands (4 adult images, 1000-1900 px) | {name.get(method, method)} | {v['px_error']:.1f} | "
            f"{v['frac_error']:.4f} | - | {v['n']} |"
        )
    for method, v in loc["feet_ra2"].items():
        lines.append(
            f"| RA2 example feet (4 images, leave one out) | {name.get(method, method)} | {v['px_error']:.1f} | "
            f"{v['frac_error']:.4f} | - | {v['n']} |"
        )
    if len(ht.get("by_kind", {})) > 1:
        lines += [
            "",
            "Training CPU time: "
            + ", ".join(f"{k} {v['seconds'] / 60:.1f} min" for k, v in ht["by_kind"].items())
            + " (the Keypoint R-CNN: torchvision's, ResNet-18 FPN backbone from scratch offline, one box per hand, "
            "128 px); the default localiser, which the end-to-end runs use, is the cheapest to train unless another "
            "is at least 10 % lower in error on the adult RA2 hands (see the verdict).",
        ]
    pj, pm = ht["localiser"]["per_joint"], ht["mean_shape"]["per_joint"]
    lines += [
        "",
        "Per joint on the hand set's test split (error / width, U-Net vs mean shape): "
        + ", ".join(f"{j} {pj[j]['frac_error']:.3f} / {pm[j]['frac_error']:.3f}" for j in pj),
    ]
    lines += [
        "",
        "Per joint on the RA2 example hands (error / width, U-Net vs mean shape): "
        + ", ".join(
            f"{j} {loc['hands_ra2'].get('localiser', {}).get('per_joint_frac', {}).get(j, float('nan')):.3f} / "
            f"{loc['hands_ra2'].get('mean_shape', {}).get('per_joint_frac', {}).get(j, float('nan')):.3f}"
            for j in loc["hands_ra2"].get("localiser", {}).get("per_joint_frac", {})
        ),
        "",
    ]
    return lines


def _e2e_lines(study: RA2Study, e2e: dict, localiser: dict | None = None) -> list[str]:
    from ..ra2.pipeline import RA2Config

    kind = (localiser or {}).get("kind", "unet")
    where = f"the {LOCALISER_NAMES.get(kind, kind)} of (a)"
    if localiser and localiser.get("retrained"):
        where = (
            f"the {LOCALISER_NAMES.get(kind, kind)} of (a) trained again with the same recipe, since its weights were "
            f"not kept (`{Path(localiser['run']).name}`: {100 * localiser['hands_test_frac']:.2f} % of the width on "
            f"the pediatric test hands and {100 * localiser['hands_ra2_frac']:.2f} % on the adult RA2 hands, against "
            "the recorded run's numbers in (a): the spread between two trainings of one recipe)"
        )
    lines: list[str] = []
    lines += [
        "## (c) The pipeline end to end on the two RA2 example patients",
        "",
        f"Leave one patient out: the three scorers ({RA2Config.model}, {study.crop} px crops, {study.e2e_epochs} "
        f"epochs, one model each) train on the other patient's 4 radiographs and scores; hand joints are located by "
        f"{where} (the three wrist points, which the 21-point set lacks, and the feet by the other patient's mean "
        "shape). With one training patient each scorer trains a fixed number of epochs and recomputes its BatchNorm "
        "statistics on its training crops before each validation (precise BN: the running averages of so few steps "
        "lag the weights). Far too little data to learn damage: this checks that the pipeline runs on real adult "
        "images and reports what it gets, not a quality claim; the columns in brackets predict no damage.",
        "",
        "| held-out patient | true total | predicted total | |error| | erosion MAE (if all 0) | narrowing MAE (if all 0) |",
        "|---|---|---|---|---|---|",
    ]

    def f(v, fmt: str) -> str:  # an undefined value (an empty joint in training.csv) prints as "-"
        return "-" if v is None else format(v, fmt)

    for pid, r in e2e.items():
        lines.append(
            f"| {pid} | {f(r['total_true'], '.0f')} | {f(r['total_pred'], '.1f')} | {f(r['total_error'], '.1f')} | "
            f"{f(r['mae_erosion'], '.3f')} ({f(r['mae_erosion_if_zero'], '.3f')}) | "
            f"{f(r['mae_narrowing'], '.3f')} ({f(r['mae_narrowing_if_zero'], '.3f')}) |"
        )
    return lines + [""]


register_study(
    "ra2",
    summary="seed 003: joint localisation, knee KL scoring recipes, bone age, RA2 end to end",
    presets=PRESETS,
    run=run_ra2_study,
    help={"variants": f"the scoring recipes ({', '.join(RECIPES)})"},
)
