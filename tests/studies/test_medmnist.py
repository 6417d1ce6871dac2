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


def test_a_search_added_to_a_finished_study_keeps_its_runs_and_trains_the_best_recipe(tmp_path):
    pytest.importorskip("optuna")
    data = make_medmnist(tmp_path / "pneumoniamnist.npz", n=(48, 16, 16))
    kw = dict(data=(str(data),), model="small_cnn", seeds=(0,), epochs=(1,), recipes=("baseline", "strong"))
    text = run_study("medmnist", "quick", out=tmp_path / "s", **kw).read_text()
    assert "| tuned |" not in text and "- tuned:" not in text
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "runs").rglob("metrics.json")}
    text = run_study("medmnist", "quick", out=tmp_path / "s", tune_budget_m=0.01, **kw).read_text()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the recipes' runs were kept, not trained again
    assert (tmp_path / "s" / "tune" / "pneumoniamnist" / "best.yaml").exists()
    assert "| tuned | " in text and "tune/pneumoniamnist/best.yaml --seed S" in text
    assert (tmp_path / "s" / "runs" / "pneumoniamnist" / "tuned" / "s0" / "metrics.json").exists()
    # what the search did, from its trials.csv, beside the row; tuned paired with baseline and with strong
    assert re.search(
        r"- tuned: `smallmed tune` from the strong recipe, budget 0.01 min, on train/val only "
        r"\(`tune/pneumoniamnist/`, paths relative to the study folder\): 1 trial\(s\) \(1 complete\), \d+ min in "
        r"finished or pruned trials; chose trial 0, the starting recipe \(strong\): mean validation loss over 5 "
        r"folds of train\+val \d\.\d{4}\.",
        text,
    )
    assert re.search(
        r"- The search's ensemble, the best trial's 5 fold models averaged \(inference only, test split "
        r"read once\): test AUC \d\.\d{4}, accuracy \d\.\d{4}, balanced accuracy \d\.\d{4}\.",
        text,
    )
    assert "- tuned - baseline, test AUC, paired by seed: " in text
    assert "- tuned - strong, test AUC, paired by seed: " in text
    # a finished search is not run again; its budget is not changed once set
    mtime = (tmp_path / "s" / "tune" / "pneumoniamnist" / "study.db").stat().st_mtime_ns
    run_study("medmnist", "quick", out=tmp_path / "s", tune_budget_m=0.01, **kw)
    assert (tmp_path / "s" / "tune" / "pneumoniamnist" / "study.db").stat().st_mtime_ns == mtime
    with pytest.raises(SmallmedError, match=r"tune_budget_m: saved 0\.01, now 0\.02"):
        run_study("medmnist", "quick", out=tmp_path / "s", tune_budget_m=0.02, **kw)


def test_the_search_line_says_a_search_under_way_is_not_finished(tmp_path):
    from smallmed.studies.medmnist import _tune_lines

    assert _tune_lines(tmp_path, "x", 60) == ["- tuned: the search (60 min) has not begun."]
    (tmp_path / "tune" / "x").mkdir(parents=True)
    (tmp_path / "tune" / "x" / "trials.csv").write_text(
        "number,state,value,seconds,param_lr,run\n0,COMPLETE,0.5,60.0,0.001,t/a\n1,RUNNING,,,0.0004,t/b\n"
    )
    assert _tune_lines(tmp_path, "x", 60) == [
        "- tuned: the search (60 min) is under way: 2 trial(s) (1 complete, 1 running) so far."
    ]
    (tmp_path / "tune" / "x" / "best.yaml").write_text("lr: 0.0004\n")
    for k in range(5):  # the chosen trial was cross-validated: its fold runs lie in its folder
        (tmp_path / "tune" / "x" / "t" / "b" / f"fold{k}").mkdir(parents=True)
    (tmp_path / "tune" / "x" / "trials.csv").write_text(
        "number,state,value,seconds,param_lr,run\n0,FAIL,,86400.0,0.001,t/a\n1,COMPLETE,0.5,60.0,0.001,t/a\n"
        "2,COMPLETE,0.4,120.0,0.0004,t/b\n3,PRUNED,0.6,60.0,0.002,t/c\n"
    )
    line = _tune_lines(tmp_path, "x", 60)[0]
    assert "4 trial(s) (2 complete, 1 fail, 1 pruned), 4 min in finished or pruned trials" in line
    assert (
        "chose trial 2, lr=0.0004 (the rest as strong): mean validation loss over 5 folds of train+val 0.4000." in line
    )


def test_a_run_on_another_device_is_named_beside_its_seconds_per_epoch(tmp_path):
    import json

    from smallmed.studies.medmnist import write_report

    data = make_medmnist(tmp_path / "pneumoniamnist.npz", n=(48, 16, 16))
    study = MedMNISTStudy(data=(str(data),), model="small_cnn", seeds=(0,), epochs=(1,), recipes=("strong",))
    out = tmp_path / "s"
    run_study(
        "medmnist", "quick", out=out, data=study.data, model="small_cnn", seeds=(0,), epochs=(1,), recipes=("strong",)
    )
    assert "(cuda)" not in write_report(study, out, 0.0).read_text()
    m = out / "runs" / "pneumoniamnist" / "strong" / "s0" / "metrics.json"
    m.write_text(json.dumps({**json.loads(m.read_text()), "device": "cuda:0"}))
    assert re.search(r"\| 1/1 \| \d+\.\d \(cuda\) \|", write_report(study, out, 0.0).read_text())


def test_the_search_is_placed_against_the_seed_range_of_the_best_hand_recipe():
    from smallmed.studies.medmnist import _spread_line

    def runs(*aucs):
        return [{"test": {"auc": a}} for a in aucs]

    done = {"baseline": runs(0.70, 0.72, 0.74), "strong": runs(0.74, 0.75, 0.76), "tuned": runs(0.75, 0.76, 0.77)}
    line = _spread_line(done, ["baseline", "strong", "tuned"])[0]
    assert "tuned mean test AUC 0.7600 (3 seed(s)) is within the seed range [0.7400, 0.7600]" in line
    assert "best hand recipe (strong," in line and "; inside its interval)." in line
    done["tuned"] = runs(0.60, 0.61, 0.62)
    assert " is below the seed range" in _spread_line(done, ["baseline", "strong", "tuned"])[0]
    done["strong"] = runs(0.74, 0.75)  # fewer than 3 seeds of a hand recipe: it is not a spread
    assert "best hand recipe (baseline," in _spread_line(done, ["baseline", "strong", "tuned"])[0]
    assert _spread_line({"strong": runs(0.7, 0.7, 0.7), "tuned": []}, ["strong", "tuned"]) == []
