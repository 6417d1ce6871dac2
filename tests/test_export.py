"""LoRA (PEFT) and BitFit train only what they claim; adapters round-trip; ONNX matches PyTorch."""

from __future__ import annotations

import pytest
import torch

from smallmed import TrainConfig, create_model, fit, load_adapter, load_run, save_adapter
from smallmed.errors import SmallmedError
from smallmed.roles import parameter_roles

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from conftest import make_medmnist

    root = tmp_path_factory.mktemp("adapters")
    data = make_medmnist(root / "tiny.npz", n=(64, 24, 24))
    fit(
        TrainConfig(
            data=str(data),
            model="resnet18",
            epochs=1,
            batch_size=16,
            progress=False,
            augment="none",
            out=str(root / "src"),
        )
    )
    return root, data, root / "src" / "best.pt"


def _tuned(source, method, **kw):
    root, data, weights = source
    out = root / method
    if not (out / "metrics.json").exists():
        fit(
            TrainConfig.for_method(
                method,
                data=str(data),
                model="resnet18",
                epochs=2,
                progress=False,
                augment="none",
                weights=str(weights),
                out=str(out),
                **kw,
            )
        )
    return out


def _base(weights):
    return create_model("resnet18", 2, in_chans=1, input_size=16, weights=str(weights))


@pytest.mark.parametrize("method,roles", [("lora", {"lora", "head"}), ("bitfit", {"bn", "bias", "head"})])
def test_peft_baselines_train_only_their_roles(source, method, roles):
    root, _, weights = source
    run = load_run(_tuned(source, method, lora_rank=2) if method == "lora" else _tuned(source, method))
    base = _base(weights).state_dict()
    tuned = run.model.state_dict()
    found = parameter_roles(run.model)
    frozen = [k for k, r in found.items() if r not in roles]
    assert frozen and all(torch.equal(tuned[k], base[k.replace(".base_layer", "")]) for k in frozen)
    trained = [k for k, r in found.items() if r in roles - {"head"} and k in base]
    assert method == "lora" or any(not torch.equal(tuned[k], base[k]) for k in trained)
    if method == "lora":
        convs = [m.base_layer for m in run.model.modules() if hasattr(m, "lora_A")]
        n_lora = sum(p.numel() for k, p in run.model.named_parameters() if found[k] == "lora")
        # rank 2: A is a k x k conv in -> 2, B a 1x1 conv 2 -> out
        assert convs and n_lora == sum(
            2 * (c.in_channels * c.kernel_size[0] * c.kernel_size[1] + c.out_channels) for c in convs
        )
        assert any(not torch.equal(tuned[k], torch.zeros_like(tuned[k])) for k in tuned if "lora_B" in k)  # it learned
    import json

    m = json.loads((run.config.out and (root / method / "metrics.json")).read_text())
    expected = sum(p.numel() for k, p in run.model.named_parameters() if found[k] in roles)
    assert m["trainable_params"] == expected


@pytest.mark.parametrize("method", ["full-svd", "lora", "bitfit"])
def test_adapter_round_trip_gives_the_runs_outputs(source, method):
    root, _, weights = source
    run = load_run(_tuned(source, method, lora_rank=2) if method == "lora" else _tuned(source, method))
    path = root / method / "adapter.safetensors"
    assert path.exists() and path.stat().st_size < 0.05 * (weights.stat().st_size)
    model = load_adapter(_base(weights), path)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), run.model(x), atol=1e-6)
    # a second save of the loaded model is the same adapter
    again = save_adapter(model, root / method / "again.safetensors")
    from smallmed.adapters import read_adapter

    a, b = read_adapter(path)[0], read_adapter(again)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_refuses_another_base(source):
    root, _, _ = source
    run_dir = _tuned(source, "full-svd")
    other = create_model("resnet18", 2, in_chans=1, input_size=16)  # random weights
    with pytest.raises(SmallmedError, match="trained on base weights"):
        load_adapter(other, run_dir / "adapter.safetensors")
    with pytest.raises(SmallmedError, match="not a smallmed adapter"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(root / "plain.safetensors"))
        load_adapter(other, root / "plain.safetensors")


def test_onnx_export_matches_pytorch_and_folded_checkpoint_loads(source, tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnxruntime as ort

    from smallmed.cli import main
    from smallmed.export import plain_model

    run_dir = _tuned(source, "lora", lora_rank=2)
    assert (
        main(
            ["-q", "export", str(run_dir), "--onnx", str(tmp_path / "m.onnx"), "--folded", str(tmp_path / "folded.pt")]
        )
        == 0
    )
    run = load_run(run_dir)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for b in (1, 7):  # dynamic batch
        x = torch.randn(b, 1, 16, 16)
        with torch.no_grad():
            ref = run.model(x).numpy()
        assert np.abs(sess.run(None, {"image": x.numpy()})[0] - ref).max() < 1e-4
    meta = {p.key: p.value for p in __import__("onnx").load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["smallmed_image_size"] == "16" and meta["smallmed_method"] == "lora"
    plain = create_model("resnet18", 2, in_chans=1, input_size=16, weights=str(tmp_path / "folded.pt")).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(plain(x), run.model(x), atol=1e-5)
        assert torch.allclose(plain_model(run)(x), run.model(x), atol=1e-5)
    assert main(["export", str(run_dir)]) == 2  # nothing named: one sentence, exit 2
    assert main(["export", str(run_dir), "--low-rank", "--folded", str(tmp_path / "f2.pt")]) == 2
    assert not (tmp_path / "f2.pt").exists()
    with pytest.raises(
        SmallmedError, match="lora_rank=8 has no effect with method='full-svd'; it applies with method 'lora'"
    ):
        TrainConfig(method="full-svd", lora_rank=8)
