"""RFF schedule (seed 001): which layers, and that frozen means frozen."""

import pytest
import torch
from torchvision import models as tvm

from smallmed import SmallmedError, create_model
from smallmed.schedules import Callback, RFFreeze, following_norms, rff_layers


def test_rff_layers_of_reference_models():
    assert rff_layers(tvm.resnet50(), (3, 224, 224)) == [
        "layer1.0.conv2",
        "layer2.0.conv2",
        "layer3.0.conv2",
        "layer4.0.conv2",
    ]
    cnn = create_model("small_cnn", 8, input_size=32)
    layers = rff_layers(cnn, (3, 32, 32))
    assert layers == ["features.6", "features.12"]  # the convs right after each max-pool
    assert all(isinstance(cnn.get_submodule(n), torch.nn.Conv2d) for n in layers)
    assert following_norms(cnn, layers, (3, 32, 32)) == {"features.6": "features.7", "features.12": "features.13"}
    assert len(rff_layers(create_model("vgg16", 2, input_size=64), (3, 64, 64))) == 4


def test_frozen_layers_get_no_update_and_keep_bn_statistics(tiny_cfg, tmp_path):
    from smallmed.io import load_checkpoint
    from smallmed.train import fit

    snap = {}

    class Snapshot(Callback):
        def on_epoch_start(self, epoch, model):
            if epoch == 1:
                snap.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    cfg = tiny_cfg(epochs=2, rff_epochs=(2,), lr=1e-2, out=str(tmp_path / "rff"))
    fit(cfg, callbacks=[Snapshot()])
    end = load_checkpoint(tmp_path / "rff" / "last.pt")["model"]
    for name in ("features.6", "features.12"):
        assert torch.equal(end[f"{name}.weight"], snap[f"{name}.weight"]), name
    for bn in ("features.7", "features.13"):
        assert torch.equal(end[f"{bn}.running_mean"], snap[f"{bn}.running_mean"]), bn
        assert torch.equal(end[f"{bn}.weight"], snap[f"{bn}.weight"]), bn
    assert not torch.equal(end["features.0.weight"], snap["features.0.weight"])  # the rest trained
    assert not torch.equal(end["features.1.running_mean"], snap["features.1.running_mean"])


def test_alternate_and_bad_names():
    cnn = create_model("small_cnn", 2, input_size=32)
    cb = RFFreeze(cnn, ["features.6"], alternate=True)
    assert [cb.frozen_at(e) for e in range(4)] == [False, True, False, True]
    with pytest.raises(SmallmedError, match="did you mean 'features.7'"):
        RFFreeze(cnn, ["features.77"], epochs=(2,))


def test_rff_study_tiny_runs_resumes_and_reports(tmp_path):
    import dataclasses as dc

    from smallmed.studies import rff as rff_mod
    from tests.conftest import make_medmnist

    data = make_medmnist(tmp_path / "five.npz", n=(200, 20, 20), size=16, classes=5)
    study = dc.replace(
        rff_mod.PRESETS["quick"],
        data=str(data),
        image_size=16,
        splits=2,
        seeds=(0, 1),
        base_epochs=1,
        transfer_epochs=1,
        batch_size=32,
    )
    report = rff_mod.run_rff_study(study, tmp_path / "rff")
    text = report.read_text()
    assert "delta (RFF - normal)" in text and "Verdict" in text and (tmp_path / "rff" / "erf.png").exists()
    cells = sorted((tmp_path / "rff" / "cells").glob("*.json"))
    assert len(cells) == 4
    first = cells[0].read_text()
    rff_mod.run_rff_study(study, tmp_path / "rff")  # resumes: finished cells are not redone
    assert cells[0].read_text() == first
    assert rff_mod.class_splits(5, 2, 3)[0][1] != rff_mod.class_splits(5, 2, 3)[1][1]
    with pytest.raises(SmallmedError, match="at least two classes"):
        rff_mod.class_splits(5, 1, 3)
    with pytest.raises(SmallmedError, match="at least two base classes"):
        rff_mod.class_splits(3, 2, 3)
