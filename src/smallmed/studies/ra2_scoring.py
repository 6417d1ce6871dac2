"""The scoring half of ``smallmed study ra2``: graded joint damage (knee Kellgren-Lawrence 0-4) and
bone age in months, at a scale where skill can show.

Every recipe is one change from the seed's base (DenseNet v2, MAE, a sigmoid scaled to the grade
range, the seed's sampling): the backbone (ResNet-18), its start (from scratch or from the
bone-age hand source, the in-domain pretraining the SVD study builds), the fine-tuning method
(full, LoRA, SVD per kernel position with 90 % of the singular values pruned) and the output head
(bounded regression, softmax classification, ordinal CORN). Validation picks each run's best epoch
and stops it early; the official test split is read once per run, and the constant predictors
(training median, training mode) are rows of the same table. Metrics come from each run's
``test_predictions.csv`` (by column name): accuracy, MAE, quadratic weighted kappa (scikit-learn),
balanced accuracy, the challenge's inverse-frequency weighted RMSE.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..errors import SmallmedError
from ..metrics.regression import qwk_matrix

# recipe -> (TrainConfig settings, starts from the bone-age source). One change at a time from "base".
RECIPES: dict[str, tuple[dict, bool]] = {
    "base": (dict(model="densenet_ra2_v2", loss="mae", balance="sampling", task="regression"), False),
    "v1": (dict(model="densenet_ra2_v1", loss="mae", balance="sampling", task="regression"), False),
    "logcosh": (dict(model="densenet_ra2_v2", loss="logcosh", balance="sampling", task="regression"), False),
    "weights": (dict(model="densenet_ra2_v2", loss="mae", balance="weights", task="regression"), False),
    "r18": (dict(model="resnet18", loss="mae", balance="sampling", task="regression"), False),
    "r18-hands": (dict(model="resnet18", loss="mae", balance="sampling", task="regression"), True),
    "r18-hands-cls": (dict(model="resnet18", balance="sampling", task="classification"), True),
    "r18-hands-ordinal": (dict(model="resnet18", balance="sampling", task="ordinal"), True),
    "r18-hands-lora": (dict(model="resnet18", loss="mae", balance="sampling", task="regression", method="lora"), True),
    "r18-hands-svd": (
        dict(model="resnet18", loss="mae", balance="sampling", task="regression", method="sp-svd-9"),
        True,
    ),
}
LABELS = {
    "base": "DenseNet v2 (the seed's base)",
    "v1": "DenseNet v1",
    "logcosh": "DenseNet v2, log-cosh loss",
    "weights": "DenseNet v2, sample weights",
    "r18": "ResNet-18 from scratch",
    "r18-hands": "ResNet-18 from the hand source, full",
    "r18-hands-cls": "... classification head",
    "r18-hands-ordinal": "... ordinal head (CORN)",
    "r18-hands-lora": "... LoRA (Hu et al. 2022)",
    "r18-hands-svd": "... SVD per position, 90 % pruned",
}
GRADES = (0, 4)


def _is_densenet(recipe: str) -> bool:
    return RECIPES[recipe][0]["model"].startswith("densenet")


def _sizes(study, recipe: str) -> tuple[int, ...]:
    # the DenseNet recipes cost ~8x a ResNet-18 epoch: under a cap they run at the smallest size only
    return (min(study.knee_sizes),) if _is_densenet(recipe) and study.densenet_epochs else tuple(study.knee_sizes)


def _seeds(study, recipe: str, size: int | None = None) -> tuple[int, ...]:
    """The seeds a recipe runs with (at ``size``: the other seeds only at the study's spread sizes)."""
    spread = getattr(study, "spread_sizes", ())
    if recipe in study.one_seed or (size is not None and spread and size not in spread):
        return tuple(study.seeds[:1])
    return tuple(study.seeds)


def check_recipes(names) -> None:
    unknown = [r for r in names if r not in RECIPES]
    if unknown:
        from ..registry import check_choice

        check_choice("recipe", unknown[0], tuple(RECIPES))


def recipe_config(
    name: str, *, data: str, size: int, seed: int, out: str, common: dict, source: str | None, epochs: int
) -> TrainConfig:
    """One knee run: the recipe's settings over the study's common protocol."""
    settings, from_source = RECIPES[name]
    method = settings.get("method", "full")
    kw = {**common, **{k: v for k, v in settings.items() if k != "method"}, "epochs": epochs}
    if from_source:
        if source is None:
            raise SmallmedError(f"recipe {name!r} starts from the bone-age hand source, which is not available.")
        kw["weights"] = source
    if method == "full":
        return TrainConfig(data=data, image_size=size, seed=seed, out=out, **kw)
    # a method brings the seed's protocol (two stages, BN statistics) beneath the study's common settings
    return TrainConfig.for_method(method, data=data, image_size=size, seed=seed, out=out, **kw)


# ------------------------------------------------------------------------------------------------ reading runs


def read_predictions(run: str | Path, low: float = GRADES[0], high: float = GRADES[1]) -> dict[str, Any]:
    """{"label", "score", "grade"} of a graded run's ``test_predictions.csv``, read by column name:
    regression runs give a score (graded by rounding within the range); classification and ordinal
    runs give a grade and their expected grade as the score."""
    path = Path(run) / "test_predictions.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"label", "pred"} <= set(rows[0]):
        raise SmallmedError(f"{path}: expected columns label and pred.")
    label = np.array([float(r["label"]) for r in rows])
    pred = np.array([float(r["pred"]) for r in rows])
    if "score" in rows[0]:
        out: dict[str, Any] = {"label": label, "score": np.array([float(r["score"]) for r in rows]), "grade": pred}
        for head, prefix in (("classification", "p_"), ("ordinal", "p_gt_")):
            cols = [c for c in rows[0] if c.startswith(prefix) and c[len(prefix) :].isdigit()]
            if cols:  # the head's probabilities: an ensemble averages these, not the grades
                out["probs"] = np.array([[float(r[c]) for c in cols] for r in rows])
                out["head"] = head
        return out
    return {"label": label, "score": pred, "grade": np.clip(np.rint(pred), low, high)}


def grade_of(head: str | None, probs: np.ndarray | None, score: np.ndarray) -> np.ndarray:
    """The grade as each head gives it: argmax of the class probabilities, the count of P(y > k) > 0.5 for
    the ordinal head (CORN), the rounded, clipped score for regression."""
    if head == "classification" and probs is not None:
        return probs.argmax(1).astype(float)
    if head == "ordinal" and probs is not None:
        return (probs > 0.5).sum(1).astype(float)
    return np.clip(np.rint(score), *GRADES)


def graded(label: np.ndarray, score: np.ndarray, grade: np.ndarray) -> dict:
    from ..metrics.regression import graded_metrics

    return graded_metrics(label, score, grade)


def paired_bootstrap(label, a: dict, b: dict, *, n: int = 2000, seed: int = 0) -> dict:
    """Paired bootstrap over test images of the differences a - b in MAE of the grade and in QWK
    (one set of resampled indices for both; each side's predictions averaged over its seeds first)."""
    from ..metrics.regression import quadratic_kappa

    rng = np.random.default_rng(seed)
    ea, eb = np.abs(a["grade"] - label), np.abs(b["grade"] - label)
    idx = rng.integers(0, len(label), (n, len(label)))
    dm = (ea[idx] - eb[idx]).mean(1)
    y, ga, gb = (np.asarray(v).astype(int) for v in (label, a["grade"], b["grade"]))
    k = int(max(y.max(), ga.max(), gb.max())) + 1
    dq = qwk_matrix(y[idx], ga[idx], k) - qwk_matrix(y[idx], gb[idx], k)
    point_q = quadratic_kappa(label, a["grade"]) - quadratic_kappa(label, b["grade"])
    return {
        "mae": {
            "diff": float((ea - eb).mean()),
            "lo": float(np.percentile(dm, 2.5)),
            "hi": float(np.percentile(dm, 97.5)),
        },
        "qwk": {
            "diff": float(point_q),
            "lo": float(np.nanpercentile(dq, 2.5)),
            "hi": float(np.nanpercentile(dq, 97.5)),
        },
    }


def seed_mean(preds: list[dict]) -> dict:
    """Predictions of several seeds (or fold models) as one: the mean score, and the grade from the mean
    probabilities where the heads give them (argmax, or the CORN count), else from the rounded mean score."""
    label = preds[0]["label"]
    score = np.mean([p["score"] for p in preds], axis=0)
    heads = {p.get("head") for p in preds}
    head = heads.pop() if len(heads) == 1 else None
    probs = np.mean([p["probs"] for p in preds], axis=0) if head else None
    return {"label": label, "score": score, "grade": grade_of(head, probs, score)}


def constant(label: np.ndarray, value: float) -> dict:
    return {
        "label": label,
        "score": np.full(len(label), float(value)),
        "grade": np.full(len(label), float(np.rint(value))),
    }


def run_seconds(run: str | Path) -> tuple[float, int, int, int]:
    """(training seconds, epochs run, best epoch, epoch cap) of a finished run."""
    m = json.loads((Path(run) / "metrics.json").read_text())
    cfg = TrainConfig.from_saved(
        {**__import__("yaml").safe_load((Path(run) / "config.yaml").read_text()), "out": str(run)}
    )
    return float(m["wall_seconds"]), int(m["epochs"]), int(m["best_epoch"]), int(cfg.epochs)


def val_mae(run: str | Path) -> float:
    """The best epoch's validation MAE (the one number the ensemble's recipe is chosen by)."""
    m = json.loads((Path(run) / "metrics.json").read_text())
    if "val_mae" not in m["val"]:
        raise SmallmedError(f"{run}: no validation MAE in metrics.json; this run cannot be compared on validation.")
    return float(m["val"]["val_mae"])


# ------------------------------------------------------------------------------------------- flip TTA, ensembles


def predict_graded(runs: list, images: np.ndarray, tta: str = "none") -> dict[str, np.ndarray]:
    """Score (expected grade) and grade of every image from the runs as one ensemble, with ``tta="flip"``
    horizontal-flip TTA (:class:`smallmed.train.ensemble.Ensemble`: the mean of the members' and views'
    outputs: probabilities for the classification and ordinal heads, the score for regression)."""
    from ..data.dataset import Split
    from ..train.ensemble import Ensemble

    ens = Ensemble.load(runs, tta=tta, device="cpu")
    split = Split(images[..., None] if images.ndim == 3 else images, np.zeros(len(images), np.int64))
    kept, _ = ens.kept(lambda run: split)
    if ens.task.kind == "regression":
        score = kept.reshape(-1)
        return {"score": score, "grade": grade_of(None, None, score)}
    if ens.task.kind == "ordinal":
        return {"score": kept.sum(1), "grade": grade_of("ordinal", kept, kept.sum(1))}
    score = kept @ np.arange(kept.shape[1])
    return {"score": score, "grade": grade_of("classification", kept, score)}


def scores(runs: list, images: np.ndarray, tta: str = "none") -> np.ndarray:
    """The expected grade (score) of every image from the runs as one ensemble (see :func:`predict_graded`)."""
    return predict_graded(runs, images, tta)["score"]


def val_scores(run: Path, images: np.ndarray) -> np.ndarray | None:
    """A finished run's scores of the validation knees (cached in ``val_scores.npy``); None without its
    checkpoint (a run folder copied without ``best.pt``)."""
    cache = Path(run) / "val_scores.npy"
    if cache.exists():
        return np.load(cache)
    if not (Path(run) / "best.pt").exists():
        return None
    from ..io import atomic_write_file

    v = scores([run], images).astype(np.float32)
    atomic_write_file(cache, lambda f: np.save(f, v))
    return v


# ------------------------------------------------------------------------------------------------------ report

# published knee KL numbers (224 px unless stated): accuracy, MAE, QWK
PUBLISHED = (
    "Chen et al. 2019: accuracy 0.697, MAE 0.344 (224 px); OsteoHRNet (Jain et al. 2023): 0.717 / 0.311 "
    "(224 px); Tiulpin et al. 2018: QWK 0.83 (Siamese network on full-resolution knee images)"
)
GOAL = {"acc": 0.70, "mae_rounded": 0.34, "qwk": 0.85}


def _fmt(vals: list[float], digits: int = 3) -> str:
    from .stats import MIN_SEEDS, mean_ci

    v = [x for x in vals if x is not None and np.isfinite(x)]
    if not v:
        return "-"
    c = mean_ci(v)
    if len(v) >= MIN_SEEDS:
        return f"{c['mean']:.{digits}f} [{c['lo']:.{digits}f}, {c['hi']:.{digits}f}]"
    return f"{c['mean']:.{digits}f}" + (f" (n={len(v)})" if len(v) > 1 else "")


def _epochs(runs: list[dict]) -> str:
    return "; ".join(f"{x['best']}/{x['epochs']}/{x['cap']}" for x in runs)


def _ci(d: dict) -> str:
    return f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


_METRICS = ("acc", "mae_rounded", "qwk", "balanced_acc", "weighted_rmse", "mae")
_HEADER = [
    "| recipe | seeds | accuracy | MAE (grade) | QWK | balanced acc. | weighted RMSE | MAE (score) | "
    "vs training median: ΔMAE, ΔQWK (test knees) | epochs (best / run / cap) | CPU min per run |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def _finished_runs(study, out: Path, size: int, missing: list[str]) -> dict[str, list[dict]]:
    """The finished runs at ``size`` by recipe (each with its predictions, metrics and timing); the
    unfinished ones are appended to ``missing``."""
    table: dict[str, list[dict]] = {}
    for r in study.variants:
        if size not in _sizes(study, r):
            continue
        for s in _seeds(study, r, size):
            run = out / "runs" / f"knee{size}" / r / f"s{s}"
            if not (run / "metrics.json").exists():
                missing.append(f"{r} at {size} px seed {s}")
                continue
            p = read_predictions(run)
            sec, ep, best, cap = run_seconds(run)
            m = graded(p["label"], p["score"], p["grade"])
            table.setdefault(r, []).append(
                {"seed": s, "run": run, "pred": p, "m": m, "sec": sec, "epochs": ep, "best": best, "cap": cap}
            )
    return table


def _one_row(size: int, name: str, m: dict, line: str, rows: list[dict]) -> str:
    """The markdown line for one model with no seeds (a constant, an ensemble); its CSV row into ``rows``."""
    rows.append({"size": size, "recipe": name, "seed": "", **{k: m[k] for k in _METRICS}})
    return line


def _recipe_line(size: int, r: str, runs: list[dict], label: np.ndarray, ref: dict, rows: list[dict]) -> tuple:
    """One recipe's line over its seeds, its per-seed CSV rows, its summary and its mean validation MAE."""
    ms = [x["m"] for x in runs]
    vs = paired_bootstrap(label, _mean_pred(runs), ref)
    v = float(np.mean([val_mae(x["run"]) for x in runs]))
    line = (
        f"| {r}: {LABELS.get(r, r)} | {len(runs)} | "
        + " | ".join(_fmt([m[k] for m in ms]) for k in _METRICS)
        + f" | {_ci(vs['mae'])}, {_ci(vs['qwk'])} | {_epochs(runs)} | {np.mean([x['sec'] for x in runs]) / 60:.0f} |"
    )
    for x in runs:
        rows.append(
            {
                "size": size,
                "recipe": r,
                "seed": x["seed"],
                **{k: x["m"][k] for k in _METRICS},
                "best_epoch": x["best"],
                "epochs": x["epochs"],
                "seconds": x["sec"],
            }
        )
    summ = {
        "acc": float(np.mean([m["acc"] for m in ms])),
        "mae_rounded": float(np.mean([m["mae_rounded"] for m in ms])),
        "qwk": float(np.mean([m["qwk"] for m in ms])),
        "seeds": len(runs),
        "vs_median": vs,
        "val_mae": v,
    }
    return line, summ, v


def _mean_pred(runs: list[dict]) -> dict:
    return seed_mean([x["pred"] for x in runs]) if len(runs) > 1 else runs[0]["pred"]


def _ensemble_lines(size: int, ensemble: dict, label: np.ndarray, ref: dict, rows: list[dict], summ: dict) -> list:
    """The fold ensemble's lines (plain and with flip TTA)."""
    lines = []
    for key, name in (("plain", "ensemble"), ("flip", "ensemble + flip TTA")):
        if key not in ensemble:
            continue
        p = ensemble[key]
        m = graded(label, p["score"], p["grade"])
        vs = paired_bootstrap(label, p, ref)
        lines.append(
            _one_row(
                size,
                name,
                m,
                f"| {name}: {ensemble['folds']} fold models of {ensemble['recipe']} (seed {ensemble['seeds']}) | "
                f"{len(ensemble['seeds'])} | "
                + " | ".join(f"{m[k]:.3f}" for k in _METRICS)
                + f" | {_ci(vs['mae'])}, {_ci(vs['qwk'])} | - | "
                f"{ensemble['seconds'] / 60 / max(1, ensemble['folds']):.0f} |",
                rows,
            )
        )
        summ[name] = {"acc": m["acc"], "mae_rounded": m["mae_rounded"], "qwk": m["qwk"], "vs_median": vs}
    return lines


def _cutpoint_lines(size: int, table: dict, val: tuple[np.ndarray, np.ndarray] | None, summ: dict) -> list[str]:
    """Each recipe's grades from cut-points fitted on the validation knees (maximum validation QWK), against
    rounding the same scores: the test split reads the fitted grades once."""
    from ..metrics.regression import apply_cutpoints, fit_cutpoints

    if val is None:
        return []
    vimg, vlab = val
    k = GRADES[1] - GRADES[0] + 1
    lines: list[str] = []
    skipped: list[str] = []  # a run whose checkpoint is gone (kept: its predictions; lost: best.pt) has no val scores
    for r, runs in table.items():
        got = [val_scores(x["run"], vimg) for x in runs]
        vs = [v for v in got if v is not None]
        if len(vs) < len(got):
            skipped.append(r)
            continue
        per_seed, cuts_all = [], []
        for x, v in zip(runs, vs):
            cuts = fit_cutpoints(vlab, v, k)
            p = x["pred"]
            per_seed.append(graded(p["label"], p["score"], apply_cutpoints(p["score"], cuts)))
            cuts_all.append(cuts)
        mean = _mean_pred(runs)
        cuts = fit_cutpoints(vlab, np.mean(vs, 0), k)  # the seeds' mean score gets its own cut-points
        cut_pred = {**mean, "grade": apply_cutpoints(mean["score"], cuts).astype(float)}
        d = paired_bootstrap(mean["label"], cut_pred, mean)
        summ.setdefault(r, {})["cutpoints"] = {
            **{m: float(np.mean([q[m] for q in per_seed])) for m in ("acc", "mae_rounded", "qwk", "balanced_acc")},
            "cuts": [c.tolist() for c in cuts_all],
            "vs_rounding": d,
        }
        lines.append(
            f"| {r} | {len(runs)} | {'; '.join(' '.join(f'{c:.2f}' for c in cc) for cc in cuts_all)} | "
            + " | ".join(_fmt([q[m] for q in per_seed]) for m in ("acc", "mae_rounded", "qwk", "balanced_acc"))
            + f" | {_ci(d['mae'])}, {_ci(d['qwk'])} |"
        )
    if not lines:
        return []
    return [
        "",
        f"Grades from cut-points fitted on the {len(vlab)} validation knees at {size} px (the 4 cut-points between "
        "grades that maximise each run's validation QWK, applied to its score, the expected grade for the "
        "classification and ordinal heads; compared with each recipe's own grades: rounding for regression, argmax "
        "or the CORN count for the heads; the validation knees also chose the best epoch; the test split "
        "reads the fitted grades once):",
        "",
        "| recipe | seeds | cut-points (per seed) | accuracy | MAE (grade) | QWK | balanced acc. | "
        "cut-points - own grades: ΔMAE, ΔQWK (test knees) |",
        "|---|---|---|---|---|---|---|---|",
        *lines,
        *(
            [
                "",
                f"Not in this table: {', '.join(skipped)} (a run's checkpoint was not kept, so its validation "
                "scores cannot be computed; its test predictions are in the table above).",
            ]
            if skipped
            else []
        ),
    ]


def knee_section(
    study,
    out: Path,
    train_labels: np.ndarray,
    ensemble: dict | None,
    val_knees: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[list[str], list[dict], dict]:
    """Markdown lines, CSV rows and a summary of the knee runs finished so far (missing ones are listed);
    with ``val_knees`` (the validation knees' images and grades at the largest size) also each recipe's grades from
    cut-points fitted on validation."""
    lines: list[str] = []
    rows: list[dict] = []
    summary: dict = {"sizes": {}}
    med = float(np.median(train_labels))
    vals, counts = np.unique(train_labels, return_counts=True)
    mode = float(vals[counts.argmax()])
    missing: list[str] = []
    done: list[dict] = []
    for size in sorted(study.knee_sizes, reverse=True):
        table = _finished_runs(study, out, size, missing)
        if not table:
            continue
        done += [x for runs in table.values() for x in runs]
        label = next(iter(table.values()))[0]["pred"]["label"]
        ref = constant(label, med)
        lines += [f"### {size} px", "", *_HEADER]
        for name, value in (("training median (constant)", med), ("training mode (constant)", mode)):
            c = constant(label, value)
            m = graded(label, c["score"], c["grade"])
            cells = " | ".join(f"{m[k]:.3f}" for k in _METRICS)
            lines.append(_one_row(size, name, m, f"| {name}: grade {value:g} | - | {cells} | - | - | 0 |", rows))
        summ = summary["sizes"].setdefault(size, {})
        val: dict[str, float] = {}  # mean validation MAE per recipe: the test split chooses nothing
        for r, runs in table.items():
            line, summ[r], val[r] = _recipe_line(size, r, runs, label, ref, rows)
            lines.append(line)
        if ensemble and ensemble.get("size") == size:
            lines += _ensemble_lines(size, ensemble, label, ref, rows, summ)
            single = table.get(ensemble["recipe"])
            if single:  # what the folds and the flips add over the recipe's own run(s) on all training knees
                lines += [""]
                for key, name in (("plain", "ensemble"), ("flip", "ensemble + flip TTA")):
                    if key in ensemble:
                        vs = paired_bootstrap(label, ensemble[key], _mean_pred(single))
                        summ[name]["vs_single"] = vs
                        lines.append(
                            f"{name} - {ensemble['recipe']} ({len(single)} run(s) on all training knees), paired over "
                            f"the test knees: ΔMAE {_ci(vs['mae'])}, ΔQWK {_ci(vs['qwk'])}."
                        )
        finite = {r: v for r, v in val.items() if np.isfinite(v)}
        best_name = min(finite, key=finite.__getitem__) if finite else None
        if "base" in table and best_name and best_name != "base":
            vs = paired_bootstrap(label, _mean_pred(table[best_name]), _mean_pred(table["base"]))
            lines += [
                "",
                f"Lowest mean validation MAE at {size} px: {best_name}; on the test knees against the seed's base "
                f"(paired over the test knees, predictions averaged over seeds): ΔMAE {_ci(vs['mae'])}, ΔQWK {_ci(vs['qwk'])}.",
            ]
        if "r18-hands" in table and "r18" in table:  # the SVD paper's question: does the in-domain source help?
            vs = paired_bootstrap(label, _mean_pred(table["r18-hands"]), _mean_pred(table["r18"]))
            summary.setdefault("hands_vs_scratch", {})[size] = vs
            lines += [
                "",
                f"Hand source against from scratch at {size} px (r18-hands - r18, paired over the test knees, "
                f"predictions averaged over seeds): ΔMAE {_ci(vs['mae'])}, ΔQWK {_ci(vs['qwk'])}.",
            ]
        lines += _cutpoint_lines(size, table, val_knees, summ)
        plot_confusions(table, out / f"confusion_knee{size}.png", size)
        lines += ["", f"Confusion matrices (first seed of each recipe): `confusion_knee{size}.png`.", ""]
    at_cap = sum(1 for x in done if x["best"] >= x["cap"])
    seconds = float(sum(x["sec"] for x in done))
    summary.update(
        {"runs": len(done), "at_cap": at_cap, "seconds": seconds, "missing": missing, "median": med, "mode": mode}
    )
    return lines, rows, summary


def plot_confusions(table: dict, path: Path, size: int) -> None:
    """One confusion matrix (rows: true grade, columns: predicted grade, row-normalised) per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    from ..io import atomic_savefig

    names = list(table)
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.9), squeeze=False)
    for ax, r in zip(axes[0], names):
        p = table[r][0]["pred"]
        cm = confusion_matrix(p["label"].astype(int), p["grade"].astype(int), labels=range(5)).astype(float)
        cm /= np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
        for i in range(5):
            for j in range(5):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if cm[i, j] > 0.5 else "black",
                )
        ax.set_title(r, fontsize=8)
        ax.set_xlabel("predicted KL", fontsize=7)
        ax.set_ylabel("true KL", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"knee KL grade at {size} px (rows sum to 1)", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def boneage_section(study, out: Path) -> tuple[list[str], dict]:
    """Bone age in months: the finished seeds against predicting the training mean age."""
    from ..data import load_dataset

    runs = [out / "runs" / "boneage" / f"s{s}" for s in study.boneage_seeds]
    done = [r for r in runs if (r / "metrics.json").exists()]
    if not study.boneage_size or not done:
        return [], {}
    ds = load_dataset("rsna-boneage-months", data_dir=study.data_dir)
    train_mean = float(ds.splits["train"].labels.mean())
    preds = [read_predictions(r, 0, 240) for r in done]
    y = preds[0]["label"]
    maes = [float(np.abs(p["score"] - y).mean()) for p in preds]
    const = float(np.abs(y - train_mean).mean())
    mean_p = np.mean([p["score"] for p in preds], 0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(y), (2000, len(y)))
    d = (np.abs(mean_p - y)[idx] - np.abs(train_mean - y)[idx]).mean(1)
    secs = [run_seconds(r) for r in done]
    lines = [
        "## (d) Bone age in months (RSNA hands)",
        "",
        f"The scorers' regression recipe (ResNet-18 from scratch, MAE, sigmoid scaled to 0-240 months, the seed's "
        f"augmentation, Adam 1e-3 with the knee runs' schedule and early stopping) on the RSNA bone-age hands at "
        f"{study.boneage_size} px, all {len(ds.splits['train'])} training hands, validation {len(ds.splits['val'])}, "
        f"test {len(y)} (a seeded split stratified by age group; no sex input).",
        "",
        "| predictor | seeds | test MAE (months) | vs mean age (paired over test hands) | epochs (best / run / cap) | CPU min per run |",
        "|---|---|---|---|---|---|",
        f"| training mean age ({train_mean:.1f} months) | - | {const:.2f} | - | - | 0 |",
        f"| ResNet-18, {study.boneage_size} px | {len(done)} | {_fmt(maes, 2)} | {d.mean():+.2f} "
        f"[{np.percentile(d, 2.5):+.2f}, {np.percentile(d, 97.5):+.2f}] | "
        f"{'; '.join(f'{b}/{e}/{c}' for _, e, b, c in secs)} | {np.mean([x[0] for x in secs]) / 60:.0f} |",
        "",
        f"Ratio to the mean-age predictor: {np.mean(maes) / const:.3f} (goal: under 1/3). Published: the RSNA Pediatric "
        f"Bone Age Challenge's best entry reached MAE 4.27 months (Halabi et al. 2019) on full-resolution radiographs "
        f"(about 2,000 px a side, 20x our {study.boneage_size} px per side) with sex as an input: not a like-for-like "
        "comparison.",
        "",
    ]
    missing = [f"seed {s}" for s, r in zip(study.boneage_seeds, runs) if r not in done]
    if missing:
        lines += [f"Not run yet (the same command resumes): bone age {', '.join(missing)}.", ""]
    return lines, {"mae": float(np.mean(maes)), "mean_age_mae": const, "seeds": len(done)}
