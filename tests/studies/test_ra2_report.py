"""The RA2 study's knee table, from run folders written here: constants, recipes over seeds, the paired
comparisons (against the median, hand source against scratch), and the runs still missing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import yaml

from smallmed.studies import configure
from smallmed.studies.ra2_scoring import knee_section


def _run(folder, label, pred, *, val_mae, best=3, epochs=4):
    folder.mkdir(parents=True)
    rows = "\n".join(f"{i},{y:g},{p:.4f}" for i, (y, p) in enumerate(zip(label, pred)))
    (folder / "test_predictions.csv").write_text("index,label,pred\n" + rows + "\n")
    (folder / "metrics.json").write_text(
        json.dumps({"wall_seconds": 60.0, "epochs": epochs, "best_epoch": best, "val": {"val_mae": val_mae}})
    )
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": "knees.npz", "task": "regression", "epochs": 4}))


def test_knee_table_pairs_recipes_with_the_constant_and_the_hand_source_with_scratch(tmp_path):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, 300).astype(float)
    study = dataclasses.replace(
        configure("ra2", "quick"), knee_sizes=(32,), variants=("r18-hands", "r18"), seeds=(0,), one_seed=()
    )
    runs = tmp_path / "runs" / "knee32"
    # the hand source close to the truth, scratch noisier: both beat the median, the source beats scratch
    _run(runs / "r18-hands" / "s0", label, label + rng.normal(0, 0.3, 300), val_mae=0.3)
    _run(runs / "r18" / "s0", label, label + rng.normal(0, 0.9, 300), val_mae=0.7)
    lines, rows, summary = knee_section(study, tmp_path, np.ones(1000), None)
    text = "\n".join(lines)
    assert "| training median (constant): grade 1 |" in text and "| r18-hands:" in text and "| r18:" in text
    assert [r["recipe"] for r in rows if r["seed"] != ""] == ["r18-hands", "r18"]
    hands = summary["sizes"][32]["r18-hands"]
    assert hands["vs_median"]["mae"]["hi"] < 0 < hands["vs_median"]["qwk"]["lo"]  # skill over the constant
    vs = summary["hands_vs_scratch"][32]
    assert vs["mae"]["hi"] < 0 and "Hand source against from scratch at 32 px" in text
    assert summary["runs"] == 2 and summary["missing"] == [] and (tmp_path / "confusion_knee32.png").exists()
    # a recipe without its run is listed as missing, not silently dropped
    lines, rows, summary = knee_section(dataclasses.replace(study, seeds=(0, 1)), tmp_path, np.ones(1000), None)
    assert summary["missing"] == ["r18-hands at 32 px seed 1", "r18 at 32 px seed 1"]


def test_cutpoints_fitted_on_validation_fix_a_biased_scorer(tmp_path):
    """A scorer whose outputs sit 0.6 grades too high: rounding misgrades most knees, cut-points fitted on the
    validation knees' scores (val_scores.npy) recover the grades on the test knees."""
    rng = np.random.default_rng(1)
    label, vlab = rng.integers(0, 5, 400).astype(float), rng.integers(0, 5, 200).astype(float)
    study = dataclasses.replace(configure("ra2", "quick"), knee_sizes=(32,), variants=("r18",), seeds=(0,))
    run = tmp_path / "runs" / "knee32" / "r18" / "s0"
    _run(run, label, label + 0.6 + rng.normal(0, 0.1, 400), val_mae=0.6)
    np.save(run / "val_scores.npy", (vlab + 0.6 + rng.normal(0, 0.1, 200)).astype(np.float32))
    lines, _, summary = knee_section(study, tmp_path, np.ones(1000), None, (np.zeros((200, 8, 8)), vlab))
    r18 = summary["sizes"][32]["r18"]
    assert r18["acc"] < 0.7 and r18["cutpoints"]["acc"] > 0.95  # rounding vs fitted cut-points on test
    assert r18["cutpoints"]["vs_rounding"]["mae"]["hi"] < 0
    assert "Grades from cut-points fitted on the 200 validation knees" in "\n".join(lines)
    # no validation scores and no checkpoint: no cut-point table, nothing invented
    (run / "val_scores.npy").unlink()
    lines, _, summary = knee_section(study, tmp_path, np.ones(1000), None, (np.zeros((200, 8, 8)), vlab))
    assert "cutpoints" not in summary["sizes"][32]["r18"] and "cut-points" not in "\n".join(lines)


def test_the_default_localiser_is_the_cheapest_unless_another_is_clearly_better_on_adult_hands():
    from smallmed.studies.ra2 import PRESETS, _default_localiser_lines

    study = PRESETS["full"]  # localiser_kinds: unet first, then keypoint-rcnn

    def loc(unet_adult, rcnn_adult):
        return {
            "hands_test": {
                "by_kind": {
                    "unet": {"frac_error": 0.018, "seconds": 300.0},
                    "keypoint-rcnn": {"frac_error": 0.014, "seconds": 4600.0},
                }
            },
            "hands_ra2": {"localiser": {"frac_error": unet_adult}, "keypoint-rcnn": {"frac_error": rcnn_adult}},
        }

    assert "Default localiser: the U-Net" in _default_localiser_lines(study, loc(0.0237, 0.0236))[0]
    assert "Default localiser: the Keypoint R-CNN" in _default_localiser_lines(study, loc(0.0237, 0.015))[0]
    assert _default_localiser_lines(study, {"hands_test": {}, "hands_ra2": {}}) == []


def test_other_seeds_and_the_ensemble_run_only_at_the_sizes_asked(tmp_path):
    """``spread_sizes`` keeps the main recipes' other seeds to those sizes (the rest is not listed as missing),
    ``ensemble_size`` puts the fold ensemble and its recipe choice there; a study folder run without these
    settings accepts them (they only choose cells), and sizes outside ``knee_sizes`` are refused."""
    import pytest

    from smallmed.errors import SmallmedError
    from smallmed.studies.ra2 import ensemble_recipe, ensemble_size, knee_stages, run_ra2_study
    from smallmed.studies.settings import check_settings

    base = dataclasses.replace(
        configure("ra2", "quick"),
        knee_sizes=(48, 32),
        variants=("r18", "base"),
        seeds=(0, 1, 2),
        one_seed=(),
        ensemble="best",
    )
    study = dataclasses.replace(base, spread_sizes=(32,), ensemble_size=32)
    (tmp_path / "data").mkdir()
    for name in ["knee_subset", *(f"knee_fold{k}" for k in range(study.folds))]:
        np.savez(tmp_path / "data" / f"{name}.npz", train_labels=np.zeros(4))
    stages = knee_stages(study, tmp_path, None)
    assert {(c.image_size, c.seed) for c in stages[0]} == {(48, 0), (32, 0)}
    assert {(c.image_size, c.seed) for c in stages[3]} == {(32, 1), (32, 2)}
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, 50).astype(float)
    for r, v in (("r18", 0.9), ("base", 0.6)):  # r18 better at 48 px, base at 32 px: the choice is at 32
        _run(tmp_path / "runs" / "knee48" / r / "s0", label, label, val_mae=1.5 - v)
        for s in (0, 1, 2):
            _run(tmp_path / "runs" / "knee32" / r / f"s{s}", label, label, val_mae=v)
    assert ensemble_size(study) == 32 and ensemble_recipe(study, tmp_path) == "base"
    _, _, summary = knee_section(study, tmp_path, np.ones(100), None)
    assert summary["missing"] == []  # no seed 1 or 2 at 48 px is owed
    out = tmp_path / "s"
    check_settings(out, base)
    check_settings(out, dataclasses.replace(base, spread_sizes=(32,)))  # a grid field: finished cells stay valid
    with pytest.raises(SmallmedError, match="ensemble_size: saved 0, now 32"):  # the folds would change size
        check_settings(out, study)
    with pytest.raises(SmallmedError, match=r"spread_sizes=\[64\]: expected sizes from knee_sizes=\[48, 32\]"):
        run_ra2_study(dataclasses.replace(study, spread_sizes=(64,)), tmp_path / "t")
    with pytest.raises(SmallmedError, match=r"ensemble_size=64: expected 0 or a size from knee_sizes"):
        run_ra2_study(dataclasses.replace(study, ensemble_size=64), tmp_path / "t")
    # the choice recorded at one size is not silently reused at another
    with pytest.raises(SmallmedError, match="chosen at 32 px, not at ensemble_size=48"):
        ensemble_recipe(dataclasses.replace(study, ensemble_size=48), tmp_path)
    # a DenseNet capped to the smallest size: its ensemble runs there unless told otherwise
    capped = dataclasses.replace(base, densenet_epochs=1, ensemble="base")
    assert ensemble_size(capped, "base") == 32 and ensemble_size(capped) == 48
    with pytest.raises(SmallmedError, match="the ensemble's recipe base runs at 32 px only"):
        run_ra2_study(dataclasses.replace(capped, ensemble_size=48), tmp_path / "t")


def test_a_resumed_study_reuses_recorded_localisation_without_weights(tmp_path, monkeypatch):
    """Recorded localisation and adult results are reused (no localiser is trained or opened), their run folders
    found under the study folder wherever it now is; a study without them localises."""
    from smallmed.studies import ra2

    rec = {
        "localisation": {
            "localiser_runs": {"unet": "/elsewhere/runs/localiser-hands", "keypoint-rcnn": "/elsewhere/runs/rcnn"},
            "localiser_run": "/elsewhere/runs/localiser-hands",
            "hands_test": {},
        }
    }
    got = ra2._recorded_localisation(rec, ("unet",), tmp_path)
    assert got["localiser_runs"] == {
        "unet": str(tmp_path / "runs/localiser-hands"),
        "keypoint-rcnn": str(tmp_path / "runs/rcnn"),
    }
    assert got["localiser_run"] == str(tmp_path / "runs/localiser-hands")
    assert ra2._recorded_localisation(rec, ("unet", "keypoint-rcnn"), tmp_path) is not None
    only_unet = {"localisation": {"localiser_runs": {"unet": "a"}, "localiser_run": "a"}}
    assert ra2._recorded_localisation(only_unet, ("keypoint-rcnn",), tmp_path) is None
    assert ra2._recorded_localisation({}, ("unet",), tmp_path) is None

    # the study's resume path: with the record, localisation never runs
    study = dataclasses.replace(configure("ra2", "quick"), localiser_kinds=("unet",), adult_epochs=0, boneage_size=0)
    out = tmp_path / "study"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(rec))
    calls: list[str] = []
    monkeypatch.setattr(ra2, "_path", lambda study, name: tmp_path)
    monkeypatch.setattr(ra2, "hand_source_path", lambda study: None)
    monkeypatch.setattr(ra2, "knee_stages", lambda study, out, source: [[], [], [], []])
    monkeypatch.setattr(ra2, "ensemble_cells", lambda study, out, source: [])
    monkeypatch.setattr(ra2, "run_grid", lambda cells: [])
    monkeypatch.setattr(ra2, "localisation", lambda *a, **k: calls.append("localisation"))
    monkeypatch.setattr(ra2, "write_report", lambda study, out, state, sec: calls.append(state["loc"]["localiser_run"]))
    monkeypatch.setattr(ra2, "_e2e_localiser", lambda study, out, loc, recorded: {"run": loc["localiser_run"]})
    monkeypatch.setattr(ra2, "end_to_end", lambda study, out, run: calls.append(f"e2e {Path(run).name}") or {})
    ra2.run_ra2_study(study, out)
    assert "localisation" not in calls and "e2e localiser-hands" in calls
    assert set(calls) - {"e2e localiser-hands"} == {str(out / "runs/localiser-hands")}


def test_the_end_to_end_stage_retrains_a_unet_left_without_weights(tmp_path, monkeypatch):
    """Only results left (a study folder checked in without weights): the U-Net is trained again with its
    recipe in a sibling folder (the recorded run is left as it was), once; a run with weights, or a Keypoint
    R-CNN, is used as it is."""
    import pytest

    from smallmed.errors import SmallmedError
    from smallmed.studies import ra2

    calls = []

    def fake_grid(cfgs):
        calls.append(cfgs[0])
        (Path(cfgs[0].out) / "best.pt").parent.mkdir(parents=True, exist_ok=True)
        (Path(cfgs[0].out) / "best.pt").write_bytes(b"")

    monkeypatch.setattr(ra2, "_hand10", lambda study, out: out / "data" / "hand10.npz")
    monkeypatch.setattr(ra2, "run_grid", fake_grid)
    run = tmp_path / "runs" / "localiser-hands"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    study = configure("ra2", "quick")
    with pytest.raises(SmallmedError, match="Keypoint R-CNN localiser's weights were not kept"):
        ra2._with_weights(study, tmp_path, "keypoint-rcnn", str(run))
    again = str(run) + "-retrained"
    assert ra2._with_weights(study, tmp_path, "unet", str(run)) == (again, True)
    assert [(c.model, c.out, c.epochs) for c in calls] == [("unet", again, study.localiser_epochs)]
    assert (run / "metrics.json").read_text() == "{}"
    assert ra2._with_weights(study, tmp_path, "unet", str(run)) == (again, False) and len(calls) == 1
    (run / "best.pt").write_bytes(b"")
    assert ra2._with_weights(study, tmp_path, "unet", str(run)) == (str(run), False)
    assert ra2._with_weights(study, tmp_path, "keypoint-rcnn", str(run)) == (str(run), False)


def test_an_ensemble_of_heads_averages_probabilities_not_grades(tmp_path):
    """Fold models with a classification head are combined by their mean probabilities (argmax), an ordinal
    head by its mean P(y > k) (the CORN count): rounding the mean expected grade would turn a classifier
    into a regressor."""
    from smallmed.studies.ra2_scoring import read_predictions, seed_mean

    def write(name, header, rows):
        d = tmp_path / name
        d.mkdir()
        (d / "test_predictions.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
        return read_predictions(d)

    # both members put most mass on grade 0 and the rest on grade 4: expected grade ~1.6, argmax 0
    cls = [
        write(f"c{k}", "index,label,pred,p_0,p_1,p_2,p_3,p_4,score", [f"0,0,0,{p0},0,0,0,{1 - p0},{4 * (1 - p0)}"])
        for k, p0 in enumerate((0.6, 0.55))
    ]
    got = seed_mean(cls)
    assert got["grade"].tolist() == [0.0] and np.rint(got["score"]).tolist() == [2.0]
    ordinal = [
        write(
            f"o{k}",
            "index,label,pred,score,p_gt_0,p_gt_1,p_gt_2,p_gt_3",
            [f"0,2,{g},{sum(ps)},{','.join(map(str, ps))}"],
        )
        for k, (g, ps) in enumerate(((2, (0.9, 0.6, 0.2, 0.1)), (1, (0.8, 0.45, 0.3, 0.2))))
    ]
    assert seed_mean(ordinal)["grade"].tolist() == [2.0]  # mean P(y>1) = 0.525 > 0.5
    reg = [write("r", "index,label,pred", ["0,1,1.6"])]
    assert seed_mean(reg)["grade"].tolist() == [2.0]
