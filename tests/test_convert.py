"""convertCkpt.py: torchvision ResNet-18 state dict -> resnet18.pt -> AWF backbone, exact features."""
from __future__ import annotations

import pytest
import torch
import torchvision

import convertCkpt
from models import AWF, AWFConfig, load_backbone_weights
from utils.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def torchvision_model():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    for m in net.modules():   # non-trivial BatchNorm statistics, so eval mode is really tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def torchvision_features(net, x):
    x = net.relu(net.bn1(net.conv1(x)))
    c3 = net.layer2(net.layer1(net.maxpool(x)))
    c4 = net.layer3(c3)
    return c3, c4, net.layer4(c4)


def test_convert_and_load_exact_features(tmp_path, torchvision_model):
    src, dst = tmp_path / "resnet18-f37072fd.pth", tmp_path / "resnet18.pt"
    torch.save(torchvision_model.state_dict(), src)
    assert convertCkpt.main(["--src", str(src), "--dst", str(dst)]) == 0
    ckpt = load_checkpoint(dst)                         # weights_only=True
    assert ckpt["kind"] == "resnet18" and ckpt["meta"]["source"] == src.name
    assert not any(k.startswith("fc.") for k in ckpt["model"])
    model = AWF(AWFConfig(neck_channels=16, decoder_channels=[8, 8])).eval()
    missing, unexpected = load_backbone_weights(model.backbone, ckpt)
    assert missing == [] and unexpected == []
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = model.backbone(x)[2:]
        ref = torchvision_features(torchvision_model, x)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


def test_raw_torchvision_file_loads_too(tmp_path, torchvision_model):
    model = AWF(AWFConfig(neck_channels=16, decoder_channels=[8, 8]))
    missing, unexpected = load_backbone_weights(model.backbone, torchvision_model.state_dict())
    assert missing == [] and unexpected == []      # fc.* ignored


def test_default_source_and_errors(tmp_path, monkeypatch, torchvision_model):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert convertCkpt.default_source() is None
    assert convertCkpt.main([]) == 2                       # nothing to convert
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    assert convertCkpt.main(["--src", "bad.pth", "--dst", "out.pt"]) == 1
    assert not (tmp_path / "out.pt").exists()
    torch.save(torchvision_model.state_dict(), tmp_path / "resnet18-5c106cde.pth")
    assert convertCkpt.default_source().name == "resnet18-5c106cde.pth"
    assert convertCkpt.main([]) == 0 and (tmp_path / "resnet18.pt").is_file()
