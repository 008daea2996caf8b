"""The one AWF prediction pipeline: network image in, instance label map out.

predict.py, evaluate.py and validation during training all call :class:`AWFSegmenter`, so the
numbers of the three agree. Images up to ``max_full_size`` a side run in one forward pass at
native resolution; larger ones are cut into chunks (no cell cut at a seam, see utils/tiling.py)
whose network maps come from Gaussian-weighted sliding windows with a global NMS over windows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from utils.flows import reconstruct_masks
from utils.nms import merge_detections, non_max_suppression
from utils.precision import Precision, resolve_precision
from utils.tiling import WindowAccumulator, gaussian_weight, segment_chunked, window_grid
from utils.watershed import PostprocessParams, postprocess

LOGGER = logging.getLogger(__name__)

# Network inputs are padded to a multiple of the largest stride.
STRIDE = 32
# Foreground confidence is averaged over pixels above this probability (the original framework's rule).
FG_CONF_THRESHOLD = 0.5
# median_diameter counts areas over row blocks of about this many pixels (a whole-slide label as
# one int64 copy would cost 8 bytes a pixel; this project's choice)
DIAMETER_BLOCK_PIXELS = 1 << 22


def median_diameter(label: np.ndarray) -> float:
    """Median cell diameter of an instance label ``(H, W)``, in pixels: the diameter of the circle
    whose area is the median instance area (Cellpose's size convention); 0 without instances."""
    n = int(label.max(initial=0)) + 1
    area = np.zeros(n, np.int64)
    step = max(1, DIAMETER_BLOCK_PIXELS // max(label.shape[1], 1))
    for top in range(0, label.shape[0], step):  # row blocks: bincount's int64 copy stays small
        area += np.bincount(label[top:top + step].ravel(), minlength=n)
    area = area[1:][area[1:] > 0]
    return float(np.sqrt(4.0 * np.median(area) / np.pi)) if area.size else 0.0


@dataclass
class InferenceParams:
    """Detection and tiling settings of one branch (per-modality defaults live in the routing YAML)."""

    conf_thres: float = 0.25      # the original framework's fl value; bf 0.10, gs 0.20
    iou_thres: float = 0.35       # the original framework's fl value; bf/gs 0.25
    max_det: int = 3000           # DSB images hold up to ~400 nuclei; whole-slide chunks far more
    scale: float = 1.0            # resize factor before the network (1 = native resolution)
    max_full_size: int = 2048     # larger images are chunked (2048^2 fits in ~3 GB on CPU)
    window: int = 640             # sliding window (the original framework: 640)
    overlap: float = 0.125        # window overlap fraction (the original framework: 0.125)
    chunk: int = 2048             # core size of a whole-slide chunk
    margin: int = 256             # chunk margin: cells up to ~2*margin px across are never cut
    tta: bool = False             # flip test-time augmentation
    post: PostprocessParams = field(default_factory=PostprocessParams)


def pad_to_stride(x: torch.Tensor, stride: int = STRIDE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad ``(B, C, H, W)`` at the bottom/right to multiples of ``stride``; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    return (F.pad(x, (0, pw, 0, ph)) if ph or pw else x), (h, w)


class Segmenter:
    """A model in eval mode on a device; ``segment(image) -> (label, info)`` in subclasses."""

    default_params = None

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu", params=None,
                 precision: Precision | None = None):
        self.device = torch.device(device)
        # utils.precision: autocast dtype and memory format (default fp32, contiguous)
        self.precision = precision or resolve_precision("fp32", self.device)
        self.model = self.precision.model(model.eval().to(self.device))
        self.params = params or self.default_params()

    def _autocast(self):
        return self.precision.autocast()

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """Network image ``(H, W, 3) uint8`` -> ``(1, 3, H, W)`` float in [0, 1] on the device."""
        return torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float() / 255.0


class AWFSegmenter(Segmenter):
    """Runs an AWF model on network images ``(H, W, 3) uint8`` and returns instance labels."""

    default_params = InferenceParams

    # ------------------------------------------------------------------ network
    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, 3, H, W)`` in [0, 1] -> (pred (B, N, 5) cx,cy,w,h,score px, fg (B,H,W), height (B,H,W))."""
        x, (h, w) = pad_to_stride(x)
        with self._autocast():
            out = self.model(self.precision.input(x))
            pred = self.model.decode(out["det"])
        fg = torch.sigmoid(out["fg"][:, 0, :h, :w].float())
        height = out["height"][:, 0, :h, :w].float()
        return pred.float(), fg, height

    @torch.no_grad()
    def _forward_tta(self, x: torch.Tensor):
        """Flip TTA: maps averaged over identity/left-right/up-down, boxes pooled before NMS."""
        if not self.params.tta:
            return self._forward(x)
        w, h = x.shape[-1], x.shape[-2]
        preds, fgs, hts = [], [], []
        for dims in ((), (-1,), (-2,)):
            xf = torch.flip(x, dims) if dims else x
            pred, fg, ht = self._forward(xf)
            if dims == (-1,):
                pred[..., 0] = w - pred[..., 0]
            elif dims == (-2,):
                pred[..., 1] = h - pred[..., 1]
            preds.append(pred)
            fgs.append(torch.flip(fg, dims) if dims else fg)
            hts.append(torch.flip(ht, dims) if dims else ht)
        return torch.cat(preds, 1), torch.stack(fgs).mean(0), torch.stack(hts).mean(0)

    def raw_outputs(self, image: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """One forward pass (with TTA when set) of a whole network image: (pred (N, 5) [cx, cy, w,
        h, score] pixels before NMS, fg (H, W), height (H, W)). For NMS tuning and predict_maps."""
        pred, fg, height = self._forward_tta(self._to_tensor(image))
        return pred[0], fg[0].cpu().numpy(), height[0].cpu().numpy()

    def predict_maps(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network image -> (detections (n, 5) x1,y1,x2,y2,score px, fg (H, W), height (H, W)).

        One forward pass when the image fits ``window``-free limits, else Gaussian-weighted
        sliding windows whose detections are merged by one NMS over the whole image.
        """
        p = self.params
        h, w = image.shape[:2]
        if max(h, w) <= p.max_full_size:
            pred, fg, height = self.raw_outputs(image)
            det = non_max_suppression(pred, p.conf_thres, p.iou_thres, p.max_det)[0]
            return det.cpu().numpy(), fg, height
        acc = WindowAccumulator((2, h, w))
        weight = gaussian_weight(p.window)
        dets = []
        for y0, x0, y1, x1 in window_grid(h, w, p.window, p.overlap):
            pred, fg, height = self._forward_tta(self._to_tensor(image[y0:y1, x0:x1]))
            det = non_max_suppression(pred, p.conf_thres, p.iou_thres, p.max_det)[0]
            det[:, [0, 2]] += x0
            det[:, [1, 3]] += y0
            dets.append(det)
            acc.add(torch.cat([fg, height]).cpu().numpy(), y0, x0, weight[: y1 - y0, : x1 - x0])
        det = merge_detections(dets, p.iou_thres)  # one global NMS over windows, no cap
        maps = acc.result()
        return det.cpu().numpy(), maps[0], maps[1]

    # ------------------------------------------------------------------ instances
    def _segment_region(self, image: np.ndarray, stats: dict) -> np.ndarray:
        det, fg, height = self.predict_maps(image)
        stats["fg"] = fg  # kept for info["fg"] when the image is one region (not chunked)
        sel = fg[fg > FG_CONF_THRESHOLD]
        stats["fg_sum"] += float(sel.sum())
        stats["fg_count"] += int(sel.size)
        stats["det_score_sum"] += float(det[:, 4].sum())
        stats["n_det"] += len(det)
        return postprocess(det[:, :4], det[:, 4], fg, height, self.params.post)

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """Network image ``(H, W, 3) uint8`` -> (instance label ``(H, W)`` int32 or uint32, info).

        ``info``: ``fg_conf`` mean foreground probability over pixels above 0.5 (the Omnipose
        routing rule's input and the pseudo-label confidence), ``det_conf`` mean detection score,
        ``n_det`` detections kept, ``n_cells`` instances, ``diameter`` the median cell diameter
        (pixels, :func:`median_diameter`), ``fg`` the foreground probability
        ``(H, W) float32`` at the input resolution (pseudo-label ignore masks), or None when the
        image was segmented in chunks (larger than ``max_full_size`` after scaling: a whole-slide
        map would not fit in memory).
        """
        p = self.params
        h, w = image.shape[:2]
        stats = {"fg_sum": 0.0, "fg_count": 0, "det_score_sum": 0.0, "n_det": 0}
        if p.scale != 1.0:
            size = (max(1, round(w * p.scale)), max(1, round(h * p.scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        chunked = max(image.shape[:2]) > p.max_full_size
        if not chunked:
            label = self._segment_region(image, stats)
        else:
            label = segment_chunked(image, lambda im: self._segment_region(im, stats),
                                    chunk=p.chunk, margin=p.margin, progress=True)
        fg = None if chunked else stats["fg"]
        if fg is not None and fg.shape != (h, w):
            fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)
        if p.scale != 1.0:
            yi = np.minimum((np.arange(h) * p.scale).astype(np.int64), label.shape[0] - 1)
            xi = np.minimum((np.arange(w) * p.scale).astype(np.int64), label.shape[1] - 1)
            label = label[np.ix_(yi, xi)]
        info = {"fg_conf": stats["fg_sum"] / max(stats["fg_count"], 1),
                "det_conf": stats["det_score_sum"] / max(stats["n_det"], 1),
                "n_det": stats["n_det"], "n_cells": int(label.max(initial=0)),
                "diameter": median_diameter(label), "fg": fg}
        return label, info


@dataclass
class OmniposeParams:
    """Omnipose reconstruction settings (utils.flows defaults, validated on ground-truth flows)."""

    flow_threshold: float = 0.4      # utils.flows.FLOW_THRESHOLD
    min_size: int = 15               # utils.flows.MIN_SIZE
    max_full_size: int = 2048        # larger images are chunked as for the AWF
    chunk: int = 2048
    margin: int = 256


class OmniposeSegmenter(Segmenter):
    """Runs an Omnipose model on network images ``(H, W, 3) uint8`` -> instance labels.

    ``info['fg_conf']``: mean of sigmoid(distance) over pixels above 0.5, the Omnipose side of
    the routing rule (the distance output is about -5 on background and grows inside cells).
    """

    default_params = OmniposeParams

    @torch.no_grad()
    def predict_maps(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network image -> (flow (2, H, W) dy/dx, dist (H, W) pixels)."""
        x, (h, w) = pad_to_stride(self._to_tensor(image))
        with self._autocast():
            out = self.model(self.precision.input(x))
        return out["flow"][0, :, :h, :w].float().cpu().numpy(), out["dist"][0, 0, :h, :w].float().cpu().numpy()

    def _segment_region(self, image: np.ndarray, stats: dict) -> np.ndarray:
        flow, dist = self.predict_maps(image)
        prob = 1.0 / (1.0 + np.exp(-dist))
        sel = prob[prob > FG_CONF_THRESHOLD]
        stats["fg_sum"] += float(sel.sum())
        stats["fg_count"] += int(sel.size)
        p = self.params
        return reconstruct_masks(flow, dist, min_size=p.min_size, flow_threshold=p.flow_threshold,
                                 device=self.device)

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """Network image -> (label (H, W), info with fg_conf, n_cells and diameter)."""
        p, stats = self.params, {"fg_sum": 0.0, "fg_count": 0}
        if max(image.shape[:2]) <= p.max_full_size:
            label = self._segment_region(image, stats)
        else:
            label = segment_chunked(image, lambda im: self._segment_region(im, stats),
                                    chunk=p.chunk, margin=p.margin, progress=True)
        return label, {"fg_conf": stats["fg_sum"] / max(stats["fg_count"], 1),
                       "n_cells": int(label.max(initial=0)), "diameter": median_diameter(label)}
