"""The contract every registered fine-tuning method meets (one row per method in ``CASES``).

On a tiny conv net: applying the method leaves the outputs unchanged (unless it prunes); exactly the method's roles
train, counted by a formula written here (not read from the code); after the trainable tensors are
perturbed, the merged plain model gives the perturbed model's outputs, and so does ONNX Runtime;
an adapter file saved from the perturbed model and loaded onto a fresh base gives them too.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smallmed import TrainConfig
from smallmed.adapters import base_fingerprint, load_adapter, method_settings, save_adapter
from smallmed.methods import apply_method, get_method, method_names
from smallmed.roles import parameter_roles

# the tiny net: conv1 1->4 (3x3, no bias), BN(4), conv2 4->4 (3x3, bias), linear head 4->2
HEAD = 4 * 2 + 2
BN = 4 + 4
CONV2_BIAS = 4
R = 2  # LoRA-family rank used here
# trainable parameters by an independent count: method -> (count, config overrides)
CASES = {
    "full": (36 + BN + 144 + CONV2_BIAS + HEAD, {}),
    "fc-train": (HEAD, {}),
    "bitfit": (HEAD + BN + CONV2_BIAS, {}),
    # A: r x in x 3 x 3, B: out x r (1x1), per conv
    "lora": (R * 1 * 9 + 4 * R + R * 4 * 9 + 4 * R + HEAD, {"lora_rank": R}),
    # singular values per conv: min(in, out*9) on the in x (out*h*w) unfolding, min(out, in*9) on the other
    "full-svd": (min(1, 36) + min(4, 36) + HEAD, {}),
    "full-out-svd": (min(4, 9) + min(4, 36) + HEAD, {}),
    # one SVD per kernel position: 9 x min(in, out) values; the pruned variants keep the parameter (pruned
    # entries are held at 0 by a mask), so the count is the same
    "sp-svd": (9 * 1 + 9 * 4 + HEAD, {}),
    "sp-svd-9": (9 * 1 + 9 * 4 + HEAD, {}),
    "full-svd-9": (min(1, 36) + min(4, 36) + HEAD, {}),
    # LoRA's factors plus a magnitude per output channel of each adapted conv
    "dora": (R * 1 * 9 + 4 * R + R * 4 * 9 + 4 * R + 4 + 4 + HEAD, {"lora_rank": R}),
    # a scale and a shift per output channel of every conv
    "ssf": (2 * 4 + 2 * 4 + HEAD, {}),
}


def tiny() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with torch.no_grad():  # BatchNorm statistics away from (0, 1), so they matter
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


X = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))


def _prepared(name: str):
    count, over = CASES[name]
    cfg = TrainConfig.for_method(name, **over)
    settings = method_settings(cfg)
    model = tiny()
    base_hash = base_fingerprint(model)
    apply_method(model, name, settings)
    return model.eval(), settings, base_hash, count


def _perturb(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_every_registered_method_has_a_row():
    assert set(method_names()) == set(CASES), "add a row to CASES for each new method"


@pytest.mark.parametrize("name", sorted(CASES))
def test_apply_leaves_outputs_and_trains_only_its_roles(name):
    ref = tiny()(X)
    model, settings, _, count = _prepared(name)
    if not get_method(name).pruned(settings):  # a pruned method drops singular values by design
        with torch.no_grad():
            assert torch.allclose(model(X), ref, atol=1e-5), "applying a method must not change the outputs"
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == count
    roles = get_method(name).trained_roles(settings)
    if roles is not None:
        found = parameter_roles(model)
        assert {found[n] for n in trainable} <= roles


@pytest.mark.parametrize("name", sorted(CASES))
def test_merge_after_perturbation_and_onnx_parity(name):
    pytest.importorskip("onnxruntime")
    from smallmed.export import check_onnx, onnx_bytes

    model, _, _, _ = _prepared(name)
    _perturb(model)
    with torch.no_grad():
        want = model(X)
    merged = get_method(name).merge(model)
    plain = merged if merged is not None else model
    assert not any("parametrizations" in n or "lora_" in n for n, _ in plain.named_parameters()), (
        "merge leaves plain layers"
    )
    with torch.no_grad():
        assert torch.allclose(plain.eval()(X), want, atol=1e-5)
    data = onnx_bytes(plain, X[:2])
    assert check_onnx(plain, data, X.shape[1:])["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("name", sorted(n for n in CASES if get_method(n).roles is not None))
def test_adapter_round_trip_after_perturbation(name, tmp_path):
    model, settings, base_hash, _ = _prepared(name)
    _perturb(model)
    with torch.no_grad():
        want = model(X)
    path = save_adapter(model, tmp_path / "a.safetensors", method=name, settings=settings, base_hash=base_hash)
    got = load_adapter(tiny(), path)
    with torch.no_grad():
        assert torch.allclose(got(X), want, atol=1e-5)
