"""Segmentation: mask loading and checks, U-Net, Dice/IoU, training through fit, factorized U-Net."""

import numpy as np
import pytest
import torch

from smallmed import SmallmedError, TrainConfig, create_model, factorize, fit
from smallmed.data.masks import load_segmentation
from smallmed.metrics.segmentation import dice_iou


def make_seg(path, n=40, size=32, seed=0, mask_scale=1, pids=True):
    """Images with one bright disk each; the mask is the disk."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, masks = [], []
    for _ in range(n):
        cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(4, 8))]
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        img = (rng.normal(60, 20, (size, size)) + 120 * m).clip(0, 255).astype(np.uint8)
        images.append(img)
        masks.append(m * mask_scale)
    arrays = {"images": np.stack(images), "masks": np.stack(masks).astype(np.uint8)}
    if pids:
        arrays["patient_id"] = np.array([str(i // 2) for i in range(n)])
    np.savez(path, **arrays)
    return path


def test_dice_iou_by_hand():
    p = torch.tensor([[[1, 1], [0, 0]]])
    t = torch.tensor([[[1, 0], [0, 0]]])
    d, i = dice_iou(p, t)
    assert d[0] == pytest.approx(2 / 3) and i[0] == pytest.approx(0.5)
    d, i = dice_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))
    assert d[0] == 1 and i[0] == 1


def test_masks_load_patient_level_and_bad_masks_fail(tmp_path):
    ds = load_segmentation(make_seg(tmp_path / "a.npz", mask_scale=255))
    assert set(np.unique(ds.splits["train"].masks)) <= {0, 1}
    tr, te = set(ds.splits["train"].patient_ids), set(ds.splits["test"].patient_ids)
    assert not tr & te
    bad = dict(np.load(tmp_path / "a.npz"))
    bad["masks"] = bad["masks"][:, :16]
    np.savez(tmp_path / "shape.npz", **bad)
    with pytest.raises(SmallmedError, match="masks have shape .* but the images"):
        load_segmentation(tmp_path / "shape.npz")
    bad = dict(np.load(tmp_path / "a.npz"))
    bad["masks"] = (bad["masks"] > 0).astype(np.uint8) * 7
    np.savez(tmp_path / "vals.npz", **bad)
    with pytest.raises(SmallmedError, match="mask values 0, 7; expected binary"):
        load_segmentation(tmp_path / "vals.npz")


def test_unet_shapes_and_factorizes():
    m = create_model("unet", 1, in_chans=1, input_size=40)
    x = torch.randn(2, 1, 40, 40)
    assert m(x).shape == (2, 1, 40, 40)
    s = factorize(m, "sfconv", rank_ratio=0.25)
    assert len(s.rows) == 18 and m(x).shape == (2, 1, 40, 40)


def test_fit_trains_a_unet_and_writes_overlays(tmp_path, figures):
    data = make_seg(tmp_path / "disks.npz", n=48)
    cfg = TrainConfig(
        data=str(data), model="unet", epochs=3, batch_size=8, lr=3e-3, out=str(tmp_path / "seg"), progress=False
    )
    m = fit(cfg)
    assert m["task"] == "segmentation" and 0 <= m["test"]["dice"] <= 1
    assert m["test"]["dice"] > 0.5  # bright disks on a dark background: learnable in three epochs
    assert len(list((tmp_path / "seg" / "overlays").glob("*.png"))) == 4
    assert "val_dice" in (tmp_path / "seg" / "history.csv").read_text()
    cfg2 = TrainConfig(
        data=str(data),
        model="unet",
        epochs=1,
        batch_size=8,
        conv="sfconv",
        kl_weight=0.01,
        out=str(tmp_path / "sf"),
        progress=False,
    )
    fit(cfg2)
    assert "reg_loss" in (tmp_path / "sf" / "history.csv").read_text()


def test_covid_lungseg_loads_when_shared_data_is_here(shared_data):
    ds = load_segmentation("covid-lungseg", data_dir=shared_data)
    assert sum(len(s) for s in ds.splits.values()) == 451
    assert not set(ds.splits["train"].patient_ids) & set(ds.splits["test"].patient_ids)


def test_sfconv_study_segmentation_preset_tiny(tmp_path):
    import dataclasses as dc

    from smallmed.studies import sfconv as sf

    data = make_seg(tmp_path / "disks.npz", n=40)
    study = dc.replace(
        sf.PRESETS["seg"],
        data=str(data),
        image_size=32,
        seeds=(0, 1),
        epochs=1,
        variants=("conv", "fconvsn", "sfconv-nokl", "sfconv"),
        rank_ratio=0.5,
    )
    text = sf.run_sfconv_study(study, tmp_path / "st").read_text()
    assert "test Dice" in text and "| sfconv |" in text and "KL helps" in text


def test_cli_trains_a_unet(tmp_path, capsys):
    from smallmed.cli import main

    data = make_seg(tmp_path / "d.npz", n=24)
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--model",
                "unet",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert "test dice" in capsys.readouterr().out


def test_masks_from_image_folders(tmp_path):
    from PIL import Image

    src = np.load(make_seg(tmp_path / "d.npz", n=10, pids=False))
    for sub in ("images", "masks"):
        (tmp_path / "f" / sub).mkdir(parents=True)
    for i in range(10):
        Image.fromarray(src["images"][i]).save(tmp_path / "f" / "images" / f"x{i}.png")
        Image.fromarray(src["masks"][i] * 255).save(tmp_path / "f" / "masks" / f"x{i}.png")
    ds = load_segmentation(tmp_path / "f")
    assert sum(len(s) for s in ds.splits.values()) == 10
    assert set(np.unique(ds.splits["train"].masks)) <= {0, 1}
    (tmp_path / "f" / "masks" / "x3.png").unlink()
    with pytest.raises(SmallmedError, match="x3.png: no mask named x3"):
        load_segmentation(tmp_path / "f")


def test_non_finite_loss_leaves_no_half_run(tmp_path):
    from smallmed.errors import NonFiniteLossError

    data = make_seg(tmp_path / "d.npz", n=24)
    cfg = TrainConfig(
        data=str(data), model="unet", epochs=2, batch_size=8, lr=1e30, out=str(tmp_path / "nan"), progress=False
    )
    with pytest.raises(NonFiniteLossError, match="the run folder was removed"):
        fit(cfg)
    assert not (tmp_path / "nan").exists()
