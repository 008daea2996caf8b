"""AWF network: shapes, decode geometry, anchors, config round trip, ONNX parity."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import AWF, AWFConfig, AWFExport, load_backbone_weights
from utils.config import ConfigError

THREE_LEVELS = {"anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
                "strides": [8, 16, 32]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AWF().eval()


@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (128, 64)])
def test_output_shapes_default(model, hw):
    h, w = hw
    with torch.no_grad():
        out = model(torch.rand(2, 3, h, w))
    (det,) = out["det"]
    assert det.shape == (2, 3, h // 8, w // 8, 5)
    assert out["fg"].shape == out["height"].shape == (2, 1, h, w)
    assert model.decode(out["det"]).shape == (2, 3 * (h // 8) * (w // 8), 5)


def test_output_shapes_three_levels():
    m = AWF.from_config(THREE_LEVELS).eval()
    with torch.no_grad():
        out = m(torch.rand(1, 3, 64, 96))
    assert [tuple(d.shape) for d in out["det"]] == [(1, 3, 8, 12, 5), (1, 3, 4, 6, 5), (1, 3, 2, 3, 5)]
    assert m.decode(out["det"]).shape == (1, 3 * (96 + 24 + 6), 5)


def test_bad_input_size(model):
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 64, 70))


def test_bias_init(model):
    b = model.head[0].bias.detach().view(3, 5)
    p = 100.0 / (640 / 8) ** 2  # AWFConfig defaults: cells_per_image / (prior_img_size / stride)^2
    assert torch.equal(b[:, :4], torch.zeros(3, 4))
    assert torch.allclose(b[:, 4], torch.full((3,), math.log(p / (1 - p))))


def test_decode_geometry(model):
    """A hand-set raw output decodes to the expected box (YOLOv5 parametrisation)."""
    h, w = 4, 5
    det = torch.zeros(1, 3, h, w, 5)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    a, gy, gx = 1, 2, 3                        # anchor 46x46, cell (x=3, y=2)
    det[0, a, gy, gx] = torch.tensor([logit(0.75), logit(0.25), logit(0.75), logit(0.5), logit(0.9)])
    pred = model.decode([det])
    row = pred[0, a * h * w + gy * w + gx]
    # x = (2*0.75 - 0.5 + 3) * 8 = 32; y = (2*0.25 - 0.5 + 2) * 8 = 16
    # w = (2*0.75)^2 * 46 = 103.5; h = (2*0.5)^2 * 46 = 46
    assert torch.allclose(row, torch.tensor([32.0, 16.0, 103.5, 46.0, 0.9]), atol=1e-4)
    # a zero output sits at its cell's centre with its anchor's size and score 0.5
    assert torch.allclose(pred[0, 0], torch.tensor([4.0, 4.0, 22.0, 22.0, 0.5]))
    assert torch.allclose(pred[0, 2 * h * w + w + 1], torch.tensor([12.0, 12.0, 199.0, 190.0, 0.5]))


def test_set_anchors_sorted_and_saved():
    m = AWF()
    m.set_anchors(np.array([[50, 40], [5, 6], [12, 11]]))
    assert m.anchors.tolist() == [[[5, 6], [12, 11], [50, 40]]]
    assert m.config_dict()["anchors"] == [[5.0, 6.0, 12.0, 11.0, 50.0, 40.0]]
    sd = m.state_dict()
    assert "anchors" in sd
    m2 = AWF()
    m2.load_state_dict(sd)
    assert torch.equal(m2.anchors, m.anchors)
    with pytest.raises(ValueError):
        m.set_anchors([[1, 2], [3, 4]])


def test_set_anchors_three_levels_dealt_by_area():
    m = AWF.from_config(THREE_LEVELS)
    new = torch.arange(1, 19, dtype=torch.float32).view(9, 2).flip(0)
    m.set_anchors(new)
    areas = m.anchors.prod(-1).flatten()
    assert torch.all(areas[1:] >= areas[:-1])
    assert m.anchors.shape == (3, 3, 2)


def test_config_roundtrip():
    cfg = dict(THREE_LEVELS, neck_channels=32, decoder_channels=[16, 8])
    m = AWF.from_config(cfg)
    d = m.config_dict()
    assert d["neck_channels"] == 32 and d["strides"] == [8, 16, 32]
    m2 = AWF.from_config(d)
    assert m2.config_dict() == d
    m2.load_state_dict(m.state_dict())   # same architecture, same keys
    with pytest.raises(ConfigError, match="unknown"):
        AWF.from_config({"anchor": [[1, 2]]})
    with pytest.raises(ConfigError):
        AWF.from_config({"anchors": [[1, 2, 3]], "strides": [8]})
    with pytest.raises(ConfigError):
        AWF.from_config({"strides": [8, 16]})  # 1 anchor level for 2 strides


def test_backbone_weights_prefixed_keys():
    src, dst = AWF(), AWF()
    missing, unexpected = load_backbone_weights(dst.backbone, src.state_dict())  # backbone.* keys
    assert missing == [] and unexpected == []
    assert torch.equal(dst.backbone.conv1.weight, src.backbone.conv1.weight)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = AWF(AWFConfig(neck_channels=32, decoder_channels=[16, 8])).eval()
    path = tmp_path / "awf.onnx"
    torch.onnx.export(AWFExport(m), (torch.rand(1, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["boxes", "fg", "height"],
                      dynamic_axes={"images": {0: "b", 2: "h", 3: "w"}, "boxes": {0: "b", 1: "n"},
                                    "fg": {0: "b", 2: "h", 3: "w"}, "height": {0: "b", 2: "h", 3: "w"}})
    assert not m.training            # the export wrapper did not switch the model to train mode
    x = torch.rand(1, 3, 96, 128)   # another size than the export's
    with torch.no_grad():
        ref = AWFExport(m)(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        np.testing.assert_allclose(g, r.numpy(), rtol=1e-3, atol=1e-3)


def test_cfg_yaml_starts_a_new_architecture_from_a_checkpoint(tmp_path):
    """--cfg (models/awf_p345.yaml) with --weights of a one-level AWF: three levels, the
    checkpoint's tensors wherever name and shape match (backbone, neck, the stride-8 head)."""
    from models.loading import model_from_weights
    from tests.conftest import REPO
    from utils.checkpoint import save_checkpoint_atomic
    from utils.config import load_yaml
    torch.manual_seed(1)
    p3 = AWF()
    save_checkpoint_atomic({"kind": "awf", "model": p3.state_dict(), "model_config": p3.config_dict()},
                           tmp_path / "p3.pt")
    cfg = load_yaml(REPO / "models" / "awf_p345.yaml")
    same, _ = model_from_weights("awf", str(tmp_path / "p3.pt"), config=cfg)
    assert same.strides == [8]                       # without --cfg: the checkpoint's architecture
    new, source = model_from_weights("awf", str(tmp_path / "p3.pt"), config=cfg, keep_config=True)
    assert source == "awf" and new.strides == [8, 16, 32] and new.anchors.shape == (3, 3, 2)
    old = p3.state_dict()
    for name, tensor in new.state_dict().items():
        if name.startswith("backbone.") or name.startswith("head.0."):
            assert torch.equal(tensor, old[name]), name
    assert "head.1.weight" in new.state_dict() and "head.1.weight" not in old
    with torch.no_grad():
        out = new(torch.rand(1, 3, 64, 64))
    assert [d.shape[2] for d in out["det"]] == [8, 4, 2]
