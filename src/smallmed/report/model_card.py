"""``model_card.md`` for one run (Mitchell et al. 2019, "Model Cards for Model Reporting"), from its folder's files."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .run_report import clinical_lines

OFFICIAL = "the data's own (official) split"
NOT_FOR = (
    "It is a research model trained on a small dataset. It is not a medical device, has not been "
    "validated prospectively or on data from another site, scanner or population, and must not be used "
    "to diagnose, triage or treat patients."
)


def write_model_card(run_dir: str | Path) -> Path:
    """Write ``run_dir/model_card.md``: data, intended use, metrics with intervals, operating point,
    calibration, limitations and how to reproduce the run."""
    from ..io import atomic_write_text

    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    m = json.loads((run_dir / "metrics.json").read_text())
    d, t = m["data"], m["test"]
    counts = d.get("counts") or {}
    lines = [
        f"# Model card: {cfg['model']} on {d['name']}",
        "",
        "## Model",
        "",
        f"- Architecture `{cfg['model']}`, fine-tuning method `{cfg['method']}`"
        + (f", weights from `{cfg['weights']}`" if cfg.get("weights") else ", trained from random initialisation")
        + f"; {m['trainable_params']:,} of {m['total_params']:,} parameters trained"
        + (f"; {m['stored_bytes'] / 1e3:.0f} KB to store per task" if m.get("stored_bytes") else "")
        + ".",
        f"- Input: {d['image_size']} px, normalisation `{d['normalize']}`; output: {d['task']}"
        + (f" over {', '.join(d['classes'])}" if d.get("classes") else "")
        + ".",
        f"- Trained {m['epochs']} epochs (best by validation loss: {m['best_epoch']}) on {m['device']}, seed {cfg['seed']}.",
        "",
        "## Data",
        "",
        f"- Source: `{d['source']}`; split: {d.get('split') or OFFICIAL}.",
    ]
    for s, c in counts.items():
        cls = c.get("classes")
        lines.append(
            f"- {s}: {c['images']} images"
            + (" (" + ", ".join(f"{k} {v}" for k, v in cls.items()) + ")" if cls else "")
            + (f", fraction {cfg['fraction']} of the training split" if s == "train" and cfg["fraction"] < 1 else "")
        )
    lines += [
        "",
        "## Intended use",
        "",
        f"Research on {d['name']}: comparing training methods on a small labelled dataset, and as a starting "
        "point for further fine-tuning and external validation. " + NOT_FOR,
        "",
        "## Metrics (test split, best epoch)",
        "",
        "| metric | value | 95% bootstrap interval over test images |",
        "|---|---|---|",
    ]
    ci = t.get("ci95", {})
    for k in ("auc", "acc", "balanced_acc", "tpr_at_fpr", "mae", "rmse", "dice", "brier", "ece"):
        if isinstance(t.get(k), (int, float)):
            lo_hi = ci.get(k)
            lines.append(f"| {k} | {t[k]:.4f} | " + (f"{lo_hi[0]:.4f} - {lo_hi[1]:.4f}" if lo_hi else "-") + " |")
    lines += clinical_lines(t, d.get("classes") or [])
    lines += [
        "",
        "## Limitations",
        "",
        f"- {counts.get('test', {}).get('images', '?')} test images: read every number with its interval.",
        "- One training run (one seed); a comparison of methods needs several seeds or a paired test over the same "
        "test images (`smallmed study ...`).",
        "- TPR at a fixed FPR is read off the test ROC itself; the operating point above was fixed on validation "
        "and is the one to quote.",
        "- No external validation: performance on another hospital, device or population is unknown.",
        "",
        "## Reproduce",
        "",
        f"`smallmed train --config {run_dir / 'config.yaml'}` (smallmed, torch {m.get('versions', {}).get('torch', '?')}).",
        "",
    ]
    out = run_dir / "model_card.md"
    atomic_write_text(out, "\n".join(lines))
    return out
