"""The Omnipose branch: network shapes, AWF weight transfer, loss, segmenter, train_omnipose.py."""
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from models.awf import AWF
from models.loading import load_model, model_from_weights
from models.omnipose import Omnipose
from utils.checkpoint import save_checkpoint_atomic
from utils.flows import label_to_tensor, reconstruct_masks
from utils.inference import OmniposeParams, OmniposeSegmenter
from utils.loss import OmniposeLoss
from utils.metrics import match_instances
from utils.routing import Overrides, Router, load_routing
from utils.sizing import to_diameter
from tests.conftest import disc_grid
from utils.synthetic import make_label


def test_shapes_and_awf_transfer(tmp_path):
    model = Omnipose()
    out = model(torch.rand(2, 3, 64, 96))
    assert out["flow"].shape == (2, 2, 64, 96) and out["dist"].shape == (2, 1, 64, 96)
    assert out["boundary"].shape == (2, 1, 64, 96)
    awf = AWF()
    save_checkpoint_atomic({"kind": "awf", "model": awf.state_dict(),
                            "model_config": awf.config_dict()}, tmp_path / "awf.pt")
    omni, source = model_from_weights("omnipose", str(tmp_path / "awf.pt"))
    assert source == "awf"
    state = awf.state_dict()
    for name, tensor in omni.state_dict().items():
        if name.startswith(("backbone.", "neck.")):
            assert torch.equal(tensor, state[name]), name
    assert not torch.equal(omni.decoder.out.weight, awf.decoder.out.weight[:1].expand_as(omni.decoder.out.weight))


def test_loss_is_zero_for_perfect_maps_and_respects_ignore():
    label = make_label((64, 64), seed=1, size_range=(10, 20))
    t = label_to_tensor(label)[None]
    logit = torch.where(t[:, 3:4] > 0.5, torch.tensor(20.0), torch.tensor(-20.0))
    perfect = {"flow": 5.0 * t[:, :2], "dist": t[:, 2:3], "boundary": logit}
    loss, items = OmniposeLoss()(perfect, {"omni": t})
    assert items["flow"] < 1e-6 and items["dist"] < 1e-6 and items["boundary"] < 1e-6
    bad = {k: v.clone() for k, v in perfect.items()}
    bad["dist"][..., :32, :] += 3.0
    assert OmniposeLoss()(bad, {"omni": t})[0] > 1.0
    ignore = torch.zeros(1, 64, 64, dtype=torch.bool)
    ignore[:, :32] = True
    assert OmniposeLoss()(bad, {"omni": t, "ignore": ignore})[1]["dist"] < 1e-6


class _Oracle(torch.nn.Module):
    """Returns the ground-truth Omnipose maps of a label (padded like the network input)."""

    kind = "omnipose"

    def __init__(self, label):
        super().__init__()
        self.t = label_to_tensor(label)

    def forward(self, x):
        h, w = self.t.shape[-2:]
        t = torch.nn.functional.pad(self.t, (0, x.shape[-1] - w, 0, x.shape[-2] - h), value=-5.0)
        return {"flow": t[None, :2], "dist": t[None, 2:3], "boundary": t[None, 3:4]}


def test_segmenter_returns_ground_truth_from_ground_truth_maps():
    label = make_label((100, 90), seed=4, size_range=(12, 40))  # not a multiple of 32: padding
    seg = OmniposeSegmenter(_Oracle(label))
    result = seg.segment(np.zeros((100, 90, 3), np.uint8))
    pred = result.label
    assert pred.shape == label.shape
    t = label_to_tensor(label).numpy()  # padding and cropping change nothing:
    np.testing.assert_array_equal(pred, reconstruct_masks(t[:2], t[2]))
    assert match_instances(label, pred, count_bd_cells=True).f1 >= 0.9  # exactness: test_flows.py
    assert result.fg_conf > 0.8  # sigmoid of a distance of >= 1 pixel inside cells
    assert result.fg is None and result.n_det == 0 and result.n_cells == pred.max()


def test_train_omnipose_and_predict(tmp_path, synthetic_data, run_script):
    run_script(["train_omnipose.py", "--data", synthetic_data, "--img", "64", "--batch", "2",
                "--epochs", "1", "--workers", "0", "--device", "cpu", "--project", tmp_path,
                "--name", "omni", "--cfg", "models/omnipose_sized.yaml"])
    ckpt = tmp_path / "omni" / "weights" / "last.pt"
    assert torch.load(ckpt, weights_only=True)["kind"] == "omnipose"
    model = load_model(ckpt)
    assert isinstance(model, Omnipose) and model.diameter == 30.0  # predict.py resizes to it
    images = synthetic_data.parent / "set" / "images"
    run_script(["predict.py", "-i", images, "-o", tmp_path / "out", "--ckpt", ckpt, "--device", "cpu"])
    assert len(list((tmp_path / "out").glob("*_label.tiff"))) == len(list(images.iterdir()))


class _Painted(torch.nn.Module):
    """The ground-truth Omnipose maps of the label painted in the input image (id * 8 in every
    channel), so that a flipped or resized input gives the maps of the flipped or resized label."""

    kind = "omnipose"

    def __init__(self):
        super().__init__()
        self.shapes = []  # (H, W) of every input seen

    def forward(self, x):
        self.shapes.append(tuple(x.shape[-2:]))
        t = label_to_tensor(torch.round(x[0, 0] * 255 / 8).to(torch.int32).numpy())
        return {"flow": t[None, :2], "dist": t[None, 2:3], "boundary": t[None, 3:4]}


def test_segmenter_honours_tta_and_scale():
    label = make_label((100, 90), seed=4, size_range=(12, 40))
    image = np.repeat((label * 8).astype(np.uint8)[..., None], 3, axis=2)
    model = _Painted()
    plain = OmniposeSegmenter(model).segment(image)
    tta = OmniposeSegmenter(model, params=OmniposeParams(tta=True)).segment(image)
    assert model.shapes == [(128, 96)] * 4  # one pass, then identity + two flips (padded)
    # each flip mapped back with its flow component negated: the same masks
    np.testing.assert_array_equal(tta.label, plain.label)
    model.shapes.clear()
    half = OmniposeSegmenter(model, params=OmniposeParams(scale=0.5)).segment(image)
    assert model.shapes == [(64, 64)] and half.label.shape == label.shape  # 50 x 45, padded
    assert match_instances(label, half.label, count_bd_cells=True).f1 >= 0.7


class _Thresholding(torch.nn.Module):
    """The Omnipose maps of the input's bright connected regions: a model that segments cells of
    any size, standing for one trained at ``diameter`` px."""

    kind = "omnipose"

    def __init__(self, diameter: float):
        super().__init__()
        self.diameter, self.shapes = diameter, []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[-2:]))
        t = label_to_tensor(ndimage.label(x[0, 0].numpy() > 0.5)[0].astype(np.int32))
        return {"flow": t[None, :2], "dist": t[None, 2:3], "boundary": t[None, 3:4]}


def _disc_image(size: int, diameter: int, spacing: int):
    """``(label (S, S), image (S, S, 3) uint8)``: separate discs of ``diameter`` px, white."""
    label = disc_grid((size, size), diameter, spacing)
    return label, np.repeat(np.where(label > 0, 255, 0).astype(np.uint8)[..., None], 3, axis=2)


def test_a_model_trained_at_one_diameter_segments_images_at_that_diameter():
    label, image = _disc_image(300, 90, 100)
    model = _Thresholding(30.0)
    out = OmniposeSegmenter(model).segment(image)  # measured at 90 px, then resized to 30
    assert out.scale == pytest.approx(to_diameter(90.0, 30.0)) and 0.3 < out.scale < 0.36
    assert model.shapes == [(320, 320), (128, 128)]  # 300 and 100 px, padded
    assert match_instances(label, out.label).f1 == 1.0 and abs(out.diameter - 90) < 3
    small, small_image = _disc_image(128, 30, 40)
    model.shapes.clear()
    assert OmniposeSegmenter(model).segment(small_image).scale == 1.0  # at 30 px: one pass
    assert len(model.shapes) == 1
    native = _Thresholding(0.0)
    assert OmniposeSegmenter(native).segment(image).scale == 1.0 and len(native.shapes) == 1
    # predict.py's flags fix the resize: --diameter D gives 30 / D, --scale itself; no second pass
    fixed = Overrides(diameter=60.0).omnipose_params(30.0)
    assert fixed.scale == 0.5 and fixed.size_rule is None
    assert Overrides(diameter=60.0).omnipose_params(0.0).scale == pytest.approx(50 / 60)
    assert Overrides(scale=2.0).omnipose_params(30.0).size_rule is None
    assert Overrides().omnipose_params(30.0).size_rule.small_target == 30.0
    assert Overrides().omnipose_params(0.0).size_rule is None
    with pytest.raises(ValueError, match="give one of the two"):
        Overrides(scale=1.0, diameter=30.0)


class _Fragmenting(_Thresholding):
    """As a model trained at ``diameter`` px does on much larger cells: bright regions over
    twice that across come out as 10-px pieces."""

    def forward(self, x):
        self.shapes.append(tuple(x.shape[-2:]))
        label = ndimage.label(x[0, 0].numpy() > 0.5)[0]
        area = np.bincount(label.ravel())
        big = (area[label] > np.pi * self.diameter ** 2) & (label > 0)  # over 2 * diameter across
        yy, xx = np.mgrid[:label.shape[0], :label.shape[1]]
        label = np.where(big & ((yy % 10 == 0) | (xx % 10 == 0)), 0, label > 0)
        t = label_to_tensor(ndimage.label(label)[0].astype(np.int32))
        return {"flow": t[None, :2], "dist": t[None, 2:3], "boundary": t[None, 3:4]}


def test_the_awf_s_diameter_sizes_an_omnipose_that_breaks_up_cells_far_over_its_own():
    """At their own scale, cells 4x the training diameter come out as pieces, so the model's own
    measure enlarges the image (F1 0); the diameter the router's AWF measured gives one pass at
    the right factor."""
    label, image = _disc_image(480, 120, 160)
    model = _Fragmenting(30.0)
    alone = OmniposeSegmenter(model).segment(image)
    assert alone.scale > 1 and match_instances(label, alone.label).f1 == 0.0
    model.shapes.clear()
    hinted = OmniposeSegmenter(model).segment(image, diameter=120.0)
    assert model.shapes == [(128, 128)] and hinted.scale == 0.25
    assert match_instances(label, hinted.label).f1 == 1.0 and hinted.timings["network"] > 0


def test_detection_flags_are_refused_for_an_omnipose_checkpoint(tmp_path, caplog):
    model = Omnipose()
    ckpt = tmp_path / "omni.pt"
    save_checkpoint_atomic({"kind": "omnipose", "model": model.state_dict(),
                            "model_config": model.config_dict()}, ckpt)
    cpu = torch.device("cpu")
    Router(load_routing(), cpu, Overrides(tta=True, scale=0.5), ckpt=str(ckpt)).check_checkpoints()
    for flags, named in (({"conf_thres": 0.1}, "--conf-thres"),
                         ({"iou_thres": 0.5, "max_det": 10}, "--iou-thres, --max-det")):
        router = Router(load_routing(), cpu, Overrides(**flags), ckpt=str(ckpt))
        with pytest.raises(ValueError, match=f"{named}: .*omni.pt is an Omnipose checkpoint"):
            router.check_checkpoints()
    # routed beside an AWF, they set the AWF branches: a warning, not an error
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    awf = AWF()
    save_checkpoint_atomic({"kind": "awf", "model": awf.state_dict(),
                            "model_config": awf.config_dict()}, ckpts / "general.pt")
    shutil.copy(ckpt, ckpts / "omnipose.pt")
    router = Router(load_routing(), cpu, Overrides(conf_thres=0.1), base_dir=tmp_path)
    with caplog.at_level("WARNING"):
        router.check_checkpoints()
    assert any("--conf-thres: set for the AWF branches only" in r.message for r in caplog.records)
