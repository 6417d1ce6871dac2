"""The ``smallmed`` command. Each subcommand is a few lines over a public function."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
from typing import NoReturn

from . import __version__
from .errors import SmallmedError
from .fields import add_flags, coerce

log = logging.getLogger("smallmed")


class _Parser(argparse.ArgumentParser):
    """No prefix matching (``--head`` must never become ``--head-epochs``); subcommands inherit this class."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """A usage error is one sentence too (``error: smallmed train: ...``, exit 2), with ``--help`` named."""
        raise SmallmedError(f"{self.prog}: {message} (see {self.prog} --help).")


def _add_study_parsers(sub) -> None:
    """``smallmed study NAME`` for every registered study: its presets, and a flag per settings field typed from
    its hint, with the help the study registered."""
    from .studies import get_study, study_names

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
        if entry.parallel:
            p.add_argument("--workers", type=int, default=1, help="parallel processes on this machine")
            p.add_argument("--backend", choices=("process", "ray"), default="process")
        fields = add_flags(p, entry.settings, help=entry.help)
        p.set_defaults(func=cmd_study, fields=fields)


def cmd_study(a) -> int:
    from .studies import run_study

    changes = {k: getattr(a, k) for k in a.fields if getattr(a, k) is not None}
    extra = {"workers": a.workers, "backend": a.backend} if hasattr(a, "workers") else {}
    report = run_study(a.study, a.preset, out=a.out, fresh=a.fresh, **extra, **changes)
    print(f"report: {report}")
    return 0


def _help(name: str) -> str | None:
    """Help text read from the registries (the methods and their papers)."""
    if name == "method":
        from .methods import get_method, method_names

        return "fine-tuning method: " + "; ".join(f"{n}: {get_method(n).paper}" for n in method_names())
    return None


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size``), generated from its declaration."""
    from .config import TrainConfig

    add_flags(p, TrainConfig, help={"method": _help("method")})


def _train_config(a: argparse.Namespace):
    from .config import TrainConfig

    flags = {
        f.name: getattr(a, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name != "extra" and getattr(a, f.name, None) is not None
    }
    return TrainConfig.from_sources(yaml_path=a.config, flags=flags, sets=a.set)


HEADLINES = {
    "regression": ("mae", "rmse", "acc", "qwk"),
    "ordinal": ("mae_rounded", "acc", "qwk"),
    "segmentation": ("dice", "iou"),
    "keypoints": ("px_error", "frac_error", "pck_0.05"),
}


def summary_line(metrics: dict) -> str:
    """One line of a finished run's test metrics, whatever its task."""
    t = metrics["test"]
    keys = HEADLINES.get(metrics.get("task"), ("auc", "acc", "tpr_at_fpr"))
    parts = []
    for k in keys:
        v = t.get(k)
        if v is None:
            continue
        ci = t.get("ci95", {}).get(k)
        parts.append(f"{k} {v:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else ""))
    return f"test {'  '.join(parts)}  best epoch {metrics['best_epoch']}  trainable {metrics['trainable_params']:,}"


def cmd_train(a) -> int:
    from .train import fit, resume

    if a.resume:
        from .config import TrainConfig

        given = [
            f.name
            for f in dataclasses.fields(TrainConfig)
            if f.name not in ("extra", "progress") and getattr(a, f.name, None) is not None
        ]
        other = [n for n in given if n != "epochs"] + (["--config"] if a.config else []) + (["--set"] if a.set else [])
        if other:
            raise SmallmedError(
                f"--resume continues a run with its own settings; {', '.join('--' + n.replace('_', '-') for n in other)} "
                "cannot change them (only --epochs can extend a run); start a new run with --out to change settings."
            )
        metrics = resume(a.resume, epochs=None if a.epochs is None else coerce("epochs", a.epochs, int))
    else:
        metrics = fit(_train_config(a))
    if metrics:
        print(summary_line(metrics))
    return 0


def cmd_evaluate(a) -> int:
    from .train.inference import evaluate_run

    if len(a.run_dirs) == 1 and a.tta == "none":
        m = evaluate_run(a.run_dirs[0], data=a.data, split=a.split, data_dir=a.data_dir, device=a.device)
    else:
        from .train.ensemble import Ensemble

        m = Ensemble.load(a.run_dirs, tta=a.tta, device=a.device).evaluate(a.data, a.split, a.data_dir)
    print(json.dumps(m, indent=2, default=float))
    return 0


def _runs_then_images(items: list[str]) -> tuple[list[str], list[str]]:
    """``RUN [RUN ...] IMAGE [IMAGE ...]``: the leading run folders (holding best.pt), then the image files."""
    from pathlib import Path

    k = 0
    while k < len(items) and Path(items[k]).is_dir() and (Path(items[k]) / "best.pt").exists():
        k += 1
    if k == 0:
        what = "run folder not found" if not Path(items[0]).exists() else "not a run folder (no best.pt)"
        raise SmallmedError(f"{items[0]}: {what}; expected RUN [RUN ...] IMAGE [IMAGE ...].")
    if k == len(items):
        raise SmallmedError("no images given after the run folder(s); expected RUN [RUN ...] IMAGE [IMAGE ...].")
    return items[:k], items[k:]


def cmd_export(a) -> int:
    from .export import export_onnx, save_folded
    from .train.inference import load_run

    if not (a.onnx or a.folded or a.adapter):
        raise SmallmedError("export: name at least one of --onnx FILE, --folded FILE, --adapter FILE.")
    if a.low_rank and not a.onnx:
        raise SmallmedError("--low-rank shapes the ONNX graph: give --onnx FILE with it.")
    run = load_run(a.run_dir)
    if a.onnx:
        r = export_onnx(run, a.onnx, low_rank=a.low_rank)
        print(
            f"{r['path']}: ONNX (dynamic batch); ONNX Runtime matches PyTorch within {r['max_abs_diff']:.1e} "
            f"(tolerance {r['atol']:g}, batches {r['batch_sizes_checked']})"
        )
    if a.folded:
        print(f"{save_folded(run, a.folded)}: plain PyTorch checkpoint (load with create_model(..., weights=FILE))")
    if a.adapter:
        from .adapters import save_adapter

        path = save_adapter(run.model, a.adapter)
        print(f"{path}: adapter, {path.stat().st_size / 1024:.0f} KB (load with smallmed.load_adapter(base, FILE))")
    return 0


def cmd_data_audit(a) -> int:
    from .data import load_dataset
    from .data.audit import audit, fix_duplicates, summary_lines

    if a.fix and not a.out:
        raise SmallmedError(
            "--fix writes a cleaned copy: give its path with --out FILE.npz (the original is never changed)."
        )
    if a.out and not a.fix:
        raise SmallmedError(f"--out {a.out} is where --fix writes its cleaned copy: add --fix drop or --fix merge.")
    ds = load_dataset(a.data, data_dir=a.data_dir)
    findings = audit(ds, near=None if a.near < 0 else a.near)
    if a.fix:
        removed = fix_duplicates(ds, findings, a.fix, a.out)
        findings["fixed"] = {"how": a.fix, "out": a.out, "removed": removed}
    if a.json:
        print(json.dumps(findings))
    else:
        print("\n".join(summary_lines(findings)))
        if a.fix:
            print(f"wrote {a.out}: removed " + ", ".join(f"{k} {v}" for k, v in findings["fixed"]["removed"].items()))
    return 0


def cmd_predict(a) -> int:
    from .train.ensemble import predict_images

    runs, images = _runs_then_images(a.items)
    rows = predict_images(runs, images, device=a.device, tta=a.tta)
    w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return 0


def _at_least(a, **minimum) -> None:
    """Refuse a numeric flag below its minimum, naming the flag as typed."""
    for name, lo in minimum.items():
        v = getattr(a, name, None)
        if v is not None and v < lo:
            raise SmallmedError(f"--{name.replace('_', '-')} {v}: expected at least {lo}.")


def cmd_data_stats(a) -> int:
    from .data import dataset_stats, load_dataset
    from .data.stats import format_stats

    _at_least(a, image_size=4)
    st = dataset_stats(load_dataset(a.data, data_dir=a.data_dir, image_size=a.image_size))
    print(json.dumps(st, indent=2) if a.json else format_stats(st))
    return 0


def cmd_data_fetch(a) -> int:
    from .data import fetch

    print(fetch(a.name, size=a.size, dest=a.dest, force=a.force))
    return 0


def cmd_models(a) -> int:
    from .models import MODELS

    for name in MODELS.names():
        e = MODELS.get(name)
        extra = f"  weights: {', '.join(e.pretrained)}" if e.pretrained else ""
        print(f"{name:<20} norm: {'|'.join(e.norms):<8} {e.description}{extra}")
    return 0


def cmd_env(a) -> int:
    import platform

    import numpy
    import torch
    import torchvision

    info = {
        "smallmed": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
    }
    for mod in ("timm", "sklearn", "pydicom", "ray"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = "not installed"
    for k, v in info.items():
        print(f"{k:<12} {v}")
    return 0


def cmd_ra2_check(a) -> int:
    from .ra2 import read_scores, totals

    t = read_scores(a.table)
    print("Patient_ID,Overall_Tol,Overall_erosion,Overall_narrowing")
    for pid, s in totals(t).items():
        print(",".join([pid, *("" if v is None else f"{v:g}" for v in s.values())]))
    return 0


def cmd_ra2_train(a) -> int:
    from pathlib import Path

    from .ra2.pipeline import RA2Config, find_images, landmark_mean_shapes, train_pipeline

    shapes = landmark_mean_shapes(find_images(a.images), a.landmarks)
    locs = {k: v for k, v in (("hand", a.localiser_hands), ("foot", a.localiser_feet)) if v}
    cfg = RA2Config(
        folds=a.folds,
        epochs=a.epochs,
        crop=a.crop,
        model=a.model,
        lr=a.lr,
        seed=a.seed,
        init=str(Path(a.init).resolve()) if a.init else None,
        localiser_epochs=a.localiser_epochs,
        localisers={k: str(Path(v).resolve()) for k, v in locs.items()},
        mean_shape=shapes,
    )
    info = train_pipeline(a.images, a.scores, a.out, landmarks=a.landmarks, cfg=cfg)
    print(f"{len(info['patients'])} patients, {info['crops']} joint crops, {len(info['folds'])} fold(s) -> {a.out}")
    for name, v in info["cv"].items():
        print(
            f"{name:<14} held-out MAE {v['mae']:.3f} over {v['n']} joints (predicting 0 everywhere: {v['mae_predict_zero']:.3f})"
        )
    return 0


def cmd_ra2_predict(a) -> int:
    from .ra2.pipeline import predict_pipeline

    if a.overlay:
        from .io import check_out_dir

        check_out_dir(a.overlay, "--overlay")
    table, notes = predict_pipeline(
        a.run_dir, a.images, a.out, landmarks=a.landmarks, joints_out=a.joints_out, overlay=a.overlay, device=a.device
    )
    for n in notes:
        print(f"warning: {n}", file=sys.stderr)
    print(f"{len(table.patients)} patient(s) -> {a.out}")
    return 0


def cmd_ra2_localiser(a) -> int:
    from pathlib import Path

    from .config import TrainConfig
    from .ra2.localise import hand_keypoints_npz
    from .train import fit

    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        raise SmallmedError(f"{out}: folder exists and is not empty; choose another --out.")
    data = hand_keypoints_npz(a.data, out.parent / f".{out.name}-hand10.npz")
    if a.kind == "keypoint-rcnn":
        from .ra2.detector import DetectorConfig, train_detector

        m = train_detector(
            DetectorConfig(
                data=str(data),
                epochs=a.epochs,
                image_size=a.image_size,
                seed=a.seed,
                weights_backbone=a.weights_backbone,
            ),
            out,
        )
        t = m["test"]
        print(
            f"test px_error {t['px_error']:.3f}  frac_error {t['frac_error']:.4f}  pck_0.05 {t['pck_0.05']:.3f}  "
            f"best epoch {m['best_epoch']}"
        )
        return 0
    if a.weights_backbone:
        raise SmallmedError("--weights-backbone applies to --kind keypoint-rcnn; the U-Net trains from scratch.")
    m = fit(
        TrainConfig(
            data=str(data),
            model="unet",
            epochs=a.epochs,
            batch_size=16,
            image_size=a.image_size,
            augment="scale=0.9-1.1,rotate=10,translate=0.05",
            seed=a.seed,
            progress=False,
            out=str(out),
        )
    )
    print(summary_line(m))
    return 0


def cmd_ra2_evaluate(a) -> int:
    from .ra2 import challenge_metrics, read_scores

    weights = None
    if a.weights:
        try:
            weights = {int(k): float(v) for k, v in json.loads(a.weights).items()}
        except (ValueError, AttributeError, TypeError):
            raise SmallmedError(f'--weights {a.weights!r}: expected JSON like \'{{"0": 1, "1": 4}}\'.') from None
    m = challenge_metrics(read_scores(a.pred, require_all=False), read_scores(a.truth), weights=weights)
    if a.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"patients {m['patients']} (without prediction: {m['patients_without_prediction']})")
    for k in ("sc1_weighted_mae_total", "mae_total", "sc2_weighted_rmse_narrowing", "sc3_weighted_rmse_erosion"):
        if k in m:
            print(f"{k:<30} {m[k]:.4f}")
    worst = sorted(m["per_joint"].items(), key=lambda kv: -kv[1]["mae"])[:10]
    print("largest per-joint MAE: " + ", ".join(f"{c} {v['mae']:.2f}" for c, v in worst))
    return 0


def _any_model(name: str, size: int, channels: int, stem: str = "auto", num_classes: int = 2):
    """A smallmed model, or any torchvision classification model by name (random init)."""
    import difflib

    import torchvision

    from .models import MODELS, create_model

    if name in MODELS:
        return create_model(name, num_classes, in_chans=channels, input_size=size, stem=stem)
    tv = torchvision.models.list_models(module=torchvision.models)
    if name in tv:
        return torchvision.models.get_model(name, weights=None)
    close = difflib.get_close_matches(name, sorted({*MODELS, *tv}), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise SmallmedError(
        f"Unknown model {name!r}.{hint} Expected a smallmed model ({', '.join(MODELS)}) "
        "or a torchvision classification model name."
    )


def cmd_rf(a) -> int:
    import json

    from .analysis.receptive_field import format_table, receptive_field

    rows = receptive_field(_any_model(a.model, a.input, a.channels, a.stem), (a.channels, a.input, a.input))
    if a.json:
        print(json.dumps([r.as_dict() for r in rows], indent=1))
    else:
        print(format_table(rows))
        last = rows[-1]
        print(
            f"\n{a.model} at {a.input} px: receptive field {last.r[0]:g} px, effective stride {last.S[0]:g}, "
            f"effective padding {last.P[0]:g} at {last.name}"
            + ("" if all(r.aligned for r in rows) else "; MISALIGNED merges: see the 'aligned' column")
        )
    return 0


def cmd_cost(a) -> int:
    import copy

    from .analysis.cost import cost
    from .reparam.factorized import factorize

    plain = _any_model(a.model, a.input, a.channels)
    model = copy.deepcopy(plain)
    if a.conv != "conv":
        print(factorize(model, a.conv, rank_ratio=a.rank_ratio if a.conv != "dpc" else None))
    c = cost(model, (a.channels, a.input, a.input), baseline=plain, batch=a.batch)
    b = c["baseline"]
    print(f"{'':<10} {'params':>12} {'GMACs':>9} {'images/s':>10}")
    print(f"{'conv':<10} {b['params']:>12,} {b['gmacs']:>9.3f} {b['images_per_s']:>10.1f}")
    print(f"{a.conv:<10} {c['params']:>12,} {c['gmacs']:>9.3f} {c['images_per_s']:>10.1f}")
    print(
        f"ratio: params {c['param_ratio']:.3f}x, speed {c['speed_ratio']:.2f}x (eval, batch {a.batch}, same process; "
        "FLOPs = 2 x MACs)"
    )
    return 0


def cmd_explain(a) -> int:
    from .explain import explain_run

    _at_least(a, n=1, patch=1, stride=1)
    written = explain_run(a.run_dir, a.images, split=a.split, n=a.n, patch=a.patch, stride=a.stride, out=a.out)
    for path in written:
        print(path)
    return 0


def cmd_tune(a) -> int:
    from .config import TrainConfig, load_yaml, parse_set
    from .tune import DEFAULT_SPACE, TuneConfig, load_space, parse_budget, tune

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
        pruner=a.pruner,
    )
    print(f"report: {tune(tc, a.out)}")
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(out=a.out, fresh=a.fresh, workers=a.workers)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="smallmed", description=__doc__)
    p.add_argument("--version", action="version", version=f"smallmed {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--debug", action="store_true", help="re-raise internal errors with their traceback")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train and evaluate a model; writes a run folder")
    t.add_argument("--config", help="YAML file of TrainConfig keys (flags override it)")
    t.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override any config key last")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="metrics of a run's best model, or of several runs as an ensemble")
    e.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN",
        help="one run folder, or several (an ensemble: the mean of their predictions)",
    )
    e.add_argument("--tta", choices=("none", "flip"), default="none", help="flip: also average over the mirrored image")
    e.add_argument("--data", help="another dataset with the same classes (default: the run's)")
    e.add_argument("--data-dir")
    e.add_argument("--split", default="test")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser(
        "predict", help="class probabilities (or scores, for a regression run) for image files, as CSV on stdout"
    )
    pr.add_argument(
        "items",
        nargs="+",
        metavar="RUN_OR_IMAGE",
        help="RUN [RUN ...] IMAGE [IMAGE ...]: several runs are an ensemble (the mean of their predictions)",
    )
    pr.add_argument(
        "--tta", choices=("none", "flip"), default="none", help="flip: also average over the mirrored image"
    )
    pr.add_argument("--device", default="auto")
    pr.set_defaults(func=cmd_predict)

    x = sub.add_parser(
        "export", help="a run's model as ONNX (checked with ONNX Runtime), a plain checkpoint or an adapter"
    )
    x.add_argument("run_dir")
    x.add_argument("--onnx", metavar="FILE", help="ONNX graph with a dynamic batch dimension")
    x.add_argument("--low-rank", action="store_true", help="with --onnx: a pruned SVD run as two thin convs per layer")
    x.add_argument("--folded", metavar="FILE", help="plain PyTorch checkpoint (SVD folded, LoRA merged)")
    x.add_argument("--adapter", metavar="FILE", help="only what the method trained, as safetensors")
    x.set_defaults(func=cmd_export)

    d = sub.add_parser("data", help="inspect or download data")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("stats", help="counts, image size, intensity mean/std/skewness/kurtosis")
    s.add_argument("data")
    s.add_argument("--data-dir")
    s.add_argument("--image-size", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data_stats)
    au = dsub.add_parser(
        "audit", help="duplicates within and across splits, patient leakage, class balance, constant images"
    )
    au.add_argument("data")
    au.add_argument("--data-dir")
    au.add_argument("--near", type=int, default=4, help="near duplicates: perceptual-hash distance in bits (-1: skip)")
    au.add_argument("--fix", choices=("drop", "merge"), help="write a cleaned copy without the exact duplicates")
    au.add_argument("--out", help="with --fix: the cleaned .npz to write")
    au.add_argument("--json", action="store_true", help="print the findings as JSON")
    au.set_defaults(func=cmd_data_audit)
    f = dsub.add_parser("fetch", help="download an official MedMNIST file and verify its MD5")
    f.add_argument("name")
    f.add_argument("--size", type=int, choices=(28, 64, 128, 224))
    f.add_argument("--dest")
    f.add_argument("--force", action="store_true")
    f.set_defaults(func=cmd_data_fetch)

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
    tu.add_argument("--budget", help="search time, e.g. 90s, 45m, 2h (counted over resumes)")
    tu.add_argument("--seed", type=int, default=0)
    tu.add_argument("--cv", default="auto", help="auto (5 folds of train+val when val < 200 images), 0, or folds")
    tu.add_argument("--final-seeds", type=int, default=3, help="seeds of the final tuned and starting runs")
    tu.add_argument("--pruner", choices=("hyperband", "halving", "none"), default="hyperband")
    tu.add_argument("--out", required=True)
    tu.set_defaults(func=cmd_tune)

    rf = sub.add_parser("rf", help="receptive field of every conv/pool layer (any smallmed or torchvision model)")
    rf.add_argument("model")
    rf.add_argument("--input", type=int, default=224, help="input side in pixels")
    rf.add_argument("--channels", type=int, default=3)
    rf.add_argument("--stem", default="auto", help="smallmed models: auto (small below 64 px), small or imagenet")
    rf.add_argument("--json", action="store_true", help="rows as JSON instead of a table")
    rf.set_defaults(func=cmd_rf)

    co = sub.add_parser("cost", help="params, GMACs and speed of a model with cheap convs vs plain convs")
    co.add_argument("model")
    co.add_argument("--conv", default="sfconv", help="conv | sfconv | fconv | fconvsn | dpc")
    co.add_argument("--rank-ratio", type=float, default=0.125)
    co.add_argument("--input", type=int, default=224)
    co.add_argument("--channels", type=int, default=3)
    co.add_argument("--batch", type=int, default=8)
    co.set_defaults(func=cmd_cost)

    ex = sub.add_parser("explain", help="occlusion sensitivity maps of a trained run (PNG overlays)")
    ex.add_argument("run_dir")
    ex.add_argument("images", nargs="*", help="image files (default: --n images of the run's --split)")
    ex.add_argument("--split", default="test")
    ex.add_argument("--n", type=int, default=4)
    ex.add_argument("--patch", type=int, help="occluding square in pixels (default: image side / 8)")
    ex.add_argument("--stride", type=int, help="default: patch / 2")
    ex.add_argument("--out", help="default: RUN_DIR/explain")
    ex.set_defaults(func=cmd_explain)

    ra = sub.add_parser("ra2", help="rheumatoid-arthritis joint damage (Sharp/van der Heijde, RA2 DREAM Challenge)")
    rsub = ra.add_subparsers(dest="ra2_command", required=True)
    rc = rsub.add_parser("check", help="validate a score table in the challenge's format and print its totals")
    rc.add_argument("table")
    rc.set_defaults(func=cmd_ra2_check)
    re_ = rsub.add_parser("evaluate", help="the challenge's three metrics and per-joint errors of a predicted table")
    re_.add_argument("pred", help="predicted scores (challenge CSV)")
    re_.add_argument("truth", help="true scores (challenge CSV)")
    re_.add_argument("--weights", help="JSON mapping score value -> weight (default: inverse frequency in the truth)")
    re_.add_argument("--json", action="store_true", help="print everything as JSON")
    re_.set_defaults(func=cmd_ra2_evaluate)
    rt = rsub.add_parser("train", help="train the three scorers (CV ensembles) on your radiographs and score table")
    rt.add_argument("--images", required=True, help="folder of PATIENT-LH/RH/LF/RF.<jpg|png|dcm>")
    rt.add_argument("--scores", required=True, help="score table in the challenge's CSV format")
    rt.add_argument("--landmarks", required=True, help="folder of PATIENT-LIMB.json labelme joint points")
    rt.add_argument("--folds", type=int, default=5)
    rt.add_argument("--epochs", type=int, default=10)
    rt.add_argument("--crop", type=int, default=64, help="scorer input side in px")
    rt.add_argument(
        "--model", default="densenet_ra2_v2", help="densenet_ra2_v2 (default) or densenet_ra2_v1, or any model"
    )
    rt.add_argument("--lr", type=float, default=1e-3)
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument(
        "--init",
        help="start every scorer from this run folder (e.g. a knee- or bone-age-trained run) "
        "or weights file; its head is replaced",
    )
    rt.add_argument("--localiser-hands", help="a keypoint run (smallmed ra2 localiser) used for hands at predict time")
    rt.add_argument(
        "--localiser-epochs",
        type=int,
        default=30,
        help="epochs of the hand / foot localisers trained on "
        "the group's own landmarks where no --localiser-* is given (0: place joints by the mean shape)",
    )
    rt.add_argument("--localiser-feet", help="a keypoint run used for feet at predict time")
    rt.add_argument("--out", required=True)
    rt.set_defaults(func=cmd_ra2_train)
    rp = rsub.add_parser("predict", help="score table (challenge CSV) for every patient in a folder of radiographs")
    rp.add_argument("run_dir")
    rp.add_argument("images", help="folder of PATIENT-LH/RH/LF/RF.<jpg|png|dcm>")
    rp.add_argument("--out", required=True, help="CSV to write")
    rp.add_argument("--joints-out", help="JSON of the joint points used per image (labelme shapes, original pixels)")
    rp.add_argument("--landmarks", help="use these labelme points instead of locating joints")
    rp.add_argument("--overlay", help="folder for one PNG per radiograph: its joints, crop boxes and per-joint scores")
    rp.add_argument("--device", default="cpu")
    rp.set_defaults(func=cmd_ra2_predict)
    rl = rsub.add_parser("localiser", help="train a hand joint localiser from a 21-point hand keypoint .npz")
    rl.add_argument("--data", required=True, help="npz with images, keypoints_xyv, keypoint_names (21-point hands)")
    rl.add_argument(
        "--kind",
        choices=("unet", "keypoint-rcnn"),
        default="unet",
        help="heatmap U-Net (default) or torchvision's Keypoint R-CNN (the seed's detector family)",
    )
    rl.add_argument(
        "--weights-backbone",
        choices=("imagenet",),
        help="keypoint-rcnn: start the ResNet from torchvision's ImageNet weights (where present)",
    )
    rl.add_argument("--epochs", type=int, default=20)
    rl.add_argument("--image-size", type=int, default=96)
    rl.add_argument("--seed", type=int, default=0)
    rl.add_argument("--out", required=True)
    rl.set_defaults(func=cmd_ra2_localiser)

    sub.add_parser("models", help="list registered models").set_defaults(func=cmd_models)
    sub.add_parser("env", help="versions, for bug reports").set_defaults(func=cmd_env)
    dm = sub.add_parser("demo", help="the main job on the shipped default data")
    dm.add_argument("--out", default="runs/demo")
    dm.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    dm.add_argument("--workers", type=int, default=1, help="parallel processes")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SmallmedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    quiet = args.quiet or os.environ.get("RANK", "0") != "0"  # one voice under torchrun
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except SmallmedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args, argv), file=sys.stderr)
        return 130
    except Exception as e:  # the safety net: one sentence and a log, never a raw traceback
        if args.debug:
            raise
        return _internal_error(args, e)


def _interrupted(args, argv) -> str:
    """What to type to go on after Ctrl-C: the real run folder, or the same study command."""
    import shlex

    if args.command == "train":
        run = getattr(args, "resume", None) or getattr(args, "out", None)
        if run:
            return f"interrupted; resume with `smallmed train --resume {run}`"
        return "interrupted; resume with `smallmed train --resume RUN_DIR` (the folder printed under runs/)"
    if args.command in ("study", "demo"):
        cmd = " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
        return f"interrupted; finished runs are kept: run `smallmed {cmd}` again to resume"
    return "interrupted"


def _internal_error(args, e: Exception) -> int:
    import time
    import traceback

    from .data.paths import cache_dir

    command = " ".join(str(v) for k, v in vars(args).items() if k.endswith("command") and v) or "smallmed"
    log_dir = cache_dir() / "logs"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(e)))
        where = str(path)
    except OSError:
        where = "nowhere (the log folder is not writable; rerun with --debug)"
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(
        f"error: internal error in {command}: {message}; the full traceback is in {where}; please report it.",
        file=sys.stderr,
    )
    return 3


if __name__ == "__main__":
    sys.exit(main())
