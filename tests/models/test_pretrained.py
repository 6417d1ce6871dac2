"""Pretrained sources offline: torchvision ImageNet files, torchxrayvision conversion, timm; downloads served locally."""

from __future__ import annotations

import hashlib
import http.server
import sys
import threading
import types

import pytest
import torch
from torch import nn

from smallmed import create_model
from smallmed.errors import SmallmedError
from smallmed.hub import download_file
from smallmed.models import model_entry, pretrained


@pytest.fixture
def served(http_root):
    return http_root


@pytest.fixture
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def _imagenet_file(root, arch="resnet18"):
    import torchvision

    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    tmp = root / "tmp.pth"
    torch.save(state, tmp)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    name = f"{arch}-{sha[:8]}.pth"
    tmp.rename(root / name)
    return name, state


def test_imagenet_weights_download_hash_checked_and_adapted(served, caches, monkeypatch):
    root, base = served
    name, state = _imagenet_file(root)
    monkeypatch.setattr(pretrained, "_enum", lambda spec: types.SimpleNamespace(url=base + name))
    model = create_model("resnet18", 2, in_chans=1, weights="imagenet", input_size=32)
    assert model.conv1.kernel_size == (7, 7)  # named ImageNet weights keep the ImageNet stem
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert model.fc.out_features == 2 and model.smallmed_info.load_report.head_replaced
    assert (pretrained.hub_dir() / name).exists()  # torch's hub cache, where torchvision keeps it

    # a file whose bytes do not match the hash in its name: refused, nothing cached
    bad = "resnet50-0000aaaa.pth"
    (root / bad).write_bytes(b"not the weights")
    monkeypatch.setattr(pretrained, "_enum", lambda spec: types.SimpleNamespace(url=base + bad))
    with pytest.raises(SmallmedError, match="SHA-256 .* expected 0000aaaa; nothing was saved"):
        create_model("resnet50", 2, weights="imagenet")
    assert sorted(p.name for p in pretrained.hub_dir().iterdir()) == [name]


def test_offline_download_names_file_and_folder(caches):
    with pytest.raises(SmallmedError, match=r"SMALLMED_OFFLINE is set.*place the file at .*resnet18-f37072fd.pth"):
        create_model("resnet18", 2, weights="imagenet")


def test_truncated_download_leaves_nothing(tmp_path):
    class Liar(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 400)  # and the connection closes

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Liar)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(SmallmedError, match="truncated|broke off"):
            download_file(f"http://127.0.0.1:{srv.server_address[1]}/w.pth", tmp_path / "w.pth", progress=False)
    finally:
        srv.shutdown()
    assert list(tmp_path.iterdir()) == []


def _fake_xrv_module():
    """A stand-in for torchxrayvision.models, so a whole model pickles the way torchxrayvision's files do."""
    import torchvision

    mod = types.ModuleType("torchxrayvision.models")

    class DenseNet(torchvision.models.DenseNet):
        def __init__(self):
            super().__init__(32, (6, 12, 24, 16), 64, num_classes=18)
            self.features.conv0 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
            self.op_threshs = [0.1] * 18

    DenseNet.__module__ = "torchxrayvision.models"
    DenseNet.__qualname__ = "DenseNet"
    mod.DenseNet = DenseNet
    return mod


def test_xrv_weights_are_converted_once_to_safetensors(served, caches, monkeypatch):
    root, base = served
    fake = _fake_xrv_module()
    monkeypatch.setitem(sys.modules, "torchxrayvision", types.ModuleType("torchxrayvision"))
    monkeypatch.setitem(sys.modules, "torchxrayvision.models", fake)
    src = fake.DenseNet()
    torch.save(src, root / pretrained.XRV["densenet121-res224-nih"])  # a whole pickled model, as published
    monkeypatch.setitem(sys.modules, "torchxrayvision.models", None)  # the loader must not need the package
    monkeypatch.setattr(pretrained, "XRV_BASE", base)
    model = create_model("densenet121", 2, in_chans=1, weights="xrv:densenet121-res224-nih")
    assert torch.equal(model.features.conv0.weight, src.features.conv0.weight)
    assert torch.equal(
        model.features.denseblock4.denselayer16.conv2.weight, src.features.denseblock4.denselayer16.conv2.weight
    )
    folder = caches / "cache" / "smallmed" / "weights" / "xrv"
    assert sorted(p.name for p in folder.iterdir()) == ["densenet121-res224-nih.safetensors"]  # pickle gone
    assert model_entry("densenet121").normalize_for("xrv:densenet121-res224-nih") == "xrv"

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    again = create_model("densenet121", 2, in_chans=1, weights="xrv:densenet121-res224-nih")
    assert torch.equal(again.features.conv0.weight, src.features.conv0.weight)


def test_conversion_refuses_a_pickle_that_runs_code(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(SmallmedError, match="not a model class|could not be read safely|not a readable"):
        pretrained.convert_pickled_model(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_timm_models_build_and_offline_pretrained_is_one_sentence():
    pytest.importorskip("timm")
    from smallmed.roles import head_name

    model = create_model("timm:resnet10t", 3, in_chans=1)
    assert head_name(model) == "fc" and model.fc.out_features == 3
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)
    with pytest.raises(SmallmedError, match="timm could not get the pretrained weights of resnet10t"):
        create_model("timm:resnet10t", 3, weights="imagenet")
    with pytest.raises(SmallmedError, match="did you mean resnet10t"):
        create_model("timm:resnet10", 3)


def test_cli_imagenet_offline_and_demo_without_data_end_in_one_sentence(tmp_path, monkeypatch, capsys, tiny_npz):
    from smallmed.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rc = main(
        [
            "train",
            "--data",
            str(tiny_npz),
            "--model",
            "resnet18",
            "--weights",
            "imagenet",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        rc == 2 and "resnet18-f37072fd.pth" in err and "place the file at" in err and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "run").exists()
    # make demo on a machine with neither this project's data nor a network
    monkeypatch.setenv("SMALLMED_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rc = main(["demo", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert rc == 2 and "pneumoniamnist.npz" in err and "SMALLMED_OFFLINE" in err
