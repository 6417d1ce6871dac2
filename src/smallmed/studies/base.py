"""The studies registry: each study file declares its settings dataclass, its presets and its run function
once (:func:`register_study`); the ``smallmed study`` subcommands, their ``--preset`` choices and their
flags are generated from it, and :func:`run_study` is the same path from Python.

Example:
    >>> from smallmed.studies import run_study, study_names
    >>> "bn" in study_names()
    True
    >>> run_study("bn", "quick", out="runs/study-bn", epochs=2)              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SmallmedError
from ..fields import Checked, check_fields
from ..registry import check_choice


@dataclass(frozen=True)
class StudyEntry:
    """One registered study.

    Attributes:
        name: the subcommand (``smallmed study NAME``).
        summary: one line for ``--help``.
        presets: named settings (instances of the study's dataclass); ``default`` names the one used without
            ``--preset``.
        run: ``run(study, out, *, fresh, [workers, backend])``, returning the report's path.
        parallel: whether ``run`` takes ``workers`` and ``backend`` (cells as processes or Ray tasks).
        tracked: whether its cells are smallmed runs (``train.fit``) that ``--log`` can mirror; a study that trains
            in a loop of its own has nothing to mirror and refuses ``log``.
        help: per-field help for the generated flags.
    """

    name: str
    summary: str
    presets: dict[str, Any]
    run: Callable[..., Path]
    parallel: bool = False
    default: str = "quick"
    help: dict[str, str] = field(default_factory=dict)
    tracked: bool = True

    @property
    def settings(self) -> type:
        return type(self.presets[self.default])


_STUDIES: dict[str, StudyEntry] = {}


def register_study(
    name: str,
    *,
    summary: str,
    presets: dict,
    run: Callable[..., Path],
    parallel: bool = False,
    default: str = "quick",
    help: dict[str, str] | None = None,
    tracked: bool = True,
) -> StudyEntry:
    if name in _STUDIES:
        raise ValueError(f"study {name!r} is registered twice")
    if default not in presets:
        raise ValueError(f"study {name!r}: default preset {default!r} is not among {sorted(presets)}")
    entry = StudyEntry(name, summary, dict(presets), run, parallel, default, dict(help or {}), tracked)
    _STUDIES[name] = entry
    return entry


def get_study(name: str) -> StudyEntry:
    check_choice("study", name, study_names())
    return _STUDIES[name]


def study_names() -> tuple[str, ...]:
    return tuple(_STUDIES)


def configure(name: str, preset: str | None = None, **changes) -> Any:
    """The preset's settings with ``changes`` applied, checked by the study's own declarations (each field's type,
    range and choices, :mod:`smallmed.fields`): an unknown or out-of-range setting is refused in one sentence."""
    entry = get_study(name)
    preset = preset or entry.default
    check_choice(f"{name} study preset", preset, tuple(entry.presets))
    study = entry.presets[preset]
    names = {f.name for f in dataclasses.fields(study)}
    for k in changes:
        if k not in names:
            check_choice(f"{name} study setting", k, sorted(names))
    study = dataclasses.replace(study, **changes)
    if not isinstance(study, Checked):  # a Checked study has checked itself in __post_init__
        check_fields(study)
    return study


def run_study(
    name: str,
    preset: str | None = None,
    *,
    out: str | Path,
    fresh: bool = False,
    workers: int = 1,
    backend: str = "process",
    log: tuple[str, ...] = (),
    mlflow_uri: str | None = None,
    **changes,
) -> Path:
    """Run (or resume) study ``name`` from a preset with ``changes``; returns the report's path.

    ``log``: every run of the study mirrors itself to TensorBoard and/or MLflow (:mod:`smallmed.train.tracking`);
    with MLflow the study is a parent run (its settings, report and figures) with one nested run per cell."""
    from ..io import check_out_dir

    entry = get_study(name)
    if not isinstance(workers, int) or workers < 1 or backend not in ("process", "ray"):
        raise SmallmedError(f"workers={workers!r}, backend={backend!r}: expected workers >= 1 and process or ray.")
    if log and not entry.tracked:
        raise SmallmedError(
            f"--log {' '.join(log)}: the {name} study trains its models in a loop of its own, not as run folders, "
            "so there is nothing to mirror; its record is OUT/report.md and OUT/cells/."
        )
    check_out_dir(out)  # a folder that cannot be written fails before any data is read
    study = configure(name, preset, **changes)
    if not entry.parallel and (workers != 1 or backend != "process"):
        raise SmallmedError(f"the {name} study runs its cells in this process; workers and backend do not apply.")
    from ..train.tracking import study_tracking

    with study_tracking(name, study, Path(out), loggers=tuple(log), mlflow_uri=mlflow_uri) as track:
        if entry.parallel:
            report = entry.run(study, out, workers=workers, backend=backend, fresh=fresh)
        else:
            report = entry.run(study, out, fresh=fresh)
        track.finish(report)
    return report
