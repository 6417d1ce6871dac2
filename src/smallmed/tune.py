"""``smallmed tune``: a budgeted, resumable recipe search that never reads the test split (Optuna).

The search (Akiba et al. 2019, Optuna: TPE sampler, Hyperband pruning on validation loss) trains each
trial on the training split and scores it by its best validation loss; where the validation split is
small (under :data:`SMALL_VAL` images) the score is the mean over k folds of train+val instead
(patient-grouped where ids exist). Trials run with ``holdout='val'``: their final metrics read the
validation split, and the test split is dropped before any trial sees it. The study lives in
``OUT/study.db`` (SQLite), so a killed search resumes with the same command (``optuna-dashboard
OUT/study.db`` shows it). Only at the end is the test split read, once per final run: the best recipe and
the search's starting recipe, each with the same seeds, so the report says how much the search itself
adds.

A budget (``budget_s``) bounds the whole command: the search stops, and a running trial is stopped as
pruned (after an epoch, in whichever fold of a cross-validated trial), early enough for the final runs still to
train at their measured cost (the median finished trial); a final run that a trial already trained starts
from its checkpoints and only reads the test split. With ``backend='ray'`` the budget bounds the search only (Ray
Tune's ``time_budget_s``, counted again after a restore), and the final runs come after it. The best
trials' models (or the best trial's fold models) are also averaged on the test split, inference only.

Files: ``study.db``, ``trials.csv``, ``best.yaml`` (a config for ``smallmed train --config``),
``report.md``, ``history.png`` and ``importance.png``, ``trials/`` (one run folder per distinct recipe),
``final/`` (``tuned/s0`` is the final model) and ``ensemble/metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from .config import TrainConfig, dump_yaml, load_yaml
from .errors import SmallmedError
from .fields import check_fields, setting
from .io import atomic_write_csv, atomic_write_text, check_out_dir
from .registry import check_choice
from .schedules.freezing import Callback

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

SMALL_VAL = 200  # validation images below which a trial is scored by k-fold cross-validation
MIN_IMPORTANCE_TRIALS = 5  # parameter importances from fewer finished trials would be noise
# what trials are compared on: the best validation loss without training-only label smoothing (class weights from
# balance='weights' stay in it: balance is not in the default space; a space that searches it compares weighted losses)
VAL_LOSS = "cross-entropy without label smoothing"
STUDY = "smallmed-tune"

# the default space: the strong recipe's knobs; a YAML file (--space) replaces it. A list is a choice,
# {low, high[, log]} a range (int when both ends are ints)
DEFAULT_SPACE: dict = {
    "lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "weight_decay": {"low": 1e-4, "high": 0.2, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "augment": ["flip", "trivial"],
    "mixup": [0.0, 0.2],
    "cutmix": [0.0, 1.0],
    "ema": [0.0, 0.99],
}


@dataclass
class TuneConfig:
    """A search. ``base``: the starting recipe (a TrainConfig's keys), trial 0; ``fixed``: keys of ``base`` taken
    out of the space (``--set``); ``trials`` and/or ``budget_s`` bound the search; ``cv``: ``auto`` (k folds
    when the validation split is small), 0 (the split as given) or a fold count."""

    base: dict
    space: dict = field(default_factory=lambda: dict(DEFAULT_SPACE))
    fixed: tuple[str, ...] = ()
    trials: int = setting(0, ge=0, le=10**5, help="trials to run (0: until the budget)")
    budget_s: float = setting(0.0, ge=0, le=10**7, help="seconds of search (0: until the trials)")
    seed: int = setting(0, ge=0, lt=2**32)
    cv: str = "auto"
    final_seeds: int = setting(
        1, ge=0, le=20, help="seeds of the best and the starting recipe trained on the official split at the end"
    )
    ensemble: int = setting(3, ge=0, le=100, help="the best trials' models averaged on the test split; 0: none")
    pruner: Literal["hyperband", "halving", "none"] = "hyperband"
    backend: Literal["process", "ray"] = setting(
        "process", help="process: trials one after another here; ray: Ray Tune (Optuna search, ASHA) on a cluster"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.trials and not self.budget_s:
            raise SmallmedError("tune needs a bound: --trials N or --budget 60m (or both).")
        if self.cv != "auto" and not (self.cv.isdigit() and (int(self.cv) == 0 or 2 <= int(self.cv) <= 20)):
            raise SmallmedError(f"cv={self.cv!r}: expected auto, 0 or a fold count 2..20.")
        missing = [k for k in self.fixed if k not in self.base]
        if missing:
            raise SmallmedError(f"fixed settings {missing} have no value in the starting recipe.")
        self.space = {k: v for k, v in self.space.items() if k not in self.fixed}
        check_space(self.space)
        check_space_applies(self.space, self.base)
        if not self.space:
            raise SmallmedError("the search space is empty (every key is fixed by --set); nothing to tune.")


def parse_budget(text: str) -> float:
    """Seconds in ``90s``, ``45m``, ``2h`` or a bare number of minutes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise SmallmedError(f"--budget {text!r}: expected a duration such as 90s, 45m or 2h.")
    return float(m.group(1)) * {"s": 1, "m": 60, "": 60, "h": 3600}[m.group(2)]


def check_space(space: dict) -> None:
    """Every key a config field; every value a non-empty list of choices or a ``{low, high[, log]}`` range."""
    names = {f for f in TrainConfig.__dataclass_fields__}
    for k, v in space.items():
        if k not in names:
            check_choice("search space key", k, sorted(names))
        if isinstance(v, list):
            if not v:
                raise SmallmedError(f"search space {k}: an empty list of choices.")
        elif isinstance(v, dict):
            extra = set(v) - {"low", "high", "log"}
            # anything the YAML file holds: lo < hi is only compared once both are known to be numbers
            lo: Any = v.get("low")
            hi: Any = v.get("high")
            ok = not extra and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi))
            if not ok or not lo < hi or (v.get("log") and lo <= 0):
                raise SmallmedError(
                    f"search space {k}: expected a list of choices or {{low, high[, log]}} with "
                    f"low < high (and low > 0 with log); got {v}."
                )
        else:
            raise SmallmedError(f"search space {k}: expected a list of choices or {{low, high[, log]}}; got {v!r}.")
        _check_declared(k, v)


def _check_declared(key: str, value) -> None:
    """Each choice, and both ends of a range, must be a value the config field declares (its type and range)."""
    import dataclasses
    import typing

    from .fields import check_value, coerce, spec_of

    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == key)
    hint = typing.get_type_hints(TrainConfig)[key]
    items = value if isinstance(value, list) else [value["low"], value["high"]]
    for item in items:
        check_value(f"search space {key}", coerce(f"search space {key}", item, hint), spec_of(f))


def check_space_applies(space: dict, base: dict) -> None:
    """Refuse a searched setting that has no effect under every value its condition can take in this search
    (``momentum`` searched while the optimizer is fixed to adamw)."""
    from .config import applies

    start = TrainConfig.from_dict(base)
    for key, (other, values) in applies().items():
        if key not in space:
            continue
        possible = space[other] if isinstance(space.get(other), list) else [getattr(start, other)]
        if not any(p in values for p in possible):
            raise SmallmedError(
                f"search space {key}: has no effect with {other}={possible[0]!r}; it applies with {other} "
                f"{' or '.join(map(repr, values))} (search {other} too, or drop {key})."
            )


def sample(trial, space: dict) -> dict:
    out = {}
    for k, v in space.items():
        if isinstance(v, list):
            out[k] = trial.suggest_categorical(k, v)
        elif isinstance(v["low"], int) and isinstance(v["high"], int):
            out[k] = trial.suggest_int(k, v["low"], v["high"], log=bool(v.get("log")))
        else:
            out[k] = trial.suggest_float(k, float(v["low"]), float(v["high"]), log=bool(v.get("log")))
    return out


def _optuna():
    try:
        import optuna
    except ImportError:
        raise SmallmedError(
            "smallmed tune uses Optuna: pip install 'smallmed[tune]' (or pip install optuna)."
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class _Report(Callback):
    """Reports each epoch's validation loss to the trial and stops it when the pruner says so, or when the
    search's time is up (``deadline``, seconds since the epoch; the trial keeps its last reported loss)."""

    def __init__(self, trial, deadline: float | None = None, epochs: int | None = None) -> None:
        self.trial, self.deadline, self.epochs = trial, deadline, epochs

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        import optuna

        self.trial.report(float(row["val_loss"]), epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned()
        last = self.epochs is not None and epoch + 1 >= self.epochs  # a trained model is kept, late or not
        if self.deadline is not None and time.time() > self.deadline and not last:
            self.trial.set_user_attr("stopped", "budget")
            raise optuna.TrialPruned()


class _Deadline(Callback):
    """Stops a cross-validated trial's fold after an epoch once the search's time is up (the pruner sees the
    folds' running mean, not epochs); the last epoch of the last fold is kept, as a trained model."""

    def __init__(self, trial, deadline: float, epochs: int, last_fold: bool) -> None:
        self.trial, self.deadline, self.epochs, self.last_fold = trial, deadline, epochs, last_fold

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        import optuna

        if time.time() > self.deadline and not (self.last_fold and epoch + 1 >= self.epochs):
            self.trial.set_user_attr("stopped", "budget")
            raise optuna.TrialPruned()


def _recipe_dir(out: Path, params: dict) -> Path:
    key = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return out / "trials" / key


def _folds(tc: TuneConfig, base: TrainConfig) -> int:
    if tc.cv != "auto":
        return int(tc.cv)
    from .train.setup import load_data

    ds = load_data(base)
    n = len(ds.splits["val"])
    return 5 if n < SMALL_VAL else 0


def _objective(tc: TuneConfig, out: Path, folds: int, deadline: float | None = None):
    """The trial: its recipe trained (on each fold), scored by the best validation loss; past ``deadline``
    (the budget less the final runs' measured cost) the trial is stopped as pruned."""
    from .train.cell import run_cell

    def over_budget(trial) -> None:
        if deadline is not None and time.time() > deadline:
            import optuna

            trial.set_user_attr("stopped", "budget")
            raise optuna.TrialPruned()

    def objective(trial) -> float:
        params = sample(trial, tc.space)
        log.info("tune: trial %d: %s", trial.number, ", ".join(f"{k}={_short(v)}" for k, v in params.items()))
        root = _recipe_dir(out, params)
        trial.set_user_attr("run", str(root.relative_to(out)))
        trial.set_user_attr("folds", folds)
        cells = range(folds) if folds else [None]
        losses = []
        for i, k in enumerate(cells):
            over = {"cv_folds": folds, "cv_fold": k} if folds else {}
            run = root / f"fold{k}" if folds else root
            cfg = TrainConfig.from_dict(
                {**tc.base, **params, **over, "holdout": "val", "out": str(run), "progress": False, "figures": False}
            )
            # a run resumed after a kill first replays its finished epochs to the pruner
            cb: Callback | None = None if folds else _Report(trial, deadline, cfg.epochs)
            if folds and deadline is not None:
                cb = _Deadline(trial, deadline, cfg.epochs, last_fold=i == len(cells) - 1)
            if isinstance(cb, _Report) and (run / "history.csv").exists() and not (run / "metrics.json").exists():
                import csv

                for j, row in enumerate(csv.DictReader(open(run / "history.csv"))):
                    cb.on_epoch_end(j, {"val_loss": float(row["val_loss"])})
            m = run_cell(cfg.to_dict(), callbacks=[cb] if cb else [])
            losses.append(float(m["val"]["val_loss"]))
            if folds:  # pruned on the running mean over folds; reported before a budget stop, so the report sees it
                trial.report(sum(losses) / len(losses), i)
                if trial.should_prune():
                    import optuna

                    raise optuna.TrialPruned()
                if i < len(cells) - 1:
                    over_budget(trial)
        return sum(losses) / len(losses)

    return objective


def _study(tc: TuneConfig, out: Path, trial_count: int):
    optuna = _optuna()
    # the sampler is seeded by the number of trials already scored, so a resumed search draws what an
    # uninterrupted one would have drawn
    sampler = optuna.samplers.TPESampler(seed=tc.seed * 100003 + trial_count, n_startup_trials=5)
    pruner = {
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
        "none": lambda: optuna.pruners.NopPruner(),
    }[tc.pruner]()
    return optuna.create_study(
        storage=f"sqlite:///{out / 'study.db'}",
        study_name=STUDY,
        direction="minimize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def _settings_check(tc: TuneConfig, out: Path) -> None:
    """A search folder holds one search: other settings are refused (the study.db would mix them)."""
    want = {
        "base": tc.base,
        "space": tc.space,
        "fixed": list(tc.fixed),
        "seed": tc.seed,
        "cv": tc.cv,
        "pruner": tc.pruner,
        # trials are compared on this loss; a search begun when it was defined otherwise is refused, not mixed in
        "objective": VAL_LOSS,
        **({"backend": tc.backend} if tc.backend != "process" else {}),
    }
    path = out / "tune.json"
    want = json.loads(json.dumps(want, default=str))
    if path.exists():
        have = json.loads(path.read_text())
        if have != want:
            diff = [k for k in want if have.get(k) != want[k]]
            raise SmallmedError(f"{out}: holds a search with other settings ({', '.join(diff)}); choose another --out.")
    else:
        from .io import atomic_write_json

        atomic_write_json(path, want)


def tune(tc: TuneConfig, out: str | Path) -> Path:
    """Run (or resume) the search, then the final runs; returns the report's path."""
    optuna = _optuna()
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    _settings_check(tc, out)
    base = TrainConfig.from_dict({**tc.base, "out": str(out / "base")})
    folds = _folds(tc, base)
    if tc.backend == "ray":
        return _finish(tc, out, _ray_search(tc, out, folds, base), folds)
    log.info(
        "tune: %s on %s; objective: best validation loss%s",
        ", ".join(tc.space),
        base.data,
        f", mean over {folds} folds of train+val" if folds else "",
    )
    study = _study(tc, out, 0)
    # a trial killed mid-run is marked failed and its recipe queued again: its run folder resumes
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs=dict(t.user_attrs), skip_if_exists=False)
    if not study.trials:
        resolved = base.to_dict()
        start = {k: resolved[k] for k in tc.space if _in_space(tc.space[k], resolved[k])}
        # the starting recipe is trial 0 (marked when every searched setting of it lies in the space)
        study.enqueue_trial(start, user_attrs={"start": len(start) == len(tc.space)})
    t0 = time.time()
    # the search's own seconds so far, recorded after each trial: a resumed search neither counts the time the
    # machine was off (a killed trial's duration runs to the resume) nor starts again once its budget is spent
    used = study.user_attrs.get("search_seconds")
    if used is None:  # a search begun before the seconds were recorded
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        used = sum((t.duration.total_seconds() for t in study.trials if t.duration and t.state in done), 0.0)
    while True:
        scored = [t for t in study.trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]
        if tc.trials and len(scored) >= tc.trials:
            break
        deadline = None
        if tc.budget_s:
            # the budget covers the whole command: the search leaves time for the final runs, at the measured
            # cost of a full run (trial 0 always runs: it measures that cost)
            reserve = final_cost(tc, study, folds)
            deadline = t0 + tc.budget_s - used - reserve
            if time.time() >= deadline and scored:
                break
        study = _study(tc, out, len(scored))
        study.optimize(_objective(tc, out, folds, deadline if scored else None), n_trials=1, catch=())
        study.set_user_attr("search_seconds", used + time.time() - t0)
        _write_trials(study, out)
        _log_trial(tc, study, used + time.time() - t0)
    _write_trials(study, out)
    log.info("tune: search done after %.1f min", (used + time.time() - t0) / 60)
    return _finish(tc, out, study, folds)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _log_trial(tc: TuneConfig, study, used_s: float) -> None:
    """One line per trial: how it ended, the best so far, the time used."""
    import optuna

    t = study.trials[-1]
    if t.state == optuna.trial.TrialState.COMPLETE:
        how = f"validation loss {t.value:.4f}"
    elif t.user_attrs.get("stopped") == "budget":
        how = "stopped by the budget"
    else:
        step = "fold" if t.user_attrs.get("folds") else "epoch"
        how = f"pruned after {step} {(t.last_step or 0) + 1}" if t.last_step is not None else t.state.name.lower()
    done = [x for x in study.trials if x.state == optuna.trial.TrialState.COMPLETE]
    best = min(done, key=lambda x: (x.value, x.number)) if done else None
    budget = f" of {tc.budget_s / 60:.0f}" if tc.budget_s else ""
    log.info(
        "tune: trial %d %s; best so far trial %s%s; %.1f%s min used",
        t.number,
        how,
        best.number if best else "-",
        f" ({best.value:.4f})" if best else "",
        used_s / 60,
        budget,
    )


def run_seconds(study, folds: int) -> float:
    """Measured seconds of one full training run: the median over finished trials (a fold model trains on
    (k-1)/k of train+val, about the official training split's size, so a fold counts as one run)."""
    import optuna

    secs = [
        t.duration.total_seconds() / max(folds, 1)
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and t.duration
    ]
    return float(sorted(secs)[len(secs) // 2]) if secs else 0.0


def final_cost(tc: TuneConfig, study, folds: int) -> float:
    """Seconds the end of the search will take: the best and the starting recipe with each final seed, less
    the runs a finished trial already trained (on the official split, with the trials' seed: only their test
    split is left to read), plus two epochs: a trial past the deadline stops at the end of an epoch, and the
    end reads the test split, averages the ensemble and draws the plots."""
    run = run_seconds(study, folds)
    trial_seed = int(tc.base.get("seed", TrainConfig().seed))
    start_is_a_trial = any(t.user_attrs.get("start") for t in study.trials)  # trial 0 ran the starting recipe
    n = 0
    for recipe_is_a_trial in (True, start_is_a_trial):  # the best recipe is always a finished trial
        n += sum(1 for s in range(tc.final_seeds) if folds or not recipe_is_a_trial or s != trial_seed)
    epochs = int(tc.base.get("epochs", TrainConfig().epochs)) or 1
    # one epoch for the trial that ends past the deadline, one for reading the test split, the ensemble, plots
    return n * run + 2 * run / epochs


def _in_space(spec, v) -> bool:
    if isinstance(spec, list):
        return v in spec
    return v is not None and spec["low"] <= v <= spec["high"]


def _write_trials(study, out: Path) -> None:
    rows = []
    for t in study.trials:
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.value is not None else "",
                "seconds": round(t.duration.total_seconds(), 1) if t.duration else "",
                **{f"param_{k}": v for k, v in t.params.items()},
                "run": t.user_attrs.get("run", ""),
            }
        )
    atomic_write_csv(out / "trials.csv", rows)


def _finish(tc: TuneConfig, out: Path, study, folds: int) -> Path:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise SmallmedError(f"{out}: no trial finished within the budget; give it more time or trials.")
    best = min(done, key=lambda t: (t.value, t.number))
    tuned = {**tc.base, **best.params}
    atomic_write_text(out / "best.yaml", dump_yaml(TrainConfig.from_dict({**tuned, "out": "runs/tuned"}).to_dict()))
    start = next((t for t in done if t.user_attrs.get("start")), None)
    t0 = time.time()
    final = _final_runs(tc, out, tuned, study)
    ens = _ensemble(tc, out, done, best, folds)
    _plots(study, out)
    return _report(tc, out, study, best, start, final, folds, ens, time.time() - t0)


def _ensemble(tc: TuneConfig, out: Path, done: list, best, folds: int) -> dict | None:
    """The top trials' models (the best trial's fold models when trials were cross-validated) averaged on the
    test split, read once; its operating point from the validation split. Written to ``ensemble/metrics.json``."""
    if not tc.ensemble:
        return None
    from .io import atomic_write_json
    from .train.ensemble import Ensemble

    if folds:
        members = [out / best.user_attrs["run"] / f"fold{k}" for k in range(folds)]
        what = f"the best trial's {folds} fold models"
    else:
        members = []
        for t in sorted(done, key=lambda t: (t.value, t.number)):
            run = out / t.user_attrs["run"]
            if run not in members and (run / "best.pt").exists():
                members.append(run)
            if len(members) == tc.ensemble:
                break
        what = f"the best {len(members)} trials' models"
        if len(members) < 2:
            return None  # one model is the final run itself
    path = out / "ensemble" / "metrics.json"
    names = [str(m.relative_to(out)) for m in members]
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("members") == names:
            return saved
    # fold models trained on most of the official validation split: no operating point is chosen on it
    m = Ensemble.load(members).evaluate(split="test", operating_point=not folds)
    res = {"members": names, "what": what, "test": json.loads(json.dumps(m, default=float))}
    atomic_write_json(path, res)
    return res


def _plots(study, out: Path) -> None:
    """Optimisation history and setting importances (Optuna's matplotlib views) as PNGs; skipped with a
    log line when matplotlib is missing or there are too few trials for importances."""
    import warnings

    try:
        import matplotlib.pyplot as plt  # Optuna's views draw with pyplot
        from optuna.visualization import matplotlib as ov
    except ImportError as e:
        log.info("tune: no plots (%s)", e)
        return
    from .io import _atomic

    for name, draw in (("history.png", ov.plot_optimization_history), ("importance.png", ov.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw(study)
            fig = cast("Figure", ax.figure)  # an Axes of its own figure, never of a SubFigure
            fig.set_size_inches(7, 4)
            fig.tight_layout()
            _atomic(out / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100))
            plt.close(fig)
        except Exception as e:  # too few finished trials, or one value everywhere
            log.info("tune: %s not drawn (%s)", name, str(e).splitlines()[0][:120] if str(e) else type(e).__name__)


def _final_runs(tc: TuneConfig, out: Path, tuned: dict, study) -> dict:
    """The best recipe and the starting one, same seeds, official train/val split; the test split read once each.
    A run that a finished trial already trained (the same settings and seed on the official split) starts from
    that trial's folder, so only its test split is read; when the search chose the starting recipe, its runs
    serve both rows."""
    from .studies.runner import run_grid
    from .train.cell import config_diffs

    cells: list[TrainConfig] = []
    keys: list[tuple[str, int]] = []
    same = not config_diffs(TrainConfig.from_dict(tc.base).to_dict(), TrainConfig.from_dict(tuned).to_dict())
    for name, recipe in (("tuned", tuned), ("start", tc.base)):
        for s in range(tc.final_seeds):
            if name == "start" and same:
                continue
            cell = TrainConfig.from_dict(
                {**recipe, "seed": s, "out": str(out / "final" / name / f"s{s}"), "progress": False}
            )
            _start_from_trial(out, study, cell)
            cells.append(cell)
            keys.append((name, s))
    results = {k: m for k, m in zip(keys, run_grid(cells) if cells else [])}
    if same:
        results.update({("start", s): results[("tuned", s)] for s in range(tc.final_seeds)})
    return results


def _start_from_trial(out: Path, study, cell: TrainConfig) -> None:
    """Seed the final run's folder with a finished trial's checkpoints when that trial trained exactly this run:
    the copy's config reads the test split, and resuming it trains nothing and evaluates once."""
    import shutil

    import optuna

    from .train.cell import config_diffs

    dest = Path(cell.out or "")
    if dest.exists():
        return  # finished, or seeded before a kill: resumes as it is
    want = cell.to_dict()
    for t in study.trials:
        run = out / str(t.user_attrs.get("run", ""))
        if t.state != optuna.trial.TrialState.COMPLETE or not (run / "metrics.json").exists():
            continue
        # holdout only chooses which split the end reads: the trial read validation, the final run reads test
        if config_diffs(load_yaml(run / "config.yaml"), want, ignore={"holdout"}):
            continue
        tmp = dest.parent / f".{dest.name}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for f in ("history.csv", "last.pt", "best.pt", "train.log"):
            if (run / f).exists():
                shutil.copy2(run / f, tmp / f)
        atomic_write_text(tmp / "config.yaml", dump_yaml(cell.to_dict()))
        with open(tmp / "train.log", "a") as fh:  # the copied trial's log, then what this folder is
            fh.write(f"tune: this final run starts from trial {t.number}'s checkpoints ({run.relative_to(out)})\n")
        tmp.rename(dest)
        log.info("tune: final run %s starts from trial %d's checkpoints (the same settings and seed)", dest, t.number)
        return


def _final_lines(tc: TuneConfig, final: dict) -> list[str]:
    """The final runs' test table (tuned against the starting recipe, the same seeds) and their paired line."""
    from .studies.stats import fmt_ci, fmt_paired, mean_ci, paired

    lines: list[str] = []
    head = next(iter(final.values()))
    metric = "auc" if "auc" in head["test"] else next(k for k in ("mae", "dice", "acc") if k in head["test"])
    seeds = range(tc.final_seeds)
    tv = [final[("tuned", s)]["test"][metric] for s in seeds]
    sv = [final[("start", s)]["test"][metric] for s in seeds]
    lines += [
        "",
        f"## Test split, read once per run ({tc.final_seeds} seed{'s' if tc.final_seeds != 1 else ''} each, "
        "the official train/val split)",
        "",
        f"| recipe | test {metric} per seed | mean [95% t-CI] |",
        "|---|---|---|",
        f"| tuned (best.yaml) | {', '.join(f'{x:.4f}' for x in tv)} | {fmt_ci(mean_ci(tv))} |",
        f"| starting recipe | {', '.join(f'{x:.4f}' for x in sv)} | {fmt_ci(mean_ci(sv))} |",
        "",
        f"Paired by seed, tuned - start: {fmt_paired(paired(tv, sv))}. What the search adds is this "
        "difference; the search chose on validation only. The final model is the run folder `final/tuned/s0`.",
    ]
    if all(final[("tuned", s)] is final[("start", s)] for s in seeds):
        lines += ["", "The search chose the starting recipe: the same runs give both rows."]
    return lines


def _report(
    tc: TuneConfig, out: Path, study, best, start, final: dict, folds: int, ens: dict | None, end_s: float
) -> Path:
    import optuna

    states: dict[str, int] = {}  # trial state name -> count
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    search_s = study.user_attrs.get("search_seconds")
    if search_s is None:  # a search begun before its seconds were recorded (or run by Ray)
        search_s = sum((t.duration.total_seconds() for t in study.trials if t.duration), 0.0)
    stopped = sum(1 for t in study.trials if t.user_attrs.get("stopped") == "budget")
    over_s = search_s + end_s - tc.budget_s
    first = study.trials[0].duration.total_seconds() if study.trials and study.trials[0].duration else 0.0
    exceeded = (
        f", exceeded by {over_s / 60:.1f} min"
        + (
            ": trial 0 always runs to its end (it measures the cost) and alone took longer"
            if first > tc.budget_s
            else ""
        )
        if tc.budget_s and over_s > tc.budget_s * 0.05
        else ""
    )
    lines = [
        f"# smallmed tune: {tc.base.get('data')}",
        "",
        f"Search (Optuna TPE, {tc.pruner} pruning on validation loss, seed {tc.seed}): "
        f"{', '.join(f'{n} {k.lower()}' for k, n in sorted(states.items()))}; "
        f"search time {search_s / 60:.1f} min, final runs and ensemble {end_s / 60:.1f} min"
        + (
            f" (budget {tc.budget_s / 60:.0f} min{exceeded}"
            f"{'; ' + str(stopped) + ' trial(s) stopped by the budget' if stopped else ''})"
            if tc.budget_s
            else ""
        )
        + ". Trials never read the test split.",
        "",
        "Objective: "
        + (
            f"the mean over {folds} folds of train+val of each fold's best validation loss (the "
            f"validation split holds under {SMALL_VAL} images)."
            if folds
            else "the best validation loss on the validation split."
        ),
        "",
        f"Best trial {best.number}: validation loss {best.value:.4f}"
        + (f" (the starting recipe, trial {start.number}: {start.value:.4f})" if start else "")
        + ".",
        "",
        "| setting | best | space |",
        "|---|---|---|",
    ]
    for k, v in best.params.items():
        lines.append(f"| {k} | {v:.4g} | {tc.space[k]} |" if isinstance(v, float) else f"| {k} | {v} | {tc.space[k]} |")
    n_done = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    try:
        if n_done < MIN_IMPORTANCE_TRIALS:
            raise ValueError(f"{n_done} finished trial(s); at least {MIN_IMPORTANCE_TRIALS} are needed to say anything")
        imp = optuna.importance.get_param_importances(study)
        lines += [
            "",
            "Importance of each setting for the validation loss (Optuna's default importance evaluator, over finished trials): "
            + ", ".join(f"{k} {v:.2f}" for k, v in imp.items())
            + ".",
        ]
    except Exception as e:  # too few trials, or one value everywhere
        lines += ["", f"Importances not computed ({str(e).splitlines()[0][:120]})."]
    lines += _budget_lines(tc, study, best, folds, n_done)
    if final:
        lines += _final_lines(tc, final)
    if ens:
        t = ens["test"]
        shown = ", ".join(f"{k} {t[k]:.4f}" for k in ("auc", "acc", "balanced_acc", "mae", "dice") if k in t)
        lines += [
            "",
            f"Ensemble of {ens['what']} (mean of their outputs; members in ensemble/metrics.json), test split "
            f"read once: {shown}.",
        ]
    lines += [
        "",
        f"Reproduce: `smallmed train --config {_shown(out / 'best.yaml')} --out runs/tuned`. Browse the search: "
        f"`optuna-dashboard sqlite:///{_shown(out / 'study.db')}`.",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _shown(path: Path) -> str:
    """A path as the report shows it: relative to the working folder when it lies below it (a report kept in
    a repository names no machine's folders), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _budget_lines(tc: TuneConfig, study, best, folds: int, n_done: int) -> list[str]:
    """What the budget left out: a trial it stopped that was already better on validation, and, when few trials
    finished, how many the budget holds at the measured cost of one."""
    lines: list[str] = []
    for t in study.trials:
        vals = t.intermediate_values
        if t.user_attrs.get("stopped") != "budget" or not vals or min(vals.values()) >= best.value:
            continue
        step = "fold" if folds else "epoch"
        lines += [
            "",
            f"Trial {t.number} ({', '.join(f'{k}={_short(v)}' for k, v in t.params.items())}) was stopped by the "
            f"budget after {step} {max(vals) + 1} with validation loss {min(vals.values()):.4f}, already below the "
            "best finished trial's: a larger budget would likely have chosen it.",
        ]
    per = run_seconds(study, folds) * max(folds, 1)
    if tc.budget_s and n_done < MIN_IMPORTANCE_TRIALS and per:
        lines += [
            "",
            f"Only {n_done} trial(s) finished: a full trial took {per / 60:.1f} min here, so "
            f"{tc.budget_s / 60:.0f} min hold about {tc.budget_s / per:.1f}. A search over {len(tc.space)} "
            f"settings wants 20 or more trials (about {20 * per / 3600:.1f} h here, less where pruning cuts trials "
            "short), or shorter trials: `--set epochs=N` or `--set fraction=0.25`.",
        ]
    return lines


def load_space(path: str | Path) -> dict:
    space = load_yaml(path)
    if not isinstance(space, dict) or not space:
        raise SmallmedError(f"{path}: expected a mapping of config keys to choices or ranges.")
    check_space(space)
    return space


# ----------------------------------------------------------------------------------------------- Ray backend


def distributions(space: dict) -> dict:
    """The search space as Optuna distributions (what :func:`sample` draws from)."""
    import optuna.distributions as od

    out: dict[str, od.BaseDistribution] = {}
    for k, v in space.items():
        if isinstance(v, list):
            out[k] = od.CategoricalDistribution(v)
        elif isinstance(v["low"], int) and isinstance(v["high"], int):
            out[k] = od.IntDistribution(v["low"], v["high"], log=bool(v.get("log")))
        else:
            out[k] = od.FloatDistribution(float(v["low"]), float(v["high"]), log=bool(v.get("log")))
    return out


class _RayReport(Callback):
    """Each epoch's validation loss to Ray Tune (ASHA stops the trial there)."""

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        from ray import tune as rt

        rt.report({"val_loss": float(row["val_loss"])})


def _ray_trial(config: dict, *, base: dict, out: str, folds: int) -> None:
    """One Ray Tune trial: the recipe trained (per fold), the last report its score (best validation loss)."""
    from ray import tune as rt

    from .train.cell import run_cell

    root = _recipe_dir(Path(out), dict(config))
    losses = []
    for k in range(folds) if folds else [None]:
        over = {"cv_folds": folds, "cv_fold": k} if folds else {}
        cfg = TrainConfig.from_dict(
            {
                **base,
                **config,
                **over,
                "holdout": "val",
                "out": str(root / f"fold{k}" if folds else root),
                "progress": False,
                "figures": False,
            }
        )
        m = run_cell(cfg.to_dict(), 1, callbacks=[] if folds else [_RayReport()])
        losses.append(float(m["val"]["val_loss"]))
        if folds:
            rt.report({"val_loss": sum(losses) / len(losses), "done": len(losses) == folds})
    if not folds:
        rt.report({"val_loss": losses[0], "done": True})


def _ray_search(tc: TuneConfig, out: Path, folds: int, base: TrainConfig):
    """The search on Ray Tune (Liaw et al. 2018): Optuna's TPE through ``OptunaSearch``, ASHA early stopping
    (Li et al. 2020), one CPU per trial, the experiment in ``OUT/ray`` (a killed search resumes from it). The
    trials come back as an in-memory Optuna study, so the report, ensemble and plots are the same as locally."""
    import os

    _optuna()
    try:
        import ray
        from ray import tune as rt
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise SmallmedError("tune --backend ray needs Ray Tune: pip install 'smallmed[ray]'.") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    dists = distributions(tc.space)
    resolved = base.to_dict()
    start = {k: resolved[k] for k in tc.space if _in_space(tc.space[k], resolved[k])}
    # Ray runs each trial in its own working folder: every path a trial reads or writes is made absolute
    out = out.resolve()
    clean = {k: v for k, v in tc.base.items() if k != "out"}
    for k in ("data", "data_dir", "weights", "init"):
        v = clean.get(k)
        if isinstance(v, str) and Path(v).exists():
            clean[k] = str(Path(v).resolve())
    trainable = rt.with_resources(rt.with_parameters(_ray_trial, base=clean, out=str(out), folds=folds), {"cpu": 1})
    path = (out / "ray").resolve()
    if rt.Tuner.can_restore(str(path / STUDY)):
        tuner = rt.Tuner.restore(str(path / STUDY), trainable, resume_errored=True)
    else:
        search = OptunaSearch(
            space=dists,
            metric="val_loss",
            mode="min",
            seed=tc.seed,
            points_to_evaluate=[start] if len(start) == len(tc.space) else None,
        )
        max_t = folds or int(resolved["epochs"]) + 1  # +1: the final report of the best loss
        tuner = rt.Tuner(
            trainable,
            tune_config=rt.TuneConfig(
                metric="val_loss",
                mode="min",
                search_alg=search,
                scheduler=ASHAScheduler(max_t=max_t, grace_period=1, reduction_factor=3),
                num_samples=tc.trials or -1,
                time_budget_s=tc.budget_s or None,
            ),
            run_config=rt.RunConfig(storage_path=str(path), name=STUDY, verbose=0),
        )
    study = _as_study(tuner.fit(), tc, out, dists, start)
    _write_trials(study, out)
    return study


def _as_study(grid, tc: TuneConfig, out: Path, dists: dict, start: dict):
    """Ray Tune's results as an in-memory Optuna study: one trial per Ray trial, COMPLETE when it trained to
    the end, PRUNED when ASHA stopped it, FAIL when it raised; its value the best validation loss."""
    import datetime

    import optuna

    study = optuna.create_study(direction="minimize")
    now = datetime.datetime.now()
    for i, r in enumerate(sorted(grid, key=lambda r: r.metrics.get("trial_id", "") if r.metrics else "")):
        params = {k: r.config[k] for k in tc.space if k in r.config}
        hist = r.metrics_dataframe
        losses = [] if hist is None or "val_loss" not in hist else [float(x) for x in hist["val_loss"]]
        done = bool(r.metrics and r.metrics.get("done"))
        state = (
            optuna.trial.TrialState.FAIL
            if r.error or not losses
            else optuna.trial.TrialState.COMPLETE
            if done
            else optuna.trial.TrialState.PRUNED
        )
        secs = float(r.metrics.get("time_total_s", 0.0)) if r.metrics else 0.0
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=i,
                trial_id=i,
                state=state,
                value=losses[-1] if state == optuna.trial.TrialState.COMPLETE else None,
                values=None,
                datetime_start=now - datetime.timedelta(seconds=secs),
                datetime_complete=now,
                params=params,
                distributions={k: dists[k] for k in params},
                user_attrs={"run": str(_recipe_dir(out, params).relative_to(out)), "start": params == start},
                system_attrs={},
                intermediate_values={j: v for j, v in enumerate(losses)},
            )
        )
    return study
