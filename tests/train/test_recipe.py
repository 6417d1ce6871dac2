"""The named training recipes (baseline, strong) and their parts: warmup + cosine, label smoothing,
MixUp / CutMix, an EMA of the weights, TrivialAugmentWide, zero-padding small images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def test_baseline_keeps_the_first_builds_defaults_and_strong_fills_beneath_the_user():
    from smallmed import TrainConfig

    b = TrainConfig()
    assert (b.optimizer, b.lr, b.scheduler, b.augment, b.weight_decay, b.ema, b.mixup) == (
        "adam",
        1e-3,
        "plateau",
        "flip",
        0.0,
        0.0,
        0.0,
    )
    s = TrainConfig(recipe="strong", epochs=5)
    assert (s.optimizer, s.scheduler, s.augment, s.label_smoothing, s.warmup_epochs) == (
        "adamw",
        "cosine",
        "trivial",
        0.1,
        1,
    )
    assert 0 < s.ema < 1 and s.mixup > 0 and s.cutmix > 0
    assert TrainConfig(recipe="strong", epochs=5, lr=3e-4, mixup=0).lr == 3e-4  # the user's settings win
    assert TrainConfig(recipe="strong", epochs=5, mixup=0).mixup == 0


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(recipe="stong"), "strong"),
        (dict(ema=1.0), "ema"),
        (dict(label_smoothing=1.0), "label_smoothing"),
        (dict(mixup=-1.0), "mixup"),
        (dict(warmup_epochs=2, scheduler="plateau"), "cosine"),
        (dict(fit="crop"), "pad"),
    ],
)
def test_recipe_settings_are_checked(kw, match):
    from smallmed import SmallmedError, TrainConfig

    with pytest.raises(SmallmedError, match=match):
        TrainConfig(epochs=5, **kw)


def test_mixup_and_cutmix_targets_are_probabilities_that_sum_to_one():
    from smallmed import TrainConfig
    from smallmed.train.loop import _batch_mix
    from smallmed.train.tasks import ClassificationTask

    task = ClassificationTask(kind="multiclass", class_names=["a", "b", "c"])
    mix = _batch_mix(TrainConfig(epochs=2, mixup=0.4, cutmix=1.0), task)
    torch.manual_seed(0)
    for _ in range(6):
        x, y = mix(torch.rand(8, 1, 16, 16), torch.randint(0, 3, (8,)))
        assert y.shape == (8, 3) and torch.allclose(y.sum(1), torch.ones(8)) and (y >= 0).all()
    assert _batch_mix(TrainConfig(epochs=2), task) is None


def test_warmup_then_cosine():
    from smallmed import TrainConfig
    from smallmed.train.optim import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, on_val = build_scheduler(opt, TrainConfig(epochs=6, scheduler="cosine", warmup_epochs=2, lr=1.0))
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert not on_val and lrs[0] == pytest.approx(0.1) and lrs[0] < lrs[1] < lrs[2] == pytest.approx(1.0)
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5]


def test_ema_weights_are_the_ones_validated_saved_and_tested(tiny_cfg):
    from smallmed import fit
    from smallmed.io import load_checkpoint
    from smallmed.train.inference import evaluate_run

    cfg = tiny_cfg(ema=0.6, epochs=2, select_epoch="last")
    m = fit(cfg)
    best = load_checkpoint(f"{cfg.out}/best.pt")
    last = load_checkpoint(f"{cfg.out}/last.pt")
    assert best["weights"] == "ema"
    ema = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    conv = [k for k, v in best["model"].items() if v.ndim == 4]
    assert conv and all(torch.equal(best["model"][k], ema[k]) for k in conv)  # the average is what was saved
    assert not all(torch.equal(best["model"][k], last["model"][k]) for k in conv)  # not the raw weights
    assert evaluate_run(cfg.out, device="cpu")["auc"] == pytest.approx(m["test"]["auc"])
    import csv

    rows = list(csv.DictReader(open(f"{cfg.out}/history.csv")))
    assert "val_loss_raw" in rows[0] and rows[-1]["val_loss"] != rows[-1]["val_loss_raw"]


def test_pad_keeps_the_pixels_and_adds_a_zero_border():
    from smallmed.data.transforms import build_transform

    img = torch.full((1, 16, 16), 200, dtype=torch.uint8)
    x = build_transform(train=False, image_size=32, channels=1, normalize="none", fit="pad")(img)
    assert x.shape == (1, 32, 32)
    assert torch.allclose(x[:, 8:24, 8:24], torch.full((1, 16, 16), 200 / 255))
    assert x[:, :8].abs().sum() == 0 and x[:, :, 24:].abs().sum() == 0


def test_strong_recipe_trains_classification_and_ignores_its_mixing_for_regression(tiny_cfg):
    from smallmed import SmallmedError, fit

    m = fit(tiny_cfg(recipe="strong", epochs=3))
    assert 0 <= m["test"]["auc"] <= 1
    fit(
        tiny_cfg(recipe="strong", epochs=2, task="regression", out=tiny_cfg().out + "-reg")
    )  # the recipe's mixing is not used
    with pytest.raises(SmallmedError, match="mixup"):
        fit(tiny_cfg(recipe="strong", epochs=2, task="regression", mixup=0.5, out=tiny_cfg().out + "-reg2"))


def test_strong_recipe_under_a_method_short_runs_and_other_schedules():
    """The recipe's warmup leads into its cosine schedule, and its decay is AdamW's: neither is forced onto a
    setting that cannot use it."""
    from smallmed import TrainConfig

    c = TrainConfig(method="sp-svd", recipe="strong")
    assert (c.optimizer, c.scheduler, c.batch_size, c.head_epochs) == ("adamw", "cosine", 16, 1)
    assert TrainConfig(recipe="strong", epochs=1).warmup_epochs == 0
    assert TrainConfig(recipe="strong", scheduler="plateau").warmup_epochs == 0
    lora = TrainConfig.for_method("lora", recipe="strong")  # the protocol given explicitly, as the CLI does
    assert lora.optimizer == "adam" and lora.weight_decay == 0.0 and lora.warmup_epochs == 0


def test_old_run_configs_with_idle_settings_still_load():
    from smallmed import TrainConfig

    assert TrainConfig.from_saved({"conv": "dpc", "rank_ratio": 0.0625}).rank_ratio == TrainConfig().rank_ratio
    from smallmed import SmallmedError

    with pytest.raises(SmallmedError, match="rank_ratio"):
        TrainConfig(conv="dpc", rank_ratio=0.0625)


def test_the_validation_loss_has_no_label_smoothing():
    """A smoothed loss has a floor that grows with the smoothing: validation (best epoch, a search's objective)
    reads the plain cross-entropy, so runs with different smoothing compare on one scale."""
    import torch.nn.functional as F

    from smallmed.train.tasks import ClassificationTask

    out, y = torch.randn(32, 3), torch.randint(0, 3, (32,))
    smooth = ClassificationTask(kind="multiclass", class_names=["a", "b", "c"], label_smoothing=0.2)
    plain = ClassificationTask(kind="multiclass", class_names=["a", "b", "c"])
    assert smooth.loss(out, y) > smooth.eval_loss(out, y) + 1e-3  # training still smooths
    assert torch.allclose(smooth.eval_loss(out, y), F.cross_entropy(out, y))
    assert torch.allclose(plain.eval_loss(out, y), plain.loss(out, y))


def test_recomputed_batchnorm_statistics_are_the_ones_saved(tiny_cfg):
    """bn_stats="recompute": the saved model's BatchNorm statistics are the average over the training images
    (computing them again changes nothing), where the running averages of the steps are not."""
    from smallmed import fit
    from smallmed.io import load_checkpoint
    from smallmed.train.inference import load_run
    from smallmed.train.setup import prepare

    def stats_again(run) -> tuple[dict, dict]:
        loaded = load_run(run, "cpu")
        before = {k: v.clone() for k, v in loaded.model.state_dict().items() if "running_" in k}
        setup = prepare(loaded.config)
        torch.optim.swa_utils.update_bn(setup.loader("train", train=False), loaded.model)
        after = {k: v for k, v in loaded.model.state_dict().items() if "running_" in k}
        return before, after

    for mode, same in (("recompute", True), ("running", False)):
        cfg = tiny_cfg(epochs=1, bn_stats=mode, out=str(Path(tiny_cfg().out).parent / mode), augment="flip")
        fit(cfg)
        assert load_checkpoint(f"{cfg.out}/best.pt")["config"]["bn_stats"] == mode
        before, after = stats_again(cfg.out)
        assert before and all(torch.allclose(before[k], after[k], atol=1e-5) for k in before) == same, mode
    # a model without BatchNorm has nothing to recompute: refused, not ignored
    from smallmed.errors import SmallmedError

    with pytest.raises(SmallmedError, match="bn_stats='recompute': model='small_cnn' has no BatchNorm layer"):
        fit(tiny_cfg(epochs=1, bn_stats="recompute", norm="none", out=str(Path(tiny_cfg().out).parent / "nobn")))


def test_precise_bn_leaves_the_statistics_a_method_froze(tiny_cfg):
    """A BatchNorm layer in eval mode after the epoch (its statistics frozen by the method) keeps them; the
    layers that trained get new ones; every module's mode is as it was."""
    from smallmed.train.loop import _recompute_bn
    from smallmed.train.setup import prepare

    setup = prepare(tiny_cfg(bn_stats="recompute"))
    model = setup.model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) >= 2
    bns[0].eval()  # as freeze_bn_stats leaves a frozen layer
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    _recompute_bn(setup, model, model)
    assert torch.equal(bns[0].running_mean, before[0][0]) and torch.equal(bns[0].running_var, before[0][1])
    assert not torch.equal(bns[1].running_mean, before[1][0])
    assert [m.training for m in bns] == [False] + [True] * (len(bns) - 1)
    assert all(m.momentum == 0.1 for m in bns)
