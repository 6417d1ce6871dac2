"""Effective receptive field and occlusion maps."""

import numpy as np
import pytest
import torch
from torch import nn

from smallmed import SmallmedError, create_model
from smallmed.analysis.erf import effective_receptive_field, erf_radius, occlusion_map, plot_erf


def test_erf_sits_inside_the_theoretical_field_and_has_a_radius(tmp_path):
    from smallmed.analysis.receptive_field import receptive_field

    torch.manual_seed(0)
    model = create_model("small_cnn", 2, input_size=32)
    erf = effective_receptive_field(model, (3, 32, 32), n=4)
    assert erf.shape == (32, 32) and abs(erf.sum() - 1) < 1e-6
    r = receptive_field(model, (3, 32, 32))[-1].r[0]
    ys, xs = np.nonzero(erf > 0)
    assert ys.max() - ys.min() + 1 <= r and xs.max() - xs.min() + 1 <= r
    assert 0 < erf_radius(erf, 0.5) < erf_radius(erf, 0.9) <= r
    png = plot_erf({"untrained": erf, "again": erf}, tmp_path / "erf.png")
    assert png.stat().st_size > 1000
    with pytest.raises(SmallmedError, match="fraction"):
        erf_radius(erf, 1.5)


def test_occlusion_finds_the_pixels_the_model_uses():
    class Corner(nn.Module):  # logit of class 1 = brightness of the top-left 8x8 corner
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            s = x[:, :, :8, :8].mean((1, 2, 3)) * 4 - 3 + self.w
            return torch.stack([-s, s], 1)

    img = torch.ones(1, 32, 32)
    img[:, 16:, 16:] = 0  # the mean fill is darker than the corner
    heat = occlusion_map(Corner(), img, target=1, patch=8, stride=4)
    assert heat.shape == (32, 32)
    assert heat[:8, :8].mean() > 0.05 and abs(heat[24:, 24:]).max() < 1e-6


def test_explain_cli_writes_overlays(tiny_cfg, tmp_path):
    from smallmed.cli import main
    from smallmed.train import fit

    fit(tiny_cfg(epochs=1, out=str(tmp_path / "run")))
    assert main(["explain", str(tmp_path / "run"), "--n", "2"]) == 0
    pngs = sorted((tmp_path / "run" / "explain").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in pngs)
