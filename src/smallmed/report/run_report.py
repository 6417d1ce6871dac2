"""``report.md`` for one run, built only from the files in its folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from ..errors import SmallmedError


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _metric_lines(t: dict, d: dict) -> list[str]:
    """One table line per scalar test metric, with its bootstrap interval where there is one."""
    lines = []
    ci = t.get("ci95", {})
    fpr_keys = [k for k in t if k.startswith("tpr_at_fpr_") and not k.endswith("per_class")]
    for k, v in t.items():
        if isinstance(v, (dict, list)) or k == "tpr_at_fpr":
            continue
        key = "tpr_at_fpr" if fpr_keys and k == fpr_keys[0] else k
        band = f" (95% bootstrap CI {ci[key][0]:.4f}-{ci[key][1]:.4f})" if key in ci and None not in ci[key] else ""
        lines.append(f"| {k} | {_fmt(v)}{band} |")
    if len(t.get("auc_per_class", [])) > 1:
        lines.append(
            f"| AUC per class | {', '.join(f'{c}: {v:.4f}' for c, v in zip(d['classes'], t['auc_per_class']))} |"
        )
    return lines


_FIGURES = (
    ("loss_curves.png", "loss curves"),
    ("roc_test.png", "test ROC"),
    ("reliability_test.png", "test reliability"),
    ("regression_test.png", "test: predicted vs true, residuals"),
    ("confusion_test.png", "test confusion matrix"),
)


def _figures(run_dir: Path) -> list[str]:
    """Markdown for the figures the run wrote, in a fixed order."""
    plots = [f"![{alt}]({name})" for name, alt in _FIGURES if (run_dir / name).exists()]
    if (run_dir / "errors_test.png").exists():
        plots.append(
            "![most confidently wrong test images](errors_test.png)\n\nThe test images this model gets most "
            "confidently wrong at its operating point, with occlusion maps (rows in `errors_test.csv`)."
        )
    if (run_dir / "overlays").is_dir():
        plots += [f"![{p.stem}](overlays/{p.name})" for p in sorted((run_dir / "overlays").glob("*.png"))]
    return plots


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` from ``config.yaml``, ``metrics.json`` and ``history.csv``.

    Example:
        >>> write_run_report("runs/r18")   # doctest: +SKIP
        PosixPath('runs/r18/report.md')
    """
    from ..io import atomic_write_text

    run_dir = Path(run_dir)
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        m = json.loads((run_dir / "metrics.json").read_text())
        with open(run_dir / "history.csv", newline="") as f:
            hist = list(csv.DictReader(f))
    except FileNotFoundError as e:
        raise SmallmedError(f"{run_dir}: {Path(e.filename).name} missing; is this a finished run?") from None
    t, d = m["test"], m["data"]
    classes = f", classes: {', '.join(d['classes'])}" if d.get("classes") else ""
    lines = [
        f"# {cfg['model']} on {d['name']}",
        "",
        f"Data: `{d['source']}` ({d['task']}{classes}), input {d['image_size']} px, "
        f"normalisation `{d['normalize']}`, {m['train_images']} training images (fraction {cfg['fraction']}), "
        f"seed {cfg['seed']}, device {m['device']}.",
        "",
        "## Test split (best epoch by validation loss)",
        "",
        "| metric | value (interval: 1000 bootstrap resamples of the test images) |",
        "|---|---|",
    ]
    lines += _metric_lines(t, d)
    lines += clinical_lines(t, d.get("classes") or [])
    cols = [c for c in (hist[0] if hist else {}) if c not in ("epoch", "trainable_params")]
    lines += [
        "",
        f"Best epoch {m['best_epoch']} of {m['epochs']}; trainable parameters {m['trainable_params']:,} of "
        f"{m['total_params']:,}; variance of per-epoch validation loss {m['val_loss_variance']:.3g}; "
        f"training time {m['wall_seconds']:.0f} s.",
        "",
        "## Epochs",
        "",
        "| epoch | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for r in hist:
        vals = [
            f"{float(r[c]):.2g}" if c == "lr" else f"{float(r[c]):.4f}" if r[c] not in ("", None) else "" for c in cols
        ]
        lines.append(f"| {r['epoch']} | " + " | ".join(vals) + " |")
    plots = _figures(run_dir)
    lines += [
        "",
        *sum(([p, ""] for p in plots), []),
        f"Command: `smallmed train --config {run_dir / 'config.yaml'}` reproduces this run.",
        "",
    ]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out


def _op_line(name: str, op: dict) -> str:
    ci = op.get("ci95", {})

    def num(v) -> str:
        return "n/a" if v is None or v != v else f"{v:.3f}"  # nan is stored as null

    def one(k):
        lo, hi = ci.get(k) or [None, None]
        return f"{num(op.get(k))} [{num(lo)}, {num(hi)}]"

    return (
        f"| {name} | {op['threshold']:.4g} | {one('sensitivity')} | {one('specificity')} | {one('ppv')} | "
        f"{one('npv')} |"
    )


def clinical_lines(t: dict, classes: list[str]) -> list[str]:
    """The operating point (threshold fixed on validation) and calibration of a classification run."""
    ops = (
        [("positive class", t["operating_point"])]
        if t.get("operating_point")
        else [(c, op) for c, op in zip(classes, t.get("operating_point_per_class") or []) if op]
    )
    if not ops:
        return []
    rule = ops[0][1]["rule"]
    lines = [
        "",
        f"## Operating point (threshold chosen on the validation split by `{rule}`, then fixed)",
        "",
        "Test rates at that threshold, with 95% bootstrap intervals over test images. (TPR@FPR above is read "
        "off the test ROC itself: an optimistic, test-chosen point.)",
        "",
        "| class | threshold | sensitivity | specificity | PPV | NPV |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_op_line(c, op) for c, op in ops]
    lines += [
        "",
        f"Calibration: Brier score {t['brier']:.4f}, ECE {t['ece']:.4f} ({t['ece_bins']} equal-mass bins"
        + (", mean one-vs-rest" if "ece_per_class" in t else "")
        + ").",
    ]
    cal = t.get("calibration")
    if cal:
        u = cal["uncalibrated"]
        lines[-1] += (
            f" After temperature scaling (T = {cal['temperature']:.3f}, fitted on validation); before it: "
            f"Brier {u['brier']:.4f}, ECE {u['ece']:.4f}."
        )
    return lines
