"""What several command groups share: the one-line summary of a finished run and the least-value check."""

from __future__ import annotations

from ..errors import SmallmedError


def summary_line(metrics: dict) -> str:
    """One line of a finished run's test metrics, whatever its task."""
    t = metrics["test"]
    from ..train.tasks import task_class

    try:
        keys = task_class(str(metrics.get("task"))).summary
    except SmallmedError:  # a metrics file without a known task: the classification line
        keys = task_class("binary").summary
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
