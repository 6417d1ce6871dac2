"""Declared settings: each dataclass field states its type, its range, its choices and the setting it depends on,
next to the field (:func:`setting`). One check (:func:`check_fields`) reads those declarations for every entry
point (flags, YAML, ``--set``, the Python API, study and search settings), and the argparse flags
(:func:`add_flags`) and the property tests' value strategies are generated from the same declarations.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo(Checked):
    ...     epochs: int = setting(3, ge=1, help="training epochs")
    >>> Demo(epochs="5").epochs
    5
    >>> Demo(epochs=0)
    Traceback (most recent call last):
    smallmed.errors.SmallmedError: epochs=0: expected a finite value >= 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import SmallmedError
from .registry import check_choice

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Spec:
    """What a field accepts beyond its type. Bounds apply to each item of a tuple field; ``choices`` may be a
    callable (a registry's names, read when checked); ``applies``: (other field, its values) without which a value
    other than the default changes nothing and is refused; ``flags``: extra option names."""

    help: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | Callable[[], Sequence] | None = None
    applies: tuple[str, tuple] | None = None
    flags: tuple[str, ...] = ()

    @property
    def bounded(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def range_text(self) -> str:
        parts = [
            f"{op} {b:g}"
            for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if b is not None
        ]
        lo, hi = (self.ge, "[") if self.ge is not None else (self.gt, "(")
        top, end = (self.le, "]") if self.le is not None else (self.lt, ")")
        if len(parts) == 2 and lo is not None and top is not None:  # one bound on each side: an interval
            return f"in {hi}{_num(lo)}, {_num(top)}{end}"
        return " and ".join(parts)

    def allowed(self) -> tuple | None:
        return tuple(self.choices()) if callable(self.choices) else self.choices


def _num(b: float) -> str:
    return str(int(b)) if float(b).is_integer() and abs(b) < 1e16 else f"{b:g}"


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **spec) -> Any:
    """A dataclass field with its declared :class:`Spec` (``help``, ``ge``, ``gt``, ``le``, ``lt``, ``choices``,
    ``applies``, ``flags``)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"spec": Spec(**spec)})


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata.get("spec", Spec())


def _inner(hint) -> tuple[Any, bool]:
    """(the hint without None, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return hint, hint is type(None) or hint is Any


def literal_choices(hint) -> tuple | None:
    base, _ = _inner(hint)
    return typing.get_args(base) if typing.get_origin(base) is Literal else None


def coerce(name: str, value: Any, hint) -> Any:
    """``value`` as the field's type (YAML reads ``1e-3`` as a string, the CLI gives strings), or a SmallmedError
    naming the key and the type expected."""
    base, optional = _inner(hint)
    if value is None:
        if optional:
            return None
        raise SmallmedError(f"{name}=None: expected a value ({_type_name(base)}).")
    origin = typing.get_origin(base)
    try:
        if origin is Literal:
            allowed = typing.get_args(base)
            check_choice(name, value if isinstance(value, str) else repr(value), allowed)
            return value
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            f = float(value) if isinstance(value, (str, float)) else math.nan
            if not f.is_integer():
                raise ValueError
            return int(f)
        if base is float:
            if isinstance(value, (bool, list, tuple, dict)):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list, tuple, set)):
                raise ValueError
            return str(value)
        if origin is tuple:
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            inner = [a for a in typing.get_args(base) if a is not Ellipsis]
            if Ellipsis not in typing.get_args(base) and len(inner) != len(items):
                raise SmallmedError(f"{name}={value!r}: expected {len(inner)} values.")
            kind = inner[0] if inner else str
            return tuple(coerce(name, v, kind) for v in items)
        if base is dict and not isinstance(value, dict):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        kind = _type_name(base)
        raise SmallmedError(f"{name}={value!r}: expected {'an' if kind[0] in 'aeiou' else 'a'} {kind}.") from None
    return value


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        inner = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"list of {_type_name(inner[0]) if inner else 'str'}"
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint))


def check_value(name: str, value: Any, spec: Spec) -> None:
    """The range and choices of one (coerced) value; each item of a tuple on its own."""
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        if v is None:
            continue
        if spec.bounded and isinstance(v, (int, float)) and not isinstance(v, bool):
            lo_bad = (spec.ge is not None and v < spec.ge) or (spec.gt is not None and v <= spec.gt)
            hi_bad = (spec.le is not None and v > spec.le) or (spec.lt is not None and v >= spec.lt)
            if not math.isfinite(v) or lo_bad or hi_bad:
                shown = v if len(items) == 1 else list(value)
                raise SmallmedError(f"{name}={shown}: expected a finite value {spec.range_text()}.")
        allowed = spec.allowed()
        if allowed is not None:
            check_choice(name, v, allowed)


def coerce_fields(obj) -> None:
    """Every field of dataclass ``obj`` as its declared type (a SmallmedError naming the first that is not)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        object.__setattr__(obj, f.name, coerce(f.name, getattr(obj, f.name), hints[f.name]))


def check_fields(obj, *, applies: dict[str, tuple[str, tuple]] | None = None) -> None:
    """Coerce every field of dataclass ``obj`` to its declared type and check its range and choices; then refuse a
    value (other than the field's default) whose ``applies`` condition does not hold, naming what would make it
    apply. ``applies`` adds conditions declared elsewhere (a method's own settings)."""
    hints = typing.get_type_hints(type(obj))
    conditions = {}
    for f in dataclasses.fields(obj):
        spec = spec_of(f)
        value = coerce(f.name, getattr(obj, f.name), hints[f.name])
        check_value(f.name, value, spec)
        object.__setattr__(obj, f.name, value)
        if spec.applies:
            conditions[f.name] = spec.applies
    conditions.update(applies or {})
    for name, (other, values) in conditions.items():
        v = getattr(obj, name)
        if v not in (None, default_of(obj, name)) and getattr(obj, other) not in values:
            raise SmallmedError(
                f"{name}={v!r} has no effect with {other}={getattr(obj, other)!r}; it applies with "
                f"{other} {' or '.join(map(repr, values))}."
            )


def default_of(obj_or_cls, name: str) -> Any:
    f = next(f for f in dataclasses.fields(obj_or_cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def declared_applies(cls) -> dict[str, tuple[str, tuple]]:
    return {f.name: applies for f in dataclasses.fields(cls) if (applies := spec_of(f).applies)}


class Checked:
    """Mixin for a settings dataclass: its fields are checked against their declarations on construction (and on
    ``dataclasses.replace``)."""

    def __post_init__(self) -> None:
        check_fields(self)


def add_flags(
    parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (), help: dict | None = None
) -> list[str]:
    """One ``--flag`` per field of ``cls`` (defaults None: unset flags leave the lower sources), typed from its hint
    and declaration: booleans as ``--x/--no-x``, tuples as lists (two values for a pair), Literal and declared
    choices listed in ``--help``. Returns the field names."""
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name == "extra":
            continue
        spec, (base, _) = spec_of(f), _inner(hints[f.name])
        text = (help or {}).get(f.name) or spec.help or ""
        if spec.bounded:
            text = f"{text} ({spec.range_text()})" if text else spec.range_text()
        if spec.applies:
            other, values = spec.applies
            text += f"; only with --{other.replace('_', '-')} {' or '.join(map(str, values))}"
        kw: dict[str, Any] = {"default": None, "help": text or None, "dest": f.name}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            item = base
            if typing.get_origin(base) is tuple:
                inner = [a for a in typing.get_args(base) if a is not Ellipsis]
                item = inner[0] if inner else str
                fixed = Ellipsis not in typing.get_args(base) and len(inner) > 1
                kw.update(nargs=len(inner) if fixed else "+", metavar="X")
            choices = literal_choices(item) or (spec.choices if isinstance(spec.choices, tuple) else None)
            if choices:  # shown in --help; the one check refuses others (with a did-you-mean)
                kw["metavar"] = "{" + ",".join(map(str, choices)) + "}"
            kw["type"] = str  # converted by the one check, so a flag parses as YAML and --set do
        parser.add_argument("--" + f.name.replace("_", "-"), *spec.flags, **kw)
        names.append(f.name)
    return names
