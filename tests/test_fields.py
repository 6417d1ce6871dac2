"""Property tests generated from the declarations (smallmed.fields): for every entry point (TrainConfig from Python
and from the CLI, every registered study's settings, the search settings, the npz reader) values drawn inside,
on and just outside each declared range, near-miss choices, NaN/inf and wrong types give either a checked object
whose every field holds its declaration, or exactly one SmallmedError sentence; never another exception."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smallmed import SmallmedError, TrainConfig
from smallmed.fields import Checked, coerce, default_of, setting, spec_of

_WRONG = st.sampled_from(["x", "", "1e3", [1], {"a": 1}, None, True, -1, 0, math.nan, math.inf])


def _bound_values(s) -> list:
    out = []
    for b in (s.ge, s.gt, s.le, s.lt):
        if b is not None:
            out += [b, b - 1, b + 1, b - 1e-9, b + 1e-9]
    return out


def _item(hint, s) -> st.SearchStrategy:
    base = hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType) and args:
        base = args[0]
    if typing.get_origin(base) is tuple:
        inner = [a for a in typing.get_args(base) if a is not Ellipsis]
        return st.lists(_item(inner[0] if inner else str, s), max_size=3)
    if typing.get_origin(base) is Literal:
        choices = list(typing.get_args(base))
        return st.sampled_from(choices + [c[:-1] for c in choices if isinstance(c, str) and c] + ["?"]) | _WRONG
    allowed = s.allowed() if s.choices is not None else None
    if allowed:
        return st.sampled_from(list(allowed) + [str(allowed[0])[:-1] or "?", "nope"]) | _WRONG
    if base is bool:
        return st.sampled_from([True, False, "yes", "off", "maybe", 2]) | _WRONG
    if base in (int, float):
        edges = _bound_values(s)
        kind = st.integers(-(10**6), 10**6) if base is int else st.floats(allow_nan=True, allow_infinity=True)
        return (st.sampled_from(edges) if edges else kind) | kind | _WRONG
    return st.text(max_size=6) | _WRONG


def drawn_settings(cls, skip: tuple[str, ...] = ()) -> st.SearchStrategy:
    """A dict of 1-3 of ``cls``'s fields with values from their declarations."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    per = {f.name: _item(hints[f.name], spec_of(f)) for f in fields}
    names = st.lists(st.sampled_from(sorted(per)), min_size=1, max_size=3, unique=True)
    return names.flatmap(lambda ks: st.fixed_dictionaries({k: per[k] for k in ks}))


def holds_its_declarations(obj) -> None:
    """Every field of an accepted object has its declared type, range and choices, and no value other than the
    default stands where its declared condition does not hold."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        v, s = getattr(obj, f.name), spec_of(f)
        assert coerce(f.name, v, hints[f.name]) == v or v != v, (f.name, v)
        for item in v if isinstance(v, tuple) else (v,):
            if isinstance(item, (int, float)) and not isinstance(item, bool) and s.bounded:
                assert math.isfinite(item), (f.name, v)
                assert s.ge is None or item >= s.ge, (f.name, v)
                assert s.gt is None or item > s.gt, (f.name, v)
                assert s.le is None or item <= s.le, (f.name, v)
                assert s.lt is None or item < s.lt, (f.name, v)
            if s.choices is not None and item is not None:
                assert item in s.allowed(), (f.name, v)
        if s.applies and v not in (None, default_of(obj, f.name)):
            other, values = s.applies
            assert getattr(obj, other) in values, (f.name, v, other)


def _one_sentence(e: SmallmedError) -> None:
    text = str(e)
    assert text and "\n" not in text and "Traceback" not in text, text


def checked_or_one_sentence(make) -> None:
    """``make()`` either returns an object that holds its declarations or raises one SmallmedError sentence."""
    try:
        obj = make()
    except SmallmedError as e:
        _one_sentence(e)
        return
    holds_its_declarations(obj)


PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(drawn_settings(TrainConfig, skip=("extra", "data", "data_dir", "out", "model", "weights")))
def test_train_config_is_checked_or_refused_in_one_sentence(d):
    checked_or_one_sentence(lambda: TrainConfig(**d))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn_settings(TrainConfig, skip=("extra", "data", "data_dir", "out", "model", "weights", "progress")))
def test_train_flags_exit_2_with_one_line_and_write_nothing(tmp_path_factory, capsys, d):
    """The same draws through ``smallmed train``: no run can start (the data file does not exist), so every draw
    ends in exit 2 with one line, whether the config check or the data check refused it."""
    from smallmed.cli import main

    out = tmp_path_factory.mktemp("cli")
    args = ["train", "--data", str(out / "missing.npz"), "--out", str(out / "run"), "--no-progress"]
    for k, v in d.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + flag[2:])
        elif isinstance(v, list):
            args += [flag, *map(str, v)] if v else [flag]
        else:
            args += [flag, str(v)]
    code = main(args)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (args, err)
    assert not (out / "run").exists()


def _studies():
    from smallmed.studies import get_study, study_names

    return [(n, get_study(n)) for n in study_names()]


@pytest.mark.parametrize("name", [n for n, _ in _studies()])
def test_every_study_declares_and_checks_its_settings(name):
    from smallmed.studies import configure

    entry = dict(_studies())[name]
    assert issubclass(entry.settings, Checked), f"{name}: settings should declare their checks (fields.Checked)"
    for preset in entry.presets.values():  # every preset holds its own declarations
        holds_its_declarations(preset)

    @PROPERTY
    @given(drawn_settings(entry.settings, skip=("extra",)))
    def prop(d):
        checked_or_one_sentence(lambda: configure(name, entry.default, **d))

    prop()


@PROPERTY
@given(drawn_settings(__import__("smallmed.tune", fromlist=["TuneConfig"]).TuneConfig, skip=("base", "space")))
def test_search_settings_are_checked_or_refused(d):
    from smallmed.tune import TuneConfig

    checked_or_one_sentence(lambda: TuneConfig(base={"data": "x.npz"}, **d))


@PROPERTY
@given(drawn_settings(__import__("smallmed.ra2.pipeline", fromlist=["RA2Config"]).RA2Config,
                      skip=("model", "init", "localisers", "mean_shape", "augment")))  # fmt: skip
def test_ra2_train_settings_are_checked_or_refused(d):
    from smallmed.ra2.pipeline import RA2Config

    checked_or_one_sentence(lambda: RA2Config(**d))


_LABEL = st.one_of(
    st.integers(-2, 6), st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.5, 255, 2**40])
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.fixed_dictionaries({s: st.lists(_LABEL, min_size=0, max_size=6) for s in ("train", "val", "test")}),
    st.sampled_from(["u1", "f4", "i8"]),
)
def test_npz_labels_are_learnable_or_refused_in_one_sentence(tmp_path_factory, labels, dtype):
    """Labels drawn with gaps, negatives, NaN/inf, fractions, huge ids and empty splits: a loaded set has whole
    class ids from 0, every class of val/test seen in training, and no split empty."""
    from smallmed.data import load_dataset

    path = tmp_path_factory.mktemp("npz") / "labels.npz"
    rng = np.random.default_rng(0)
    arrays = {}
    for s, ys in labels.items():
        arrays[f"{s}_images"] = rng.integers(0, 255, (len(ys), 8, 8)).astype(dtype)
        arrays[f"{s}_labels"] = np.array(ys, dtype=np.float64 if any(isinstance(y, float) for y in ys) else np.int64)
    np.savez(path, **arrays)
    try:
        ds = load_dataset(path)
    except SmallmedError as e:
        _one_sentence(e)
        return
    train = set(np.asarray(ds.splits["train"].labels).ravel().tolist())
    for s in ("train", "val", "test"):
        y = np.asarray(ds.splits[s].labels).ravel()
        assert len(y) > 0
        assert np.all(np.isfinite(y)) and np.all(y == np.round(y)) and y.min() >= 0
        assert set(y.tolist()) <= train or s == "train"
        assert y.max() < ds.num_classes


def test_a_declared_check_reaches_every_entry_point():
    """The same declaration refuses the same value from Python, YAML-typed strings and a study dataclass."""

    @dataclasses.dataclass
    class Toy(Checked):
        rate: float = setting(0.5, gt=0, lt=1)
        mode: Literal["a", "b"] = "a"
        extra_rate: float = setting(0.0, ge=0, applies=("mode", ("b",)))

    assert Toy(rate="0.25").rate == 0.25
    for bad, needle in ((dict(rate=1), "rate=1"), (dict(rate="nan"), "rate=nan"), (dict(mode="c"), "mode='c'")):
        with pytest.raises(SmallmedError, match=needle):
            Toy(**bad)
    with pytest.raises(SmallmedError, match="extra_rate=0.3 has no effect with mode='a'; it applies with mode 'b'"):
        Toy(extra_rate=0.3)
    assert Toy(mode="b", extra_rate=0.3).extra_rate == 0.3
