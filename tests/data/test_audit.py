"""smallmed data audit: exact and near duplicates, leakage, balance, constant images, cleaned copies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smallmed.cli import main
from smallmed.data import load_dataset
from smallmed.data.audit import audit, fix_duplicates


def _leaky(path):
    rng = np.random.default_rng(0)
    imgs = {s: rng.integers(0, 255, (n, 32, 32), dtype=np.uint8) for s, n in (("train", 40), ("val", 10), ("test", 10))}
    labels = {s: (np.arange(len(v)) % 2).astype(np.uint8)[:, None] for s, v in imgs.items()}
    imgs["train"][5] = imgs["train"][3]  # within train
    imgs["val"][2] = imgs["train"][7]  # leak train -> val
    imgs["test"][4] = imgs["train"][9]  # leak train -> test, with another label
    labels["test"][4] = 1 - labels["train"][9]
    near = imgs["train"][11].astype(int) + rng.integers(-2, 3, (32, 32))
    imgs["test"][6] = np.clip(near, 0, 255).astype(np.uint8)  # a near copy (noise of +-2 grey levels)
    imgs["val"][8] = 77  # constant
    pids = {s: np.array([f"{s}{i}" for i in range(len(v))], dtype="<U16") for s, v in imgs.items()}
    pids["test"][0] = "train0"  # one patient in two splits
    arrays = {}
    for s in imgs:
        arrays.update({f"{s}_images": imgs[s], f"{s}_labels": labels[s], f"{s}_patient_ids": pids[s]})
    np.savez(path, **arrays)
    return path


def test_audit_finds_every_planted_problem(tmp_path):
    ds = load_dataset(str(_leaky(tmp_path / "leaky.npz")))
    f = audit(ds, near=6)
    groups = sorted(sorted(map(tuple, g)) for g in f["exact_duplicate_groups"])
    assert groups == [[("test", 4), ("train", 9)], [("train", 3), ("train", 5)], [("train", 7), ("val", 2)]]
    # train[7] (label 1) and val[2] (label 0), train[9] and test[4]: the same image with two labels
    assert len(f["cross_split_exact_groups"]) == 2 and len(f["label_conflict_groups"]) == 2
    assert [sorted(map(tuple, g)) for g in f["near_duplicate_groups"]] == [[("test", 6), ("train", 11)]]
    assert f["patients_in_two_splits"] == ["train0"]
    assert f["constant_images"] == [["val", 8]]
    assert f["class_balance"]["train"] == {"0": 20, "1": 20}


@pytest.mark.parametrize("how", ["drop", "merge"])
def test_fix_writes_a_clean_copy_and_never_touches_the_original(tmp_path, how):
    src = _leaky(tmp_path / "leaky.npz")
    before = src.read_bytes()
    out = tmp_path / f"clean-{how}.npz"
    assert main(["-q", "data", "audit", str(src), "--near", "-1", "--fix", how, "--out", str(out)]) == 0
    assert src.read_bytes() == before
    clean = load_dataset(str(out))
    again = audit(clean, near=None)
    assert again["exact_duplicate_groups"] == []
    n = {s: len(clean.splits[s].images) for s in ("train", "val", "test")}
    if how == "drop":  # leaks leave the training side; the test set stays whole
        assert n == {"train": 37, "val": 10, "test": 10}
    else:  # one copy kept in train
        assert n == {"train": 39, "val": 9, "test": 9}
    assert clean.splits["test"].patient_ids is not None


def test_fix_needs_out_and_refuses_the_original(tmp_path):
    src = _leaky(tmp_path / "leaky.npz")
    assert main(["data", "audit", str(src), "--fix", "drop"]) == 2
    assert (
        main(["data", "audit", str(src), "--out", str(tmp_path / "x.npz")]) == 2 and not (tmp_path / "x.npz").exists()
    )
    ds = load_dataset(str(src))
    with pytest.raises(Exception, match="never overwritten"):
        fix_duplicates(ds, audit(ds, near=None), "drop", src)


@pytest.mark.shared_data
def test_audit_finds_the_real_pneumoniamnist_duplicates(shared_data, capsys):
    known = json.loads((shared_data / "pneumoniamnist_duplicates.json").read_text())["duplicate_groups"]
    assert main(["-q", "data", "audit", str(shared_data / "pneumoniamnist.npz"), "--near", "-1", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    groups = {frozenset((s, i) for s, i in g) for g in found["exact_duplicate_groups"]}
    for g in known:
        assert frozenset((s, i) for s, i, *_ in g) in groups
    assert len(known) == 27 and sum(len({s for s, *_ in g}) > 1 for g in known) == 8
    assert len(found["cross_split_exact_groups"]) >= 8
