"""smallmed tune: the search never reads the test split, resumes to the same trials, and refuses bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import make_medmnist

from smallmed import SmallmedError

pytest.importorskip("optuna")


def _tc(data, **kw):
    from smallmed.tune import DEFAULT_SPACE, TuneConfig

    base = {
        "data": str(data),
        "model": "small_cnn",
        "recipe": "strong",
        "epochs": 2,
        "batch_size": 16,
        "image_size": 16,
    }
    space = {
        "lr": DEFAULT_SPACE["lr"],
        "label_smoothing": DEFAULT_SPACE["label_smoothing"],
        "augment": ["none", "flip"],
    }
    return TuneConfig(
        **{"base": base, "space": space, "fixed": ("epochs",), "cv": "0", "final_seeds": 0, "pruner": "none", **kw}
    )


def _trials(out):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(out / "trials.csv"))]


def test_the_search_is_unchanged_when_the_test_labels_are_poisoned(tmp_path):
    from smallmed.tune import tune

    clean = make_medmnist(tmp_path / "clean.npz", n=(48, 24, 24), size=16)
    arrays = dict(np.load(clean))
    arrays["test_labels"] = 1 - arrays["test_labels"]  # every test label wrong
    arrays["test_images"] = arrays["test_images"][::-1].copy()
    np.savez(tmp_path / "poisoned.npz", **arrays)
    tune(_tc(clean, trials=2), tmp_path / "a")
    tune(_tc(tmp_path / "poisoned.npz", trials=2), tmp_path / "b")
    a, b = _trials(tmp_path / "a"), _trials(tmp_path / "b")
    assert [r["value"] for r in a] == [r["value"] for r in b] and len(a) == 2
    assert (tmp_path / "a" / "best.yaml").read_text().replace("clean", "X") == (
        tmp_path / "b" / "best.yaml"
    ).read_text().replace("poisoned", "X")


def test_a_search_resumed_with_more_trials_draws_what_one_run_draws(tmp_path):
    from smallmed.tune import tune

    data = make_medmnist(tmp_path / "d.npz", n=(48, 24, 24), size=16)
    tune(_tc(data, trials=2), tmp_path / "once")
    tune(_tc(data, trials=1), tmp_path / "twice")
    report = tune(_tc(data, trials=2), tmp_path / "twice")  # the same folder: the study resumes from study.db
    assert _trials(tmp_path / "once") == _trials(tmp_path / "twice")
    assert "Best trial" in report.read_text()
    with pytest.raises(SmallmedError, match="other settings"):
        tune(_tc(data, trials=2, seed=5), tmp_path / "twice")


def test_a_trial_killed_while_running_is_run_again(tmp_path):
    import optuna

    from smallmed.tune import STUDY, tune

    data = make_medmnist(tmp_path / "d.npz", n=(48, 24, 24), size=16)
    tune(_tc(data, trials=1), tmp_path / "s")
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)})  # left RUNNING, as after a kill
    tune(_tc(data, trials=2), tmp_path / "s")
    states = [r["state"] for r in _trials(tmp_path / "s")]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 2


def test_final_runs_read_the_test_split_and_compare_with_the_start(tmp_path):
    from smallmed.tune import tune

    data = make_medmnist(tmp_path / "d.npz", n=(48, 24, 24), size=16)
    text = tune(_tc(data, trials=1, final_seeds=1, cv="auto"), tmp_path / "f").read_text()
    assert "mean over 5 folds" in text and "tuned (best.yaml)" in text and "too few for an interval" in text
    assert (tmp_path / "f" / "final" / "tuned" / "s0" / "metrics.json").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--budget", "soon"], "--budget 'soon'"),
        (["--trials", "2", "--space", "SPACE"], "search space key='lrr'"),
        (["--trials", "2", "--set", "lr=0.001", "--space", "ONLY_LR"], "search space is empty"),
        (["--trials", "2", "--cv", "1"], "cv='1'"),
        ([], "needs a bound"),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, capsys, args, needle):
    from smallmed.cli import main

    data = make_medmnist(tmp_path / "d.npz", n=(48, 24, 24), size=16)
    (tmp_path / "space.yaml").write_text("lrr: {low: 0.001, high: 0.01}\n")
    (tmp_path / "only_lr.yaml").write_text("lr: {low: 0.001, high: 0.01}\n")
    args = [
        str(tmp_path / "space.yaml") if a == "SPACE" else str(tmp_path / "only_lr.yaml") if a == "ONLY_LR" else a
        for a in args
    ]
    assert main(["tune", "--data", str(data), "--model", "small_cnn", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_the_ensemble_averages_the_best_trials_and_plots_are_drawn(tmp_path):
    from smallmed.train.ensemble import Ensemble
    from smallmed.tune import tune

    data = make_medmnist(tmp_path / "d.npz", n=(48, 24, 24), size=16)
    tune(_tc(data, trials=3, ensemble=2), tmp_path / "e")
    ens = __import__("json").loads((tmp_path / "e" / "ensemble" / "metrics.json").read_text())
    rows = sorted((r for r in _trials(tmp_path / "e") if r["state"] == "COMPLETE"), key=lambda r: float(r["value"]))
    want = list(dict.fromkeys(r["run"] for r in rows))[:2]
    assert ens["members"] == want
    again = Ensemble.load([tmp_path / "e" / m for m in want]).evaluate(split="test")
    assert abs(again["auc"] - ens["test"]["auc"]) < 1e-9 and again["members"] == 2
    assert "Ensemble of the best 2 trials' models" in (tmp_path / "e" / "report.md").read_text()
    assert (tmp_path / "e" / "history.png").stat().st_size > 1000


def test_a_resumed_search_counts_its_own_seconds_not_the_time_the_machine_was_off(tmp_path, monkeypatch):
    import sqlite3

    import optuna

    import smallmed.tune as tune_mod

    monkeypatch.setattr(tune_mod, "run_seconds", lambda study, folds: 1.0)
    data = make_medmnist(tmp_path / "d.npz", n=(48, 24, 24), size=16)
    tune_mod.tune(_tc(data, trials=1, budget_s=600), tmp_path / "s")
    study = optuna.load_study(study_name=tune_mod.STUDY, storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    assert 0 < study.user_attrs["search_seconds"] < 600
    study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)})  # killed while running...
    with sqlite3.connect(tmp_path / "s" / "study.db") as db:  # ... a day ago, and the machine was off since
        db.execute("UPDATE trials SET datetime_start = datetime('now', '-1 day') WHERE state = 'RUNNING'")
    tune_mod.tune(_tc(data, trials=2, budget_s=600), tmp_path / "s")
    states = [r["state"] for r in _trials(tmp_path / "s")]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1  # the budget was not spent by the downtime


def test_a_budget_covers_the_final_runs(tmp_path, monkeypatch):
    import smallmed.tune as tune_mod

    data = make_medmnist(tmp_path / "d.npz", n=(48, 24, 24), size=16)
    # a run measured at 1,000 s: seed 1 of two recipes (2,000 s; seed 0 is the trials' own) fills 30 minutes at once
    monkeypatch.setattr(tune_mod, "run_seconds", lambda study, folds: 1000.0)
    text = tune_mod.tune(_tc(data, budget_s=1800, final_seeds=2, ensemble=0), tmp_path / "b").read_text()
    assert [r["state"] for r in _trials(tmp_path / "b")] == ["COMPLETE"]  # trial 0 only: it measures the cost
    assert "budget 30 min" in text
    assert (tmp_path / "b" / "final" / "tuned" / "s1" / "metrics.json").exists()


def test_a_final_run_that_a_trial_already_trained_only_reads_the_test_split(tmp_path):
    from smallmed.tune import DEFAULT_SPACE, tune

    data = make_medmnist(tmp_path / "d.npz", n=(48, 24, 20), size=16)
    space = {"lr": DEFAULT_SPACE["lr"], "augment": ["flip", "trivial"]}  # the strong recipe's own values inside
    text = tune(_tc(data, trials=1, final_seeds=2, ensemble=0, space=space), tmp_path / "r").read_text()
    (trial,) = _trials(tmp_path / "r")  # trial 0, the starting recipe, is the best
    final = tmp_path / "r" / "final"
    trial_hist = (tmp_path / "r" / trial["run"] / "history.csv").read_text()
    assert (final / "tuned" / "s0" / "history.csv").read_text() == trial_hist  # the same epochs, not trained again
    assert "starts from trial 0" in (final / "tuned" / "s0" / "train.log").read_text()
    m = __import__("json").loads((final / "tuned" / "s0" / "metrics.json").read_text())
    assert "auc" in m["test"] and m["data"]["counts"]["test"]["images"] == 20  # the test split, read at the end
    assert "starts from trial" not in (final / "tuned" / "s1" / "train.log").read_text()  # another seed: trained
    assert "same runs give both rows" in text and not (final / "start").exists()


def test_a_trial_running_past_the_deadline_is_stopped_as_pruned():
    import optuna

    from smallmed.tune import _Report

    study = optuna.create_study()
    trial = study.ask()
    _Report(trial, deadline=None).on_epoch_end(0, {"val_loss": 1.0})  # no deadline: goes on
    with pytest.raises(optuna.TrialPruned):
        _Report(trial, deadline=0.0).on_epoch_end(1, {"val_loss": 0.9})
    assert trial.user_attrs["stopped"] == "budget"


def test_a_cross_validated_trial_past_the_deadline_stops_inside_its_fold(tmp_path):
    import optuna

    from smallmed.tune import _Deadline, _objective

    data = make_medmnist(tmp_path / "d.npz", n=(48, 24, 24), size=16)
    trial = optuna.create_study().ask()
    with pytest.raises(optuna.TrialPruned):
        _objective(_tc(data, trials=1), tmp_path / "s", folds=2, deadline=0.0)(trial)
    assert trial.user_attrs["stopped"] == "budget"
    (fold0,) = (tmp_path / "s").rglob("fold0")
    assert len((fold0 / "history.csv").read_text().splitlines()) == 1 + 1  # one epoch of two, then stopped
    assert not list((tmp_path / "s").rglob("fold1"))
    _Deadline(trial, 0.0, epochs=2, last_fold=True).on_epoch_end(1, {})  # the last epoch of the last fold is kept
    with pytest.raises(optuna.TrialPruned):
        _Deadline(trial, 0.0, epochs=2, last_fold=False).on_epoch_end(1, {})


def test_each_trial_says_how_it_ended_and_no_trial_says_test(tmp_path, caplog):
    import logging

    from smallmed.tune import tune

    data = make_medmnist(tmp_path / "d.npz", n=(48, 24, 24), size=16)
    with caplog.at_level(logging.INFO, logger="smallmed"):
        tune(_tc(data, trials=2, ensemble=0), tmp_path / "p")
    lines = [r.getMessage() for r in caplog.records]
    search = lines[: next(i for i, m in enumerate(lines) if m.startswith("tune: search done"))]
    assert any(m.startswith("tune: trial 1: lr=") for m in search)
    assert any(m.startswith("tune: trial 1 validation loss") and "best so far trial" in m for m in search)
    assert not any(m.startswith("test ") for m in search) and any(m.startswith("validation auc") for m in search)


def test_the_reserve_counts_the_starting_recipe_when_no_trial_ran_it(monkeypatch):
    from types import SimpleNamespace

    import smallmed.tune as tune_mod

    monkeypatch.setattr(tune_mod, "run_seconds", lambda study, folds: 600.0)
    tc = SimpleNamespace(base={"seed": 0, "epochs": 10}, final_seeds=1)
    trial0 = SimpleNamespace(user_attrs={"start": True})
    # the best and the start were both trials at seed 0: only two epochs are kept back
    assert tune_mod.final_cost(tc, SimpleNamespace(trials=[trial0]), 0) == 120.0
    # trial 0 could not run the start (a value outside the space): its final run trains
    assert tune_mod.final_cost(tc, SimpleNamespace(trials=[SimpleNamespace(user_attrs={})]), 0) == 720.0
    # cross-validated trials trained no final run
    assert tune_mod.final_cost(tc, SimpleNamespace(trials=[trial0]), 5) == 1320.0
