"""``smallmed train``, ``evaluate``, ``predict`` and ``export``: a run folder made, read and shipped."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
from typing import TYPE_CHECKING, cast

from ..errors import SmallmedError
from ..fields import add_flags, coerce
from ._common import check_outputs, summary_line

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("smallmed")


def add(sub) -> None:
    """The run commands."""
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


def _help(name: str) -> str | None:
    """Help text read from the registries (the methods and their papers)."""
    if name == "method":
        from ..methods import get_method, method_names

        return "fine-tuning method: " + "; ".join(f"{n}: {get_method(n).paper}" for n in method_names())
    return None


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size``), generated from its declaration."""
    from ..config import TrainConfig

    add_flags(p, TrainConfig, help={"method": _help("method")})


def _train_config(a: argparse.Namespace):
    from ..config import TrainConfig

    flags = {
        f.name: getattr(a, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name != "extra" and getattr(a, f.name, None) is not None
    }
    return TrainConfig.from_sources(yaml_path=a.config, flags=flags, sets=a.set)


def cmd_train(a) -> int:
    from ..train import fit, resume

    if a.resume:
        from ..config import TrainConfig

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
    from ..train.inference import evaluate_run

    if len(a.run_dirs) == 1 and a.tta == "none":
        m = evaluate_run(a.run_dirs[0], data=a.data, split=a.split, data_dir=a.data_dir, device=a.device)
    else:
        from ..train.ensemble import Ensemble

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


def cmd_predict(a) -> int:
    from ..train.ensemble import predict_images

    runs, images = _runs_then_images(a.items)
    # a list of str is a list of paths; list's invariance is all that mypy objects to
    rows = predict_images(runs, cast("list[str | Path]", images), device=a.device, tta=a.tta)
    w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return 0


def cmd_export(a) -> int:
    from ..export import export_onnx, save_folded
    from ..train.inference import load_run

    if not (a.onnx or a.folded or a.adapter):
        raise SmallmedError("export: name at least one of --onnx FILE, --folded FILE, --adapter FILE.")
    if a.low_rank and not a.onnx:
        raise SmallmedError("--low-rank shapes the ONNX graph: give --onnx FILE with it.")
    check_outputs([a.run_dir], onnx=a.onnx, folded=a.folded, adapter=a.adapter)
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
        from ..adapters import save_adapter

        path = save_adapter(run.model, a.adapter)
        print(f"{path}: adapter, {path.stat().st_size / 1024:.0f} KB (load with smallmed.load_adapter(base, FILE))")
    return 0
