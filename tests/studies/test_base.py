"""Studies are registered once; the CLI's ``study`` subcommands, presets and flags come from the registry,
and Python (``run_study``) and the CLI accept and refuse the same values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from smallmed import SmallmedError
from smallmed.fields import Checked, setting
from smallmed.studies import base, configure, get_study, register_study, run_study, study_names


def _subparsers(parser, name):
    import argparse

    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices[name] if name else a.choices
    raise AssertionError(name)


def test_every_registered_study_is_a_cli_subcommand_with_its_presets():
    from smallmed.cli import build_parser

    study = _subparsers(build_parser(), "study")
    subs = _subparsers(study, None)
    assert set(subs) == set(study_names()) >= {"svd", "bn", "sfconv", "rff", "ra2"}
    for name in study_names():
        entry = get_study(name)
        assert all(isinstance(p, entry.settings) for p in entry.presets.values())
        preset = next(a for a in subs[name]._actions if "--preset" in a.option_strings)
        assert tuple(preset.choices) == tuple(entry.presets)
        flags = {o for a in subs[name]._actions for o in a.option_strings}
        assert {
            "--" + f.name.replace("_", "-") for f in dataclasses.fields(entry.settings) if f.name != "extra"
        } <= flags


@dataclasses.dataclass
class _Toy(Checked):
    epochs: int = setting(2, ge=1)
    seeds: tuple[int, ...] = (0,)
    label: str = "x"


def test_a_new_study_needs_no_cli_edit(tmp_path, monkeypatch, capsys):
    from smallmed.cli import main

    seen = {}

    def run(study, out, *, fresh=False):
        seen["study"], seen["fresh"] = study, fresh
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out) / "report.md"

    monkeypatch.setattr(base, "_STUDIES", dict(base._STUDIES))
    register_study("toy", summary="a toy", presets={"quick": _Toy(), "long": _Toy(epochs=9)}, run=run)
    assert (
        main(["study", "toy", "--preset", "long", "--seeds", "1", "2", "--label", "y", "--out", str(tmp_path / "t")])
        == 0
    )
    assert seen["study"] == _Toy(epochs=9, seeds=(1, 2), label="y")
    assert main(["study", "toy", "--epochs", "0", "--out", str(tmp_path / "t")]) == 2
    assert "epochs=0: expected a finite value >= 1" in capsys.readouterr().err
    with pytest.raises(SmallmedError, match="epochs=0: expected a finite value >= 1"):  # the same check from Python
        run_study("toy", out=tmp_path / "t", epochs=0)
    with pytest.raises(SmallmedError, match="workers and backend do not apply"):
        run_study("toy", out=tmp_path / "t", workers=2)
    with pytest.raises(ValueError, match="registered twice"):
        register_study("toy", summary="again", presets={"quick": _Toy()}, run=run)


def test_configure_names_an_unknown_setting_or_preset():
    with pytest.raises(SmallmedError, match="epoch"):
        configure("bn", "quick", epoch=3)
    with pytest.raises(SmallmedError, match="quick"):
        configure("bn", "quik")
    assert configure("bn", "quick", seeds=[3, 4]).seeds == (3, 4)


def test_log_is_refused_by_a_study_with_no_run_folders_to_mirror(tmp_path, capsys):
    from smallmed.cli import main

    assert not get_study("rff").tracked and get_study("svd").tracked
    out = tmp_path / "rff"
    assert main(["study", "rff", "--log", "tensorboard", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--log tensorboard: the rff study trains its models in a loop of its own" in err
    assert "Traceback" not in err and not out.exists()  # refused before anything is written
