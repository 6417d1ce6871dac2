"""``smallmed study medmnist``: the recipes measured against the public MedMNIST baselines.

Each 2-D MedMNIST set named (the shipped PneumoniaMNIST and RetinaMNIST, or any other a user fetches) is
trained from scratch at its native 28 px with the ``baseline`` recipe (the first build's: Adam, plateau,
flip) and the ``strong`` recipe (AdamW, warmup + cosine, label smoothing, TrivialAugmentWide, MixUp/CutMix,
an EMA of the weights), the same seeds for both; optionally ``smallmed tune`` searches from the strong
recipe within a budget on train/val only and its best recipe is trained with the same seeds. The report
puts test AUC and accuracy (mean with a t-interval over seeds, paired differences by seed) beside
MedMNIST v2 (Yang et al. 2023) and MedMNIST+ (Doerrich et al. 2025), with each row's command and CPU time.
The test split is read once per final run; epochs and recipes are fixed before any test number exists.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from ..config import TrainConfig, load_yaml
from ..errors import SmallmedError
from ..fields import Checked, setting
from ..io import atomic_write_csv, atomic_write_text
from .base import register_study
from .bn import data_name
from .runner import run_grid
from .stats import RATE, comparison_figure, fmt_ci, fmt_paired, mean_ci, paired

RECIPES = ("baseline", "strong")

# MedMNIST v2 (Yang et al. 2023, Table 3, test AUC / accuracy) and MedMNIST+ (Doerrich et al. 2025, best
# model at 28 px); None: not reported for that set here
PUBLISHED: dict[str, list[tuple[str, float | None, float | None]]] = {
    "pneumoniamnist": [
        ("MedMNIST v2 ResNet-18 (28)", 0.944, 0.854),
        ("MedMNIST v2 ResNet-18 (224)", 0.956, 0.864),
        ("MedMNIST v2 ResNet-50 (28)", 0.949, 0.854),
        ("MedMNIST v2 ResNet-50 (224)", 0.962, 0.884),
        ("MedMNIST v2 auto-sklearn", 0.942, 0.855),
        ("MedMNIST v2 AutoKeras", 0.947, 0.878),
        ("MedMNIST v2 Google AutoML Vision", 0.991, 0.946),
        ("MedMNIST+ best at 28 px", 0.973, None),
    ],
    "retinamnist": [
        ("MedMNIST v2 ResNet-18 (28)", 0.717, 0.524),
        ("MedMNIST v2 ResNet-18 (224)", 0.710, 0.493),
        ("MedMNIST v2 ResNet-50 (28)", 0.726, 0.528),
        ("MedMNIST v2 ResNet-50 (224)", 0.716, 0.511),
        ("MedMNIST v2 auto-sklearn", 0.690, 0.515),
        ("MedMNIST v2 AutoKeras", 0.719, 0.503),
        ("MedMNIST v2 Google AutoML Vision", 0.750, 0.531),
        ("MedMNIST+ best at 28 px", 0.754, 0.543),
    ],
}
# the goals of issue 21 (test AUC, accuracy at 28 px)
GOALS = {"pneumoniamnist": (0.98, 0.92), "retinamnist": (0.77, 0.57)}


@dataclass
class MedMNISTStudy(Checked):
    data: tuple[str, ...] = setting(("retinamnist", "pneumoniamnist"), help="MedMNIST sets (2-D), each its own table")
    model: str = "resnet18"
    recipes: tuple[str, ...] = setting(RECIPES, choices=RECIPES, help="the named recipes trained with every seed")
    seeds: tuple[int, ...] = setting((0, 1, 2), ge=0, lt=2**32)
    epochs: tuple[int, ...] = setting((30, 12), ge=1, le=10**4, help="per data set, in its order (one: every set)")
    max_train: int = setting(0, ge=0, help="training images per set (a nested stratified fraction); 0: all")
    tune_budget_m: float = setting(0.0, ge=0, le=10**5, help="minutes of smallmed tune per set from strong; 0: none")
    data_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.epochs) not in (1, len(self.data)):
            raise SmallmedError(
                f"epochs={list(self.epochs)}: expected one value, or one per data set ({len(self.data)})."
            )


PRESETS = {
    # a short check of the machinery (2 CPU cores, about 3 minutes): 300 training images, 2 epochs
    "quick": MedMNISTStudy(data=("retinamnist",), seeds=(0,), epochs=(2,), max_train=300),
    # the benchmark table (2 CPU cores, measured: ResNet-18 at 28 px, ~14 s per epoch on RetinaMNIST's 1,080
    # training images, ~54 s on PneumoniaMNIST's 4,708; about 100 minutes for both recipes x 3 seeds): epochs
    # fixed from that budget before any run
    "full": MedMNISTStudy(),
    # the same with a 60-minute search per set from the strong recipe, then its recipe's seeds (measured on 2
    # cores: RetinaMNIST's small validation split makes every trial 5-fold cross-validation, 39 min for trial 0;
    # PneumoniaMNIST held 5 trials; the six seeds cost what strong's do, about 57 CPU-minutes)
    "tuned": MedMNISTStudy(tune_budget_m=60.0),
}


def _epochs(study: MedMNISTStudy, i: int) -> int:
    return study.epochs[i] if len(study.epochs) > 1 else study.epochs[0]


def _fraction(study: MedMNISTStudy, data: str) -> float:
    if not study.max_train:
        return 1.0
    from ..data import load_dataset

    n = len(load_dataset(data, data_dir=study.data_dir).splits["train"].labels)
    return min(1.0, study.max_train / n)


def recipe_config(study: MedMNISTStudy, data: str, recipe: str, epochs: int, fraction: float) -> dict:
    """The settings of one row (without seed and folder): what ``smallmed train`` gets."""
    return TrainConfig(
        data=data,
        data_dir=study.data_dir,
        model=study.model,
        recipe=cast(Literal["baseline", "strong"], recipe),  # one of RECIPES: the study checks its choices
        epochs=epochs,
        fraction=fraction,
        progress=False,
    ).to_dict()


def _command(data: str, recipe: str, epochs: int, model: str, fraction: float) -> str:
    frac = f" --fraction {fraction:.4g}" if fraction < 1 else ""
    return f"smallmed train --data {data} --model {model} --recipe {recipe} --epochs {epochs}{frac} --seed S"


def cells(study: MedMNISTStudy, out: Path) -> list[TrainConfig]:
    grid = []
    for i, data in enumerate(study.data):
        fraction = _fraction(study, data)
        for recipe in study.recipes:
            base = recipe_config(study, data, recipe, _epochs(study, i), fraction)
            for s in study.seeds:
                grid.append(
                    TrainConfig.from_dict(
                        {**base, "seed": s, "out": str(out / "runs" / data_name(data) / recipe / f"s{s}")}
                    )
                )
    return grid


def _search_config(study: MedMNISTStudy, data: str, i: int):
    """The search of one set: from the strong recipe, the study's budget, no final runs of its own."""
    from ..tune import TuneConfig

    base = recipe_config(study, data, "strong", _epochs(study, i), _fraction(study, data))
    base.pop("out", None)
    return TuneConfig(base=base, budget_s=study.tune_budget_m * 60, seed=0, final_seeds=0)


def _tune(study: MedMNISTStudy, out: Path, data: str, i: int) -> list[TrainConfig]:
    """The search from the strong recipe on train/val only; returns its best recipe's runs, one per seed."""
    from ..tune import tune

    folder = out / "tune" / data_name(data)
    if not (folder / "best.yaml").exists():  # a finished search is not resumed
        tune(_search_config(study, data, i), folder)
    tuned = load_yaml(folder / "best.yaml")
    return [
        TrainConfig.from_dict({**tuned, "seed": s, "out": str(out / "runs" / data_name(data) / "tuned" / f"s{s}")})
        for s in study.seeds
    ]


def run_medmnist_study(
    study: MedMNISTStudy, out: str | Path, *, workers: int = 1, backend: str = "process", fresh: bool = False
) -> Path:
    """Run (or resume) the table's runs, the report rewritten after each stage; returns its path."""
    out = Path(out).resolve()
    from ..data import resolve_data

    for d in study.data:
        resolve_data(d, study.data_dir)
    grid = cells(study, out)  # configs are checked before anything runs
    from .settings import check_settings

    check_settings(out, study, fresh=fresh)
    t0 = time.time()
    # every set's first seed first, so a study cut short already has each row once
    order = sorted(range(len(grid)), key=lambda j: (grid[j].seed != study.seeds[0], j))
    run_grid([grid[j] for j in order], workers=workers, backend=backend)
    report = write_report(study, out, time.time() - t0)
    if study.tune_budget_m:
        # every set's search first (each its budget of the whole machine), then the tuned recipes' seeds
        finals = []
        for i, data in enumerate(study.data):
            finals += _tune(study, out, data, i)
            report = write_report(study, out, time.time() - t0)
        order = sorted(range(len(finals)), key=lambda j: (finals[j].seed != study.seeds[0], j))
        run_grid([finals[j] for j in order], workers=workers, backend=backend)
        report = write_report(study, out, time.time() - t0)
    return report


def _runs(out: Path, data: str, recipe: str, seeds) -> list[dict | None]:
    res: list[dict | None] = []  # None: the seed's run has not finished
    for s in seeds:
        p = out / "runs" / data_name(data) / recipe / f"s{s}" / "metrics.json"
        res.append(json.loads(p.read_text()) if p.exists() else None)
    return res


def _epoch_seconds(out: Path, data: str, recipe: str, seeds) -> str:
    """Median seconds of one epoch over the finished runs (robust to a run paused or sharing the CPU), with
    the device where any run was not on the CPU; empty when no run has finished."""
    import csv

    secs, devices = [], set()
    for s in seeds:
        run = out / "runs" / data_name(data) / recipe / f"s{s}"
        if (run / "history.csv").exists() and (run / "metrics.json").exists():
            secs += [float(r["seconds"]) for r in csv.DictReader(open(run / "history.csv")) if r.get("seconds")]
            devices.add(str(json.loads((run / "metrics.json").read_text()).get("device", "cpu")).split(":")[0])
    if not secs:
        return ""
    where = "" if devices <= {"cpu"} else f" ({', '.join(sorted(devices))})"
    return f"{statistics.median(secs):.{0 if where == '' else 1}f}{where}"


def _short(text: str) -> str:
    """A searched value from trials.csv as the report shows it (floats to 3 significant digits)."""
    try:
        return f"{float(text):.3g}"
    except ValueError:
        return text


def _tune_lines(out: Path, name: str, budget_m: float) -> list[str]:
    """What the search of one set did, from its ``trials.csv``: trials by state, minutes of the finished
    trials, the chosen trial and how its recipe differs from the start; a search without ``best.yaml`` is
    still under way (or not begun)."""
    import csv

    folder = out / "tune" / name
    rows = list(csv.DictReader(open(folder / "trials.csv"))) if (folder / "trials.csv").exists() else []
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"].lower()] = states.get(r["state"].lower(), 0) + 1
    counted = f"{len(rows)} trial(s) ({', '.join(f'{states[k]} {k}' for k in sorted(states))})"
    if not (folder / "best.yaml").exists():
        if not rows:
            return [f"- tuned: the search ({budget_m:g} min) has not begun."]
        return [f"- tuned: the search ({budget_m:g} min) is under way: {counted} so far."]
    # a trial killed and queued again is marked failed: its seconds include the time the machine was off
    minutes = sum(float(r["seconds"]) for r in rows if r["seconds"] and r["state"] in ("COMPLETE", "PRUNED")) / 60
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"]]
    best = min(done, key=lambda r: (float(r["value"]), int(r["number"])))
    start = rows[0]  # trial 0 is the starting recipe (queued again under a later number if it was killed)
    changed = [f"{k[6:]}={_short(best[k])}" for k in best if k.startswith("param_") and best[k] != start[k]]
    chose = "the starting recipe (strong)" if not changed else f"{', '.join(changed)} (the rest as strong)"
    folds = len(list((folder / best["run"]).glob("fold*")))  # a finished cross-validated trial ran every fold
    objective = f"mean validation loss over {folds} folds of train+val" if folds else "validation loss"
    lines = [
        f"- tuned: `smallmed tune` from the strong recipe, budget {budget_m:g} min, on train/val only "
        f"(`tune/{name}/`, paths relative to the study folder): {counted}, {minutes:.0f} min in finished or "
        f"pruned trials; chose trial {best['number']}, {chose}: {objective} {float(best['value']):.4f}."
    ]
    ens = folder / "ensemble" / "metrics.json"
    if ens.exists():  # the search's own ensemble (inference only), not a row: one search, no seeds
        e = json.loads(ens.read_text())
        t = e["test"]
        lines.append(
            f"- The search's ensemble, {e['what']} averaged (inference only, test split read once): test AUC "
            f"{t['auc']:.4f}, accuracy {t['acc']:.4f}, balanced accuracy {t['balanced_acc']:.4f}."
        )
    return lines


def write_report(study: MedMNISTStudy, out: Path, seconds: float) -> Path:
    rows: list[dict] = []
    lines = [
        "# Recipes against the public MedMNIST baselines",
        "",
        f"{study.model}, from scratch (no ImageNet weights offline), each set at its own image size (28 px for the MedMNIST files), every "
        "training image"
        + (f" (at most {study.max_train})" if study.max_train else "")
        + "; the official validation split "
        "picks the best epoch (validation loss; the EMA weights where the recipe keeps them) and the binary "
        "operating point; the official test split is read once per run. Accuracy is of the most probable class "
        "(as MedMNIST reports it); AUC is the mean one-vs-rest AUC for several classes. Seeds "
        f"{', '.join(map(str, study.seeds))} for every recipe; cells: mean with a 95 % t-interval over seeds "
        "(fewer than 3 seeds: the mean only). Epochs were fixed from the measured time per epoch before any run. "
        f"Wall time of this invocation {seconds / 60:.1f} min (finished runs are reused).",
        "",
    ]
    recipes = list(study.recipes) + (["tuned"] if study.tune_budget_m else [])
    for i, data in enumerate(study.data):
        lines += _set_section(study, out, i, data, recipes, rows)
    if rows:
        atomic_write_csv(out / "results.csv", rows)
    if comparison_figure(
        rows, group="data", arm="recipe", metric="test_auc", path=out / "comparison.png", xlabel="test AUC"
    ):
        lines += ["", "![the arms compared](comparison.png)", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _spread_line(done: dict[str, list[dict | None]], recipes: list[str]) -> list[str]:
    """Whether the tuned recipe's mean test AUC lies within (or above) the seed spread of the best recipe
    found by hand (the hand recipe with the higher mean test AUC: a statement, no choice rests on it)."""
    hand = [r for r in recipes if r != "tuned" and sum(1 for m in done[r] if m) >= 3]
    tuned = [m["test"]["auc"] for m in done.get("tuned", []) if m]
    if not hand or not tuned:
        return []
    best = max(hand, key=lambda r: statistics.mean(m["test"]["auc"] for m in done[r] if m))
    aucs = [m["test"]["auc"] for m in done[best] if m]
    ci = mean_ci(aucs, bounds=RATE)
    lo, hi = min(aucs), max(aucs)
    t = statistics.mean(tuned)
    where = "above" if t > hi else "within" if t >= lo else "below"
    inside = "inside" if ci["lo"] <= t <= ci["hi"] else "outside"
    return [
        f"- Search vs hand: tuned mean test AUC {t:.4f} ({len(tuned)} seed(s)) is {where} the seed range "
        f"[{lo:.4f}, {hi:.4f}] of the best hand recipe ({best}, {fmt_ci(ci)}; {inside} its interval)."
    ]


def _set_section(study: MedMNISTStudy, out: Path, i: int, data: str, recipes: list[str], rows: list) -> list[str]:
    """One data set's table (recipes, then the published rows), its paired lines and its goal line; the
    finished runs are appended to ``rows``."""
    name = data_name(data)
    epochs, fraction = _epochs(study, i), _fraction(study, data)
    lines = [
        f"## {name}",
        "",
        "| recipe | test AUC | test accuracy | balanced accuracy | runs | s / epoch | command |",
        "|---|---|---|---|---|---|---|",
    ]
    done: dict[str, list[dict | None]] = {}
    for recipe in recipes:
        ms = done[recipe] = _runs(out, data, recipe, study.seeds)
        got = [m for m in ms if m]
        if not got:
            lines.append(f"| {recipe} | not run yet | | | 0/{len(ms)} | | |")
            continue
        auc, acc, bal = (mean_ci([m["test"][k] for m in got], bounds=RATE) for k in ("auc", "acc", "balanced_acc"))
        sec = _epoch_seconds(out, data, recipe, study.seeds)
        cmd = (
            _command(data, recipe, epochs, study.model, fraction)
            if recipe != "tuned"
            else f"smallmed train --config tune/{name}/best.yaml --seed S"
        )
        lines.append(
            f"| {recipe} | {fmt_ci(auc)} | {fmt_ci(acc)} | {fmt_ci(bal)} | {len(got)}/{len(ms)} | {sec} | `{cmd}` |"
        )
        rows += [
            {
                "data": name,
                "recipe": recipe,
                "seed": s,
                "test_auc": m["test"]["auc"],
                "test_acc": m["test"]["acc"],
                "test_balanced_acc": m["test"]["balanced_acc"],
                "best_epoch": m["best_epoch"],
                "epochs": m["epochs"],
                "wall_seconds": m["wall_seconds"],
            }
            for s, m in zip(study.seeds, ms)
            if m
        ]
    for label, pub_auc, pub_acc in PUBLISHED.get(name, []):
        shown = ["" if v is None else f"{v:.3f}" for v in (pub_auc, pub_acc)]
        lines.append(f"| {label} | {shown[0]} | {shown[1]} | | published | | |")
    lines.append("")
    ref = recipes[0]  # paired by seed against the first recipe (the baseline when present); tuned also
    for recipe, against in [(r, ref) for r in recipes[1:]] + (  # against strong, where its search started
        [("tuned", "strong")] if "tuned" in recipes and "strong" in recipes and ref != "strong" else []
    ):
        pairs = [(a, b) for a, b in zip(done[recipe], done[against]) if a and b]
        for metric, label in (("auc", "AUC"), ("acc", "accuracy")) if pairs else ():
            pr = paired([a["test"][metric] for a, _ in pairs], [b["test"][metric] for _, b in pairs])
            lines.append(f"- {recipe} - {against}, test {label}, paired by seed: {fmt_paired(pr)}.")
    if "tuned" in recipes:
        lines += _tune_lines(out, name, study.tune_budget_m) + _spread_line(done, recipes)
    goal = GOALS.get(name)
    if goal:  # each recipe on its own: picking the best by its test numbers would be a choice made on test
        parts = []
        for r in recipes:
            finished = [m for m in done[r] if m]
            if finished:
                auc_m = statistics.mean(m["test"]["auc"] for m in finished)
                acc_m = statistics.mean(m["test"]["acc"] for m in finished)
                ok = auc_m >= goal[0] and acc_m >= goal[1]
                parts.append(f"{r} {auc_m:.4f} / {acc_m:.4f} ({'met' if ok else 'not met'})")
        lines.append(f"- Goal (mean test AUC >= {goal[0]}, accuracy >= {goal[1]}): " + "; ".join(parts) + ".")
    return lines + [""]


register_study(
    "medmnist",
    summary="the baseline and strong recipes (and a tuned one) against MedMNIST v2 and MedMNIST+",
    presets=PRESETS,
    run=run_medmnist_study,
    parallel=True,
    help={"data": "MedMNIST 2-D sets by name (fetched ones too) or .npz files", "model": "a registered model"},
)
