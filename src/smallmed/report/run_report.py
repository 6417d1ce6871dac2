"""``report.md`` for one run, built only from the files in its folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from ..errors import SmallmedError


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` from ``config.yaml``, ``metrics.json`` and ``history.csv``.

    Example:
        >>> write_run_report("runs/r18")   # doctest: +SKIP
        PosixPath('runs/r18/report.md')
    """
    from ..train.checkpoint import atomic_write_text

    run_dir = Path(run_dir)
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        m = json.loads((run_dir / "metrics.json").read_text())
        with open(run_dir / "history.csv", newline="") as f:
            hist = list(csv.DictReader(f))
    except FileNotFoundError as e:
        raise SmallmedError(f"{run_dir}: {Path(e.filename).name} missing; is this a finished run?") from None
    t, d = m["test"], m["data"]
    lines = [
        f"# {cfg['model']} on {d['name']}",
        "",
        f"Data: `{d['source']}` ({d['task']}, classes: {', '.join(d['classes'])}), input {d['image_size']} px, "
        f"normalisation `{d['normalize']}`, {m['train_images']} training images (fraction {cfg['fraction']}), "
        f"seed {cfg['seed']}, device {m['device']}.",
        "",
        "## Test split (best epoch by validation loss)",
        "",
        "| metric | value (interval: 1000 bootstrap resamples of the test images) |",
        "|---|---|",
    ]
    fpr_keys = [k for k in t if k.startswith("tpr_at_fpr_") and not k.endswith("per_class")]
    ci = t.get("ci95", {})
    for k in ("auc", "acc", "balanced_acc", *fpr_keys, "loss", "n"):
        key = "tpr_at_fpr" if k == fpr_keys[0] else k
        band = f" (95% bootstrap CI {ci[key][0]:.4f}-{ci[key][1]:.4f})" if key in ci else ""
        lines.append(f"| {k} | {_fmt(t[k])}{band} |")
    if len(t.get("auc_per_class", [])) > 1:
        lines.append(f"| AUC per class | {', '.join(f'{c}: {v:.4f}' for c, v in zip(d['classes'], t['auc_per_class']))} |")
    lines += [
        "",
        f"Best epoch {m['best_epoch']} of {m['epochs']}; trainable parameters {m['trainable_params']:,} of "
        f"{m['total_params']:,}; variance of per-epoch validation loss {m['val_loss_variance']:.3g}; "
        f"training time {m['wall_seconds']:.0f} s.",
        "",
        "## Epochs",
        "",
        "| epoch | lr | train loss | val loss | val AUC | val acc | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in hist:
        lines.append(f"| {r['epoch']} | {float(r['lr']):.2g} | {float(r['train_loss']):.4f} | {float(r['val_loss']):.4f} "
                     f"| {float(r['val_auc']):.4f} | {float(r['val_acc']):.4f} | {float(r['seconds']):.1f} |")
    lines += ["", "![loss curves](loss_curves.png)", "", "![test ROC](roc_test.png)", "",
              f"Command: `smallmed train --config {run_dir / 'config.yaml'}` reproduces this run.", ""]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out
