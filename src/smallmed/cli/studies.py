"""``smallmed study NAME`` (generated from the studies registry), ``smallmed tune`` and ``smallmed demo``."""

from __future__ import annotations

import logging

from ..errors import SmallmedError
from ..fields import add_flags

log = logging.getLogger("smallmed")


def add(sub) -> None:
    """The study, search and demo commands."""
    _add_study_parsers(sub)
    tu = sub.add_parser("tune", help="search a recipe on train/val only (Optuna), then test it once against the start")
    tu.add_argument("--data", required=True)
    tu.add_argument("--model", help="default: resnet18")
    tu.add_argument("--config", help="YAML of TrainConfig keys: the starting recipe (trial 0)")
    tu.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="fix a setting: it is not searched")
    tu.add_argument(
        "--space",
        help="YAML search space: key: [choices] or key: {low, high, log} (default: the "
        "strong recipe's lr, weight_decay, label_smoothing, augment, mixup, cutmix, ema)",
    )
    tu.add_argument("--trials", type=int, default=0, help="scored trials to reach")
    tu.add_argument(
        "--budget",
        help="time for the whole command, e.g. 90s, 45m, 2h (counted over resumes; the search leaves the final "
        "runs their measured cost)",
    )
    tu.add_argument("--seed", type=int, default=0)
    tu.add_argument("--cv", default="auto", help="auto (5 folds of train+val when val < 200 images), 0, or folds")
    tu.add_argument(
        "--final-seeds",
        type=int,
        default=1,
        help="seeds of the best and the starting recipe trained at the end (3 or more: a paired interval)",
    )
    tu.add_argument("--ensemble", type=int, default=3, help="the best K trials' models averaged on test (0: none)")
    tu.add_argument("--pruner", choices=("hyperband", "halving", "none"), default="hyperband")
    tu.add_argument(
        "--backend",
        choices=("process", "ray"),
        default="process",
        help="ray: Ray Tune (Optuna search, ASHA) on the cluster at RAY_ADDRESS, else a local one",
    )
    tu.add_argument("--out", required=True)
    tu.set_defaults(func=cmd_tune)

    dm = sub.add_parser("demo", help="the main job on the shipped default data")
    dm.add_argument("--out", default="runs/demo")
    dm.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    dm.add_argument("--workers", type=int, default=1, help="parallel processes")
    dm.set_defaults(func=cmd_demo)


def _add_study_parsers(sub) -> None:
    """``smallmed study NAME`` for every registered study: its presets, and a flag per settings field typed from
    its hint, with the help the study registered."""
    from ..studies import get_study, study_names

    st = sub.add_parser("study", help="run a paper's experiment as a resumable study")
    ssub = st.add_subparsers(dest="study", required=True)
    for name in study_names():
        entry = get_study(name)
        p = ssub.add_parser(name, help=entry.summary)
        p.add_argument("--preset", choices=tuple(entry.presets), default=entry.default)
        p.add_argument("--out", default=f"runs/study-{name}")
        p.add_argument(
            "--fresh", action="store_true", help="delete the study folder and start over (also when settings changed)"
        )
        p.add_argument(
            "--log",
            nargs="+",
            choices=("tensorboard", "mlflow"),
            default=[],
            help="mirror every run to TensorBoard and/or MLflow (the study as a parent run, one nested run per cell)"
            if entry.tracked
            else "not for this study: it trains in a loop of its own, with no run folders to mirror",
        )
        p.add_argument("--mlflow-uri", help="MLflow tracking server (default: MLFLOW_TRACKING_URI, else OUT/mlflow.db)")
        if entry.parallel:
            p.add_argument("--workers", type=int, default=1, help="parallel processes on this machine")
            p.add_argument("--backend", choices=("process", "ray"), default="process")
        fields = add_flags(p, entry.settings, help=entry.help)
        p.set_defaults(func=cmd_study, fields=fields)


def cmd_study(a) -> int:
    from ..studies import run_study

    changes = {k: getattr(a, k) for k in a.fields if getattr(a, k) is not None}
    extra = {"workers": a.workers, "backend": a.backend} if hasattr(a, "workers") else {}
    report = run_study(
        a.study, a.preset, out=a.out, fresh=a.fresh, log=tuple(a.log), mlflow_uri=a.mlflow_uri, **extra, **changes
    )
    print(f"report: {report}")
    return 0


def cmd_tune(a) -> int:
    from ..config import TrainConfig, load_yaml, parse_set
    from ..tune import DEFAULT_SPACE, TuneConfig, load_space, parse_budget, tune

    sets = parse_set(a.set or [])
    base = {
        "recipe": "strong",
        "model": "resnet18",
        **(load_yaml(a.config) if a.config else {}),
        "data": a.data,
        **({"model": a.model} if a.model else {}),
        **sets,
    }
    TrainConfig.from_dict(base)  # the starting recipe is checked before anything runs
    tc = TuneConfig(
        base=base,
        space=load_space(a.space) if a.space else dict(DEFAULT_SPACE),
        fixed=tuple(sets),
        trials=a.trials,
        budget_s=parse_budget(a.budget) if a.budget else 0.0,
        seed=a.seed,
        cv=a.cv,
        final_seeds=a.final_seeds,
        ensemble=a.ensemble,
        pruner=a.pruner,
        backend=a.backend,
    )
    print(f"report: {tune(tc, a.out)}")
    return 0


def cmd_demo(a) -> int:
    from ..demo import run_demo

    if a.workers < 1:
        raise SmallmedError(f"--workers {a.workers}: expected at least 1.")
    run_demo(out=a.out, fresh=a.fresh, workers=a.workers)
    return 0
