"""RA2 scoring: schema, score tables, the challenge's metrics, the seed's scorer building blocks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from smallmed import SmallmedError
from smallmed.ra2 import COLUMNS, MAX_TOTAL, SCHEMA, challenge_metrics, read_scores, totals, write_table
from smallmed.ra2.schema import ScoreTable

from conftest import SHARED

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
        w = csv.DictWriter(f, fieldnames=[c for c in COLUMNS if c not in ("Overall_Tol", "Overall_erosion", "Overall_narrowing")])
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


@pytest.mark.parametrize("change,match", [
    (lambda r: r.update(LH_mcp_E__ip=6), r"line 2, column LH_mcp_E__ip: 6 is outside 0-5"),
    (lambda r: r.update(RF_mtp_J__5="x"), r"column RF_mtp_J__5: 'x' is not a number"),
    (lambda r: r.update(Bogus=1), r"unknown column 'Bogus'"),
    (lambda r: r.pop("LF_mtp_E__3"), r"column 'LF_mtp_E__3' missing"),
])
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
