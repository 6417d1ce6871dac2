"""Ensembles of runs and flip test-time augmentation (smallmed.train.ensemble), and predict for every task."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_medmnist
from PIL import Image


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from smallmed import TrainConfig, fit

    root = tmp_path_factory.mktemp("ens")
    data = make_medmnist(root / "tiny.npz", n=(64, 24, 24))
    runs = []
    for seed in (0, 1):
        cfg = TrainConfig(
            data=str(data),
            model="small_cnn",
            epochs=2,
            batch_size=16,
            lr=3e-3,
            seed=seed,
            augment="none",
            progress=False,
            out=str(root / f"s{seed}"),
        )
        fit(cfg)
        runs.append(root / f"s{seed}")
    rng = np.random.default_rng(0)
    files, flipped = [], []
    for i in range(3):
        img = rng.integers(0, 255, (16, 16)).astype(np.uint8)
        img[2:6, 1:5] = 250  # not symmetric: the flip changes the prediction
        Image.fromarray(img).save(root / f"img{i}.png")
        Image.fromarray(img[:, ::-1].copy()).save(root / f"flip{i}.png")
        files.append(str(root / f"img{i}.png"))
        flipped.append(str(root / f"flip{i}.png"))
    return runs, files, flipped, data


def _probs(rows):
    return np.array([[v for k, v in r.items() if k.startswith("p_")] for r in rows])


def test_ensemble_with_flip_is_the_mean_of_members_on_both_images(two_runs):
    from smallmed.train.ensemble import predict_images

    runs, files, flipped, _ = two_runs
    got = _probs(predict_images(runs, files, device="cpu", tta="flip"))
    parts = [_probs(predict_images(r, f, device="cpu")) for r in runs for f in (files, flipped)]
    assert np.allclose(got, np.mean(parts, axis=0), atol=1e-5)
    assert not np.allclose(parts[0], parts[1], atol=1e-4)  # the flip did change the members' outputs
    plain = _probs(predict_images(runs, files, device="cpu"))
    assert np.allclose(plain, np.mean([parts[0], parts[2]], axis=0), atol=1e-5)


def test_ensemble_evaluate_picks_its_threshold_on_validation(two_runs, tmp_path):
    """The ensemble's operating point comes from the validation split: other test labels change its test
    rates, never its threshold."""
    from smallmed.train.ensemble import Ensemble

    runs, _, _, data = two_runs
    ens = Ensemble.load(runs, tta="flip", device="cpu")
    m = ens.evaluate()
    assert m["members"] == 2 and m["tta"] == "flip" and 0 <= m["auc"] <= 1
    z = dict(np.load(data))
    z["test_labels"] = 1 - z["test_labels"]  # poisoned test labels
    np.savez(tmp_path / "poisoned.npz", **z)
    p = ens.evaluate(data=str(tmp_path / "poisoned.npz"))
    assert p["operating_point"]["threshold"] == m["operating_point"]["threshold"]
    assert p["auc"] == pytest.approx(1 - m["auc"], abs=1e-6)


def test_ensemble_refuses_runs_of_other_classes(two_runs, tmp_path):
    from smallmed import SmallmedError, TrainConfig, fit
    from smallmed.train.ensemble import Ensemble

    runs, _, _, _ = two_runs
    other = make_medmnist(tmp_path / "three.npz", n=(45, 15, 15), classes=3)
    fit(
        TrainConfig(
            data=str(other), model="small_cnn", epochs=1, augment="none", progress=False, out=str(tmp_path / "o")
        )
    )
    with pytest.raises(SmallmedError, match="same classes"):
        Ensemble.load([runs[0], tmp_path / "o"], device="cpu")


def test_predict_cli_takes_runs_then_images(two_runs, capsys):
    from smallmed.cli import main

    runs, files, _, _ = two_runs
    assert main(["predict", str(runs[0]), str(runs[1]), *files, "--tta", "flip", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("path,pred,p_0") and len(out) == 4
    assert main(["predict", *files]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["evaluate", str(runs[0]), str(runs[1]), "--device", "cpu"]) == 0
    capsys.readouterr()
    for bad in (["predict", str(runs[0]), *files, "--device", "tpu"], ["evaluate", str(runs[0]), "--device", "tpu"]):
        assert main(bad) == 2 and "device='tpu': expected auto, cpu" in capsys.readouterr().err


def test_export_refuses_outputs_that_are_folders_repeat_or_replace_other_files(two_runs, tmp_path, capsys):
    from smallmed.cli import main

    run = str(two_runs[0][0])
    data = tmp_path / "data.npz"
    data.write_bytes(b"keep")
    cases = [
        (["--onnx", str(tmp_path)], "is a folder"),
        (["--folded", str(tmp_path / "x.pt"), "--onnx", str(tmp_path / "x.pt")], "name the same file"),
        (["--folded", str(data)], "an existing .npz file would be replaced"),
        (["--adapter", str(two_runs[0][0] / "best.pt")], "would overwrite an input"),
    ]
    for args, needle in cases:
        assert main(["export", run, *args]) == 2 and needle in capsys.readouterr().err
    assert data.read_bytes() == b"keep" and not (tmp_path / "x.pt").exists()


def test_predict_on_a_keypoint_run_writes_points_in_image_pixels(tmp_path):
    from smallmed import TrainConfig, fit
    from smallmed.train.ensemble import predict_images

    rng = np.random.default_rng(0)
    n = 30
    images = rng.integers(0, 40, (n, 24, 24)).astype(np.uint8)
    kp = np.concatenate([rng.uniform(4, 20, (n, 2, 2)), np.full((n, 2, 1), 2.0)], -1).astype(np.float32)
    np.savez(
        tmp_path / "kp.npz",
        images=images,
        keypoints_xyv=kp,
        keypoint_names=np.array(["a", "b"]),
        split=np.array(["train"] * 20 + ["val"] * 5 + ["test"] * 5),
    )
    fit(
        TrainConfig(
            data=str(tmp_path / "kp.npz"),
            model="unet",
            epochs=1,
            augment="none",
            progress=False,
            out=str(tmp_path / "run"),
        )
    )
    big = rng.integers(0, 255, (96, 48)).astype(np.uint8)  # another size and aspect than the training images
    Image.fromarray(big).save(tmp_path / "big.png")
    row = predict_images(tmp_path / "run", [tmp_path / "big.png"], device="cpu")[0]
    assert set(row) == {"path", "a_x", "a_y", "b_x", "b_y"}
    assert 0 <= row["a_x"] <= 48 and 0 <= row["a_y"] <= 96
    from smallmed import SmallmedError

    with pytest.raises(SmallmedError, match="swap left and right"):
        predict_images(tmp_path / "run", [tmp_path / "big.png"], device="cpu", tta="flip")
