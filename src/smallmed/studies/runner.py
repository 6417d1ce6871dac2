"""Run a grid of training runs: resumable, in parallel processes or as Ray tasks.

Each cell is a :class:`TrainConfig` with its own run folder. A finished cell (``metrics.json``
present) is never redone; an interrupted one resumes from its ``last.pt``; so a killed study
is restarted with the same command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from ..config import TrainConfig
from ..errors import SmallmedError
from ..train.cell import run_cell
from ..train.tracking import PARENT_ENV, TRACKING

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_console():
    """Console handlers show warnings only (the runs' own logs still get everything)."""
    handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for h, lv in zip(handlers, levels):
            h.setLevel(lv)


def cell_dir(cfg: TrainConfig) -> Path:
    """The run folder of a study's cell: every cell a study builds has its ``out`` set."""
    if cfg.out is None:
        raise SmallmedError("a study cell without an out folder: the study must set each cell's run folder.")
    return Path(cfg.out)


def run_grid(cells: list[TrainConfig], *, workers: int = 1, backend: str = "process", bar: bool = False) -> list[dict]:
    """Run every cell; returns metrics in the cells' order.

    Args:
        workers: parallel processes (each gets cores // workers torch threads).
        backend: ``process`` (one machine) or ``ray`` (an existing Ray cluster, or a local one).
        bar: one progress bar over cells on the console, which then shows only warnings (each
            run's log is in its folder's ``train.log``).
    """
    from .settings import check_cell

    tracking = TRACKING.get()
    over = tracking.overrides() if tracking is not None else {}
    dicts = [{**c.to_dict(), **over} for c in cells]
    for d in dicts:
        check_cell(d)  # every reused cell was trained exactly as this grid asks, or the study stops here
    todo = [i for i, d in enumerate(dicts) if not (Path(d["out"]) / "metrics.json").exists()]
    log.info("study: %d runs, %d already finished", len(cells), len(cells) - len(todo))
    results: dict[int, dict] = {}
    if backend == "ray":
        try:
            import ray
        except ImportError:
            raise SmallmedError("backend='ray' needs Ray: pip install 'smallmed[ray]'.") from None
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(run_cell)
        if os.environ.get(PARENT_ENV):  # a study's MLflow parent run, for the cells' nested runs
            remote = remote.options(runtime_env={"env_vars": {PARENT_ENV: os.environ[PARENT_ENV]}})
        refs = {i: remote.remote(dicts[i], 1) for i in todo}
        for i, ref in refs.items():
            results[i] = ray.get(ref)
    elif workers <= 1:
        from tqdm import tqdm

        with quiet_console() if bar else contextlib.nullcontext():
            for i in tqdm(todo, desc="runs", unit="run", disable=not bar, dynamic_ncols=True):
                # under the bar over runs, each run's own bar per epoch: progress at least every epoch
                results[i] = run_cell({**dicts[i], "progress": True} if bar else dicts[i])
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futs = {pool.submit(run_cell, dicts[i], threads): i for i in todo}
            for f in as_completed(futs):
                results[futs[f]] = f.result()
    out = []
    for i, d in enumerate(dicts):
        out.append(results.get(i) or json.loads((Path(d["out"]) / "metrics.json").read_text()))
    return out
