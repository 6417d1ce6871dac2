import numpy as np
import pytest

from smallmed import SmallmedError, load_dataset
from smallmed.data import dataset_stats, load_npz, nested_fraction, patient_split
from smallmed.data.stats import intensity_stats
from tests.conftest import make_medmnist


def test_medmnist_gray(tiny_npz):
    ds = load_npz(tiny_npz)
    assert ds.task == "binary" and ds.num_classes == 2 and ds.in_chans == 1 and ds.image_size == 16
    assert ds.splits["train"].images.shape == (64, 16, 16, 1)
    assert ds.splits["train"].labels.dtype == np.int64 and ds.splits["train"].labels.ndim == 1


def test_medmnist_rgb_multiclass_and_multilabel(tmp_path):
    ds = load_npz(make_medmnist(tmp_path / "rgb.npz", channels=3, classes=5, size=20))
    assert (ds.task, ds.num_classes, ds.in_chans, ds.image_size) == ("multiclass", 5, 3, 20)
    ml = load_npz(make_medmnist(tmp_path / "ml.npz", classes=4, multilabel=True))
    assert ml.task == "multilabel" and ml.splits["val"].labels.shape == (24, 4)


def test_name_resolution_uses_env_then_flag(tmp_path, monkeypatch):
    d1, d2 = tmp_path / "a", tmp_path / "b"
    d1.mkdir(), d2.mkdir()
    make_medmnist(d1 / "breastmnist.npz", n=(10, 4, 4))
    make_medmnist(d2 / "breastmnist.npz", n=(12, 4, 4))
    monkeypatch.setenv("SMALLMED_DATA_DIR", str(d1))
    assert len(load_dataset("breastmnist").splits["train"]) == 10
    assert len(load_dataset("breastmnist", data_dir=d2).splits["train"]) == 12  # the flag wins
    assert load_dataset("breastmnist").class_names == ["malignant", "normal, benign"]  # from the catalogue


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.pop("val_labels"), "missing key.*val_labels"),
        (
            lambda a: a.update(train_labels=np.full((64, 1), 7, np.uint8), val_labels=np.zeros((24, 1), np.uint8)),
            "labels are coded 0, 1, 7",
        ),  # not eight classes with five empty: a coding to fix
        (lambda a: a.update(test_labels=np.zeros((24, 2, 2), np.uint8)), "labels have shape"),
        (
            lambda a: a.update(val_images=np.zeros((0, 16, 16), np.uint8), val_labels=np.zeros((0, 1), np.uint8)),
            "split 'val' is empty",
        ),
        (lambda a: a.update(test_labels=np.zeros((5, 1), np.uint8)), "24 images but 5 labels"),
        (lambda a: a.update(train_images=np.zeros((64, 16, 16), np.float32)), "expected uint8"),
    ],
)
def test_bad_npz(tmp_path, mutate, match):
    src = dict(np.load(make_medmnist(tmp_path / "x.npz")))
    mutate(src)
    path = _save(tmp_path / "bad.npz", **src)
    if match is None:
        load_npz(path)
        return
    with pytest.raises(SmallmedError, match=match):
        load_npz(path)


def test_label_outside_known_class_range(tmp_path):
    src = dict(np.load(make_medmnist(tmp_path / "x.npz")))
    src["test_labels"] = np.full((24, 1), 3, np.uint8)
    path = _save(tmp_path / "pneumoniamnist.npz", **src)  # known: 2 classes
    with pytest.raises(SmallmedError, match="label 3 outside the class range 0..1"):
        load_npz(path)


def test_missing_file_and_unknown_keys(tmp_path):
    with pytest.raises(SmallmedError, match="not found; looked at"):
        load_dataset(tmp_path / "nope.npz")
    with pytest.raises(SmallmedError, match="expected keys"):
        load_npz(_save(tmp_path / "odd.npz", foo=np.zeros(3)))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SmallmedError, match="not a readable .npz"):
        load_npz(tmp_path / "junk.npz")


def test_plain_images_labels_npz_is_split_by_patient(tmp_path):
    labels = np.arange(60) % 2
    pids = np.repeat(np.arange(20), 3).astype(str)
    from tests.conftest import make_images

    ds = load_npz(_save(tmp_path / "p.npz", images=make_images(labels)[..., 0], labels=labels, patient_id=pids))
    seen = [set(ds.splits[s].patient_ids) for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_patient_split_keeps_patients_together_and_stratifies():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(100), rng.integers(1, 5, 100))
    labels = (pids % 4 == 0).astype(int)  # 25% positive patients
    idx = patient_split(labels, pids, val=0.1, test=0.2, seed=3)
    sets = {k: set(pids[v]) for k, v in idx.items()}
    assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["val"]) and not (sets["val"] & sets["test"])
    assert sum(len(v) for v in idx.values()) == len(pids)
    assert abs(labels[idx["test"]].mean() - 0.25) < 0.1
    again = patient_split(labels, pids, val=0.1, test=0.2, seed=3)
    assert all(np.array_equal(idx[k], again[k]) for k in idx)


def test_nested_fractions_are_nested_stratified_and_seeded():
    y = np.array([0] * 80 + [1] * 20)
    subsets = {f: set(nested_fraction(y, f, seed=5)) for f in (1, 0.5, 0.25, 0.125)}
    assert subsets[0.125] <= subsets[0.25] <= subsets[0.5] <= subsets[1]
    assert len(subsets[0.5]) == 50 and sum(y[list(subsets[0.5])]) == 10
    assert set(nested_fraction(y, 0.25, seed=5)) == subsets[0.25]
    assert set(nested_fraction(y, 0.25, seed=6)) != subsets[0.25]
    with pytest.raises(SmallmedError, match="fraction=0"):
        nested_fraction(y, 0)


def test_nested_fraction_by_patient():
    pids = np.repeat(np.arange(40), 3)
    y = (np.arange(120) // 3) % 2
    idx = nested_fraction(y, 0.25, seed=0, groups=pids)
    chosen = set(pids[idx])
    assert all(set(np.flatnonzero(np.isin(pids, list(chosen)))) <= set(idx) for _ in [0])
    assert len(chosen) == 10


def test_intensity_stats_match_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    imgs = rng.gamma(2.0, 20.0, size=(50, 16, 16)).clip(0, 255).astype(np.uint8)
    st = intensity_stats(imgs)
    x = imgs.reshape(-1) / 255.0
    assert st["skewness"] == pytest.approx(stats.skew(x), rel=1e-6)
    assert st["kurtosis"] == pytest.approx(stats.kurtosis(x), rel=1e-6)
    assert st["skewness"] > 0.5  # a gamma distribution is right-skewed


def test_dataset_stats_counts(tiny_npz):
    st = dataset_stats(load_npz(tiny_npz))
    assert st["splits"]["train"]["n"] == 64 and st["splits"]["train"]["per_class"] == {"0": 32, "1": 32}


@pytest.mark.shared_data
def test_shared_pneumoniamnist(shared_data):
    ds = load_dataset("pneumoniamnist", data_dir=shared_data)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [4708, 524, 624]
    assert ds.class_names == ["normal", "pneumonia"]


@pytest.mark.shared_data
def test_shared_covid_patient_level(shared_data):
    ds = load_dataset("covid-ieee8023", data_dir=shared_data)
    sets = [set(ds.splits[s].patient_ids) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(len(ds.splits[s]) for s in ds.splits) == 575


def _bad_labels(tmp_path, name, **arrays):
    from conftest import make_medmnist

    d = dict(np.load(make_medmnist(tmp_path / "ok.npz")))
    d.update(arrays)
    np.savez(tmp_path / name, **d)
    return tmp_path / name


@pytest.mark.parametrize(
    "case, needle",
    [
        ("coded", "labels are coded 0, 255, so 256 classes would follow"),
        ("unseen", "class 2 appears in val/test but never in 'train_labels'"),
        ("nan", "'train_labels' holds a non-finite value (image 0)"),
        ("half", "'train_labels' holds 0.5; expected whole class indices"),
        ("objects", "'train_labels' holds Python objects"),
    ],
)
def test_labels_that_cannot_be_learnt_are_refused_naming_the_key(tmp_path, case, needle):
    from smallmed.data import load_dataset

    n = 64
    base = np.asarray(np.arange(n) % 2, dtype=np.float64)[:, None]
    arrays = {
        "coded": {
            k: np.where(np.asarray(np.arange(c) % 2)[:, None] == 1, 255, 0).astype(np.uint8)
            for k, c in (("train_labels", 64), ("val_labels", 24), ("test_labels", 24))
        },  # fmt: skip
        "unseen": {"test_labels": np.asarray(np.arange(24) % 3, dtype=np.uint8)[:, None]},
        "nan": {"train_labels": np.where(np.arange(n)[:, None] == 0, np.nan, base)},
        "half": {"train_labels": np.where(np.arange(n)[:, None] == 0, 0.5, base)},
        "objects": {"train_labels": np.array([["a"]] * n, dtype=object)},
    }[case]
    path = _bad_labels(tmp_path, f"{case}.npz", **arrays)
    with pytest.raises(SmallmedError) as e:
        load_dataset(str(path))
    assert needle in str(e.value)


def test_a_forged_array_header_is_refused_before_anything_is_allocated(tmp_path):
    import zipfile

    from smallmed.data import load_dataset

    src = _bad_labels(tmp_path, "src.npz")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "forged.npz", "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "train_images.npy":
                header = "{'descr': '|u1', 'fortran_order': False, 'shape': (10000000000000000,), }"
                header = header + " " * (117 - len(header)) + "\n"
                data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(64)
            zout.writestr(item, data)
    with pytest.raises(SmallmedError, match=r"claims shape \(10000000000000000,\) .* but holds \d+ bytes"):
        load_dataset(str(tmp_path / "forged.npz"))


def test_constant_training_images_are_refused(tiny_cfg, tmp_path):
    from smallmed import fit

    d = dict(np.load(_bad_labels(tmp_path, "x.npz")))
    d["train_images"] = np.full_like(d["train_images"], 7)
    np.savez(tmp_path / "const.npz", **d)
    with pytest.raises(SmallmedError, match="every training image is a single constant value"):
        fit(tiny_cfg(data=str(tmp_path / "const.npz")))
