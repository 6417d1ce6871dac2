"""The RA2 pipeline: radiographs -> joints -> crops -> three scorers (CV ensembles) -> the challenge table.

``train_pipeline`` builds joint crops from a group's own radiographs, landmarks and score table and
trains the three scorers of seed 003 (hand erosion 0-5, foot erosion 0-10, narrowing 0-4) through
:func:`smallmed.fit` (the regression task: run folders, resume, seeds), one model per
cross-validation fold, folds split by patient. ``predict_pipeline`` finds each patient's four
images (``PATIENT-LH/RH/LF/RF.<jpg|png|dcm>``), locates the joints, scores every crop with every
fold model, averages them (the ensemble), sets scores under 0.5 to 0 and writes the table. A
missing or unreadable image, or a limb with no localiser, leaves that limb's scores empty in the
table (never invented) and is reported in one sentence.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import SmallmedError
from ..fields import check_fields, setting
from .joints import (
    FOOT_POINTS,
    HAND_POINTS,
    LIMB_POINTS,
    crops_for_limb,
    flip_points,
    read_landmarks,
    to_left,
    write_landmarks,
)
from .schema import BY_COLUMN, SCHEMA, ScoreTable, read_scores, write_table

log = logging.getLogger(__name__)

LIMBS = ("LH", "RH", "LF", "RF")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".tif", ".tiff")
NAME = re.compile(r"^(?P<pid>.+)-(?P<limb>LH|RH|LF|RF)$")


@dataclass(frozen=True)
class Scorer:
    name: str
    low: int
    high: int
    loss: str

    def takes(self, column: str) -> bool:
        a = BY_COLUMN[column]
        if self.name == "narrowing":
            return a.kind == "narrowing"
        return a.kind == "erosion" and a.hand == (self.name == "hand_erosion")


# seed 003: MAE for erosion, log-cosh for narrowing
SCORERS = (
    Scorer("hand_erosion", 0, 5, "mae"),
    Scorer("foot_erosion", 0, 10, "mae"),
    Scorer("narrowing", 0, 4, "logcosh"),
)


@dataclass
class RA2Config:
    """Settings of ``smallmed ra2 train`` (saved as ``ra2.json`` in the run folder)."""

    folds: int = setting(5, ge=1, le=100, help="cross-validation folds of each scorer's ensemble")
    epochs: int = setting(10, ge=1, le=10**4)
    crop: int = setting(64, ge=16, le=1024, help="scorer input side (the seed used 64 or 128)")
    # ResNet-18: in the full RA2 study at 64 px it scored knee grades better in 10 CPU minutes (MAE 0.76, QWK 0.58)
    # than the seed's DenseNet v2 in 35 (3 epochs: 0.87, 0.45); densenet_ra2_v2 / _v1 remain by name
    model: str = "resnet18"
    lr: float = setting(1e-3, gt=0, le=100)
    batch_size: int = setting(32, ge=1, le=10**5)
    balance: Literal["none", "sampling", "weights"] = setting(
        "sampling", help="seed 003: undersample the most common score, oversample the rest"
    )
    augment: str = "scale=0.9-1.1,translate=0.1,rotate=30"  # seed 003: zoom/shift 10 %, rotation 30
    seed: int = setting(0, ge=0, lt=2**32)
    init: str | None = None  # start every scorer from this run folder or weights file (--init RUN)
    localiser_epochs: int = setting(
        30, ge=0, le=10**4, help="a hand / foot localiser trained on the group's own landmarks (0: none)"
    )
    localisers: dict = field(default_factory=dict)  # "hand"/"foot" -> keypoint run folder
    mean_shape: dict = field(default_factory=dict)  # "hand"/"foot" -> {point: (x/w, y/h)} fallback

    def __post_init__(self) -> None:
        from ..models import MODELS

        check_fields(self)
        MODELS.get(self.model)
        if self.init is not None and not (Path(self.init) / "best.pt").exists() and not Path(self.init).is_file():
            raise SmallmedError(f"init={self.init}: expected a finished run folder (with best.pt) or a weights file.")


def find_images(folder: str | Path) -> dict[str, dict[str, Path]]:
    """{patient: {limb: path}} from files named ``PATIENT-LH.jpg`` etc.; other files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SmallmedError(f"{folder}: image folder not found.")
    out: dict[str, dict[str, Path]] = {}
    for p in sorted(folder.iterdir()):
        m = NAME.match(p.stem)
        if p.suffix.lower() in IMAGE_SUFFIXES and m:
            limbs = out.setdefault(m["pid"], {})
            if m["limb"] in limbs:
                raise SmallmedError(f"{p}: a second {m['limb']} image of patient {m['pid']} ({limbs[m['limb']].name}).")
            limbs[m["limb"]] = p
    if not out:
        raise SmallmedError(f"{folder}: no images named PATIENT-LH/RH/LF/RF.<jpg|png|dcm>.")
    return out


def _gray(path: Path) -> np.ndarray:
    from ..data import read_image

    return read_image(path, channels=1)[..., 0]


def _kind(limb: str) -> str:
    return "hand" if limb.endswith("H") else "foot"


def landmark_mean_shapes(images: dict[str, dict[str, Path]], landmarks: str | Path) -> dict[str, dict]:
    """{"hand"|"foot": mean shape} over every image with a landmark file, right limbs mirrored to the left:
    the fallback localiser for limbs (or points) without a trained one."""
    from .localise import mean_shape

    shapes: dict[str, list] = {"hand": [], "foot": []}
    for limbs in images.values():
        for limb, path in limbs.items():
            lm = Path(landmarks) / f"{path.stem}.json"
            if lm.exists():
                h, w = _gray(path).shape
                pts = read_landmarks(lm, limb)
                shapes[_kind(limb)].append((flip_points(pts, w) if limb.startswith("R") else pts, (w, h)))
    return {k: mean_shape(v) for k, v in shapes.items() if v}


def limb_crops(image: np.ndarray, points: dict, limb: str, size: int) -> dict[str, np.ndarray]:
    """Crops of every assessment of one limb; ``points`` are in the original image's pixels."""
    left = to_left(image, limb)
    pts = flip_points(points, image.shape[1]) if limb.startswith("R") else points
    return crops_for_limb(left, pts, limb, size)


def build_crops(images: dict[str, dict[str, Path]], table: ScoreTable, landmarks: str | Path, size: int):
    """(crops [N, s, s], scores [N], patients [N], columns [N]) for every scored joint with an image and landmarks."""
    landmarks = Path(landmarks)
    X, y, pids, cols = [], [], [], []
    for pid, vals in table.scores.items():
        for limb, path in images.get(pid, {}).items():
            lm = landmarks / f"{path.stem}.json"
            if not lm.exists():
                log.warning("%s: no landmark file %s; its joints are left out of training", path, lm)
                continue
            crops = limb_crops(_gray(path), read_landmarks(lm, limb), limb, size)
            for col, c in crops.items():
                if vals.get(col) is not None:
                    X.append(c)
                    y.append(vals[col])
                    pids.append(pid)
                    cols.append(col)
    if not X:
        raise SmallmedError(
            f"no joint could be cropped: check that {landmarks} has PATIENT-LIMB.json files for the images."
        )
    return np.stack(X), np.array(y, np.float32), np.array(pids), np.array(cols)


def _folds(patients: list[str], k: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """(train patients, held-out patients) per fold; with one patient, one model trained and checked on it."""
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(patients))
    k = min(k, len(order))
    if k < 2:
        return [(order, order)]
    return [([p for p in order if p not in order[i::k]], order[i::k]) for i in range(k)]


def _validation_patients(train: list[str], seed: int) -> tuple[list[str], list[str]]:
    """(patients that train, patients that pick the epoch) from a fold's training patients: a fifth of
    them (at least one) when three or more are left, else none (fixed epochs)."""
    if len(train) < 3:
        return list(train), []
    order = list(np.random.default_rng(seed).permutation(train))
    k = max(1, len(order) // 5)
    return order[k:], order[:k]


def _read_scores(run: Path) -> dict[str, np.ndarray]:
    """A scorer run's held-out labels and predictions, read by column name."""
    import csv

    with open(run / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"label": np.array([float(r["label"]) for r in rows]), "pred": np.array([float(r["pred"]) for r in rows])}


def _train_localisers(images: dict, landmarks: str | Path, patients: list[str], cfg: RA2Config, out: Path) -> dict:
    """A U-Net per limb kind without a given localiser, trained on the group's own landmarks (a fifth of the
    patients, at least one, pick the epoch when three or more have landmarks; else every epoch runs).
    Returns {kind: run folder relative to ``out``}; a kind with no landmarks keeps the mean shape, said once."""
    from .localise import fit_landmark_localiser

    trained = {}
    for kind, names in (("hand", HAND_POINTS), ("foot", FOOT_POINTS)):
        if kind in cfg.localisers:
            continue
        if not cfg.localiser_epochs:
            log.info(
                "no %s localiser given and localiser_epochs=0: %s joints will be placed by the mean shape", kind, kind
            )
            continue
        samples: dict[str, list] = {}
        for pid in patients:
            for limb, path in images.get(pid, {}).items():
                lm = Path(landmarks) / f"{path.stem}.json"
                if _kind(limb) == kind and lm.exists():
                    samples.setdefault(pid, []).append((_gray(path), read_landmarks(lm, limb), limb))
        if not samples:
            log.info("no %s landmarks: %s joints will be placed by the mean shape", kind, kind)
            continue
        fit_p, val_p = _validation_patients(sorted(samples), cfg.seed)
        train = [x for p in fit_p for x in samples[p]]
        val = [x for p in val_p for x in samples[p]]
        m = fit_landmark_localiser(
            train, val, [], list(names), out / f"localiser-{kind}", epochs=cfg.localiser_epochs, seed=cfg.seed
        )
        trained[kind] = f"localiser-{kind}"
        log.info(
            "%s localiser: trained on %d image(s) of %d patient(s)%s -> %s",
            kind,
            len(train),
            len(fit_p),
            f", epoch chosen on {len(val_p)} patient(s)" if val else f", {cfg.localiser_epochs} fixed epochs",
            out / f"localiser-{kind}",
        )
        del m
    return trained


def _fold_run(sc, f: int, tr: list, ho: list, data: tuple, scores_csv, out: Path, cfg: RA2Config) -> tuple | None:
    """Train one scorer's model of fold ``f``; its held-out predictions and how its epoch was chosen (None
    when the fold has no training or held-out joints of this scorer)."""
    from ..config import TrainConfig
    from ..data.dataset import ImageDataset, Split
    from ..train import fit

    X, y, pids, sel = data
    fit_p, val_p = _validation_patients(tr, cfg.seed + f)
    mfit, mval, mho = sel & np.isin(pids, fit_p), sel & np.isin(pids, val_p), sel & np.isin(pids, ho)
    if not mfit.any() or not mho.any():
        return None
    fixed = not mval.any()
    if fixed:
        log.info(
            "%s fold %d: %d training patient(s), too few to hold some out for validation; %d fixed epochs "
            "(the held-out fold never chooses an epoch)",
            sc.name,
            f,
            len(tr),
            cfg.epochs,
        )
    # the held-out fold is the test split only: it scores the fold model, it never picks its epoch
    val = Split(X[mfit], y[mfit]) if fixed else Split(X[mval], y[mval])
    splits = {"train": Split(X[mfit], y[mfit]), "val": val, "test": Split(X[mho], y[mho])}
    ds = ImageDataset(
        f"ra2-{sc.name}-fold{f}",
        "regression",
        [],
        splits,
        source=str(scores_csv),
        info={
            "range": (sc.low, sc.high),
            "split": f"patients held out: {', '.join(ho)}; "
            + ("fixed epochs" if fixed else f"validation patients: {', '.join(val_p)}"),
        },
    )
    tcfg = TrainConfig(
        data=str(scores_csv),
        model=cfg.model,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        loss=sc.loss,
        balance=cfg.balance,
        augment=cfg.augment,
        normalize="sample",
        scheduler="none",
        weight_decay=1e-4,
        seed=cfg.seed + f,
        progress=False,
        select_epoch="last" if fixed else "val_loss",
        bn_stats="recompute" if fixed else "running",  # a few steps of one patient: running averages lag
        weights=cfg.init,
        out=str(out / sc.name / f"fold{f}"),
    )
    m = fit(tcfg, dataset=ds)
    log.info("%s fold %d: held-out MAE %.3f", sc.name, f, m["test"]["mae"])
    return _read_scores(out / sc.name / f"fold{f}"), ("fixed epochs" if fixed else {"validation_patients": val_p})


def train_pipeline(
    images_dir: str | Path,
    scores_csv: str | Path,
    out: str | Path,
    *,
    landmarks: str | Path,
    cfg: RA2Config | None = None,
) -> dict:
    """Train the three scorers (one model per fold) on a group's own data; returns ``ra2.json``'s contents."""
    from ..io import atomic_write_json

    cfg = cfg or RA2Config()
    out = Path(out)
    if out.exists() and (out / "ra2.json").exists():
        raise SmallmedError(f"{out}: already holds a trained RA2 pipeline; choose another --out.")
    table = read_scores(scores_csv)
    images = find_images(images_dir)
    missing = [p for p in table.patients if p not in images]
    if missing:
        log.warning(
            "%d patient(s) of %s have no images in %s (e.g. %s); they are left out",
            len(missing),
            scores_csv,
            images_dir,
            missing[0],
        )
    X, y, pids, cols = build_crops(images, table, landmarks, cfg.crop)
    patients = sorted(set(pids.tolist()))
    folds = _folds(patients, cfg.folds, cfg.seed)
    if len(folds) < cfg.folds:
        log.warning(
            "%d patient(s): %d fold(s) instead of %d%s",
            len(patients),
            len(folds),
            cfg.folds,
            " (one model, checked on its own training patient: no held-out error)" if len(folds) == 1 else "",
        )
    runs: dict[str, list[str]] = {}
    cv: dict[str, dict] = {}
    selection: dict[str, list] = {}
    for sc in SCORERS:
        sel = np.array([sc.takes(c) for c in cols])
        if not sel.any():
            log.warning("no %s joints in the training data; that scorer is not trained", sc.name)
            continue
        runs[sc.name], preds, truth = [], [], []
        for f, (tr, ho) in enumerate(folds):
            done = _fold_run(sc, f, tr, ho, (X, y, pids, sel), scores_csv, out, cfg)
            if done is None:
                continue
            p, how = done
            runs[sc.name].append(f"{sc.name}/fold{f}")
            preds.append(p["pred"])
            truth.append(p["label"])
            selection.setdefault(sc.name, []).append(how)
        if preds:
            p, t = np.concatenate(preds), np.concatenate(truth)
            cv[sc.name] = {
                "mae": float(np.abs(p - t).mean()),
                "n": int(len(t)),
                "mae_predict_zero": float(np.abs(t).mean()),
            }
    trained = _train_localisers(images, landmarks, patients, cfg, out)
    cfg.localisers = {**cfg.localisers, **trained}
    info = {
        "config": asdict(cfg),
        "scorers": {s.name: asdict(s) for s in SCORERS if s.name in runs},
        "runs": runs,
        "folds": [{"train": tr, "held_out": ho} for tr, ho in folds],
        "cv": cv,
        "epoch_selection": selection,
        "patients": patients,
        "crops": int(len(X)),
    }
    atomic_write_json(out / "ra2.json", info)
    return info


class Pipeline:
    """A trained RA2 run folder: ``score(images) -> ScoreTable``."""

    def __init__(self, run_dir: str | Path, device: str = "cpu") -> None:
        from ..train.inference import load_run

        self.dir = Path(run_dir)
        if not (self.dir / "ra2.json").exists():
            raise SmallmedError(f"{self.dir}: no ra2.json; not a run folder of `smallmed ra2 train`.")
        self.info = json.loads((self.dir / "ra2.json").read_text())
        self.cfg = RA2Config(**{**self.info["config"], "init": None})  # the start of training is not needed to predict
        self.scorers = {
            name: [load_run(self.dir / r, device) for r in runs] for name, runs in self.info["runs"].items()
        }
        self.localisers = {}
        for kind, run in self.cfg.localisers.items():
            from .detector import open_localiser

            run = Path(run) if Path(run).is_absolute() else self.dir / run  # trained with the run: inside it
            self.localisers[kind] = open_localiser(run, device)

    def locate(self, image: np.ndarray, limb: str, landmarks: Path | None):
        """(points, confidence, how) of one limb image; ``how`` says where the points came from."""
        if landmarks is not None and landmarks.exists():
            return read_landmarks(landmarks, limb), {}, "landmarks"
        kind = _kind(limb)
        shape = None
        if kind in self.cfg.mean_shape:
            h, w = image.shape[:2]
            shape = {n: (x * w, y * h) for n, (x, y) in self.cfg.mean_shape[kind].items()}
            if limb.startswith("R"):
                shape = flip_points(shape, w)
        if kind in self.localisers:
            pts, conf = self.localisers[kind].locate(image, limb)
            # points the localiser was not trained for (the wrist of a 21-point hand set) come from the mean shape
            extra = {n: xy for n, xy in (shape or {}).items() if n not in pts}
            return {**pts, **extra}, conf, "localiser" + (f" + mean shape ({', '.join(extra)})" if extra else "")
        if shape is not None:
            return shape, {}, "mean shape"
        raise SmallmedError(
            f"no {kind} localiser in {self.dir} and no landmark file; pass --landmarks or train "
            f"with --localiser-{kind}s."
        )

    @torch.no_grad()
    def score_crops(self, crops: dict[str, np.ndarray]) -> dict[str, float]:
        from torch.utils.data import DataLoader

        from ..data.dataset import Split
        from ..train.loop import run_loader

        out = {}
        for name, runs in self.scorers.items():
            sc = next(s for s in SCORERS if s.name == name)
            cols = [c for c in crops if sc.takes(c)]
            if not cols:
                continue
            split = Split(np.stack([crops[c] for c in cols])[..., None], np.zeros(len(cols), np.float32))
            preds = []
            for run in runs:
                loader = DataLoader(run.task.torch_dataset(split, run.transform()), batch_size=64)
                preds.append(run_loader(run.model, loader, run.task)["kept"])
            mean = np.mean(preds, axis=0)  # the fold models' ensemble
            for c, v in zip(cols, mean):
                out[c] = 0.0 if v < 0.5 else float(v)  # seed 003: scores under 0.5 count as no damage
        return out

    def predict(
        self,
        images_dir: str | Path,
        *,
        landmarks: str | Path | None = None,
        joints_out: str | Path | None = None,
        overlay: str | Path | None = None,
    ) -> tuple[ScoreTable, list[str]]:
        """The score table of every patient in ``images_dir`` and the sentences about what is missing;
        ``overlay``: a folder for one PNG per radiograph with its joints, crop boxes and scores."""
        images = find_images(images_dir)
        notes, scores, joints = [], {}, {}
        fell_back: set[str] = set()
        for pid, limbs in images.items():
            vals: dict[str, float | None] = {a.column: None for a in SCHEMA}
            for limb in LIMBS:
                path = limbs.get(limb)
                if path is None:
                    notes.append(
                        f"patient {pid}: no {limb} image ({pid}-{limb}.jpg/png/dcm); its {limb} scores are left empty."
                    )
                    continue
                try:
                    img = _gray(path)
                    if img.min() == img.max():
                        raise SmallmedError(f"the image is constant (every pixel {int(img.min())}); nothing to score.")
                    lm = Path(landmarks) / f"{path.stem}.json" if landmarks else None
                    pts, conf, how = self.locate(img, limb, lm)
                    if how == "mean shape" and _kind(limb) not in fell_back:
                        fell_back.add(_kind(limb))
                        notes.append(
                            f"no trained {_kind(limb)} localiser in {self.dir}: {_kind(limb)} joints are placed "
                            "by the training images' mean shape (about 6 % of the width off on adult hands); "
                            f"train one with `smallmed ra2 localiser` and pass --localiser-{_kind(limb)}s."
                        )
                except SmallmedError as e:
                    notes.append(f"{path}: {e} Its {limb} scores are left empty.")
                    continue
                wanted = [p for p in LIMB_POINTS[limb] if p in pts]
                if not wanted:
                    notes.append(f"{path}: no joint found; its {limb} scores are left empty.")
                    continue
                joints[path.name] = {
                    **write_landmarks({p: pts[p] for p in wanted}, str(path), (img.shape[1], img.shape[0]), conf),
                    "source": how,
                }
                limb_scores = self.score_crops(limb_crops(img, pts, limb, self.cfg.crop))
                vals.update(limb_scores)
                if overlay:
                    from .joints import draw_overlay

                    draw_overlay(
                        img,
                        {p: pts[p] for p in wanted},
                        limb,
                        limb_scores,
                        Path(overlay) / f"{path.stem}.png",
                        title=f"{path.name}: joints from {how}",
                    )
            scores[pid] = vals
        table = ScoreTable(scores, str(images_dir))
        if joints_out:
            write_joints(joints, images, joints_out)
        return table, notes


def write_joints(joints: dict[str, dict], images: dict, out: str | Path) -> None:
    """The joints used per radiograph: a folder gets one labelme file per image (``STEM.json``, ``imagePath``
    relative to it, so labelme opens it as it is and ``ra2 train --landmarks`` reads it back once corrected); a
    ``.json`` path gets one file mapping image names to those labelme dicts."""
    import os

    from ..io import atomic_write_json

    out = Path(out)
    if out.suffix.lower() == ".json":
        atomic_write_json(out, {k: {**v, "imagePath": Path(v["imagePath"]).name} for k, v in joints.items()})
        return
    if out.exists() and not out.is_dir():
        raise SmallmedError(
            f"--joints-out {out}: a file; expected a folder (one labelme file per image) or a .json path."
        )
    out.mkdir(parents=True, exist_ok=True)
    for d in joints.values():
        image = Path(d["imagePath"])
        rel = os.path.relpath(image.resolve(), out.resolve())
        atomic_write_json(out / f"{image.stem}.json", {**d, "imagePath": rel})


def predict_pipeline(
    run_dir, images_dir, out_csv, *, landmarks=None, joints_out=None, overlay=None, device: str = "cpu"
):
    """Write the challenge table for every patient in ``images_dir``; returns (table, notes)."""
    table, notes = Pipeline(run_dir, device).predict(
        images_dir, landmarks=landmarks, joints_out=joints_out, overlay=overlay
    )
    write_table(table, out_csv)
    return table, notes
