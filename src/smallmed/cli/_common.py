"""What several command groups share: the one-line summary of a finished run and the least-value check."""

from __future__ import annotations

from ..errors import SmallmedError

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


def at_least(a, **minimum) -> None:
    """Refuse a numeric flag below its minimum, naming the flag as typed."""
    for name, lo in minimum.items():
        v = getattr(a, name, None)
        if v is not None and v < lo:
            raise SmallmedError(f"--{name.replace('_', '-')} {v}: expected at least {lo}.")
