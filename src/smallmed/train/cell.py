"""One run in its own folder, started, resumed or read back: what a study cell and a localiser share.

A finished run (``metrics.json`` present) is read back, never redone; an interrupted one resumes
from its ``last.pt``; a folder with no finished epoch starts again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path

import yaml

from ..config import TrainConfig
from ..errors import SmallmedError
from .loop import fit, resume


def run_cell(cfg_dict: dict, threads: int | None = None, callbacks=()) -> dict:
    """Run (or resume, or skip) one cell; returns its metrics. Safe to call in a fresh process.
    ``callbacks`` (:class:`smallmed.schedules.Callback`) see every epoch, e.g. a search's pruner."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig.from_dict(cfg_dict)
    if cfg.out is None:  # a cell is its folder: every caller names one
        raise SmallmedError("a cell needs its run folder: out is unset.")
    out = Path(cfg.out)
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    if (out / "last.pt").exists():
        with cell_log(out):
            return resume(out, callbacks=list(callbacks))
    if out.exists():
        shutil.rmtree(out)  # started but no epoch finished: start again
    with cell_log(out):
        return fit(cfg, callbacks=list(callbacks))


@contextlib.contextmanager
def cell_log(out: Path):
    """Every message of one run, at INFO, appended to ``out/train.log`` (whatever the console shows)."""
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    lg = logging.getLogger("smallmed")
    old = lg.level
    lg.setLevel(logging.INFO)
    lg.addHandler(handler)
    try:
        yield
    finally:
        lg.removeHandler(handler)
        handler.close()
        lg.setLevel(old)


# TrainConfig fields that do not change a cell's result
NEUTRAL_KEYS = {"out", "progress", "num_workers", "device", "eval_batch_size", "extra", "figures", "log", "mlflow_uri"}


def _diff(saved: dict, now: dict, ignore: set) -> list[str]:
    keys = sorted((set(saved) | set(now)) - ignore)
    return [f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def config_diffs(saved: dict, now: dict, ignore: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``key: saved ..., now ...`` for each setting that changes a run's result and differs between a saved
    config and this one (neutral keys, ``ignore`` and settings idle in ``now`` left out)."""
    from ..config import applies

    # a field added to smallmed after the run had its default then
    defaults = TrainConfig().to_dict()
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    now = json.loads(json.dumps(now, default=str))
    saved = json.loads(json.dumps(saved, default=str))
    # a setting with no effect in this run (rank_ratio of a plain conv) cannot make two runs differ
    idle = {k for k, (other, values) in applies().items() if now.get(other) not in values}
    return _diff(saved, now, NEUTRAL_KEYS | idle | set(ignore))


def check_cell(cfg_dict: dict) -> None:
    """Refuse to reuse a cell folder whose ``config.yaml`` differs in anything that changes its result."""
    path = Path(cfg_dict["out"]) / "config.yaml"
    if not path.exists():
        return
    diffs = config_diffs(yaml.safe_load(path.read_text()) or {}, cfg_dict)
    if diffs:
        raise SmallmedError(
            f"{path.parent}: this cell was trained with other settings ({'; '.join(diffs[:4])}"
            f"{'; ...' if len(diffs) > 4 else ''}); pass --fresh to start the study over or choose another --out."
        )
