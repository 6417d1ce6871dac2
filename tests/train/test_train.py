import json
import math

import numpy as np
import pytest
import torch

from smallmed import SmallmedError, TrainConfig, fit, resume
from smallmed.errors import NonFiniteLossError
from smallmed.schedules import Callback, TwoStage, freeze_bn_stats, set_trainable


def test_fit_writes_a_complete_run_and_learns(tiny_cfg, tmp_path, figures):
    m = fit(tiny_cfg(epochs=4, figures=True))
    run = tmp_path / "run"
    for f in (
        "config.yaml",
        "history.csv",
        "last.pt",
        "best.pt",
        "metrics.json",
        "test_predictions.csv",
        "loss_curves.png",
        "roc_test.png",
        "report.md",
    ):
        assert (run / f).exists(), f
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("auc", "acc", "tpr_at_fpr", "balanced_acc"):
        assert key in saved["test"]
    assert saved["trainable_params"] == saved["total_params"] > 0
    assert 1 <= saved["best_epoch"] <= 4 and saved["epochs"] == 4
    assert m["test"]["auc"] > 0.9  # the generated classes are easy; an untrained model sits near 0.5
    assert len((run / "history.csv").read_text().strip().splitlines()) == 5
    assert f"| auc | {saved['test']['auc']:.4f} (95% bootstrap CI" in (run / "report.md").read_text()
    lo, hi = saved["test"]["ci95"]["auc"]
    assert lo <= saved["test"]["auc"] <= hi


def test_best_epoch_is_the_lowest_validation_loss(tiny_cfg, tmp_path):
    m = fit(tiny_cfg(epochs=4))
    rows = (tmp_path / "run" / "history.csv").read_text().strip().splitlines()[1:]
    val = [float(r.split(",")[3]) for r in rows]
    assert m["best_epoch"] == int(np.argmin(val)) + 1
    assert m["val"]["val_loss"] == pytest.approx(min(val))


class Interrupt(Callback):
    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def on_batch_end(self, epoch, step, loss):
        if (epoch, step) == self.at:
            raise KeyboardInterrupt


def test_killed_mid_epoch_then_resumed_matches_uninterrupted(tiny_cfg, tmp_path):
    full = fit(tiny_cfg(epochs=4, out=str(tmp_path / "a"), augment="hflip,rotate=10", head_epochs=1))
    with pytest.raises(KeyboardInterrupt):
        fit(
            tiny_cfg(epochs=4, out=str(tmp_path / "b"), augment="hflip,rotate=10", head_epochs=1),
            callbacks=[Interrupt(epoch=2, step=1)],
        )
    assert not (tmp_path / "b" / "metrics.json").exists()
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 1  # epochs 1-2 done
    resumed = resume(tmp_path / "b")
    assert resumed["test"] == full["test"]
    assert resumed["best_epoch"] == full["best_epoch"]
    a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_stage_head_only_then_all(tiny_cfg):
    from smallmed.train import prepare

    setup = prepare(tiny_cfg())
    model = setup.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sched = TwoStage("fc", head_epochs=1)
    model.train()
    sched.on_epoch_start(0, model)
    opt = torch.optim.Adam([p for p in model.parameters()], lr=0.1)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 2, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # no other weight and no BN statistic moved
    model.train()
    sched.on_epoch_start(1, model)
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_freeze_bn_stats_only_touches_frozen_layers():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2))
    set_trainable(net, lambda n: not n.startswith("1."))
    net.train()
    assert freeze_bn_stats(net) == ["1"]
    assert not net[1].training and net[2].training


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_cfg, tmp_path):
    class Explode(Callback):
        def on_epoch_start(self, epoch, model):
            if epoch == 1:
                with torch.no_grad():
                    model.fc.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 2, step 1.*after epoch 1"):
        fit(tiny_cfg(epochs=3), callbacks=[Explode()])
    run = tmp_path / "run"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (run / "metrics.json").exists()


def test_non_finite_in_first_epoch_leaves_no_run_folder(tiny_cfg, tmp_path):
    with pytest.raises(NonFiniteLossError):
        fit(tiny_cfg(lr=1e30, optimizer="sgd", momentum=0.0, epochs=1))
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_is_not_overwritten(tiny_cfg, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    with pytest.raises(SmallmedError, match="already exists.*--resume"):
        fit(tiny_cfg())
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"


def test_bad_input_writes_nothing(tiny_cfg, tmp_path):
    with pytest.raises(SmallmedError, match="not found"):
        fit(tiny_cfg(data=str(tmp_path / "missing.npz")))
    with pytest.raises(SmallmedError, match="fraction=0.001 of 64 training images is empty"):
        fit(tiny_cfg(fraction=0.001))
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "w.pt")
    with pytest.raises(SmallmedError, match="keys do not match"):
        fit(tiny_cfg(weights=str(tmp_path / "w.pt")))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(fraction=1.5), "fraction=1.5"),
        (dict(optimizer="adamm"), "Did you mean 'adam'"),
        (dict(head_epochs=5, epochs=2), "head_epochs=5"),
        (dict(lr=0), "lr=0"),
        (dict(betas=(0.9,)), "betas"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(SmallmedError, match=match):
        TrainConfig(**bad)


def test_fraction_subsets_the_training_split(tiny_cfg):
    m = fit(tiny_cfg(fraction=0.25, epochs=1))
    assert m["train_images"] == 16


def test_custom_model_from_python(tiny_cfg):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    m = fit(tiny_cfg(epochs=1), model=net)
    assert m["total_params"] == sum(p.numel() for p in net.parameters())
    assert math.isfinite(m["test"]["loss"])


def test_multilabel_training(tmp_path):
    from tests.conftest import make_medmnist

    path = make_medmnist(tmp_path / "ml.npz", classes=3, multilabel=True)
    m = fit(
        TrainConfig(
            data=str(path),
            model="small_cnn",
            epochs=1,
            batch_size=16,
            out=str(tmp_path / "r"),
            progress=False,
            augment="none",
        )
    )
    assert len(m["test"]["auc_per_class"]) == 3


def test_a_run_without_figures_writes_the_same_numbers_and_no_image(tiny_cfg, tmp_path, figures):
    a = fit(tiny_cfg(epochs=2, out=str(tmp_path / "a"), figures=True))
    b = fit(tiny_cfg(epochs=2, out=str(tmp_path / "b")))
    assert a["test"]["auc"] == b["test"]["auc"] and a["test"]["ci95"] == b["test"]["ci95"]
    assert list((tmp_path / "a").glob("*.png")) and not list((tmp_path / "b").glob("*.png"))
    assert "png" not in (tmp_path / "b" / "report.md").read_text()
