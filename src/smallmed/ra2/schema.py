"""The Sharp/van der Heijde score table of the RA2 DREAM Challenge: 86 assessments per patient.

Columns are named exactly as the challenge's ``training.csv``: ``{limb}_{joint}_{E|J}__{site}``,
limb LH/RH (hands) or LF/RF (feet), E = erosion, J = joint-space narrowing. Ranges: hand erosion
0-5, foot erosion 0-10, narrowing 0-4 (so Overall_Tol is 0-448).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import SmallmedError

LIMBS = ("LH", "RH", "LF", "RF")
TOTALS = ("Overall_Tol", "Overall_erosion", "Overall_narrowing")


@dataclass(frozen=True)
class Assessment:
    column: str
    limb: str  # LH, RH, LF, RF
    joint: str  # mcp, pip, wrist, mtp
    site: str  # ip, 1-5, mc1, radcar, ...
    kind: str  # erosion | narrowing
    low: int
    high: int

    @property
    def hand(self) -> bool:
        return self.limb.endswith("H")


_HAND_E = [
    ("mcp", "ip"),
    *[("pip", str(i)) for i in range(2, 6)],
    *[("mcp", str(i)) for i in range(1, 6)],
    *[("wrist", s) for s in ("mc1", "mul", "nav", "lunate", "radius", "ulna")],
]
_HAND_J = [
    *[("pip", str(i)) for i in range(2, 6)],
    *[("mcp", str(i)) for i in range(1, 6)],
    *[("wrist", s) for s in ("cmc3", "cmc4", "cmc5", "mna", "capnlun", "radcar")],
]
_FOOT = [("mtp", "ip"), *[("mtp", str(i)) for i in range(1, 6)]]


def _build() -> tuple[Assessment, ...]:
    rows = []
    # the challenge's column order: erosion (hands, then feet), then narrowing (hands, then feet)
    for limb in ("LH", "RH"):
        rows += [Assessment(f"{limb}_{j}_E__{s}", limb, j, s, "erosion", 0, 5) for j, s in _HAND_E]
    for limb in ("LF", "RF"):
        rows += [Assessment(f"{limb}_{j}_E__{s}", limb, j, s, "erosion", 0, 10) for j, s in _FOOT]
    for limb in ("LH", "RH"):
        rows += [Assessment(f"{limb}_{j}_J__{s}", limb, j, s, "narrowing", 0, 4) for j, s in _HAND_J]
    for limb in ("LF", "RF"):
        rows += [Assessment(f"{limb}_{j}_J__{s}", limb, j, s, "narrowing", 0, 4) for j, s in _FOOT]
    return tuple(rows)


SCHEMA: tuple[Assessment, ...] = _build()
COLUMNS: tuple[str, ...] = ("Patient_ID", *TOTALS, *(a.column for a in SCHEMA))
BY_COLUMN = {a.column: a for a in SCHEMA}
MAX_TOTAL = sum(a.high for a in SCHEMA)  # 448


@dataclass
class ScoreTable:
    """One row per patient: ``scores[patient][column]`` (None = missing), in file order."""

    scores: dict[str, dict[str, float | None]]
    source: str = ""

    @property
    def patients(self) -> list[str]:
        return list(self.scores)


def read_scores(path: str | Path, *, require_all: bool = True) -> ScoreTable:
    """Read and validate a challenge-format score table (one sentence per problem, naming row/column).

    Totals columns are optional; when present they must equal the sum of the joints.

    Example:
        >>> t = read_scores("training.csv")   # doctest: +SKIP
        >>> totals(t)["UAB001"]["Overall_Tol"]   # doctest: +SKIP
        45.0
    """
    path = Path(path)
    if not path.is_file():
        raise SmallmedError(f"{path}: score table not found.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SmallmedError(f"{path}: not a UTF-8 text file; expected the challenge's CSV.") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    if "Patient_ID" not in header:
        raise SmallmedError(
            f"{path}: no Patient_ID column; expected the challenge's header ({COLUMNS[0]}, {COLUMNS[1]}, ...)."
        )
    known = set(COLUMNS)
    unknown = [c for c in header if c not in known]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SmallmedError(f"{path}: unknown column {unknown[0]!r}{hint}; expected the challenge's 86 joint columns.")
    missing = [a.column for a in SCHEMA if a.column not in header]
    if missing and require_all:
        raise SmallmedError(f"{path}: column {missing[0]!r} missing ({len(missing)} joint columns missing in all).")
    scores: dict[str, dict[str, float | None]] = {}
    for line, row in enumerate(reader, start=2):
        pid = (row.get("Patient_ID") or "").strip()
        if not pid:
            raise SmallmedError(f"{path}, line {line}: empty Patient_ID.")
        if pid in scores:
            raise SmallmedError(f"{path}, line {line}: patient {pid!r} appears twice.")
        vals: dict[str, float | None] = {}
        for a in SCHEMA:
            raw = (row.get(a.column) or "").strip()
            if raw == "" or raw.upper() in ("NA", "NAN"):
                vals[a.column] = None
                continue
            try:
                v = float(raw)
            except ValueError:
                raise SmallmedError(f"{path}, line {line}, column {a.column}: {raw!r} is not a number.") from None
            if not (a.low <= v <= a.high) or math.isnan(v):
                raise SmallmedError(
                    f"{path}, line {line}, column {a.column}: {raw} is outside {a.low}-{a.high} "
                    f"({'hand' if a.hand else 'foot'} {a.kind})."
                )
            vals[a.column] = v
        scores[pid] = vals
        given = {t: (row.get(t) or "").strip() for t in TOTALS if t in header}
        sums = _sums(vals)
        for t, raw in given.items():
            total = sums[t]
            if raw and total is not None and abs(float(raw) - total) > 1e-3:
                raise SmallmedError(f"{path}, line {line}, column {t}: {raw} but the joints sum to {total:g}.")
    if not scores:
        raise SmallmedError(f"{path}: no patient rows.")
    return ScoreTable(scores, str(path))


def _sums(vals: dict[str, float | None]) -> dict[str, float | None]:
    def total(kind=None):
        xs = [vals.get(a.column) for a in SCHEMA if kind is None or a.kind == kind]
        return None if any(x is None for x in xs) else float(sum(xs))

    return {"Overall_Tol": total(), "Overall_erosion": total("erosion"), "Overall_narrowing": total("narrowing")}


def totals(table: ScoreTable) -> dict[str, dict[str, float | None]]:
    """Overall_Tol, Overall_erosion and Overall_narrowing per patient (None when a joint is missing)."""
    return {pid: _sums(vals) for pid, vals in table.scores.items()}


def write_table(table: ScoreTable | dict, path: str | Path) -> Path:
    """Write the challenge CSV (totals recomputed from the joints; missing scores left empty), atomically."""
    from ..io import atomic_write_text

    scores = table.scores if isinstance(table, ScoreTable) else table
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for pid, vals in scores.items():
        vals = {k: (None if v is None else round(float(v), 4)) for k, v in vals.items()}  # as written below
        sums = _sums(vals)
        cells = [pid, *(_fmt(sums[t]) for t in TOTALS), *(_fmt(vals.get(a.column)) for a in SCHEMA)]
        w.writerow(cells)
    atomic_write_text(Path(path), buf.getvalue())
    return Path(path)


def _fmt(v) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() else f"{v:.4f}"
