"""A study never reuses cells trained with other settings.

``check_settings(out, study, fresh=...)`` compares the study's saved ``study.json`` with the
settings of this invocation before anything runs. Fields that only add or remove cells (seeds,
methods, variants, ...) may change: finished cells are reused and new ones run. Any other
difference (epochs, learning rate, image size, ...) would put results of two protocols in one
report: the command refuses in one sentence naming the differences, or with ``fresh`` deletes the
folder and starts over. :func:`check_cell` does the same per training run, against its
``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..errors import SettingsChangedError, SmallmedError
from ..train.cell import NEUTRAL_KEYS, _diff, check_cell  # noqa: F401  (check_cell: its home for studies)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# fields that choose which cells exist, not how a cell is trained
GRID_FIELDS = {"seeds", "methods", "variants", "norms", "data", "fractions", "splits", "spread_sizes"}
# fields that may be switched on in a finished study (0 before: a search per set adds the tuned rows and the
# recipes' runs stay), but not changed once set (a search of another budget could choose another recipe)
ADDED_FIELDS = {"tune_budget_m"}


def _plain(obj) -> dict:
    # a settings object is a dataclass instance or a dict; is_dataclass also accepts the class itself, never passed here
    data = dataclasses.asdict(cast("DataclassInstance", obj)) if dataclasses.is_dataclass(obj) else obj
    return json.loads(json.dumps(data, default=str))


def check_settings(out: str | Path, study, *, fresh: bool = False) -> None:
    """Refuse (or with ``fresh`` start over) when ``out`` holds a study run with other settings; then
    record this invocation's settings in ``out/study.json``."""
    from ..io import atomic_write_text, check_out_dir

    out = check_out_dir(out)
    saved_path = out / "study.json"
    now = _plain(study)
    if fresh and out.exists():
        shutil.rmtree(out)
    elif saved_path.exists():
        try:
            saved = json.loads(saved_path.read_text())
        except ValueError:
            raise SmallmedError(f"{saved_path}: not readable JSON; pass --fresh to start the study over.") from None
        # a field added to smallmed after the study ran had its default then
        defaults = _plain(type(cast("DataclassInstance", study))()) if dataclasses.is_dataclass(study) else {}
        saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
        diffs = _diff(saved, now, GRID_FIELDS | {k for k in ADDED_FIELDS if not saved.get(k)})
        if diffs:
            raise SettingsChangedError(
                f"{out}: its cells were run with other settings ({'; '.join(diffs)}); rerun with the "
                "saved settings, choose another --out, or pass --fresh to start over."
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved_path, json.dumps(now, indent=2) + "\n")
