"""Batch-norm study (seed 002): grid, report, small-batch inference effect."""

import dataclasses as dc

import pytest

from smallmed import SmallmedError
from smallmed.cli import main
from smallmed.studies import bn as bn_mod


def test_bn_study_tiny_grid_writes_curves_paired_differences_and_batch_effect(tmp_path, tiny_npz):
    study = dc.replace(
        bn_mod.PRESETS["quick"], data=(str(tiny_npz),), model="small_cnn", seeds=(0, 1), epochs=2, batch_size=16
    )
    report = bn_mod.run_bn_study(study, tmp_path / "bn")
    text = report.read_text()
    for norm in ("none", "bn", "bn-after-act"):
        assert f"| {norm} |" in text
    assert "vs none" in text and "## Verdict" in text and "batch-statistics accuracy" in text
    assert (tmp_path / "bn" / "loss_tiny.png").stat().st_size > 1000
    rows = (tmp_path / "bn" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * 2
    cfg = bn_mod.cells(study, tmp_path / "bn")[0]
    assert (cfg.optimizer, cfg.lr, cfg.scheduler, cfg.step_size) == ("sgd", 1e-2, "step", 1)
    effect = bn_mod.bn_batch_effect(tmp_path / "bn" / "runs" / "tiny" / "bn" / "s0", batch_sizes=(2, 24))
    assert set(effect) == {2, 24} and all(0 <= v <= 1 for a in effect.values() for v in a.values())


def test_epochs_to_reach_and_bad_input(tmp_path, tiny_npz):
    assert bn_mod.epochs_to_reach([1.0, 0.7, 0.5], 0.6) == 3
    assert bn_mod.epochs_to_reach([1.0, 0.9], 0.5) is None
    with pytest.raises(SmallmedError, match="norm='none'"):
        bn_mod.run_bn_study(dc.replace(bn_mod.PRESETS["quick"], norms=("bn",)), tmp_path / "x")
    assert main(["study", "bn", "--data", str(tiny_npz), "--model", "densenet121", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()
