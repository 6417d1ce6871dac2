"""RA2 scoring: schema, score tables, the challenge's metrics, the seed's scorer building blocks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED

from smallmed import SmallmedError
from smallmed.ra2 import COLUMNS, MAX_TOTAL, SCHEMA, challenge_metrics, read_scores, totals, write_table
from smallmed.ra2.schema import ScoreTable

EXAMPLES = SHARED / "ra2_examples"


def test_schema_has_the_challenge_columns_and_ranges():
    assert len(SCHEMA) == 86 and MAX_TOTAL == 448
    kinds = {(a.limb[1], a.kind): 0 for a in SCHEMA}
    for a in SCHEMA:
        kinds[(a.limb[1], a.kind)] += 1
    assert kinds == {("H", "erosion"): 32, ("F", "erosion"): 12, ("H", "narrowing"): 30, ("F", "narrowing"): 12}
    by = {a.column: a for a in SCHEMA}
    assert (by["LH_mcp_E__ip"].high, by["RF_mtp_E__5"].high, by["LH_wrist_J__radcar"].high) == (5, 10, 4)
    assert len(set(COLUMNS)) == 90


def _table(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(
            f, fieldnames=[c for c in COLUMNS if c not in ("Overall_Tol", "Overall_erosion", "Overall_narrowing")]
        )
        w.writeheader()
        w.writerows(rows)
    return path


def _random_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        r = {"Patient_ID": f"P{i:03d}"}
        for a in SCHEMA:
            r[a.column] = int(rng.integers(a.low, a.high + 1)) if rng.random() < 0.3 else 0
        rows.append(r)
    return rows


def test_totals_and_round_trip(tmp_path):
    rows = _random_rows(5)
    t = read_scores(_table(tmp_path / "t.csv", rows))
    tot = totals(t)
    for r in rows:
        e = sum(r[a.column] for a in SCHEMA if a.kind == "erosion")
        j = sum(r[a.column] for a in SCHEMA if a.kind == "narrowing")
        assert tot[r["Patient_ID"]] == {"Overall_Tol": e + j, "Overall_erosion": e, "Overall_narrowing": j}
    out = write_table(t, tmp_path / "out.csv")
    again = read_scores(out)  # now with totals, which read_scores checks against the joints
    assert again.scores == t.scores
    header = out.read_text().splitlines()[0].split(",")
    assert header == list(COLUMNS)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda r: r.update(LH_mcp_E__ip=6), r"line 2, column LH_mcp_E__ip: 6 is outside 0-5"),
        (lambda r: r.update(RF_mtp_J__5="x"), r"column RF_mtp_J__5: 'x' is not a number"),
        (lambda r: r.update(Bogus=1), r"unknown column 'Bogus'"),
        (lambda r: r.pop("LF_mtp_E__3"), r"column 'LF_mtp_E__3' missing"),
    ],
)
def test_read_scores_names_the_row_and_column(tmp_path, change, match):
    rows = _random_rows(2)
    change(rows[0])
    path = tmp_path / "bad.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{k: r.get(k, "") for k in rows[0]} for r in rows])
    with pytest.raises(SmallmedError, match=match):
        read_scores(path)


def test_duplicate_patient_and_wrong_total(tmp_path):
    rows = _random_rows(2)
    rows[1]["Patient_ID"] = rows[0]["Patient_ID"]
    with pytest.raises(SmallmedError, match="line 3: patient 'P000' appears twice"):
        read_scores(_table(tmp_path / "dup.csv", rows))
    t = read_scores(_table(tmp_path / "ok.csv", _random_rows(1)))
    write_table(t, tmp_path / "w.csv")
    text = (tmp_path / "w.csv").read_text().splitlines()
    cells = text[1].split(",")
    cells[1] = str(int(cells[1]) + 1)
    (tmp_path / "w.csv").write_text("\n".join([text[0], ",".join(cells)]) + "\n")
    with pytest.raises(SmallmedError, match="Overall_Tol"):
        read_scores(tmp_path / "w.csv")


def test_challenge_metrics_match_numpy_by_hand(tmp_path):
    truth_rows, pred_rows = _random_rows(6, 1), _random_rows(6, 2)
    truth = read_scores(_table(tmp_path / "t.csv", truth_rows))
    pred = read_scores(_table(tmp_path / "p.csv", pred_rows))
    m = challenge_metrics(pred, truth)
    # by hand: inverse-frequency weights over the truth's values
    tt = np.array([sum(r[a.column] for a in SCHEMA) for r in truth_rows], float)
    pt = np.array([sum(r[a.column] for a in SCHEMA) for r in pred_rows], float)
    vals, counts = np.unique(tt, return_counts=True)
    w = np.array([1 / counts[list(vals).index(v)] for v in tt])
    assert m["sc1_weighted_mae_total"] == pytest.approx((w * np.abs(tt - pt)).sum() / w.sum())
    cols = [a.column for a in SCHEMA if a.kind == "narrowing"]
    t = np.array([r[c] for r in truth_rows for c in cols], float)
    p = np.array([r[c] for r in pred_rows for c in cols], float)
    vals, counts = np.unique(t, return_counts=True)
    freq = dict(zip(vals.tolist(), counts.tolist()))
    w = np.array([1 / freq[v] for v in t])
    assert m["sc2_weighted_rmse_narrowing"] == pytest.approx(np.sqrt((w * (t - p) ** 2).sum() / w.sum()))
    given = challenge_metrics(pred, truth, weights={k: 1.0 for k in range(11)})
    assert given["sc2_weighted_rmse_narrowing"] == pytest.approx(np.sqrt(((t - p) ** 2).mean()))


def test_missing_prediction_is_left_out_not_invented(tmp_path):
    truth = read_scores(_table(tmp_path / "t.csv", _random_rows(3)))
    pred = ScoreTable({k: dict(v) for k, v in list(truth.scores.items())[:2]})
    pred.scores["P000"]["LH_mcp_E__ip"] = None
    m = challenge_metrics(pred, truth)
    assert m["patients"] == 2 and m["patients_without_prediction"] == 1 and m["erosion_missing"] == 1
    assert totals(pred)["P000"]["Overall_Tol"] is None


@pytest.mark.shared_data
def test_shipped_examples_totals():
    if not (EXAMPLES / "training.csv").exists():
        pytest.skip(f"RA2 examples not present at {EXAMPLES}")
    t = read_scores(EXAMPLES / "training.csv")
    with open(EXAMPLES / "training.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        got = totals(t)[r["Patient_ID"]]
        assert got == {k: float(r[k]) for k in ("Overall_Tol", "Overall_erosion", "Overall_narrowing")}


def test_ra2_cli_evaluate_and_check(tmp_path, capsys):
    from smallmed.cli import main

    truth = _table(tmp_path / "t.csv", _random_rows(4, 1))
    pred = _table(tmp_path / "p.csv", _random_rows(4, 2))
    assert main(["-q", "ra2", "evaluate", str(pred), str(truth)]) == 0
    out = capsys.readouterr().out
    assert "sc2_weighted_rmse_narrowing" in out and "sc3_weighted_rmse_erosion" in out
    assert main(["-q", "ra2", "check", str(truth)]) == 0
    rows = _random_rows(1)
    rows[0]["LH_mcp_E__ip"] = 9
    bad = _table(tmp_path / "bad.csv", rows)
    assert main(["-q", "ra2", "check", str(bad)]) == 2
    assert "outside 0-5" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- scorers


def test_specialised_dropout_probabilities_grow_with_age():
    from smallmed.models.densenet_ra2 import AgeDropout, age_drop_probs

    assert age_drop_probs(5, 0.875) == pytest.approx([0.875, 0.65625, 0.4375, 0.21875, 0.0])
    drop = AgeDropout(0.8).train()
    torch.manual_seed(0)
    segs = [torch.ones(400, 8, 1, 1) for _ in range(5)]
    out = drop(segs).reshape(400, 5, 8)
    dropped = (out == 0).float().mean((0, 2))
    assert dropped.tolist() == pytest.approx(age_drop_probs(5, 0.8), abs=0.03)
    kept = out[out != 0].reshape(-1)
    assert torch.allclose(drop.eval()(segs), torch.ones(400, 40, 1, 1))  # identity at eval
    assert kept.max() == pytest.approx(1 / 0.2)


def test_ra2_densenets_build_and_v2_is_about_0_8m():
    from smallmed import create_model

    v2 = create_model("densenet_ra2_v2", 1, in_chans=1, input_size=32)
    n = sum(p.numel() for p in v2.parameters())
    assert 0.7e6 < n < 0.9e6
    assert v2(torch.randn(2, 1, 32, 32)).shape == (2, 1)


def test_sampling_scheme_counts():
    from smallmed.data.sampling import balanced_indices

    y = np.array([0] * 50 + [1] * 12 + [2] * 5 + [3] * 1)
    idx = balanced_indices(y, np.random.default_rng(0))
    assert np.bincount(y[idx]).tolist() == [12, 12, 12, 12]
    assert len(set(idx[y[idx] == 0].tolist())) == 12  # undersampled without replacement
    assert set(idx[y[idx] == 2].tolist()) == set(np.flatnonzero(y == 2).tolist())  # every rare image kept


# ------------------------------------------------------------------------------------------ the pipeline


def _ra2_set(root: Path, n_patients: int = 3, seed: int = 0, real_hands: np.ndarray | None = None):
    """A tiny RA2-format set: PATIENT-LIMB.png images, labelme landmarks and a score table."""
    import json

    from PIL import Image

    from smallmed.ra2.joints import FOOT_POINTS, HAND_POINTS, write_landmarks

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    (root / "lm").mkdir()
    rows = _random_rows(n_patients, seed)
    for i, r in enumerate(rows):
        pid = r["Patient_ID"]
        for limb in ("LH", "RH", "LF", "RF"):
            names = HAND_POINTS if limb.endswith("H") else FOOT_POINTS
            if real_hands is not None:
                img = np.asarray(Image.fromarray(real_hands[(4 * i + len(pid)) % len(real_hands)]).resize((160, 200)))
            else:
                img = rng.integers(0, 80, (200, 160)).astype(np.uint8)
            pts = {n: (float(rng.uniform(20, 140)), float(rng.uniform(20, 180))) for n in names}
            Image.fromarray(img).save(root / "img" / f"{pid}-{limb}.png")
            (root / "lm" / f"{pid}-{limb}.json").write_text(
                json.dumps(write_landmarks(pts, f"{pid}-{limb}.png", (160, 200)))
            )
    _table(root / "scores.csv", rows)
    return root


def test_pipeline_train_predict_end_to_end(tmp_path, capsys):
    from smallmed.cli import main

    root = _ra2_set(tmp_path / "set")
    args = [
        "-q",
        "ra2",
        "train",
        "--images",
        str(root / "img"),
        "--scores",
        str(root / "scores.csv"),
        "--landmarks",
        str(root / "lm"),
        "--folds",
        "5",
        "--epochs",
        "1",
        "--crop",
        "24",
        "--model",
        "small_cnn",
        "--localiser-epochs",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 fold(s)" in out and "held-out MAE" in out  # 3 patients: 3 folds, not 5, and it says so
    info = json.loads((tmp_path / "run" / "ra2.json").read_text())
    # no localiser given: one per limb kind trained on the group's own landmarks, kept inside the run
    assert info["config"]["localisers"] == {"hand": "localiser-hand", "foot": "localiser-foot"}
    assert (tmp_path / "run" / "localiser-hand" / "metrics.json").exists()
    assert len(info["runs"]["narrowing"]) == 3 and set(
        info["mean_shape"] if "mean_shape" in info else info["config"]["mean_shape"]
    ) == {"hand", "foot"}
    # predict on the same images with a missing limb and an unreadable one
    pred_dir = tmp_path / "new"
    pred_dir.mkdir()
    for p in (root / "img").iterdir():
        if p.name != "P001-LF.png":
            (pred_dir / p.name).write_bytes(p.read_bytes())
    (pred_dir / "P002-RH.png").write_bytes(b"not an image")
    from PIL import Image

    Image.fromarray(np.zeros((200, 160), np.uint8)).save(pred_dir / "P002-LF.png")  # no contrast at all
    assert (
        main(
            [
                "ra2",
                "predict",
                str(tmp_path / "run"),
                str(pred_dir),
                "--out",
                str(tmp_path / "pred.csv"),
                "--joints-out",
                str(tmp_path / "joints"),
                "--overlay",
                str(tmp_path / "overlay"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "patient P001: no LF image" in err and "P002-RH.png: not a readable image" in err
    assert "P002-LF.png: the image is constant" in err
    pred = read_scores(tmp_path / "pred.csv", require_all=False)
    header = (tmp_path / "pred.csv").read_text().splitlines()[0].split(",")
    assert header == list(COLUMNS)
    assert pred.scores["P001"]["LF_mtp_E__1"] is None and pred.scores["P002"]["RH_mcp_E__1"] is None
    assert pred.scores["P002"]["LF_mtp_E__1"] is None
    assert all(v is not None for k, v in pred.scores["P000"].items())
    tot = totals(pred)
    assert tot["P001"]["Overall_Tol"] is None  # a missing limb: no invented total
    p0 = pred.scores["P000"]
    assert tot["P000"]["Overall_Tol"] == pytest.approx(sum(p0.values()), abs=1e-3)
    assert all(v == 0 or v >= 0.5 for v in p0.values())  # scores under 0.5 count as 0
    # --joints-out DIR: one labelme file per scored radiograph, opened by labelme as it is
    joints = {p.stem + ".png": json.loads(p.read_text()) for p in (tmp_path / "joints").glob("*.json")}
    assert len(joints["P000-LH.png"]["shapes"]) == 13 and joints["P000-LF.png"]["imageWidth"] == 160
    _assert_labelme(tmp_path / "joints" / "P000-LH.json", pred_dir / "P000-LH.png")
    # the labelling loop: the files (corrected in labelme) come back as landmarks, and are used as they are
    moved = {"P000-LH": (10.0, 12.0)}
    lh = json.loads((tmp_path / "joints" / "P000-LH.json").read_text())
    lh["shapes"][0]["points"] = [list(moved["P000-LH"])]
    (tmp_path / "joints" / "P000-LH.json").write_text(json.dumps(lh))
    from smallmed.ra2.joints import read_landmarks

    back = read_landmarks(tmp_path / "joints" / "P000-LH.json", "LH")
    assert len(back) == 13 and moved["P000-LH"] in back.values()
    args = ["ra2", "predict", str(tmp_path / "run"), str(pred_dir), "--out", str(tmp_path / "pred2.csv")]
    assert main([*args, "--landmarks", str(tmp_path / "joints"), "--joints-out", str(tmp_path / "j2.json")]) == 0
    capsys.readouterr()
    again = json.loads((tmp_path / "j2.json").read_text())
    assert again["P000-LH.png"]["source"] == "landmarks" and again["P000-LH.png"]["imagePath"] == "P000-LH.png"
    assert moved["P000-LH"] in [tuple(s["points"][0]) for s in again["P000-LH.png"]["shapes"]]
    assert main(["-q", "ra2", "evaluate", str(tmp_path / "pred.csv"), str(root / "scores.csv")]) == 0
    # --overlay: one picture per scored radiograph (none for the missing, unreadable or constant ones)
    pngs = sorted(p.name for p in (tmp_path / "overlay").glob("*.png"))
    assert pngs == sorted(f"{Path(n).stem}.png" for n in joints)
    from PIL import Image as _Image

    assert _Image.open(tmp_path / "overlay" / "P000-LH.png").size[0] > 100


def test_pipeline_bad_inputs(tmp_path, capsys):
    from smallmed.cli import main

    root = _ra2_set(tmp_path / "set", n_patients=1)
    base = ["ra2", "train", "--images", str(root / "img"), "--scores", str(root / "scores.csv"), "--landmarks"]
    assert main([*base, str(tmp_path / "nolm"), "--out", str(tmp_path / "r")]) == 2
    assert "no joint could be cropped" in capsys.readouterr().err
    assert main(["ra2", "predict", str(tmp_path / "nothing"), str(root / "img"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    (tmp_path / "empty").mkdir()
    assert main([*base[:3], str(tmp_path / "empty"), *base[4:], str(root / "lm"), "--out", str(tmp_path / "r2")]) == 2
    assert "no images named PATIENT-LH" in capsys.readouterr().err


def test_flip_and_joint_reassignment():
    from smallmed.ra2.joints import Detection, assign_joints, flip_points, to_left

    img = np.arange(12).reshape(3, 4)
    assert to_left(img, "RH")[0].tolist() == [3, 2, 1, 0] and to_left(img, "LF") is img
    assert flip_points(flip_points({"a": (1.5, 2.0)}, 4), 4) == {"a": (1.5, 2.0)}
    dets = [
        Detection("pip_2", 0.9, (1, 1)),
        Detection("pip_2", 0.7, (2, 2)),
        Detection("pip_2", 0.3, (3, 3)),
        Detection("mcp_2", 0.8, (4, 4)),
    ]
    got = assign_joints(dets, ("pip_2", "pip_3", "mcp_2", "mcp_3"))
    assert {k: v.xy for k, v in got.items()} == {"pip_2": (1, 1), "pip_3": (2, 2), "mcp_2": (4, 4), "mcp_3": (3, 3)}


def test_keypoint_task_learns_positions(tmp_path):
    """The localiser's task in the one loop: a bright dot's position is learnt (px error drops)."""
    from smallmed import TrainConfig, fit

    rng = np.random.default_rng(0)
    n, s = 96, 32
    images = rng.integers(0, 30, (n, s, s)).astype(np.uint8)
    kp = np.zeros((n, 1, 3), np.float32)
    for i in range(n):
        x, y = rng.integers(4, s - 4, 2)
        images[i, y - 1 : y + 2, x - 1 : x + 2] = 255
        kp[i, 0] = (x, y, 2)
    split = np.array(["train"] * 64 + ["val"] * 16 + ["test"] * 16)
    np.savez(tmp_path / "kp.npz", images=images, keypoints_xyv=kp, keypoint_names=np.array(["dot"]), split=split)
    m = fit(
        TrainConfig(
            data=str(tmp_path / "kp.npz"),
            model="unet",
            epochs=6,
            batch_size=16,
            lr=3e-3,
            augment="hflip,rotate=10",
            progress=False,
            out=str(tmp_path / "r"),
        )
    )
    assert m["task"] == "keypoints" and m["test"]["px_error"] < 6  # a random guess is ~12 px off on 32 px
    from smallmed.ra2.localise import Localiser

    pts, conf = Localiser(tmp_path / "r").locate(
        np.ascontiguousarray(np.kron(images[-1], np.ones((2, 2), np.uint8))), "LH"
    )
    assert abs(pts["dot"][0] - 2 * kp[-1, 0, 0]) < 12 and 0 < conf["dot"] <= 1


@pytest.mark.shared_data
def test_hand_localiser_data_from_the_21_point_set(tmp_path):
    src = SHARED / "hand_xray_keypoints_100px.npz"
    if not src.exists():
        pytest.skip(f"hand keypoints not present at {SHARED}")
    from smallmed.data.keypoints import load_keypoints
    from smallmed.ra2.localise import hand_keypoints_npz

    ds = load_keypoints(hand_keypoints_npz(src, tmp_path / "h.npz"))
    assert ds.names[0] == "mcp_ip" and len(ds.names) == 10
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [454, 80, 34]
    # after mirroring right hands, every thumb MCP sits right of the little-finger MCP (a left hand)
    tr = ds.splits["train"].keypoints
    assert (tr[:, 5, 0] > tr[:, 9, 0]).mean() > 0.95


def test_ra2_localiser_command_on_a_generated_21_point_set(tmp_path, capsys):
    from smallmed.cli import main
    from smallmed.ra2.joints import HAND21

    names = ["wrist", *sorted(set(HAND21.values())), *[f"extra{i}" for i in range(10)]][:21]
    rng = np.random.default_rng(0)
    n = 40
    images = rng.integers(0, 40, (n, 32, 32)).astype(np.uint8)
    kp = np.concatenate([rng.uniform(4, 28, (n, 21, 2)), np.full((n, 21, 1), 2.0)], -1).astype(np.float32)
    split = np.array(["train"] * 28 + ["val"] * 6 + ["test"] * 6)
    side = np.array(["left"] * 30 + ["right"] * 10)
    np.savez(
        tmp_path / "h21.npz",
        images=images,
        keypoints_xyv=kp,
        keypoint_names=np.array(names),
        split=split,
        hand_side=side,
    )
    assert (
        main(
            [
                "-q",
                "ra2",
                "localiser",
                "--data",
                str(tmp_path / "h21.npz"),
                "--epochs",
                "1",
                "--image-size",
                "32",
                "--out",
                str(tmp_path / "loc"),
            ]
        )
        == 0
    )
    assert "px_error" in capsys.readouterr().out
    m = json.loads((tmp_path / "loc" / "metrics.json").read_text())
    assert m["task"] == "keypoints" and set(m["test"]["per_joint"]) == set(HAND21)


def _fold_histories(run: Path) -> dict:
    """Each fold's history rows without the wall-clock column."""
    out = {}
    for p in (run / "narrowing").glob("fold*/history.csv"):
        rows = list(csv.DictReader(open(p)))
        out[p.parent.name] = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    return out


@pytest.fixture
def narrowing_only(monkeypatch):
    """Only the narrowing scorer (what these tests look at): a third of the training."""
    import smallmed.ra2.pipeline as pl

    monkeypatch.setattr(pl, "SCORERS", tuple(s for s in pl.SCORERS if s.name == "narrowing"))


def test_held_out_fold_never_chooses_the_epoch(tmp_path, narrowing_only):
    """The held-out patients' scores reach only the error reported for them: changing them leaves that fold's
    validation curve, and so its chosen epoch, unchanged."""
    import csv as _csv

    from smallmed.ra2.pipeline import RA2Config, train_pipeline

    root = _ra2_set(tmp_path / "set", n_patients=6)
    cfg = RA2Config(folds=3, epochs=2, crop=16, model="small_cnn", seed=0, localiser_epochs=0)
    info = train_pipeline(root / "img", root / "scores.csv", tmp_path / "a", landmarks=root / "lm", cfg=cfg)
    held = info["folds"][0]["held_out"]
    sel = info["epoch_selection"]["narrowing"][0]
    assert not set(sel["validation_patients"]) & set(held)  # validation patients come from the training side
    # change every narrowing score of the fold-0 held-out patients and train again
    rows = list(_csv.DictReader(open(root / "scores.csv")))
    for r in rows:
        if r["Patient_ID"] in held:
            for k in r:
                if "_J__" in k:
                    r[k] = str(4 - float(r[k]))
    _table(root / "scores2.csv", rows)
    train_pipeline(root / "img", root / "scores2.csv", tmp_path / "b", landmarks=root / "lm", cfg=cfg)
    a, b = _fold_histories(tmp_path / "a"), _fold_histories(tmp_path / "b")
    assert a["fold0"] == b["fold0"]  # same validation losses, same best epoch
    ta = (tmp_path / "a" / "narrowing" / "fold0" / "test_predictions.csv").read_text()
    tb = (tmp_path / "b" / "narrowing" / "fold0" / "test_predictions.csv").read_text()
    assert ta != tb  # ... while the held-out error does see the changed scores


def test_two_patients_train_fixed_epochs_and_say_so(tmp_path, caplog, narrowing_only):
    import logging

    from smallmed.ra2.pipeline import RA2Config, train_pipeline

    root = _ra2_set(tmp_path / "set", n_patients=2)
    with caplog.at_level(logging.INFO, logger="smallmed"):
        info = train_pipeline(
            root / "img",
            root / "scores.csv",
            tmp_path / "r",
            landmarks=root / "lm",
            cfg=RA2Config(folds=2, epochs=2, crop=16, model="small_cnn", localiser_epochs=0),
        )
    assert info["epoch_selection"]["narrowing"] == ["fixed epochs", "fixed epochs"]
    assert "too few to hold some out for validation" in caplog.text
    m = json.loads((tmp_path / "r" / "narrowing" / "fold0" / "metrics.json").read_text())
    assert m["best_epoch"] == 2  # the last epoch, not one chosen by any score


def test_scorers_start_from_another_run(tmp_path, tiny_cfg, narrowing_only):
    """--init RUN: every fold model starts from the run's weights (its head replaced)."""
    from smallmed import fit
    from smallmed.cli import main
    from smallmed.io import load_checkpoint

    fit(tiny_cfg(task="regression", out=str(tmp_path / "src")))
    root = _ra2_set(tmp_path / "set", n_patients=3)
    assert (
        main(
            [
                "-q",
                "ra2",
                "train",
                "--images",
                str(root / "img"),
                "--scores",
                str(root / "scores.csv"),
                "--landmarks",
                str(root / "lm"),
                "--folds",
                "2",
                "--epochs",
                "1",
                "--crop",
                "16",
                "--model",
                "small_cnn",
                "--lr",
                "1e-9",
                "--init",
                str(tmp_path / "src"),
                "--localiser-epochs",
                "0",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    src = load_checkpoint(tmp_path / "src" / "best.pt")["model"]
    fold = load_checkpoint(tmp_path / "run" / "narrowing" / "fold0" / "best.pt")["model"]
    convs = [k for k in src if k.endswith("weight") and src[k].ndim == 4]
    assert convs and all(torch.allclose(src[k], fold[k], atol=1e-6) for k in convs)
    assert (
        main(
            [
                "ra2",
                "train",
                "--images",
                str(root / "img"),
                "--scores",
                str(root / "scores.csv"),
                "--landmarks",
                str(root / "lm"),
                "--init",
                str(tmp_path / "nothing"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


@pytest.mark.parametrize("limb", ["LH", "RH", "RF"])
def test_overlay_boxes_sit_on_their_joints_in_the_original_image(limb):
    from smallmed.ra2.joints import FOOT_POINTS, HAND_POINTS, crop_boxes, points_for
    from smallmed.ra2.schema import BY_COLUMN

    names = HAND_POINTS if limb.endswith("H") else FOOT_POINTS
    rng = np.random.default_rng(1)
    pts = {n: (float(rng.uniform(0, 300)), float(rng.uniform(0, 400))) for n in names}
    boxes = crop_boxes(pts, limb, 320)
    assert boxes
    for col, (x, y, side) in boxes.items():
        want = np.mean([pts[n] for n in points_for(BY_COLUMN[col])], axis=0)
        assert (x, y) == pytest.approx(tuple(want)) and side > 0


def test_keypoint_rcnn_localiser_on_a_tiny_generated_set(tmp_path, capsys):
    """The seed's detector family: trains, resumes from a finished folder, and locates joints through the
    same interface as the U-Net (right hands mirrored back)."""
    from smallmed.cli import main
    from smallmed.ra2.detector import open_localiser
    from smallmed.ra2.joints import HAND21

    names = ["wrist", *sorted(set(HAND21.values())), *[f"extra{i}" for i in range(10)]][:21]
    rng = np.random.default_rng(0)
    n = 10
    images = rng.integers(0, 40, (n, 32, 32)).astype(np.uint8)
    kp = np.concatenate([rng.uniform(6, 26, (n, 21, 2)), np.full((n, 21, 1), 2.0)], -1).astype(np.float32)
    for i in range(n):  # bright joints on a dark hand: something to find
        for x, y in kp[i, :, :2].astype(int):
            images[i, y - 1 : y + 2, x - 1 : x + 2] = 230
    np.savez(
        tmp_path / "h21.npz",
        images=images,
        keypoints_xyv=kp,
        keypoint_names=np.array(names),
        split=np.array(["train"] * 6 + ["val"] * 2 + ["test"] * 2),
    )
    args = [
        "-q",
        "ra2",
        "localiser",
        "--kind",
        "keypoint-rcnn",
        "--data",
        str(tmp_path / "h21.npz"),
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--out",
        str(tmp_path / "det"),
    ]
    assert main(args) == 0
    assert "px_error" in capsys.readouterr().out
    m = json.loads((tmp_path / "det" / "metrics.json").read_text())
    assert m["kind"] == "keypoint-rcnn" and m["test"]["n"] == 2 * 10 and m["test"]["px_error"] >= 0
    loc = open_localiser(tmp_path / "det")
    img = rng.integers(0, 255, (120, 90)).astype(np.uint8)
    left, _ = loc.locate(img, "LH")
    right, _ = loc.locate(img[:, ::-1].copy(), "RH")
    assert set(left) == set(HAND21)  # the 10 RA2 hand joints
    for j in left:  # the mirrored image gives the mirrored points
        assert right[j][0] == pytest.approx(90 - 1 - left[j][0], abs=1e-3) and right[j][1] == pytest.approx(
            left[j][1], abs=1e-3
        )
    assert (
        main(
            [
                "ra2",
                "localiser",
                "--kind",
                "keypoint-rcnn",
                "--data",
                str(tmp_path / "h21.npz"),
                "--image-size",
                "16",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )  # too small for the detector: one sentence


def _assert_labelme(path: Path, image: Path) -> None:
    """labelme's own loader where the package is installed, else its file schema field by field (labelme 5)."""
    try:
        from labelme.label_file import LabelFile
    except ImportError:
        d = json.loads(path.read_text())
        assert set(d) >= {"version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"}
        assert d["imageData"] is None and (path.parent / d["imagePath"]).resolve() == image.resolve()
        for s in d["shapes"]:
            assert set(s) >= {"label", "points", "group_id", "description", "shape_type", "flags", "mask"}
            assert s["shape_type"] == "point" and len(s["points"]) == 1 and len(s["points"][0]) == 2
        from PIL import Image

        assert Image.open(image).size == (d["imageWidth"], d["imageHeight"])
        return
    lf = LabelFile(str(path))
    assert lf.imagePath and lf.imageData and len(lf.shapes) > 0
