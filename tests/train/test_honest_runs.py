"""Runs and studies never misreport what they did (settings checked on reuse, honest resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smallmed import SmallmedError
from smallmed.cli import main


def _bn(npz, **kw):
    from smallmed.studies.bn import BNStudy

    base = dict(
        data=(str(npz),),
        model="small_cnn",
        norms=("none", "bn"),
        seeds=(0,),
        epochs=1,
        batch_size=16,
        lr=1e-2,
        max_train=0,
    )
    base.update(kw)
    return BNStudy(**base)


def test_study_refuses_cells_trained_with_other_settings(tiny_npz, tmp_path):
    """Before: the second command logged '2 already finished' and reported 2 epochs for 1-epoch runs."""
    from smallmed.studies.bn import run_bn_study

    out = tmp_path / "s"
    run_bn_study(_bn(tiny_npz), out)
    with pytest.raises(SmallmedError, match=r"other settings \(epochs: saved 1, now 2\).*--fresh"):
        run_bn_study(_bn(tiny_npz, epochs=2), out)
    run_bn_study(_bn(tiny_npz, seeds=(0, 1)), out)  # more seeds only add cells: allowed
    report = run_bn_study(_bn(tiny_npz, epochs=2), out, fresh=True)
    assert "after 1 of 2 epochs" in report.read_text()
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # the fresh study has only its own cells


def test_a_reused_cell_folder_must_match(tmp_path, tiny_cfg):
    from smallmed.studies.runner import run_grid

    cfg = tiny_cfg(epochs=1)
    run_grid([cfg])
    with pytest.raises(SmallmedError, match="lr: saved 0.003, now 0.01"):
        run_grid([tiny_cfg(epochs=1, lr=1e-2)])


def test_resume_refuses_other_flags_and_extends_epochs(tiny_npz, tmp_path, capsys, caplog):
    """Before: `--resume RUN --epochs 6 --lr 0.1 --model resnet18` exited 0 having trained nothing."""
    args = [
        "train",
        "--data",
        str(tiny_npz),
        "--model",
        "small_cnn",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--augment",
        "none",
        "--no-progress",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(["-q", *args]) == 0
    run = tmp_path / "r"
    assert main(["-q", "train", "--resume", str(run), "--epochs", "3", "--lr", "0.1", "--model", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "--model, --lr cannot change" in err and "only --epochs can extend" in err
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with caplog.at_level("WARNING"):
        assert main(["train", "--resume", str(run)]) == 0  # finished, nothing to do: nothing rewritten
    assert "already finished" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    assert main(["-q", "train", "--resume", str(run), "--epochs", "3"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["epochs"] == 3 and len((run / "history.csv").read_text().splitlines()) == 4
    assert main(["-q", "train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "not shortened" in capsys.readouterr().err


def test_resume_without_last_checkpoint_says_it_starts_over(tiny_cfg, caplog):
    from smallmed import fit, resume

    cfg = tiny_cfg(epochs=1)
    fit(cfg)
    for name in ("last.pt", "metrics.json"):
        (Path(cfg.out) / name).unlink()
    with caplog.at_level("WARNING"):
        m = resume(cfg.out)
    assert "starting the run over" in caplog.text and m["epochs"] == 1


def test_rff_study_bad_splits_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "rff"
    assert main(["study", "rff", "--splits", "0", "--out", str(out)]) == 2
    assert "splits=0: expected a finite value in [1, 1000]" in capsys.readouterr().err
    assert not out.exists()


def test_metrics_json_is_strict_json(tmp_path):
    from smallmed.io import atomic_write_json

    atomic_write_json(tmp_path / "m.json", {"auc": float("nan"), "x": [1.0, float("inf")], "ok": 0.5})
    text = (tmp_path / "m.json").read_text()
    d = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert d == {"auc": None, "x": [1.0, None], "ok": 0.5}


def test_ctrl_c_message_names_the_run_folder(tiny_npz, tmp_path, capsys, monkeypatch):
    from smallmed import cli
    from smallmed.cli import run, studies

    def interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "cmd_train", interrupted)
    assert cli.main(["train", "--data", str(tiny_npz), "--out", str(tmp_path / "myrun")]) == 130
    assert f"smallmed train --resume {tmp_path / 'myrun'}" in capsys.readouterr().err
    monkeypatch.setattr(studies, "cmd_study", interrupted)
    assert cli.main(["study", "bn", "--out", str(tmp_path / "s"), "--epochs", "2"]) == 130
    assert "study bn --out" in capsys.readouterr().err
