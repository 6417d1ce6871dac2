"""Every command under bad input: exit status 2, one line on stderr naming the problem, no traceback,
and nothing new or changed beside the inputs. Plus property tests of the config parser and the npz reader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smallmed import SmallmedError
from smallmed.cli import main
from tests.conftest import make_medmnist


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    make_medmnist(d / "ok.npz")
    (d / "empty.npz").write_bytes(b"")
    imgs = {f"{s}_images": np.zeros((4, 8, 8), np.uint8) for s in ("train", "val", "test")}
    np.savez(
        d / "strlabels.npz", **imgs, **{f"{s}_labels": np.array(["a", "b", "a", "b"]) for s in ("train", "val", "test")}
    )
    (d / "afile").write_text("x")
    (d / "bad.yaml").write_text("epochs: abc\n")
    (d / "bool.yaml").write_text("progress: maybe\n")
    (d / "broken.yaml").write_text("epochs: [1\n")
    (d / "space0.yaml").write_text("epochs: [0, 1]\n")
    (d / "space_mom.yaml").write_text("momentum: [0.5, 0.9]\n")
    (d / "scores.csv").write_text("Patient_ID,LH_mcp_E__ip\nP1,9\n")
    import torch

    y1 = np.zeros(8, np.uint8)
    np.savez(
        d / "oneclass.npz",
        **{
            f"{s}_images": np.random.default_rng(0).integers(0, 255, (8, 8, 8)).astype(np.uint8)
            for s in ("train", "val", "test")
        },
        train_labels=y1,
        val_labels=np.array([0, 1] * 4, np.uint8),
        test_labels=np.array([0, 1] * 4, np.uint8),
    )
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "a.png")
    (d / "m.csv").write_text("path,label\na.png,x\na.png,\n")
    (d / "fake").mkdir()
    torch.save({"model": {}, "obj": Path("x")}, d / "fake" / "best.pt")  # a pickled Python object
    return d


def _cases(d: Path):
    ok, f = str(d / "ok.npz"), str(d / "afile")
    train = ["train", "--data", ok, "--model", "small_cnn"]
    return [
        (train + ["--config", str(d / "bad.yaml"), "--out", str(d / "r")], "epochs='abc'"),
        (train + ["--config", str(d / "bool.yaml"), "--out", str(d / "r")], "progress='maybe'"),
        (train + ["--set", "lr=fast", "--out", str(d / "r")], "lr='fast'"),
        (train + ["--seed", "-1", "--out", str(d / "r")], "seed=-1"),
        (train + ["--seed", str(2**33), "--out", str(d / "r")], "seed="),
        (train + ["--out", f], "exists and is a file"),
        (train + ["--out", f + "/sub"], "is a file, so no folder"),
        (train + ["--out", "/proc/smallmed-run"], "not writable"),
        (train + ["--augment", "spin", "--out", str(d / "r")], "augment term"),
        (train + ["--model", "resnt18", "--out", str(d / "r")], "Did you mean 'resnet18'"),
        (train + ["--split-seed", "3", "--out", str(d / "r")], "split_seed=3 has no effect"),
        (train + ["--optimizer", "adm", "--out", str(d / "r")], "Did you mean 'adam'"),
        (train + ["--head", "ordinal", "--epochs", "x", "--out", str(d / "r")], "epochs='x'"),
        (["trian", "--data", ok], "invalid choice: 'trian'"),
        (["train", "--data", str(d / "empty.npz"), "--out", str(d / "r")], "empty file"),
        (["train", "--data", str(d / "strlabels.npz"), "--out", str(d / "r")], "'train_labels' holds <U1"),
        (["data", "stats", str(d / "empty.npz")], "empty file"),
        (["data", "stats", str(d / "strlabels.npz")], "'train_labels' holds"),
        (["data", "fetch", "pneumoniamnist", "--dest", f], "exists and is a file"),
        (["evaluate", str(d / "nope")], "run folder not found"),
        (["predict", str(d / "nope"), f], "run folder not found"),
        (["rf", "resnt50"], "Did you mean"),
        (["rf", "resnet18", "--input", "0"], "--input 0: expected at least 1"),
        (train + ["--config", str(d), "--out", str(d / "r")], "is a folder; expected a YAML file"),
        (train + ["--config", ok, "--out", str(d / "r")], "not a text file; expected YAML"),
        (train + ["--config", str(d / "broken.yaml"), "--out", str(d / "r")], "not valid YAML (expected ',' or ']'"),
        (["cost", "small_cnn", "--input", "100000"], "--input 100000: expected at most 4096"),
        (["cost", "small_cnn", "--conv", "dpc", "--rank-ratio", "0.5"], "--rank-ratio 0.5 has no effect"),
        (["study", "bn", "--workers", "-5", "--out", str(d / "s")], "workers=-5"),
        (["study", "svd", "--methods", "full", "bitfit", "--lora-rank", "4", "--out", str(d / "s")], "lora_rank=4 has"),
        (["demo", "--workers", "0", "--out", str(d / "s")], "--workers 0: expected at least 1"),
        (["tune", "--data", ok, "--trials", "2", "--space", str(d / "space0.yaml"), "--out", str(d / "t")], "epochs=0"),
        (
            ["tune", "--data", ok, "--trials", "2", "--space", str(d / "space_mom.yaml"), "--out", str(d / "t")],
            "search space momentum: has no effect with optimizer='adamw'",
        ),
        (["cost", "nosuchmodel"], "nosuchmodel"),
        (["explain", str(d / "nope")], "run folder not found"),
        (
            ["study", "svd", "--seeds", "-1", "--out", str(d / "s")],
            "seeds=-1: expected a finite value in [0, 4294967296)",
        ),
        (["study", "bn", "--data", ok, "--model", "densenet121", "--out", str(d / "s")], "norm for densenet121"),
        (["study", "rff", "--splits", "0", "--out", str(d / "s")], "splits=0: expected a finite value in [1, 1000]"),
        (["study", "bn", "--max-train", "-5", "--out", str(d / "s")], "max_train=-5: expected a finite value >= 0"),
        (["data", "stats", ok, "--image-size", "-5"], "--image-size -5"),
        (["explain", str(d / "nope"), "--n", "0"], "--n 0"),
        (["explain", str(d / "nope"), "--patch", "0"], "--patch 0"),
        (train + ["--epochs", "3", "--rff-epochs", "5", "--out", str(d / "r")], "rff_epochs=[5]"),
        (
            ["train", "--data", str(d / "oneclass.npz"), "--model", "small_cnn", "--out", str(d / "r")],
            "never in 'train_labels'",
        ),
        (["train", "--data", str(d / "m.csv"), "--out", str(d / "r")], "row 3: empty label"),
        (["evaluate", str(d / "fake")], "safe load refuses"),
        (["study", "sfconv", "--out", f], "exists and is a file"),
        (["study", "ra2", "--variants", "v9", "--out", str(d / "s"), "--data-dir", str(d)], "v9"),
        (["ra2", "check", str(d / "scores.csv")], "missing"),
        (["ra2", "evaluate", str(d / "scores.csv"), str(d / "nope.csv")], "outside 0-5"),
        (["ra2", "evaluate", str(d / "nope.csv"), str(d / "scores.csv")], "score table not found"),
        (["ra2", "predict", str(d / "nope"), str(d), "--out", str(d / "p.csv")], "not a run folder"),
        (
            [
                "ra2",
                "train",
                "--images",
                str(d),
                "--scores",
                str(d / "scores.csv"),
                "--landmarks",
                str(d),
                "--out",
                str(d / "r"),
            ],
            "no images named PATIENT",
        ),
    ]


def _snapshot(d: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in d.rglob("*")}


def test_every_command_answers_bad_input_in_one_sentence(corpus, capsys):
    for args, needle in _cases(corpus):
        before = _snapshot(corpus)
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2, (args[6:], err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (args, err)
        assert needle in lines[0], (args, lines[0])
        assert _snapshot(corpus) == before, (args, "files were written or changed")


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_KEYS = st.sampled_from(
    [
        "epochs",
        "lr",
        "batch_size",
        "seed",
        "fraction",
        "betas",
        "progress",
        "model",
        "norm",
        "augment",
        "fprs",
        "image_size",
        "method",
        "prune",
        "rank_ratio",
        "head_epochs",
        "bogus",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(_KEYS, _VALUES, max_size=4))
def test_config_parser_only_ever_raises_smallmed_error(d):
    from smallmed import TrainConfig

    try:
        TrainConfig.from_dict(dict(d))
    except SmallmedError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["u1", "i8", "f4", "U2", "b1"]),
    st.sampled_from(["u1", "f4", "U3", "i8", "b1"]),
    st.lists(st.integers(0, 5), min_size=1, max_size=4),
    st.integers(0, 3),
    st.booleans(),
)
def test_npz_reader_only_ever_raises_smallmed_error(tmp_path_factory, img_dtype, lab_dtype, shape, n, multi):
    from smallmed.data import load_dataset

    path = tmp_path_factory.mktemp("npz") / "x.npz"
    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"] = rng.integers(0, 3, size=[n, *shape]).astype(img_dtype)
        arrays[f"{s}_labels"] = rng.integers(0, 3, size=(n, 2) if multi else (n,)).astype(lab_dtype)
    np.savez(path, **arrays)
    try:
        load_dataset(path)
    except SmallmedError:
        pass


def test_two_writers_and_a_stale_lock(tmp_path):
    from smallmed.io import RunLock

    with RunLock(tmp_path / "out"):
        lock = tmp_path / "out" / ".lock"
        other = lock.read_text()
        lock.write_text("1")  # pid 1 is alive: another writer
        with pytest.raises(SmallmedError, match="another smallmed process"):
            RunLock(tmp_path / "out").__enter__()
        lock.write_text(other)
    assert not (tmp_path / "out" / ".lock").exists()
    (tmp_path / "out" / ".lock").write_text("999999999")  # a killed process's lock
    with RunLock(tmp_path / "out") as lk:
        assert lk.held and (tmp_path / "out" / ".lock").read_text() == str(os.getpid())


def test_files_get_the_umask_mode(tmp_path):
    from smallmed.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
