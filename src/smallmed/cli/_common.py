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


def at_most(a, **maximum) -> None:
    """Refuse a numeric flag above its maximum, naming the flag as typed."""
    for name, hi in maximum.items():
        v = getattr(a, name, None)
        if v is not None and v > hi:
            raise SmallmedError(f"--{name.replace('_', '-')} {v}: expected at most {hi}.")


KINDS = {"onnx": (".onnx",), "folded": (".pt", ".pth"), "adapter": (".safetensors",)}


def check_outputs(inputs: list, **outputs) -> None:
    """Refuse, before any work, output files that are folders, repeat each other, would overwrite an input, or
    would replace an existing file of another kind (``--folded data.npz``: only a ``.pt`` is replaced)."""
    from pathlib import Path

    given = {flag: Path(p).resolve() for flag, p in outputs.items() if p}
    ins = {Path(p).resolve() for p in inputs if p}
    seen: dict = {}
    for flag, path in given.items():
        name = "--" + flag.replace("_", "-")
        if path.is_dir():
            raise SmallmedError(f"{name} {path}: is a folder; expected a file name.")
        if path in ins or any(path == p or p in path.parents for p in ins if p.is_dir()):
            raise SmallmedError(f"{name} {path}: would overwrite an input; choose another file.")
        if path.is_file() and path.suffix.lower() not in KINDS.get(flag, (path.suffix.lower(),)):
            raise SmallmedError(f"{name} {path}: an existing {path.suffix or 'extensionless'} file would be replaced "
                                f"by a {'/'.join(KINDS[flag])} file; choose a new name.")  # fmt: skip
        if path in seen:
            raise SmallmedError(f"{name} and {seen[path]} name the same file {path}; give each its own.")
        seen[path] = name
