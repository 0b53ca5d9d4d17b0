"""The model registry: every architecture runs forward and backward on random tensors."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torchvision import models as tvm
from torchvision.models.vgg import cfgs as tv_vgg_cfgs
from torchvision.models.vgg import make_layers as tv_vgg_make_layers

from pipeline.models import (
    ARCH_FAMILIES,
    MODEL_NAMES,
    WeightsUnavailableError,
    build_model,
    count_parameters,
    default_image_size,
    vgg,
)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def no_weight_downloads(monkeypatch, tmp_path):
    """Any attempt to download weights fails loudly instead of reaching the network."""

    def refuse(self, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(tvm.WeightsEnum, "get_state_dict", refuse)


@pytest.mark.parametrize("name", ["lenet", "vgg", "resnet"])
def test_default_arch_forward_backward(name):
    torch.manual_seed(0)
    size = default_image_size(name)
    model = build_model(name)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2,)
    logits.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_and_maps_to_one_logit(name):
    size = 48 if name == "lenet" else 32  # the smallest each allows: fast
    model = build_model(name, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1,)  # one crop -> one logit, not a 0-d tensor


def test_aliases_and_default_sizes():
    assert ARCH_FAMILIES == {"lenet": "lenet", "vgg": "vgg16_bn", "resnet": "resnet18"}
    assert default_image_size("lenet") == 126
    assert default_image_size("vgg") == default_image_size("resnet50") == 128


def test_parameter_counts():
    # conv 224 + 1168 + 2320 + 4640, linear 32*6*6 + 1
    assert count_parameters(build_model("lenet")) == 9505
    assert count_parameters(build_model("lenet", image_size=224)) == 12961  # the study's "about 13k"
    n_resnet = count_parameters(build_model("resnet"))
    assert n_resnet == 11_689_512 - 512_000 - 1000 + 513  # torchvision's resnet18 with a 1-unit fc
    n_vgg = count_parameters(build_model("vgg11_bn"))
    assert 9_000_000 < n_vgg < 10_000_000  # conv stack only: no 120M ImageNet head


def test_lenet_keeps_the_study_dropout_for_one_logit_and_none_for_a_softmax_head():
    binary, softmax = build_model("lenet"), build_model("lenet", num_classes=8)
    assert binary.dropout.p == 0.5
    assert softmax.dropout.p == 0.0
    x = torch.rand(4, 3, 126, 126)
    softmax.train()
    assert torch.equal(softmax(x), softmax(x))  # nothing random left in training mode
    binary.train()
    assert not torch.equal(binary(x), binary(x))


def test_default_learning_rate_is_the_studys_but_for_the_lenet_softmax_head():
    from pipeline.config import TrainConfig
    from pipeline.models import default_lr

    assert default_lr("lenet", 1) == 1e-3 and default_lr("lenet", 8) == 3e-3
    assert default_lr("resnet", 8) == default_lr("vgg", 8) == default_lr("resnet18", 1) == 1e-3
    assert TrainConfig(lr=None).lr is None and TrainConfig(lr=2e-3).lr == 2e-3
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)


def test_frozen_parameters_not_counted():
    model = build_model("lenet")
    model.features.requires_grad_(False)
    assert count_parameters(model) == 32 * 6 * 6 + 1
    assert count_parameters(model, trainable_only=False) == 9505


def test_unknown_name_and_bad_sizes_name_the_value():
    with pytest.raises(ValueError, match=r"'alexnet'.*lenet, vgg, resnet.*vgg16_bn"):
        build_model("alexnet")
    with pytest.raises(ValueError, match="image_size 40"):
        build_model("lenet", image_size=40)
    with pytest.raises(ValueError, match="image_size 16"):
        build_model("resnet", image_size=16)


@pytest.mark.parametrize("name", ["vgg11_bn", "vgg16"])
def test_vgg_features_match_torchvision_layout(name):
    """Our conv stack must have torchvision's keys and shapes, or ImageNet weights cannot load."""
    ours = build_model(name).features.state_dict()
    cfg = {"vgg11": "A", "vgg16": "D"}[name.removesuffix("_bn")]
    theirs = tv_vgg_make_layers(tv_vgg_cfgs[cfg], batch_norm=name.endswith("_bn")).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def _same_output(a: torch.nn.Module, b: torch.nn.Module, size: int) -> bool:
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("wrap", ["plain", "model_key", "ddp_prefix"])
def test_local_state_dict_round_trips(tmp_path, wrap):
    torch.manual_seed(1)
    source = build_model("lenet")
    state = source.state_dict()
    if wrap == "model_key":
        state = {"model": state, "epoch": 3}
    elif wrap == "ddp_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "lenet.pt"
    torch.save(state, path)
    loaded = build_model("lenet", weights=str(path))
    assert _same_output(source, loaded, 126)
    assert not _same_output(source, build_model("lenet"), 126)  # a fresh model differs


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"nope\.pt.*none, imagenet"):
        build_model("resnet", weights=str(missing))


def test_mismatched_state_dict_says_what_does_not_fit(tmp_path):
    path = tmp_path / "lenet126.pt"
    torch.save(build_model("lenet").state_dict(), path)
    with pytest.raises(ValueError, match=r"lenet126\.pt.*'lenet'.*shape 1 \(classifier\.weight\)"):
        build_model("lenet", image_size=224, weights=str(path))
    with pytest.raises(ValueError, match=r"'resnet18'.*missing.*unexpected"):
        build_model("resnet", weights=str(path))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pt.*not a readable"):
        build_model("lenet", weights=str(junk))


def test_imagenet_for_lenet_is_a_clear_error():
    message = r"'lenet' has no ImageNet weights.*--weights none"
    with pytest.raises(WeightsUnavailableError, match=message):
        build_model("lenet", weights="imagenet")


def test_imagenet_unreachable_is_a_clear_error():
    with pytest.raises(WeightsUnavailableError, match=r"could not be had.*--weights none") as info:
        build_model("resnet", weights="imagenet")
    assert isinstance(info.value, ValueError)


def test_imagenet_weights_fill_the_backbone_not_the_head(monkeypatch):
    torch.manual_seed(2)
    resnet_sd = tvm.resnet18(weights=None).state_dict()  # stands in for the downloaded file
    features = tv_vgg_make_layers(tv_vgg_cfgs["A"], batch_norm=True).state_dict()
    vgg_sd = {f"features.{k}": v for k, v in features.items()}
    vgg_sd["classifier.6.weight"] = torch.zeros(1000, 8)  # ImageNet head: must be left out
    served = []

    def serve(self, *args, **kwargs):
        served.append(self)
        return resnet_sd if "ResNet" in type(self).__name__ else vgg_sd

    monkeypatch.setattr(tvm.WeightsEnum, "get_state_dict", serve)
    model = build_model("resnet", weights="imagenet")
    assert served == [tvm.ResNet18_Weights.IMAGENET1K_V1]
    assert torch.equal(model.conv1.weight, resnet_sd["conv1.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, resnet_sd["layer4.1.bn2.running_var"])
    assert model.fc[0].weight.shape == (1, 512)
    model = build_model("vgg11_bn", weights="imagenet")
    assert isinstance(model, vgg.VGG)
    assert torch.equal(model.features[0].weight, vgg_sd["features.0.weight"])
