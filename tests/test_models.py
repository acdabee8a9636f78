"""Model registry: every architecture builds, runs forward/backward, freezes and loads weights as documented.

Kept fast on CPU: one small forward/backward per model (64 px, or the model's minimum input), batch 2.
"""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lungxray.core.errors import LungxrayError
from lungxray.models.architectures import (
    MODEL_NAMES,
    SEED_HEAD_HIDDEN,
    apply_freeze,
    count_parameters,
    create_model,
    describe,
    frozen_batchnorms,
)

NUM_CLASSES = 5
EXPECTED = ("cnn5", "cnn8", "cnn13", "resnet18", "resnet34", "vgg16", "mobilenetv2", "inception_resnet_v2",
            "efficientnetv2_s")


@pytest.fixture(autouse=True)
def _small_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _size(name: str, preferred: int = 64) -> int:
    return max(preferred, describe(name)["min_input"])


def _batch(name: str, preferred: int = 64, in_chans: int = 3) -> torch.Tensor:
    s = _size(name, preferred)
    return torch.randn(2, in_chans, s, s)


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.running_mean.clone() for n, m in model.named_modules() if isinstance(m, _BatchNorm)}


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_names_and_describe():
    assert MODEL_NAMES == EXPECTED
    for name in MODEL_NAMES:
        d = describe(name)
        assert d["family"] and d["source"] in ("handcrafted", "timm", "torchvision")
        assert d["input_size"] >= d["min_input"] >= 8
        if d["source"] == "timm":
            assert d["hf_hub_id"] and "." in d["timm_name"] and len(d["mean"]) == 3
    assert describe("cnn5")["source"] == "handcrafted"
    assert describe("efficientnetv2_s")["timm_name"] == "tf_efficientnetv2_s.in1k"
    assert describe("inception_resnet_v2")["min_input"] >= 75


def test_unknown_name_lists_valid_names():
    with pytest.raises(LungxrayError) as e:
        create_model("resnet1000", NUM_CLASSES)
    for name in MODEL_NAMES:
        assert name in str(e.value)
    with pytest.raises(LungxrayError, match="valid names"):
        describe("nope")


@pytest.mark.parametrize("kwargs, match", [
    (dict(head="mlp"), "head"),
    (dict(freeze=5), "freeze"),
    (dict(freeze="all"), "freeze"),
    (dict(in_chans=2), "in_chans"),
    (dict(weights_file="x.pth"), "pretrained"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(LungxrayError, match=match):
        create_model("resnet18", NUM_CLASSES, **kwargs)
    with pytest.raises(LungxrayError, match="num_classes"):
        create_model("cnn5", 0)


def test_stage_freeze_only_for_resnets():
    with pytest.raises(LungxrayError, match="only defined for the ResNets"):
        create_model("cnn5", NUM_CLASSES, freeze=2)


# ------------------------------------------------------------------------------------------- forward/backward


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward(name):
    model = create_model(name, NUM_CLASSES)
    model.train()
    trainable, total = count_parameters(model)
    assert trainable == total > 0
    out = model(_batch(name))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name", ["cnn5", "resnet18"])
def test_single_channel_input(name):
    model = create_model(name, 3, in_chans=1).eval()
    with torch.no_grad():
        assert model(_batch(name, 32, in_chans=1)).shape == (2, 3)


def test_handcrafted_adapt_to_input_size():
    model = create_model("cnn13", 2).eval()
    with torch.no_grad():
        for s in (32, 50, 97):
            assert model(torch.randn(1, 3, s, s)).shape == (1, 2)
    assert not any(isinstance(m, _BatchNorm) for m in create_model("cnn8", 2).modules()), "cnn8 is plain (no BN)"
    convs = [m for m in create_model("cnn5", 2).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 512]
    assert [c.kernel_size[0] for c in convs] == [5, 5, 3, 3, 3]


# ------------------------------------------------------------------------------------------------------ heads


@pytest.mark.parametrize("name", ["cnn13", "resnet18", "vgg16", "efficientnetv2_s"])
def test_seed_head(name):
    model = create_model(name, NUM_CLASSES, head="seed")
    head = model.get_submodule(model.lungxray_head)
    assert isinstance(head, nn.Sequential) and len(head) == 4
    drop, fc1, act, fc2 = head
    assert isinstance(drop, nn.Dropout) and drop.p == pytest.approx(0.2)
    assert isinstance(fc1, nn.Linear) and fc1.out_features == SEED_HEAD_HIDDEN
    assert isinstance(act, nn.ReLU)
    assert isinstance(fc2, nn.Linear) and (fc2.in_features, fc2.out_features) == (SEED_HEAD_HIDDEN, NUM_CLASSES)
    assert not any(isinstance(m, nn.Softmax) for m in model.modules()), "models return logits"
    model.eval()
    with torch.no_grad():
        out = model(_batch(name, 32))
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------------- freezing


def _resnet_frozen_prefixes(freeze):
    if freeze == "backbone":
        return ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
    stages = [("conv1.", "bn1.", "layer1."), ("layer2.",), ("layer3.",), ("layer4.",)]
    return tuple(p for stage in stages[:freeze] for p in stage)


@pytest.mark.parametrize("freeze", [0, 1, 2, 3, 4, "backbone"])
def test_resnet18_freeze_levels(freeze):
    model = create_model("resnet18", NUM_CLASSES, freeze=freeze)
    prefixes = _resnet_frozen_prefixes(freeze)
    for pname, p in model.named_parameters():
        assert p.requires_grad == (not pname.startswith(prefixes)), pname
    trainable, total = count_parameters(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if not n.startswith(prefixes))
    assert model.fc.weight.requires_grad

    model.train()  # no apply_freeze call: the frozen BN layers' pre-hooks must keep them in eval mode
    before = _bn_stats(model)
    out = model(_batch("resnet18"))
    out.pow(2).mean().backward()
    after = _bn_stats(model)
    for bname, stats in before.items():
        if (bname + ".").startswith(prefixes):
            assert torch.equal(stats, after[bname]), f"frozen BN {bname} updated its running stats"
        else:
            assert not torch.equal(stats, after[bname]), f"trainable BN {bname} did not update"
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        else:
            assert p.grad is None, pname

    # apply_freeze: the frozen BN layers read eval right after .train(), the others train
    model.train()
    apply_freeze(model)
    frozen = {id(m) for m in frozen_batchnorms(model)}
    for bname, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            assert (id(m) in frozen) == (bname + ".").startswith(prefixes)
            assert m.training == (id(m) not in frozen)


@pytest.mark.parametrize("name, head", [("mobilenetv2", "seed"), ("cnn5", "linear")])
def test_freeze_backbone_other_families(name, head):
    model = create_model(name, NUM_CLASSES, freeze="backbone", head=head)
    head_path = model.lungxray_head
    for pname, p in model.named_parameters():
        assert p.requires_grad == pname.startswith(head_path + "."), pname
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    model.train()
    before = _bn_stats(model)
    model(_batch(name, 32)).pow(2).mean().backward()
    after = _bn_stats(model)
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    # deep copies (EMA, checkpoints) keep the frozen behaviour
    clone = copy.deepcopy(model).train()
    clone(_batch(name, 32))
    assert all(torch.equal(before[k], v) for k, v in _bn_stats(clone).items())


# ------------------------------------------------------------------------------------------------------ weights


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(1)
    source = create_model("resnet18", 1000)  # an ImageNet-shaped state dict, as on the hub
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(source.state_dict(), path)
    return path, source.state_dict()


def test_local_weights_file_loads_exactly(resnet18_file):
    path, expected = resnet18_file
    model = create_model("resnet18", 1000, pretrained=True, weights_file=str(path), weights_sha256=_sha256(path))
    got = model.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def test_local_weights_file_new_classes_and_freeze(resnet18_file):
    path, expected = resnet18_file
    model = create_model("resnet18", NUM_CLASSES, pretrained=True, weights_file=path, freeze="backbone",
                         head="seed")
    got = model.state_dict()
    for k, v in expected.items():
        if not k.startswith("fc."):
            assert torch.equal(got[k], v), k
    assert model(_batch("resnet18", 32)).shape == (2, NUM_CLASSES)


def test_local_weights_file_single_channel(resnet18_file):
    path, expected = resnet18_file
    model = create_model("resnet18", NUM_CLASSES, pretrained=True, weights_file=path, in_chans=1)
    assert model.conv1.weight.shape[1] == 1
    torch.testing.assert_close(model.conv1.weight, expected["conv1.weight"].sum(dim=1, keepdim=True))


def test_local_weights_file_safetensors(tmp_path, resnet18_file):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    _, expected = resnet18_file
    path = tmp_path / "resnet18.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in expected.items()}, str(path))
    model = create_model("resnet18", 1000, pretrained=True, weights_file=path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_local_weights_file_handcrafted(tmp_path):
    source = create_model("cnn5", NUM_CLASSES)
    path = tmp_path / "cnn5.pth"
    torch.save(source.state_dict(), path)
    model = create_model("cnn5", NUM_CLASSES, pretrained=True, weights_file=path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(LungxrayError, match="does not match"):
        create_model("cnn5", 3, pretrained=True, weights_file=path)


def test_weights_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "cnn5.pth"
    torch.save(create_model("cnn5", 1000).state_dict(), path)
    with pytest.raises(LungxrayError, match=r"resnet18|does not match"):
        create_model("resnet18", NUM_CLASSES, pretrained=True, weights_file=path)


def test_sha256_mismatch_shows_both_values(resnet18_file):
    path, _ = resnet18_file
    wrong = "0" * 64
    with pytest.raises(LungxrayError) as e:
        create_model("resnet18", NUM_CLASSES, pretrained=True, weights_file=path, weights_sha256=wrong)
    assert wrong in str(e.value) and _sha256(path) in str(e.value)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nowhere" / "effv2s.safetensors"
    with pytest.raises(LungxrayError, match="not found") as e:
        create_model("efficientnetv2_s", NUM_CLASSES, pretrained=True, weights_file=missing)
    assert str(missing) in str(e.value)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_pretrained_without_file_offline_fails_loudly_for_every_architecture(name, tmp_path, monkeypatch):
    """Issue 19: ``pretrained: true`` with no network stops at model creation (the start of training) with the way
    out (``weights_file``), for each of the nine architectures; handcrafted ones have no hub weights at all."""
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    import timm.models._builder as builder

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(builder, "load_state_dict_from_url", no_network)  # in case timm takes the URL route
    monkeypatch.setattr(builder, "download_cached_file", no_network)
    if describe(name)["source"] != "timm":
        with pytest.raises(LungxrayError, match="no hub weights"):
            create_model(name, NUM_CLASSES, pretrained=True)
        return
    with pytest.raises(LungxrayError) as e:
        create_model(name, NUM_CLASSES, pretrained=True)
    msg = str(e.value)
    assert name in msg and describe(name)["hf_hub_id"] in msg and "weights_file" in msg


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == (4 + 10, 16 + 10)


def test_weights_file_missing_backbone_keys_is_refused(tmp_path, resnet18_file):
    _, expected = resnet18_file
    partial = {k: v for k, v in expected.items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(LungxrayError, match=r"not in the file \(layer4\."):
        create_model("resnet18", NUM_CLASSES, pretrained=True, weights_file=path)
    with pytest.raises(LungxrayError, match="cannot load weights file"):  # strict load (1000 classes) fails in timm
        create_model("resnet18", 1000, pretrained=True, weights_file=path)
