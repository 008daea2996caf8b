"""AWF loss: gains validation, finiteness, gradients, YOLOv5 target assignment, overfit sanity."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import AWF, AWFConfig
from utils.boxes import label_to_boxes
from utils.config import ConfigError
from utils.loss import AWFLoss, AWFLossGains, assign_targets
from utils.targets import height_map

SMALL = dict(neck_channels=32, decoder_channels=[16, 8])
ANCHORS = torch.tensor([[22.0, 22.0], [46.0, 46.0], [199.0, 190.0]])


def synthetic(size: int = 64, batch: int = 2) -> tuple[torch.Tensor, dict]:
    """Bright squares on a dark background; image 1 of the batch (if any) has no cells."""
    label = np.zeros((size, size), np.int32)
    for i, (y, x, s) in enumerate([(6, 8, 14), (30, 34, 20), (40, 6, 12)], start=1):
        label[y:y + s, x:x + s] = i
    ids, boxes = label_to_boxes(label)
    img = torch.full((batch, 3, size, size), 0.1)
    img[0, :, torch.from_numpy(label > 0)] = 0.9
    fg = torch.zeros(batch, size, size)
    fg[0] = torch.from_numpy(label > 0).float()
    height = torch.zeros(batch, size, size)
    height[0] = torch.from_numpy(height_map(label))
    targets = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], 1)
    return img, {"targets": targets, "fg": fg, "height": height,
                 "ignore": torch.zeros(batch, size, size, dtype=torch.bool), "weight": torch.ones(batch)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AWF(AWFConfig(**SMALL))


def test_gains_validation():
    assert AWFLoss(AWF(AWFConfig(**SMALL)), {"box": 0.1}).gains.box == 0.1
    with pytest.raises(ConfigError, match="unknown"):
        AWFLoss(AWF(AWFConfig(**SMALL)), {"boxx": 0.1})
    with pytest.raises(ConfigError):
        AWFLoss(AWF(AWFConfig(**SMALL)), {"anchor_t": 0.5})
    with pytest.raises(ValueError, match="obj_balance"):
        AWFLoss(AWF(AWFConfig(**SMALL)), AWFLossGains(obj_balance=[4.0, 1.0]))


@pytest.mark.parametrize("with_cells", [True, False])
def test_loss_finite(model, with_cells):
    img, batch = synthetic()
    if not with_cells:
        batch.update(targets=torch.zeros(0, 5), fg=torch.zeros_like(batch["fg"]),
                     height=torch.zeros_like(batch["height"]))
    loss, items = AWFLoss(model)(model(img), batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(items) == {"box", "obj", "fg", "dice", "height", "loss"}
    assert all(np.isfinite(v) for v in items.values())
    assert (items["box"] > 0) == with_cells
    loss.backward()


def test_gradient_reaches_every_part(model):
    img, batch = synthetic()
    model.zero_grad()
    loss, _ = AWFLoss(model)(model(img), batch)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_autocast_bf16_loss_is_float32(model):
    img, batch = synthetic()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(img)
        loss, _ = AWFLoss(model)(out, batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_ignore_and_weight_affect_pixel_losses_only(model):
    img, batch = synthetic()
    with torch.no_grad():
        out = model(img)
    fn = AWFLoss(model)
    _, base = fn(out, batch)
    _, ignored = fn(out, dict(batch, ignore=torch.ones_like(batch["ignore"])))
    assert ignored["fg"] == ignored["dice"] == ignored["height"] == 0.0
    assert ignored["box"] == base["box"] and ignored["obj"] == base["obj"]
    _, zero_w = fn(out, dict(batch, weight=torch.zeros(2)))
    assert zero_w["fg"] == zero_w["height"] == 0.0 and zero_w["box"] == base["box"]


def test_assignment_centre_cell_and_neighbours():
    # 22x22 box centred at (26, 38) px = grid (3.25, 4.75): cell (3, 4), left neighbour (2, 4)
    # (x fraction < 0.5) and lower neighbour (3, 5) (y fraction > 0.5)
    t = torch.tensor([[1.0, 15.0, 27.0, 37.0, 49.0]])
    b, a, gj, gi, tbox, anc = assign_targets(t, (8, 8), ANCHORS, 8, anchor_t=4.0)
    got = sorted(zip(a.tolist(), gi.tolist(), gj.tolist()))
    # anchors 22 (ratio 1) and 46 (ratio 2.1) match; 199x190 (ratio ~9) does not
    assert got == sorted((an, x, y) for an in (0, 1) for x, y in ((3, 4), (2, 4), (3, 5)))
    assert b.tolist() == [1] * 6
    centre = (gi == 3) & (gj == 4)
    assert torch.allclose(tbox[centre], torch.tensor([[0.25, 0.75, 2.75, 2.75]] * 2))
    assert torch.allclose(tbox[(gi == 2) & (gj == 4)][:, :2], torch.tensor([[1.25, 0.75]] * 2))
    assert torch.allclose(tbox[(gi == 3) & (gj == 5)][:, :2], torch.tensor([[0.25, -0.25]] * 2))
    assert torch.allclose(anc[a == 1], torch.tensor([[46 / 8, 46 / 8]] * 3))


def test_assignment_ratio_threshold_and_border():
    thin = torch.tensor([[0.0, 10.0, 10.0, 14.0, 110.0]])   # 4x100: ratio >= 4.5 to every anchor
    assert assign_targets(thin, (16, 16), ANCHORS, 8, anchor_t=4.0)[0].numel() == 0
    assert assign_targets(thin, (16, 16), ANCHORS, 8, anchor_t=30.0)[0].numel() > 0
    corner = torch.tensor([[0.0, 0.0, 0.0, 6.0, 6.0]])       # centre (0.375, 0.375) cells: no neighbour
    b, a, gj, gi, _, _ = assign_targets(corner, (4, 4), ANCHORS, 8, anchor_t=4.0)
    assert gi.tolist() == gj.tolist() == [0] and a.tolist() == [0]


def test_objectness_target_is_ciou(model):
    """A perfectly predicted box has zero box loss and objectness target CIoU = 1; other cells 0."""
    fn = AWFLoss(model, {"anchor_t": 2.0})     # only the 22x22 anchor matches (46/22 > 2)
    det = torch.zeros(1, 3, 4, 4, 5)           # zero output: box at cell centre, anchor size
    det[..., 4] = -20.0
    det[0, 0, 1, 1, 4] = 20.0
    t = torch.tensor([[0.0, 1.0, 1.0, 23.0, 23.0]])  # 22x22 centred at (12, 12): cell (1, 1)'s centre
    lbox, lobj = fn.detection_loss([det], t)
    assert lbox.item() < 1e-5 and lobj.item() < 1e-5


def test_overfit_one_image():
    torch.manual_seed(0)
    m = AWF(AWFConfig(**SMALL))
    img, batch = synthetic(batch=1)
    fn = AWFLoss(m)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)  # Adam moves biases ~lr per step: 1e-3 is slow
    losses = []
    for _ in range(30):
        loss, _ = fn(m(img), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
