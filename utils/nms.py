"""xywh -> xyxy boxes and single-class non-maximum suppression (torchvision NMS).

Decoding the raw YOLO head into boxes is the model's job (``models/awf.py``); this module starts
from decoded predictions ``(B, N, 5)`` = ``[cx, cy, w, h, score]`` in input pixels, with the
objectness sigmoid already applied. Boxes are xyxy pixels with x2/y2 exclusive (ARCHITECTURE.md).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

LOGGER = logging.getLogger(__name__)

# At most this many candidates (highest scores first) enter NMS per image, after the confidence
# filter; bounds NMS time on pathological outputs (YOLOv5 uses max_nms = 30000).
MAX_NMS_CANDIDATES = 30_000


def _float_copy(x):
    """A floating-point copy of a tensor or array-like (integer boxes would truncate halves)."""
    if isinstance(x, torch.Tensor):
        return x.clone() if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return np.array(x, dtype=x.dtype if x.dtype.kind == "f" else np.float32, copy=True)


def xywh2xyxy(x):
    """``(..., 4)`` [cx, cy, w, h] -> [x1, y1, x2, y2] (same units); tensor or ndarray, new object."""
    y = _float_copy(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def _nms_one(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, max_det: int,
             max_candidates: int | None) -> torch.Tensor:
    """Optional candidate cap + torchvision NMS; returns ``(n, 5)`` [x1, y1, x2, y2, score]."""
    if max_candidates is not None and scores.numel() > max_candidates:
        top = scores.topk(max_candidates).indices
        boxes, scores = boxes[top], scores[top]
    from torchvision.ops import nms  # on use: a torch mismatch is utils.setup_check's one line
    keep = nms(boxes.float(), scores.float(), iou_thres)[:max_det]  # sorted by decreasing score
    return torch.cat([boxes[keep], scores[keep, None]], dim=1)


def non_max_suppression(pred: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        max_det: int = 1000) -> list[torch.Tensor]:
    """Single-class NMS of decoded predictions.

    Args:
        pred: ``(B, N, 5)`` (or ``(N, 5)``) [cx, cy, w, h, score], pixels, score in 0..1. Extra
            trailing columns are ignored.
        conf_thres: candidates with score <= this are dropped before NMS.
        iou_thres: IoU above which the lower-scored of two boxes is suppressed.
        max_det: at most this many detections per image are returned (highest scores).

    Returns:
        ``B`` tensors ``(n, 5)`` [x1, y1, x2, y2, score] (pixels), sorted by decreasing score,
        on ``pred``'s device and dtype.
    """
    if pred.ndim == 2:
        pred = pred[None]
    if pred.ndim != 3 or pred.shape[-1] < 5:
        raise ValueError(f"pred must be (B, N, 5+), got shape {tuple(pred.shape)}")
    out = []
    for x in pred:
        x = x[x[:, 4] > conf_thres]
        out.append(_nms_one(xywh2xyxy(x[:, :4]), x[:, 4], iou_thres, max_det, MAX_NMS_CANDIDATES))
    return out


def merge_detections(detections: list[torch.Tensor], iou_thres: float = 0.45,
                     max_det: int = 100_000) -> torch.Tensor:
    """Global NMS over per-tile detections whose tile offsets are already applied.

    Args:
        detections: tensors ``(n_i, 5)`` [x1, y1, x2, y2, score] in whole-image pixels.
        iou_thres: IoU above which the lower-scored duplicate (from an overlapping tile) goes.
        max_det: cap on the merged detections (a whole slide holds far more cells than one tile).

    Returns:
        ``(n, 5)`` tensor sorted by decreasing score; ``(0, 5)`` when nothing is given.

    No candidate cap applies here (it would drop real cells); torchvision's NMS is quadratic in
    the worst case, so merge the tiles of one chunk (a few thousand boxes), not of a whole slide.
    """
    if not detections:
        return torch.zeros((0, 5), dtype=torch.float32)
    dets = torch.cat([d.reshape(-1, 5) for d in detections], dim=0)
    return _nms_one(dets[:, :4], dets[:, 4], iou_thres, max_det, None)
