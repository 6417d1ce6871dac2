"""Factorized convs (seed 004): shapes, exact full-rank reproduction, KL flattening, costs."""

import copy

import pytest
import torch
from torch import nn

from smallmed import SmallmedError, create_model
from smallmed.analysis.cost import cost
from smallmed.reparam.factorized import (
    FactorizedConv2d,
    factorize,
    factorized_modules,
    frobenius_decay,
    kl_flatten_loss,
)


def _net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4),
        nn.Conv2d(16, 12, (3, 5), padding=(1, 2)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 3),
    )


@pytest.mark.parametrize("method", ["sfconv", "fconv", "fconvsn", "dpc", "conv"])
def test_every_variant_keeps_shapes_and_trains(method):
    torch.manual_seed(0)
    m = _net()
    x = torch.randn(2, 3, 17, 17)
    shapes = [o.shape for o in _trace(m, x)]
    s = factorize(m, method, rank_ratio=0.5)
    assert [o.shape for o in _trace(m, x)] == shapes
    m(x).sum().backward()
    if method != "conv":
        assert len(s.rows) == 3 and s.skipped == ["4"]  # the grouped conv stays


def _trace(m, x):
    outs = []
    for layer in m:
        x = layer(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("kind", ["sfconv", "fconv"])
def test_full_rank_reproduces_a_pretrained_dense_conv(kind):
    torch.manual_seed(0)
    for conv in (
        nn.Conv2d(6, 10, 3, stride=2, padding=1),
        nn.Conv2d(10, 4, (3, 5), padding=(2, 1), dilation=(2, 1)),
        nn.Conv2d(3, 64, 7, padding=3, bias=False),
    ):
        x = torch.randn(2, conv.in_channels, 15, 15)
        full = min(conv.out_channels, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])
        f = FactorizedConv2d.from_conv(conv, full, kind)
        assert torch.allclose(f(x), conv(x), atol=1e-5, rtol=1e-4)
        assert torch.allclose(f.dense_weight(), conv.weight, atol=1e-5)
    # on a real model: every 3x3 conv of resnet18 at full rank leaves the outputs unchanged
    model = create_model("resnet18", 3, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    factorize(model, kind, rank_ratio=1.0)
    assert torch.allclose(model(x), y, atol=1e-4, rtol=1e-4)


def test_kl_is_zero_for_flat_positive_otherwise_and_has_a_gradient():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(4, 8, 3))
    factorize(m, "sfconv", rank=4)
    loss = kl_flatten_loss(m)
    assert loss.item() > 0
    loss.backward()
    f = factorized_modules(m)[0][1]
    assert f.first.weight.grad.abs().sum() > 0 and f.second.weight.grad.abs().sum() > 0
    with torch.no_grad():  # orthonormal rows / columns: every singular value equal
        f.first.weight.copy_(torch.linalg.qr(torch.randn(36, 4))[0].T.reshape(4, 4, 3, 3))
        f.second.weight.copy_(torch.linalg.qr(torch.randn(8, 4))[0].reshape(8, 4, 1, 1))
    assert abs(kl_flatten_loss(m).item()) < 1e-5
    g = nn.Sequential(nn.Conv2d(4, 8, 3))
    factorize(g, "fconv", rank=4)
    w = factorized_modules(g, ("fconv",))[0][1].dense_weight()
    assert torch.allclose(frobenius_decay(g), (w**2).sum(), rtol=1e-4)


def test_flops_of_one_conv_match_the_closed_form():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    c = cost(nn.Sequential(conv), (16, 20, 20), baseline=nn.Sequential(copy.deepcopy(conv)), repeats=2, batch=2)
    assert c["flops"] == 2 * 16 * 32 * 9 * 20 * 20  # FLOPs = 2 x MACs (bias not counted)
    assert c["params"] == 16 * 32 * 9 + 32 and c["speed_ratio"] > 0
    m = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1))
    factorize(m, "sfconv", rank=4)
    assert cost(m, (16, 20, 20), repeats=1, batch=1)["flops"] == 2 * 20 * 20 * (16 * 9 * 4 + 4 * 32)


def test_bad_input():
    m = nn.Sequential(nn.Conv2d(4, 8, 3))
    with pytest.raises(SmallmedError, match="exceeds its limit min\\(C_out, C_in\\*k\\*k\\) = 8"):
        factorize(copy.deepcopy(m), "sfconv", rank=9)
    with pytest.raises(SmallmedError, match="rank_ratio=1.5"):
        factorize(copy.deepcopy(m), "sfconv", rank_ratio=1.5)
    with pytest.raises(SmallmedError, match="Did you mean 'sfconv'"):
        factorize(copy.deepcopy(m), "sfcon")
    with pytest.raises(SmallmedError, match="no eligible conv"):
        factorize(nn.Sequential(nn.Linear(3, 3)), "sfconv")
    with pytest.raises(SmallmedError, match="no sfconv layers"):
        kl_flatten_loss(m)


@pytest.mark.parametrize(
    "conv,extra", [("sfconv", {"kl_weight": 0.1}), ("fconv", {"fd_weight": 1e-4}), ("fconvsn", {}), ("dpc", {})]
)
def test_trainer_factorizes_logs_the_regulariser_and_reloads(tiny_cfg, tmp_path, conv, extra):
    from smallmed.train import fit
    from smallmed.train.inference import evaluate_run

    ratio = {} if conv == "dpc" else {"rank_ratio": 0.5}  # dpc has no rank: the option is refused there
    cfg = tiny_cfg(epochs=1, conv=conv, out=str(tmp_path / conv), **ratio, **extra)
    m = fit(cfg)
    hist = (tmp_path / conv / "history.csv").read_text()
    assert ("reg_loss" in hist) == bool(extra)
    again = evaluate_run(tmp_path / conv, device="cpu")
    assert abs(again["auc"] - m["test"]["auc"]) < 1e-6


def test_config_rejects_a_kl_weight_without_sfconv(tiny_cfg):
    with pytest.raises(
        SmallmedError, match="kl_weight=0.1 has no effect with conv='conv'; it applies with conv 'sfconv'"
    ):
        tiny_cfg(kl_weight=0.1)


def test_sfconv_study_tiny_grid_reports_costs_and_spectra(tmp_path, tiny_npz):
    import dataclasses as dc

    from smallmed.studies import sfconv as sf

    study = dc.replace(
        sf.PRESETS["quick"],
        data=str(tiny_npz),
        model="small_cnn",
        seeds=(0, 1),
        epochs=1,
        rank_ratio=0.5,
        batch_size=16,
    )
    report = sf.run_sfconv_study(study, tmp_path / "sf")
    text = report.read_text()
    for v in sf.VARIANTS:
        assert f"| {v} |" in text
    assert "Verdict on the seed's claims" in text and "skewness" in text
    assert (tmp_path / "sf" / "sv_hist.png").exists()
    costs = __import__("json").loads((tmp_path / "sf" / "costs.json").read_text())
    assert costs["conv"]["speed_ratio"] > 0 and costs["sfconv"]["params"] < costs["conv"]["params"]
    with pytest.raises(SmallmedError, match="Did you mean 'sfconv'"):
        sf.run_sfconv_study(dc.replace(study, variants=("conv", "sfconvv")), tmp_path / "x")


def test_cost_cli(capsys):
    from smallmed.cli import main

    assert main(["cost", "small_cnn", "--input", "32", "--conv", "sfconv", "--rank-ratio", "0.25", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "factorize(method=sfconv)" in out and "ratio: params" in out
    assert main(["cost", "small_cnn", "--input", "32", "--conv", "sfconv", "--rank-ratio", "2"]) == 2
