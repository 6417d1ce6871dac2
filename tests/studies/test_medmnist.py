"""``smallmed study medmnist``: the recipes x seeds table beside the published MedMNIST numbers, resumable."""

from __future__ import annotations

import re

import pytest

from smallmed import SmallmedError
from smallmed.studies import run_study
from smallmed.studies.medmnist import MedMNISTStudy
from tests.conftest import make_medmnist


def test_table_pairs_the_recipes_by_seed_and_resumes_without_training_again(tmp_path):
    data = make_medmnist(tmp_path / "pneumoniamnist.npz", n=(48, 16, 16))
    kw = dict(data=(str(data),), model="small_cnn", seeds=(0, 1, 2), epochs=(1,))
    report = run_study("medmnist", "quick", out=tmp_path / "s", **kw)
    text = report.read_text()
    # both recipes with three seeds each, the published rows of the set, the paired line with an interval
    assert re.search(r"\| baseline \| [01]\.\d{4} \[", text) and re.search(r"\| strong \| [01]\.\d{4} \[", text)
    assert text.count("| 3/3 |") == 2
    assert "MedMNIST v2 Google AutoML Vision | 0.991 | 0.946" in text
    assert "strong - baseline, test AUC, paired by seed: " in text and "p=" in text
    assert "--recipe strong --epochs 1 --seed S" in text
    assert (tmp_path / "s" / "comparison.png").stat().st_size > 1000 and "(comparison.png)" in text
    rows = (tmp_path / "s" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 6
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "runs").rglob("metrics.json")}
    run_study("medmnist", "quick", out=tmp_path / "s", **kw)  # resumed: no run trained again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "runs").rglob("metrics.json")} == stamps


def test_epochs_per_set_must_match_the_sets():
    with pytest.raises(SmallmedError, match=r"epochs=\[1, 2, 3\]: expected one value, or one per data set \(2\)"):
        MedMNISTStudy(data=("a", "b"), epochs=(1, 2, 3))


def test_the_tuned_row_trains_the_searchs_best_recipe_with_the_same_seeds(tmp_path):
    pytest.importorskip("optuna")
    data = make_medmnist(tmp_path / "pneumoniamnist.npz", n=(48, 16, 16))
    kw = dict(data=(str(data),), model="small_cnn", seeds=(0,), epochs=(1,), recipes=("strong",), tune_budget_m=0.01)
    text = run_study("medmnist", "quick", out=tmp_path / "s", **kw).read_text()
    assert (tmp_path / "s" / "tune" / "pneumoniamnist" / "best.yaml").exists()
    assert "| tuned | " in text and "tune/pneumoniamnist/best.yaml --seed S" in text
    assert (tmp_path / "s" / "runs" / "pneumoniamnist" / "tuned" / "s0" / "metrics.json").exists()
