"""AWF training loss: YOLOv5's detection loss (one class) + the watershed branch's pixel losses.

Detection (YOLOv5's recipe): a target is matched to every anchor whose width and height ratios to
the box are all within ``anchor_t``; on each level it is assigned to the grid cell of its centre
and to the (up to) two neighbouring cells nearer than half a cell to the centre. Box loss is
1 - CIoU on the assigned cells; objectness is BCE on every (cell, anchor) with the detached CIoU
(clamped at 0) of the assigned predictions as target, weighted per level.

Pixels: foreground BCE + (batch-level) soft Dice, and a squared-error height loss on foreground
pixels plus a light pull toward 0 on background. ``batch["ignore"]`` and ``batch["weight"]``
affect only the pixel losses. Everything is computed in float32 (autocast off).
"""
from __future__ import annotations

import logging
import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.config import from_dict

LOGGER = logging.getLogger(__name__)

# YOLOv5's neighbour-cell rule: a neighbour is also positive when the centre is < 0.5 cell from it
NEIGHBOUR_OFFSET = 0.5
# YOLOv5's per-level objectness balance by stride (P3, P4, P5)
YOLOV5_OBJ_BALANCE = {8: 4.0, 16: 1.0, 32: 0.4}
# Laplace smoothing of the soft Dice (the usual 1: an empty batch gives a finite loss)
DICE_SMOOTH = 1.0
# unit offsets of the candidate cells: centre, left, up, right, down (x, y)
_CELL_OFFSETS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


@dataclass
class AWFLossGains:
    """Loss gains (``hyp.loss``); unknown keys are errors.

    box/obj: YOLOv5's hyp.scratch gains. ``obj_balance``: per-level objectness weights in stride
    order; None = 1.0 for a single level, else YOLOv5's 4.0 / 1.0 / 0.4 for strides 8 / 16 / 32.
    ``iou_ratio``: YOLOv5's ``gr``; objectness target = (1 - gr) + gr * CIoU.
    ``height_bg``: weight of a background pixel relative to a foreground one in the height loss.
    """

    box: float = 0.05
    obj: float = 1.0
    fg: float = 1.0
    dice: float = 1.0
    height: float = 1.0
    height_bg: float = 0.1
    anchor_t: float = 4.0
    obj_balance: typing.Optional[list[float]] = None
    iou_ratio: float = 1.0

    def __post_init__(self):
        for name in ("box", "obj", "fg", "dice", "height", "height_bg"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss gain {name} must be >= 0")
        if self.anchor_t <= 1.0:
            raise ValueError("anchor_t is a ratio threshold > 1")
        if not 0.0 <= self.iou_ratio <= 1.0:
            raise ValueError("iou_ratio must be in [0, 1]")


def _unwrap(model):
    return getattr(model, "module", model)


def assign_targets(targets: torch.Tensor, grid_hw: tuple[int, int], anchors: torch.Tensor,
                   stride: float, anchor_t: float):
    """YOLOv5 target assignment for one level.

    ``targets (M, 5)`` [batch_index, x1, y1, x2, y2] pixels; ``anchors (na, 2)`` pixels.
    Returns ``(b, a, gj, gi, tbox, anc)`` for the K assigned (target, anchor, cell) triples:
    indices ``(K,)`` long, ``tbox (K, 4)`` [x, y, w, h] in grid units with x, y relative to the
    cell's corner (in [-0.5, 1.5)), ``anc (K, 2)`` the anchor in grid units.
    """
    h, w = grid_hw
    xy = (targets[:, 1:3] + targets[:, 3:5]) / (2.0 * stride)
    wh = (targets[:, 3:5] - targets[:, 1:3]).clamp(min=1e-3) / stride
    anc = anchors.to(targets) / stride
    r = wh[None] / anc[:, None]                                   # (na, M, 2)
    a, t = (torch.max(r, 1.0 / r).amax(2) < anchor_t).nonzero(as_tuple=True)
    gxy, frac = xy[t], xy[t] % 1.0
    lim = torch.tensor([w - 1, h - 1], device=targets.device, dtype=targets.dtype)
    near_lo = (frac < NEIGHBOUR_OFFSET) & (gxy > 1.0)               # left / up neighbour
    near_hi = (frac > 1.0 - NEIGHBOUR_OFFSET) & (gxy < lim)         # right / down neighbour
    sel = torch.stack([torch.ones_like(near_lo[:, 0]), near_lo[:, 0], near_lo[:, 1],
                       near_hi[:, 0], near_hi[:, 1]])               # (5, K)
    o, k = sel.nonzero(as_tuple=True)
    off = torch.tensor(_CELL_OFFSETS, device=targets.device, dtype=targets.dtype)
    cell = gxy[k].floor() + off[o]
    cell = torch.minimum(cell.clamp(min=0), lim)
    tbox = torch.cat([gxy[k] - cell, wh[t[k]]], 1)
    cell = cell.long()
    return targets[t[k], 0].long(), a[k], cell[:, 1], cell[:, 0], tbox, anc[a[k]]


def pixel_weights(batch: dict, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(valid (B, H, W) float {0, 1}, per-image weight (B,))`` from the batch's optional
    ``ignore`` mask and ``weight`` (pseudo-label confidence); ``like`` is a (B, H, W) tensor."""
    ignore = batch.get("ignore")
    valid = torch.ones_like(like) if ignore is None else (~ignore.to(like.device, torch.bool)).float()
    weight = batch.get("weight")
    w_img = (torch.ones(like.shape[0], device=like.device) if weight is None
             else weight.to(like.device, torch.float32))
    return valid, w_img


def _xywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)


class AWFLoss:
    """``AWFLoss(model, gains)(outputs, batch) -> (loss, items)``.

    ``outputs``: :meth:`models.awf.AWF.forward`'s dict. ``batch``: ``targets (M, 5)`` [batch_index,
    x1, y1, x2, y2] pixels; ``fg (B, H, W)`` {0, 1}; ``height (B, H, W)``; optional ``ignore
    (B, H, W)`` bool (pixels left out of the pixel losses) and ``weight (B,)`` (per-image weight of
    the pixel losses, e.g. pseudo-label confidence). ``loss`` is a float32 scalar, the mean over the
    batch (not multiplied by the batch size); ``items`` holds its weighted parts as floats.
    """

    def __init__(self, model, gains: AWFLossGains | dict | None = None):
        self.gains = gains if isinstance(gains, AWFLossGains) else from_dict(AWFLossGains, gains, "hyp.loss")
        self.model = _unwrap(model)
        strides = list(self.model.strides)
        balance = self.gains.obj_balance
        if balance is None:
            balance = [1.0] if len(strides) == 1 else [YOLOV5_OBJ_BALANCE[s] for s in strides]
        if len(balance) != len(strides):
            raise ValueError(f"hyp.loss: obj_balance has {len(balance)} value(s) for {len(strides)} level(s)")
        self.balance = list(balance)

    def __call__(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        fg = outputs["fg"]
        with torch.autocast(fg.device.type, enabled=False):
            det = [p.float() for p in outputs["det"]]
            targets = batch["targets"].to(fg.device, torch.float32).reshape(-1, 5)
            lbox, lobj = self.detection_loss(det, targets)
            lfg, ldice, lheight = self.pixel_loss(fg.float(), outputs["height"].float(), batch)
        g = self.gains
        parts = torch.stack([g.box * lbox, g.obj * lobj, g.fg * lfg, g.dice * ldice, g.height * lheight])
        loss = parts.sum()
        values = parts.detach().tolist()
        items = dict(zip(("box", "obj", "fg", "dice", "height"), values), loss=float(sum(values)))
        return loss, items

    def detection_loss(self, det: list[torch.Tensor], targets: torch.Tensor):
        """``det``: per level ``(B, na, h, w, 5)`` float32 raw; ``targets (M, 5)`` pixels.
        Returns ``(lbox, lobj)`` scalars (sums over levels of per-level means)."""
        lbox = det[0].new_zeros(())
        lobj = det[0].new_zeros(())
        anchors = self.model.anchors.detach()
        for i, p in enumerate(det):
            tobj = p.new_zeros(p.shape[:4])
            if targets.shape[0]:
                b, a, gj, gi, tbox, anc = assign_targets(targets, p.shape[2:4], anchors[i],
                                                         self.model.strides[i], self.gains.anchor_t)
                if b.numel():
                    ps = p[b, a, gj, gi]
                    pxy = ps[:, :2].sigmoid() * 2.0 - 0.5
                    pwh = (ps[:, 2:4].sigmoid() * 2.0) ** 2 * anc
                    from torchvision.ops import complete_box_iou_loss  # on use (setup_check)
                    ciou_loss = complete_box_iou_loss(_xywh_to_xyxy(torch.cat([pxy, pwh], 1)),
                                                      _xywh_to_xyxy(tbox))
                    lbox = lbox + ciou_loss.mean()
                    score = (1.0 - ciou_loss).detach().clamp(min=0)
                    score = (1.0 - self.gains.iou_ratio) + self.gains.iou_ratio * score
                    flat = ((b * p.shape[1] + a) * p.shape[2] + gj) * p.shape[3] + gi
                    # several targets on one cell: keep the best-fitting one (deterministic)
                    tobj.view(-1).scatter_reduce_(0, flat, score, reduce="amax")
            lobj = lobj + self.balance[i] * F.binary_cross_entropy_with_logits(p[..., 4], tobj)
        return lbox, lobj

    def pixel_loss(self, fg: torch.Tensor, height: torch.Tensor, batch: dict):
        """``fg`` logits and ``height``: ``(B, 1, H, W)`` float32. Returns ``(lfg, ldice, lheight)``:
        BCE mean over valid pixels, soft Dice over the whole batch, height squared error averaged
        with weight 1 on foreground and ``height_bg`` on background pixels."""
        x, hp = fg[:, 0], height[:, 0]
        t_fg = batch["fg"].to(x.device, torch.float32)
        t_h = batch["height"].to(x.device, torch.float32)
        valid, w_img = pixel_weights(batch, x)
        w_pix = valid * w_img.view(-1, 1, 1)
        bce = F.binary_cross_entropy_with_logits(x, t_fg, reduction="none")
        lfg = (bce * w_pix).sum() / valid.sum().clamp(min=1.0)
        prob = x.sigmoid()
        inter = (prob * t_fg * w_pix).sum()
        ldice = 1.0 - (2.0 * inter + DICE_SMOOTH) / (((prob + t_fg) * w_pix).sum() + DICE_SMOOTH)
        h_w = valid * (t_fg + self.gains.height_bg * (1.0 - t_fg))
        lheight = ((hp - t_h) ** 2 * h_w * w_img.view(-1, 1, 1)).sum() / h_w.sum().clamp(min=1.0)
        return lfg, ldice, lheight


@dataclass
class OmniposeLossGains:
    """Omnipose loss gains (``hyp.loss`` of hyp.omnipose.yaml); unknown keys are errors.

    ``flow_scale``: the flow target is the unit flow times 5, Omnipose's (and Cellpose's) scaling,
    so the flow and distance regressions have similar magnitudes.
    """

    flow: float = 1.0
    dist: float = 1.0
    boundary: float = 1.0
    flow_scale: float = 5.0

    def __post_init__(self):
        if min(self.flow, self.dist, self.boundary) < 0 or self.flow_scale <= 0:
            raise ValueError("Omnipose loss gains must be >= 0 and flow_scale > 0")


class OmniposeLoss:
    """``OmniposeLoss(gains)(outputs, batch) -> (loss, items)``: flow MSE (scaled targets), distance
    MSE and boundary BCE, each a weighted mean over valid pixels (``ignore``/``weight`` as the AWF).

    ``batch["omni"]``: ``(B, 4, H, W)`` targets of utils.flows.targets_to_tensor (flow y, flow x,
    distance with -5 on background, boundary).
    """

    def __init__(self, gains: OmniposeLossGains | dict | None = None):
        self.gains = gains if isinstance(gains, OmniposeLossGains) else from_dict(OmniposeLossGains, gains, "hyp.loss")

    def __call__(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        g = self.gains
        with torch.autocast(outputs["dist"].device.type, enabled=False):
            flow, dist, bnd = outputs["flow"].float(), outputs["dist"].float()[:, 0], outputs["boundary"].float()[:, 0]
            t = batch["omni"].to(dist.device, torch.float32)
            valid, w_img = pixel_weights(batch, dist)
            w = valid * w_img.view(-1, 1, 1)
            norm = valid.sum().clamp(min=1.0)
            lflow = (((flow - g.flow_scale * t[:, :2]) ** 2).sum(1) * w).sum() / (2 * norm)
            ldist = (((dist - t[:, 2]) ** 2) * w).sum() / norm
            lbnd = (F.binary_cross_entropy_with_logits(bnd, t[:, 3], reduction="none") * w).sum() / norm
        parts = torch.stack([g.flow * lflow, g.dist * ldist, g.boundary * lbnd])
        values = parts.detach().tolist()
        return parts.sum(), dict(zip(("flow", "dist", "boundary"), values), loss=float(sum(values)))
