"""The one prediction pipeline of both branches: network image in, :class:`Segmentation` out.

predict.py, evaluate.py and validation during training all call :class:`AWFSegmenter` (and
:class:`OmniposeSegmenter`), so the numbers of the three agree. :meth:`Segmenter.segment` resizes
by ``params.scale``, runs images up to ``max_full_size`` a side as one region at native
resolution and cuts larger ones into chunks (no cell cut at a seam, see utils/tiling.py), then
maps the label back to the input resolution; with an AWF ``size_rule`` (utils/sizing.py) an image
whose cells came out too small or too large is resized and segmented a second time. An AWF
region's network maps come from Gaussian-weighted sliding windows with a global NMS over windows.
"""
from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.awf import MAX_STRIDE
from utils.branch_settings import BranchSettings
from utils.flows import FLOW_THRESHOLD, MIN_SIZE, reconstruct_masks
from utils.nms import merge_detections, non_max_suppression
from utils.precision import Precision, resolve_precision
from utils.sizing import SizeRule, trained_size_rule
from utils.tiling import (DEFAULT_CHUNK, DEFAULT_MARGIN, DEFAULT_OVERLAP, DEFAULT_WINDOW,
                          WindowAccumulator, gaussian_weight, segment_chunked_parts, window_grid)
from utils.watershed import PostprocessParams, postprocess

LOGGER = logging.getLogger(__name__)

# Images up to this many pixels a side run whole (2048^2 fits in ~3 GB on CPU); larger ones in chunks.
MAX_FULL_SIZE = 2048
# Foreground confidence is averaged over pixels above this probability (the original framework's rule).
FG_CONF_THRESHOLD = 0.5
# median_diameter counts areas over row blocks of about this many pixels (a whole-slide label as
# one int64 copy would cost 8 bytes a pixel; this project's choice)
DIAMETER_BLOCK_PIXELS = 1 << 22
# Flip test-time augmentation: identity, left-right, up-down (dims of a (B, C, H, W) tensor).
TTA_FLIPS = ((), (-1,), (-2,))


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


@dataclass(eq=False)
class Segmentation:
    """One image segmented (:meth:`Segmenter.segment`,
    ``utils.routing.Router.route_and_segment``)."""

    label: np.ndarray         # (H, W) int32 (uint32 when chunked) instance ids, 0 = background
    modality: str = ""        # bf / fl / gs: set by the Router ("" from a bare segmenter)
    branch: str = ""          # the checkpoint's stem: set by the Router
    fg_conf: float = 0.0      # mean foreground probability over pixels above 0.5 (Omnipose:
    #                           sigmoid of the distance): the Omnipose rule's input and the
    #                           pseudo-label confidence
    det_conf: float = 0.0     # AWF: mean score of the detections kept (Omnipose: 0)
    n_det: int = 0            # AWF: detections kept after NMS (Omnipose: 0)
    n_cells: int = 0          # instances in ``label``
    diameter: float = 0.0     # median cell diameter, pixels (:func:`median_diameter`)
    scale: float = 1.0        # the resize factor the label was made at (``params.scale``, or
    #                           the size rule's second pass)
    fg: np.ndarray | None = None  # AWF: (H, W) float32 foreground probability at the input
    #                               resolution (pseudo-label ignore masks); None for Omnipose and
    #                               for an image segmented in chunks (too large to hold it)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: "network" (forward
    #                               passes and NMS) and "postprocess" (instances), summed over
    #                               chunks and over both branches when the Omnipose rule runs
    #                               both; "modality" (the classifier, Router)


@dataclass(frozen=True, eq=False)
class RegionStats:
    """What one region (a whole image or one chunk) adds to its image's :class:`Segmentation`:
    sums, so that chunks add up (``a + b``)."""

    fg_sum: float = 0.0          # foreground probability summed over pixels above 0.5
    fg_count: int = 0            # those pixels
    det_score_sum: float = 0.0   # AWF: detection scores summed
    n_det: int = 0               # AWF: detections kept
    network_s: float = 0.0       # seconds in the network (and NMS)
    postprocess_s: float = 0.0   # seconds turning maps into instances
    fg: np.ndarray | None = None  # AWF: the region's (h, w) foreground map (dropped by ``+``)

    def __add__(self, other: RegionStats) -> RegionStats:
        return RegionStats(self.fg_sum + other.fg_sum, self.fg_count + other.fg_count,
                           self.det_score_sum + other.det_score_sum, self.n_det + other.n_det,
                           self.network_s + other.network_s,
                           self.postprocess_s + other.postprocess_s)


def confident_sum(prob: np.ndarray) -> tuple[float, int]:
    """``(sum, count)`` of a probability map ``(H, W)`` over its pixels above FG_CONF_THRESHOLD."""
    sel = prob[prob > FG_CONF_THRESHOLD]
    return float(sel.sum()), int(sel.size)


@dataclass(kw_only=True)
class RunParams:
    """A segmenter's resize, flip TTA and chunking (the command line's --scale and --tta)."""

    scale: float = 1.0                  # resize factor before the network (1 = native resolution)
    tta: bool = False                   # flip test-time augmentation (TTA_FLIPS)
    max_full_size: int = MAX_FULL_SIZE  # larger images (after scaling) are chunked
    chunk: int = DEFAULT_CHUNK          # core size of a whole-slide chunk, pixels
    margin: int = DEFAULT_MARGIN        # chunk margin: cells up to ~2*margin px across are never cut
    size_rule: SizeRule | None = None   # a second pass at the cells' scale (None = ``scale`` only)


@dataclass(kw_only=True)
class InferenceParams(RunParams):
    """Settings of one AWF branch's run: its detection settings (``detection``, a
    :class:`utils.branch_settings.BranchSettings`, from data/routing.yaml:
    ``RoutingConfig.inference_params``) and the run's resize, TTA, sliding windows and
    post-processing."""

    detection: BranchSettings
    window: int = DEFAULT_WINDOW        # sliding window, pixels (utils.tiling)
    overlap: float = DEFAULT_OVERLAP    # window overlap fraction
    post: PostprocessParams = field(default_factory=PostprocessParams)


@dataclass(kw_only=True)
class OmniposeParams(RunParams):
    """Omnipose reconstruction settings (utils.flows defaults, validated on ground-truth flows)."""

    flow_threshold: float = FLOW_THRESHOLD
    min_size: int = MIN_SIZE            # pixels


def pad_to_stride(x: torch.Tensor, stride: int = MAX_STRIDE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad ``(B, C, H, W)`` at the bottom/right to multiples of ``stride``; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    return (F.pad(x, (0, pw, 0, ph)) if ph or pw else x), (h, w)


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """A network image ``(H, W, 3)`` resized by ``scale`` (bilinear; sides rounded, at least 1 px)."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def resize_label(label: np.ndarray, h: int, w: int) -> np.ndarray:
    """A label ``(H, W)`` resized to ``(h, w)`` by nearest neighbour (ids kept; the same shape:
    the label itself). Pixel centres align as in cv2.resize's bilinear and area modes, the ratio
    taken per axis from the two shapes as cv2 does: output pixel i samples the label at
    ``floor((i + 0.5) * H / h)``. (cv2's INTER_NEAREST samples at ``floor(i * H / h)``, half a
    source pixel off the image it resizes.)"""
    if label.shape[:2] == (h, w):
        return label
    yi = np.minimum(((np.arange(h) + 0.5) * (label.shape[0] / h)).astype(np.int64), label.shape[0] - 1)
    xi = np.minimum(((np.arange(w) + 0.5) * (label.shape[1] / w)).astype(np.int64), label.shape[1] - 1)
    return label[np.ix_(yi, xi)]


def add_timings(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Seconds per stage, summed key by key (a new dict)."""
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in dict.fromkeys([*a, *b])}


def _summed(kept: Segmentation, *passes: Segmentation) -> Segmentation:
    """``kept`` (one of ``passes``) with the timings of every pass added up."""
    timings: dict[str, float] = {}
    for one in passes:
        timings = add_timings(timings, one.timings)
    return replace(kept, timings=timings)


class Segmenter(abc.ABC):
    """A model in eval mode on a device; ``segment(image) -> Segmentation``. Subclasses supply
    ``_segment_region(image) -> (label, RegionStats)``."""

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu", params=None,
                 precision: Precision | None = None):
        self.device = torch.device(device)
        # utils.precision: autocast dtype and memory format (default fp32, contiguous)
        self.precision = precision or resolve_precision("fp32", self.device)
        self.model = self.precision.model(model.eval().to(self.device))
        if params is None:
            raise TypeError(f"{type(self).__name__} needs its params (the detection settings of "
                            "data/routing.yaml: RoutingConfig.inference_params)")
        self.params = params

    def _autocast(self):
        return self.precision.autocast()

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """Network image ``(H, W, 3) uint8`` -> ``(1, 3, H, W)`` float in [0, 1] on the device."""
        return torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float() / 255.0

    @abc.abstractmethod
    def _segment_region(self, image: np.ndarray) -> tuple[np.ndarray, RegionStats]:
        """One region (a whole image or a chunk) -> its ``(H, W)`` label and :class:`RegionStats`."""

    def segment(self, image: np.ndarray, diameter: float = 0.0) -> Segmentation:
        """Network image ``(H, W, 3) uint8`` -> :class:`Segmentation` (label ``(H, W)``).

        One pass at ``params.scale`` (:meth:`segment_at`); with a ``size_rule`` in the params
        (AWF: data/routing.yaml's; Omnipose: its training diameter's), a second pass at the
        factor the first pass's median diameter asks for (:meth:`utils.sizing.SizeRule.factor`;
        an enlargement stops at ``max_full_size`` a side), kept unless it finds no cell; a first
        pass inside the range but unsure of itself is probed once enlarged (:meth:`_probe`).
        ``diameter`` > 0 (px, the cells' median diameter measured by another model's pass of
        this image: the router's AWF) stands in for the first pass: one pass at the factor it
        asks for. Timings add up."""
        p, rule = self.params, self.params.size_rule
        first = None
        if rule is None or diameter <= 0:
            first = self.segment_at(image, p.scale)
            diameter = first.diameter
        factor = self._enlargement(image, rule.factor(diameter)) if rule is not None else 1.0
        if factor == 1.0 and first is not None:
            return self._probe(image, first, rule) if rule is not None else first
        second = self.segment_at(image, p.scale * factor)
        if first is None:
            return second
        return _summed(second if second.n_cells else first, first, second)

    def _enlargement(self, image: np.ndarray, factor: float) -> float:
        """A resize ``factor`` capped so that an enlarged image stays one region (at most
        ``max_full_size`` a side after ``params.scale``: a whole slide is never enlarged)."""
        if factor <= 1.0:
            return factor
        return max(1.0, min(factor, self.params.max_full_size / (self.params.scale * max(image.shape[:2]))))

    def _probe(self, image: np.ndarray, first: Segmentation, rule: SizeRule) -> Segmentation:
        """The size rule's probe (:meth:`utils.sizing.SizeRule.wants_probe`): ``first`` (a pass
        inside the working range), or the image segmented enlarged by ``probe_factor`` when
        ``first`` was unsure and the probe finds more cells more surely, of the working range's
        size."""
        if not rule.wants_probe(first.diameter, first.det_conf):
            return first
        factor = self._enlargement(image, rule.probe_factor)
        if factor <= 1.0:
            return first
        probe = self.segment_at(image, self.params.scale * factor)
        better = rule.prefers_probe((first.n_cells, first.det_conf), (probe.n_cells, probe.det_conf),
                                    probe.diameter * factor)
        return _summed(probe if better else first, first, probe)

    def segment_at(self, image: np.ndarray, scale: float) -> Segmentation:
        """One pass: the image resized by ``scale``, segmented whole up to ``max_full_size`` a
        side (else in chunks: :func:`utils.tiling.segment_chunked_parts`), and the label (and
        the fg map of a whole image) mapped back to ``(H, W)``."""
        p = self.params
        h, w = image.shape[:2]
        image = resize_image(image, scale)
        if max(image.shape[:2]) <= p.max_full_size:
            label, stats = self._segment_region(image)
        else:
            label, parts = segment_chunked_parts(image, self._segment_region, chunk=p.chunk,
                                                 margin=p.margin, progress=True)
            stats = sum(parts, RegionStats())  # no whole-image fg map
        fg = stats.fg
        if fg is not None and fg.shape != (h, w):
            fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)
        label = resize_label(label, h, w)
        return Segmentation(label=label, fg_conf=stats.fg_sum / max(stats.fg_count, 1),
                            det_conf=stats.det_score_sum / max(stats.n_det, 1),
                            n_det=stats.n_det, n_cells=int(label.max(initial=0)),
                            diameter=median_diameter(label), scale=scale, fg=fg,
                            timings={"network": stats.network_s,
                                     "postprocess": stats.postprocess_s})


class AWFSegmenter(Segmenter):
    """Runs an AWF model on network images ``(H, W, 3) uint8`` and returns instance labels;
    ``params``: :class:`InferenceParams` (required: they hold the branch's detection settings)."""

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
        for dims in TTA_FLIPS:
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
        p, d = self.params, self.params.detection
        h, w = image.shape[:2]
        if max(h, w) <= p.max_full_size:
            pred, fg, height = self.raw_outputs(image)
            det = non_max_suppression(pred, d.conf_thres, d.iou_thres, d.max_det)[0]
            return det.cpu().numpy(), fg, height
        acc = WindowAccumulator((2, h, w))
        weight = gaussian_weight(p.window)
        dets = []
        for y0, x0, y1, x1 in window_grid(h, w, p.window, p.overlap):
            pred, fg, height = self._forward_tta(self._to_tensor(image[y0:y1, x0:x1]))
            det = non_max_suppression(pred, d.conf_thres, d.iou_thres, d.max_det)[0]
            det[:, [0, 2]] += x0
            det[:, [1, 3]] += y0
            dets.append(det)
            acc.add(torch.cat([fg, height]).cpu().numpy(), y0, x0, weight[: y1 - y0, : x1 - x0])
        det = merge_detections(dets, d.iou_thres)  # one global NMS over windows, no cap
        maps = acc.result()
        return det.cpu().numpy(), maps[0], maps[1]

    # ------------------------------------------------------------------ instances
    def _segment_region(self, image: np.ndarray) -> tuple[np.ndarray, RegionStats]:
        t0 = time.perf_counter()
        det, fg, height = self.predict_maps(image)
        t1 = time.perf_counter()
        fg_sum, fg_count = confident_sum(fg)
        label = postprocess(det[:, :4], det[:, 4], fg, height, self.params.post)
        return label, RegionStats(fg_sum, fg_count, float(det[:, 4].sum()), len(det), t1 - t0,
                                  time.perf_counter() - t1, fg)


class OmniposeSegmenter(Segmenter):
    """Runs an Omnipose model on network images ``(H, W, 3) uint8`` -> instance labels.

    ``fg_conf``: mean of sigmoid(distance) over pixels above 0.5, the Omnipose side of the
    routing rule (the distance output is about -5 on background and grows inside cells).
    ``params`` None: the defaults, with the size rule of the model's training diameter
    (:func:`utils.sizing.trained_size_rule`; none for a model trained at native scale).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu",
                 params: OmniposeParams | None = None, precision: Precision | None = None):
        if params is None:
            params = OmniposeParams(size_rule=trained_size_rule(getattr(model, "diameter", 0.0)))
        super().__init__(model, device, params, precision)

    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (1, 3, H, W)`` in [0, 1] -> (flow (1, 2, H, W) dy/dx, dist (1, 1, H, W) pixels)."""
        x, (h, w) = pad_to_stride(x)
        with self._autocast():
            out = self.model(self.precision.input(x))
        return out["flow"][:, :, :h, :w].float(), out["dist"][:, :, :h, :w].float()

    @torch.no_grad()
    def predict_maps(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network image -> (flow (2, H, W) dy/dx, dist (H, W) pixels). With ``params.tta`` the
        mean over the flips of TTA_FLIPS, each flipped back (the flow component along a flipped
        axis changes sign)."""
        x = self._to_tensor(image)
        if not self.params.tta:
            flow, dist = self._forward(x)
        else:
            flows, dists = [], []
            for dims in TTA_FLIPS:
                flow, dist = self._forward(torch.flip(x, dims) if dims else x)
                if dims:
                    flow, dist = torch.flip(flow, dims), torch.flip(dist, dims)
                    flow[:, 1 if dims == (-1,) else 0] *= -1  # dx under left-right, dy under up-down
                flows.append(flow)
                dists.append(dist)
            flow, dist = torch.stack(flows).mean(0), torch.stack(dists).mean(0)
        return flow[0].cpu().numpy(), dist[0, 0].cpu().numpy()

    def _segment_region(self, image: np.ndarray) -> tuple[np.ndarray, RegionStats]:
        t0 = time.perf_counter()
        flow, dist = self.predict_maps(image)
        t1 = time.perf_counter()
        fg_sum, fg_count = confident_sum(1.0 / (1.0 + np.exp(-dist)))
        p = self.params
        label = reconstruct_masks(flow, dist, min_size=p.min_size, flow_threshold=p.flow_threshold,
                                  device=self.device)
        return label, RegionStats(fg_sum, fg_count, network_s=t1 - t0,
                                  postprocess_s=time.perf_counter() - t1)
