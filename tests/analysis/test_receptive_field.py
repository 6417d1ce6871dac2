"""Receptive-field calculator: the seed's worked example, Distill's reference values, and a
brute-force gradient check on real torchvision definitions (skip and concat models included)."""

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from smallmed import SmallmedError, create_model
from smallmed.analysis.receptive_field import (
    expected_extent,
    format_table,
    gradient_extent,
    gradient_extents,
    receptive_field,
)


def alexnet_v2_features():
    """TF-slim alexnet_v2 up to pool5 (conv1 'VALID'), the seed's worked example."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 0),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, 1, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(384, 384, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, 1, 1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )


def _rsp(row):
    return row.r[0], row.S[0], row.P[0]


def test_worked_example_and_reference_values():
    assert _rsp(receptive_field(alexnet_v2_features(), (3, 224, 224))[-1]) == (195, 32, 64)  # Distill alexnet_v2
    assert _rsp(receptive_field(tvm.alexnet().features, (3, 224, 224))[-1]) == (195, 32, 66)  # torchvision: conv1 p=2
    assert _rsp(receptive_field(tvm.vgg16().features, (3, 224, 224))[-1]) == (212, 32, 90)
    rows = {r.name: r for r in receptive_field(tvm.resnet50(), (3, 224, 224))}
    assert _rsp(rows["layer4.2"]) == (427, 32, 213) and _rsp(rows["layer3.5"]) == (267, 16, 133)
    assert list(rows)[-1] == "layer4.2"  # the last row is the last spatial layer (no global pool)
    assert all(r.aligned for r in rows.values())


def test_rows_carry_the_documented_fields_and_print():
    rows = receptive_field(create_model("resnet18", 2, input_size=224), (3, 224, 224))
    first = rows[0]
    assert (first.name, first.k, first.s, first.p, first.r, first.S, first.P, first.u0, first.v0) == (
        "conv1",
        (7, 7),
        (2, 2),
        (3, 3),
        (7, 7),
        (2, 2),
        (3, 3),
        (-3, -3),
        (3, 3),
    )
    table = format_table(rows)
    assert "layer2.0.downsample.0" in table and "merge" in table


def _trunk(model):
    return nn.Sequential(*list(model.children())[:-2])  # drop global pool + classifier


CASES = [
    ("alexnet", lambda: tvm.alexnet().features, (3, 224, 224)),
    ("vgg16", lambda: create_model("vgg16", 2, input_size=224).features, (3, 224, 224)),
    ("resnet18", lambda: _trunk(create_model("resnet18", 2, input_size=448)), (3, 448, 448)),
    ("resnet50", lambda: _trunk(create_model("resnet50", 2, input_size=448)), (3, 448, 448)),
    ("densenet121-block2", lambda: create_model("densenet121", 2, input_size=224).features[:7], (3, 224, 224)),
    ("densenet121", lambda: create_model("densenet121", 2, input_size=224).features, (3, 224, 224)),
    ("small_cnn", lambda: create_model("small_cnn", 2, input_size=32).features, (3, 32, 32)),
    (
        "dilated+nonsquare",
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, (3, 5), padding=(1, 2), dilation=(2, 1)), nn.Conv2d(4, 4, 3, stride=2), nn.AvgPool2d((2, 3))
        ),
        (3, 40, 40),
    ),
]


@pytest.mark.parametrize("name,build,size", CASES, ids=[c[0] for c in CASES])
def test_calculator_agrees_with_the_brute_force_gradient_region(name, build, size):
    torch.manual_seed(0)
    model = build()
    last = receptive_field(model, size)[-1]
    rows, cols, unit, out = gradient_extent(model, size)
    assert tuple(out) == last.out, name
    assert (rows, cols) == expected_extent(last, unit, size[1:]), (name, last)


ROW_CASES = [
    ("alexnet", lambda: tvm.alexnet().features, (3, 224, 224)),
    ("vgg16", lambda: create_model("vgg16", 2, input_size=96).features, (3, 96, 96)),
    ("resnet18", lambda: _trunk(create_model("resnet18", 2, input_size=128)), (3, 128, 128)),
    ("resnet50", lambda: _trunk(create_model("resnet50", 2, input_size=96)), (3, 96, 96)),
    ("densenet121", lambda: create_model("densenet121", 2, input_size=64).features, (3, 64, 64)),
    ("small_cnn", lambda: create_model("small_cnn", 2, input_size=32).features, (3, 32, 32)),
]


@pytest.mark.parametrize("name,build,size", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_every_row_agrees_with_the_brute_force_gradient_region(name, build, size):
    """Not only the last row: every conv and pooling row is checked against gradients of that layer's
    output. (A merge/cat row names the module that calls the op, whose output may be a later tensor:
    DenseNet concatenates at a layer's start, so merges are covered by the convs that follow them.)"""
    torch.manual_seed(0)
    model = build()
    rows = receptive_field(model, size)
    checked = [r for r in rows if r.kind not in ("merge", "cat")]
    found = gradient_extents(model, size, [r.name for r in checked])
    assert len(found) == len(checked) > 3, name
    for r in checked:
        rws, cls, unit, out = found[r.name]
        assert tuple(out) == r.out, (name, r.name)
        assert (rws, cls) == expected_extent(r, unit, size[1:]), (name, r.name)


def test_misaligned_merge_is_reported():
    class Skew(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 1, 3, padding=1)
            self.b = nn.Conv2d(1, 1, 3, padding=0)
            self.pad = nn.ZeroPad2d((2, 0, 2, 0))  # same output size, shifted by one pixel

        def forward(self, x):
            return self.a(x) + self.pad(self.b(x))

    rows = receptive_field(Skew(), (1, 16, 16))
    assert rows[-1].kind == "merge" and not rows[-1].aligned


def test_bad_input():
    with pytest.raises(SmallmedError, match="no conv or pooling layer"):
        receptive_field(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), (3, 2, 2))
    with pytest.raises(SmallmedError, match="does not fit"):
        receptive_field(tvm.alexnet().features, (3, 8, 8))
    with pytest.raises(SmallmedError, match="input_size"):
        receptive_field(tvm.alexnet().features, (224, 224))


def test_cli_prints_the_table_and_fails_clearly(capsys):
    from smallmed.cli import main

    assert main(["rf", "resnet50", "--input", "224"]) == 0
    out = capsys.readouterr().out
    assert "layer4.2" in out and "receptive field 427 px, effective stride 32, effective padding 213" in out
    assert main(["rf", "resnt50"]) == 2
    assert "Did you mean 'resnet50'" in capsys.readouterr().err
    assert main(["rf", "alexnet", "--input", "8"]) == 2
    assert "does not fit" in capsys.readouterr().err
