"""Experiment tracking through the field's tools: TensorBoard and MLflow mirror a run (``--log tensorboard mlflow``).

The run folder stays the record; a logger only mirrors it. Each is an optional extra imported here, and a
logger that fails (a server down, a full disk) says so in one warning line and stops, never the run.

- TensorBoard (``torch.utils.tensorboard``, extra ``tensorboard``): every number of each epoch's history row,
  the config as hparams with the final test metrics, and the run's figures (ROC, curves) as images, under
  ``RUN/tensorboard`` (``tensorboard --logdir RUN/tensorboard``).
- MLflow (extra ``mlflow``): the config as params, each epoch's numbers as metrics, the final test metrics,
  and the run folder's files as artifacts; the tracking URI is ``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``,
  else a local SQLite store, ``RUN/mlflow.db`` (``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from mlflow import ActiveRun

log = logging.getLogger(__name__)

LOGGERS = ("tensorboard", "mlflow")
PARENT_ENV = "SMALLMED_MLFLOW_PARENT_RUN"  # a study's MLflow run id, inherited by its cells' processes
# the loggers a study's cells mirror to, set by study_tracking and read by the grid runner (no result changes)
TRACKING: contextvars.ContextVar[StudyRun | None] = contextvars.ContextVar("smallmed_study_tracking", default=None)


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested dict, with dotted keys (``test.auc``)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_numbers(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def _params(cfg) -> dict[str, str | float | int | bool]:
    out: dict[str, str | float | int | bool] = {}
    for k, v in cfg.to_dict().items():
        out[k] = v if isinstance(v, (int, float, bool, str)) else str(v)
    return out


class _Mirror:
    """A logger that turns its own failure into one warning and then does nothing."""

    name = ""

    def __init__(self) -> None:
        self.alive = True

    def _guard(self, fn, *args) -> None:
        if not self.alive:
            return
        try:
            fn(*args)
        except Exception as e:
            self.alive = False
            log.warning("%s logging stopped (%s); the run goes on and its folder keeps the record.", self.name,
                        str(e).splitlines()[0][:160] if str(e) else type(e).__name__)  # fmt: skip

    def on_epoch_start(self, epoch, model) -> None: ...

    def on_batch_end(self, epoch, step, loss) -> None: ...

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        self._guard(self._epoch, epoch, row)

    def on_run_end(self, metrics: dict, run_dir: Path) -> None:
        self._guard(self._end, metrics, run_dir)
        self._guard(self._close)

    def _epoch(self, epoch: int, row: dict) -> None: ...

    def _end(self, metrics: dict, run_dir: Path) -> None: ...

    def _close(self) -> None: ...


class TensorBoardLogger(_Mirror):
    name = "TensorBoard"

    def __init__(self, cfg, run_dir: Path) -> None:
        super().__init__()
        self.cfg = cfg
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise_missing("tensorboard", "tensorboard")
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def _epoch(self, epoch: int, row: dict) -> None:
        for k, v in _numbers({k: v for k, v in row.items() if k != "epoch"}).items():
            self.writer.add_scalar(k, v, epoch + 1)
        self.writer.flush()

    def _end(self, metrics: dict, run_dir: Path) -> None:
        final = {f"hparam/test_{k}": v for k, v in _numbers(metrics.get("test", {})).items() if "." not in k}
        self.writer.add_hparams(_params(self.cfg), final, run_name=".")
        for png in ("loss_curves.png", "roc_test.png", "reliability_test.png"):
            if (run_dir / png).exists():
                import matplotlib.image as mpimg
                import numpy as np

                img = mpimg.imread(str(run_dir / png))[..., :3]
                self.writer.add_image(png[:-4], np.transpose(img, (2, 0, 1)), 0)

    def _close(self) -> None:
        self.writer.close()


class MLflowLogger(_Mirror):
    name = "MLflow"

    def __init__(self, cfg, run_dir: Path) -> None:
        super().__init__()
        try:
            import mlflow
        except ImportError:
            raise_missing("mlflow", "mlflow")
        self.mlflow = mlflow
        # a server that is down costs one warning, not minutes of retries (the user's own settings win)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store's set-up chatter is not the run's news
        local = f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"  # MLflow's local store (its file store is retired)
        uri = cfg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or local
        mlflow.set_tracking_uri(uri)
        # a local store keeps its artifacts in the run folder too (MLflow's default is ./mlruns of the cwd)
        self.artifacts = (run_dir / "mlartifacts").resolve().as_uri() if uri == local else None
        self.run: ActiveRun | None = None
        self._guard(self._start, cfg, run_dir)

    def _start(self, cfg, run_dir: Path) -> None:
        if self.artifacts and self.mlflow.get_experiment_by_name("smallmed") is None:
            self.mlflow.create_experiment("smallmed", artifact_location=self.artifacts)
        self.mlflow.set_experiment("smallmed")
        # a study's cell is nested under the study's run, also from a worker process or a Ray task
        parent = os.environ.get(PARENT_ENV)
        name = run_dir.name if not parent else "/".join(run_dir.parts[-3:])
        self.run = self.mlflow.start_run(
            run_name=name,
            nested=self.mlflow.active_run() is not None,
            tags={"mlflow.parentRunId": parent} if parent and self.mlflow.active_run() is None else None,
        )
        self.mlflow.log_params({k: str(v)[:500] for k, v in _params(cfg).items()})

    def _epoch(self, epoch: int, row: dict) -> None:
        self.mlflow.log_metrics(_numbers({k: v for k, v in row.items() if k != "epoch"}), step=epoch + 1)

    def _end(self, metrics: dict, run_dir: Path) -> None:
        self.mlflow.log_metrics({f"test_{k}": v for k, v in _numbers(metrics.get("test", {})).items()})
        for p in sorted(run_dir.iterdir()):
            if p.is_file() and p.suffix not in (".pt", ".db"):  # checkpoints and the store stay in the run folder
                self.mlflow.log_artifact(str(p))

    def _close(self) -> None:
        if self.run is not None:
            self.mlflow.end_run()


def raise_missing(what: str, extra: str):
    from ..errors import SmallmedError

    raise SmallmedError(f"--log {what} needs the {extra} package: pip install 'smallmed[{extra}]'.")


def loggers_for(cfg, run_dir: Path) -> list[_Mirror]:
    """The loggers ``cfg.log`` asks for (an extra that is not installed is one sentence, before training)."""
    out: list[_Mirror] = []
    for name in cfg.log:
        out.append(TensorBoardLogger(cfg, run_dir) if name == "tensorboard" else MLflowLogger(cfg, run_dir))
    return out


class StudyRun:
    """A study's tracking (what :func:`study_tracking` yields and the grid runner reads through
    :data:`TRACKING`): the MLflow parent run starts with the study's first grid of cells, after the study has
    checked its inputs and settings (so bad input leaves no store behind, and ``--fresh`` never deletes a live
    one); ``overrides()`` gives each cell its ``log`` and ``mlflow_uri``."""

    def __init__(self, name: str, study, out: Path, loggers: tuple[str, ...], mlflow_uri: str | None) -> None:
        self.name, self.study, self.out, self.loggers, self.uri = name, study, out, loggers, mlflow_uri
        self.mlflow: Any = None  # the mlflow module, once the parent run has started
        self.run: ActiveRun | None = None
        self.started = False
        self._env: str | None = None

    def overrides(self) -> dict:
        if "mlflow" in self.loggers and not self.started:
            self.started = True
            self._start()
        return {"log": list(self.loggers), "mlflow_uri": self.uri if "mlflow" in self.loggers else None}

    def _start(self) -> None:
        import dataclasses

        try:
            import mlflow
        except ImportError:
            raise_missing("mlflow", "mlflow")
        local = f"sqlite:///{(self.out / 'mlflow.db').resolve()}"
        uri = self.uri or os.environ.get("MLFLOW_TRACKING_URI") or local
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri = uri  # the cells log to the study's store
        try:
            mlflow.set_tracking_uri(uri)
            if uri == local and mlflow.get_experiment_by_name("smallmed") is None:
                mlflow.create_experiment("smallmed", artifact_location=(self.out / "mlartifacts").resolve().as_uri())
            mlflow.set_experiment("smallmed")
            self.run = mlflow.start_run(run_name=f"study {self.name}")
            # a study's settings object (an instance, as every study passes)
            settings = (
                dataclasses.asdict(cast("DataclassInstance", self.study))
                if dataclasses.is_dataclass(self.study)
                else {}
            )
            mlflow.log_params({k: str(v)[:500] for k, v in settings.items()})
            self._env = os.environ.get(PARENT_ENV)
            os.environ[PARENT_ENV] = self.run.info.run_id
            self.mlflow = mlflow
        except Exception as e:
            log.warning("MLflow logging of the study stopped (%s); its runs keep the record.", str(e)[:200])

    def finish(self, report: Path) -> None:
        """Log the study's report, figures and tables on its parent run."""
        if self.mlflow is None:
            return
        try:
            for p in sorted(Path(report).parent.iterdir()):
                if p.is_file() and p.suffix in (".md", ".png", ".csv", ".json"):
                    self.mlflow.log_artifact(str(p))
        except Exception as e:
            log.warning("MLflow logging of the study stopped (%s); its folder keeps the record.", str(e)[:200])

    def close(self, failed: bool) -> None:
        if self.run is None:
            return
        if self._env is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = self._env
        try:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
        except Exception:
            pass


@contextlib.contextmanager
def study_tracking(name: str, study, out: Path, *, loggers: tuple[str, ...] = (), mlflow_uri: str | None = None):
    """Every cell of a study logs as ``loggers`` asks (its config gets ``log`` and ``mlflow_uri``, which change no
    result); with MLflow the study is a parent run named ``study NAME`` holding its settings, report and figures,
    with each cell nested under it (in this process, a worker process or a Ray task, through
    :data:`PARENT_ENV`). A study that fails marks its parent run FAILED."""
    from ..errors import SmallmedError

    bad = [x for x in loggers if x not in LOGGERS]
    if bad:
        raise SmallmedError(f"log={bad[0]!r}: expected tensorboard or mlflow.")
    if mlflow_uri and "mlflow" not in loggers:
        raise SmallmedError(f"mlflow_uri={mlflow_uri!r} has no effect without log mlflow (--log mlflow).")
    run = StudyRun(name, study, out, tuple(loggers), mlflow_uri)
    token = TRACKING.set(run if loggers else None)
    failed = True
    try:
        yield run
        failed = False
    finally:
        TRACKING.reset(token)
        run.close(failed)
