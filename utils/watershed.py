"""Instance post-processing of the Anchor-based Watershed Framework (AWF).

One function, :func:`postprocess`, turns the network outputs of one image (detected boxes, the
foreground probability and the "height" map) into an instance label map. Training validation,
``evaluate.py`` and ``predict.py`` all reach it through ``utils/inference.py``.

Recipe (every constant is a field of :class:`PostprocessParams`):

a) boxes lying mostly inside a higher-scored kept box are dropped;
b) each kept box gets a small disk marker at its centre pixel when that pixel lies in the core
   (height >= ``core_thresh`` inside the foreground); marker pixels off the core are dropped;
   markers of overlapping boxes stay distinct (the higher score wins the shared pixels).
   Boxes whose centre misses the core (thin, curved or branched cells) get, with
   ``marker_fallback``, a marker on the foreground instead: at the centre if it is foreground,
   else at the box's foreground pixel nearest the centre; without it they get no marker;
c) a watershed floods ``-height`` from those markers, restricted to the core (plus the fallback
   markers' own pixels);
d) every component of ``height >= peak_thresh`` inside the foreground that step c left
   unlabelled becomes a marker, unless most of it lies inside a kept box of its foreground
   component (another lobe of a detected cell): cells the detector missed, alone in their
   foreground component or beside cells it found (the original recipe seeds only components
   that no box marked, so one box in a clump of whole cells made the clump one object);
e) a last watershed floods the remaining foreground from all labels so far;
f) holes enclosed by a single instance are filled, instances under ``min_size`` pixels removed,
   ids relabelled 1..n in raster order (utils.labels.relabel_raster: not in score order, which
   float rounding can reorder between thread counts).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from utils.labels import fill_holes, relabel_raster, remove_small

LOGGER = logging.getLogger(__name__)


@dataclass
class PostprocessParams:
    """Constants of the AWF post-processing: the original recipe's values, plus
    ``marker_fallback`` (an addition of this repository, see its comment)."""

    # A box whose intersection with a higher-scored kept box exceeds this fraction of its OWN area
    # is dropped (a nested duplicate detection that NMS's IoU test lets through).
    nested_thresh: float = 0.8
    # Boxes whose centre pixel misses the core still get a foreground marker (see module doc).
    # With ideal network outputs, recall at IoU 0.5 on utils.synthetic.make_label cells (3 scenes
    # of 256^2 per shape) rises from 0.39 to 0.94 for curved, 0.63 to 0.96 for branched, 0.89 to
    # 0.98 for rods, 0.76 to 0.99 for mixed shapes (round: 0.99 -> 1.0), and unmatched instances
    # fall (curved: 12.3 -> 2.7 per scene). The cost: a false-positive box centred on a cell's
    # rim or on a border between cells adds a small sliver instance (tests/test_watershed.py).
    # False = the strict reading: such boxes get no marker.
    marker_fallback: bool = True
    # Marker disk radius at each box centre (pixels; the recipe's 2-3 px): small so that the
    # markers of close cells stay apart.
    marker_radius: int = 2
    # If > 0, the radius grows to this fraction of the box's shorter side (never below
    # marker_radius); 0 keeps the fixed radius of the original recipe.
    marker_radius_frac: float = 0.0
    # Foreground = fg probability above this (0.5: the usual binary decision).
    fg_thresh: float = 0.5
    # Core = height >= this: the central part of every cell; cores of touching cells are apart
    # because the height (per-cell EDT / (median EDT + 1)) falls towards 0 on shared borders.
    core_thresh: float = 0.8
    # Peaks used as markers of the foreground the boxes did not reach: height >= this (above the
    # median-EDT level, so one ridge per cell). 1.5 (the original recipe: 1.25) from a sweep of
    # 1.0/1.25/1.5/1.75/2.0 with the shipped general.pt on the 136 data/cells.yaml validation
    # images (conf 0.25-0.4): with step d seeding inside marked components, 1.5 scored best on
    # gs (0.751 at conf 0.30, against 0.700 at 1.25 and 0.648 for the original step d) and did not
    # lose on bf or fl (0.759 / 0.879 at conf 0.25 / 0.30).
    peak_thresh: float = 1.5
    # Instances smaller than this many pixels are removed (debris, watershed slivers).
    min_size: int = 10
    # Rows per block of the pairwise box-intersection matrix (memory bound: block * N floats).
    nested_block: int = 2048


def _to_numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def drop_nested_boxes(boxes, scores, thresh: float = 0.8, block: int = 2048) -> np.ndarray:
    """Indices of the boxes to keep, in decreasing score order (step a).

    Boxes are visited by decreasing score; a box is dropped when its intersection with an already
    kept box exceeds ``thresh`` times its own area. ``boxes`` ``(N, 4)`` xyxy pixels, ``scores``
    ``(N,)``. Pairwise intersections are vectorised (NumPy: for a few hundred boxes torch's
    per-op overhead dominates), ``block`` rows at a time to bound memory.
    """
    order = np.argsort(-_to_numpy(scores, np.float32).reshape(-1), kind="stable")
    b = _to_numpy(boxes, np.float32).reshape(-1, 4)[order]
    n = len(order)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-6)
    rows, cols = [np.zeros(0, np.intp)], [np.zeros(0, np.intp)]
    for s in range(0, n, block):
        bi = b[s:s + block, None]  # (k, 1, 4) against (n, 4); only higher-scored columns matter
        iw = np.minimum(bi[..., 2], b[:, 2]) - np.maximum(bi[..., 0], b[:, 0])
        ih = np.minimum(bi[..., 3], b[:, 3]) - np.maximum(bi[..., 1], b[:, 1])
        inside = (iw > 0) & (ih > 0) & (iw * ih > thresh * area[s:s + block, None])
        inside &= np.arange(n) < np.arange(s, s + len(bi))[:, None]
        r, c = np.nonzero(inside)
        rows.append(r + s)
        cols.append(c)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    kept = np.ones(n, bool)
    if rows.size:  # greedy pass only over boxes that have a containing candidate (few)
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        for i, js in zip(rows[starts], np.split(cols, starts[1:])):
            kept[i] = not kept[js].any()
    return order[kept]


def _marker_centres(boxes: np.ndarray, core: np.ndarray, fg: np.ndarray,
                    fallback: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Marker centre ``(cy, cx)`` per box and whether it is on the core (step b).

    Returns ``(ids, cy, cx, on_core)`` for the boxes that get a marker. The centre is the pixel
    holding the box centre; with ``fallback``, a centre off the foreground moves to the box's
    foreground pixel nearest to it (a loop over those boxes only).
    """
    h, w = core.shape
    cx = np.clip(np.floor((boxes[:, 0] + boxes[:, 2]) / 2), 0, w - 1).astype(np.intp)
    cy = np.clip(np.floor((boxes[:, 1] + boxes[:, 3]) / 2), 0, h - 1).astype(np.intp)
    valid = core[cy, cx] | (fallback & fg[cy, cx])
    for i in np.flatnonzero(~fg[cy, cx]) if fallback else ():
        x0, y0 = (int(np.clip(np.floor(v), 0, n)) for v, n in zip(boxes[i, :2], (w, h)))
        x1, y1 = (int(np.clip(np.ceil(v), 0, n)) for v, n in zip(boxes[i, 2:], (w, h)))
        ys, xs = np.nonzero(fg[y0:y1, x0:x1])
        if ys.size:
            k = np.argmin((ys + y0 - cy[i]) ** 2 + (xs + x0 - cx[i]) ** 2)
            cy[i], cx[i], valid[i] = ys[k] + y0, xs[k] + x0, True
    ids = np.flatnonzero(valid)
    return ids, cy[ids], cx[ids], core[cy[ids], cx[ids]]


def box_markers(boxes: np.ndarray, core: np.ndarray, fg: np.ndarray,
                params: PostprocessParams) -> np.ndarray:
    """Disk markers (step b): ``(H, W) int32``, box ``k`` (row of ``boxes``) gets id ``k + 1``.

    ``boxes`` ``(K, 4)`` xyxy pixels sorted by decreasing score; ``core``, ``fg`` ``(H, W)``
    bool. A marker centred on the core keeps its core pixels, a fallback marker (centre off the
    core, ``params.marker_fallback``) its foreground pixels; boxes without a centre get none.
    Where disks overlap the earlier (higher-scored) box wins, so both stay distinct.
    """
    h, w = core.shape
    markers = np.zeros((h, w), np.int32)
    if len(boxes) == 0:
        return markers
    ids, cy, cx, on_core = _marker_centres(boxes, core, fg, params.marker_fallback)
    if ids.size == 0:
        return markers
    side = np.minimum(boxes[ids, 2] - boxes[ids, 0], boxes[ids, 3] - boxes[ids, 1])
    radius = np.maximum(params.marker_radius, np.round(params.marker_radius_frac * side)).astype(int)
    r_max = int(radius.max())
    dy, dx = np.mgrid[-r_max:r_max + 1, -r_max:r_max + 1].reshape(2, -1)
    ys, xs = cy[:, None] + dy, cx[:, None] + dx  # (k, disk pixels)
    ok = (dy * dy + dx * dx <= radius[:, None] ** 2) & (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    flat = ys[ok] * w + xs[ok]
    on_core_px = np.broadcast_to(on_core[:, None], ok.shape)[ok]
    ok[ok] = np.where(on_core_px, core.ravel()[flat], fg.ravel()[flat])
    flat = ys[ok] * w + xs[ok]
    priority = np.broadcast_to((len(boxes) - ids)[:, None], ok.shape)[ok].astype(np.int32)
    np.maximum.at(markers.ravel(), flat, priority)  # highest score wins shared pixels
    markers[markers > 0] = len(boxes) + 1 - markers[markers > 0]
    return markers


def flood(elevation: np.ndarray, seeds: np.ndarray, mask: np.ndarray,
          components: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """``skimage.segmentation.watershed(elevation, seeds, mask=mask)``, faster.

    Components of ``mask`` (4-connected, as the watershed) holding seeds of one id only are
    filled with it directly, those without seeds stay 0; the watershed runs only on the components
    holding several ids, cropped to their bounding box, and without the interior of the seeds
    (seed pixels whose 4 neighbours share their id cannot flood anything). Same result as the
    plain call, up to the order of equal-elevation ties. ``(H, W)`` arrays; returns int32.
    ``components``: ``ndi.label(mask)`` when the caller has it already.
    """
    comp, n = components if components is not None else ndi.label(mask)
    sp = np.flatnonzero((seeds > 0) & mask)
    c, v = comp.ravel()[sp], seeds.ravel()[sp].astype(np.int32)
    lo = np.full(n + 1, np.iinfo(np.int32).max, np.int32)
    hi = np.zeros(n + 1, np.int32)
    np.minimum.at(lo, c, v)
    np.maximum.at(hi, c, v)
    out = np.where(lo == hi, hi, 0).astype(np.int32)[comp]
    multi = hi > lo
    multi[0] = False
    if multi.any():
        m = multi[comp]
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        sl = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        m = m[sl]
        sd = np.where(m, seeds[sl], 0)
        interior = _interior(sd)
        m_flood = m & ~interior
        ws = watershed(elevation[sl], np.where(m_flood, sd, 0), mask=m_flood)
        out[sl][m] = np.where(interior, sd, ws)[m]
    return out


def _interior(ids: np.ndarray) -> np.ndarray:
    """Pixels with id > 0 whose 4 neighbours all carry the same id (image-border pixels: never)."""
    inner = ids > 0
    inner[1:] &= ids[1:] == ids[:-1]
    inner[:-1] &= ids[:-1] == ids[1:]
    inner[:, 1:] &= ids[:, 1:] == ids[:, :-1]
    inner[:, :-1] &= ids[:, :-1] == ids[:, 1:]
    inner[[0, -1]] = False
    inner[:, [0, -1]] = False
    return inner


def box_cover(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W) bool``: pixels inside at least one box; ``boxes`` ``(K, 4)`` xyxy pixels (x2/y2
    exclusive). Vectorised: +1/-1 at the corners of each box, then a 2-D cumulative sum."""
    h, w = shape
    diff = np.zeros((h + 1, w + 1), np.int32)
    if len(boxes):
        x0, y0 = (np.clip(np.floor(boxes[:, i]), 0, n).astype(np.intp) for i, n in ((0, w), (1, h)))
        x1, y1 = (np.clip(np.ceil(boxes[:, i]), 0, n).astype(np.intp) for i, n in ((2, w), (3, h)))
        for ys, xs, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
            np.add.at(diff, (ys, xs), sign)
    return diff.cumsum(0).cumsum(1)[:h, :w] > 0


def peak_markers(labels: np.ndarray, components: tuple[np.ndarray, int], height: np.ndarray,
                 thresh: float, first_id: int, in_boxes: np.ndarray | None = None) -> np.ndarray:
    """Markers of the foreground the box markers missed (step d); ``(H, W) int32``.

    ``components`` = ``ndi.label(foreground)``. Each connected component of ``height >= thresh``
    inside the foreground becomes one marker (ids ``first_id, first_id + 1, ...``) unless a
    pixel of ``labels`` (step c) overlaps it, or it lies in a foreground component that step c
    marked and more than half of it is inside ``in_boxes`` (``(H, W) bool``, the kept boxes:
    there it is another lobe of a detected cell, not a missed cell).
    """
    comp, n = components
    peaks, n_peaks = ndi.label((comp > 0) & (height >= thresh))
    covered = np.zeros(n_peaks + 1, bool)
    covered[peaks[labels > 0]] = True
    if in_boxes is not None and n_peaks:
        marked = np.zeros(n + 1, bool)
        marked[comp[labels > 0]] = True
        size = np.bincount(peaks.ravel(), minlength=n_peaks + 1)
        boxed = np.bincount(peaks[in_boxes], minlength=n_peaks + 1)
        in_marked = np.zeros(n_peaks + 1, bool)
        in_marked[peaks[marked[comp]]] = True
        covered |= in_marked & (2 * boxed > size)
    covered[0] = True
    new_ids = np.cumsum(~covered) * ~covered
    if new_ids.max():
        LOGGER.debug("%d height peaks seed foreground the boxes missed", new_ids.max())
    out = new_ids[peaks].astype(np.int32)
    out[out > 0] += first_id - 1
    return out


def postprocess(boxes, scores, fg: np.ndarray, height: np.ndarray,
                params: PostprocessParams | None = None) -> np.ndarray:
    """AWF instance post-processing of one image.

    Args:
        boxes: ``(N, 4)`` xyxy float pixels (x2/y2 exclusive), image coordinates; ndarray or tensor.
        scores: ``(N,)`` detection scores 0..1.
        fg: ``(H, W)`` float32 foreground probability 0..1.
        height: ``(H, W)`` float32 height map (per-cell EDT / (median EDT + 1)).
        params: constants; defaults to :class:`PostprocessParams`.

    Returns:
        ``(H, W)`` int32 label map, 0 background, instances 1..n in raster order.
    """
    p = params or PostprocessParams()
    fg, height = np.asarray(fg, np.float32), np.asarray(height, np.float32)
    if fg.ndim != 2 or fg.shape != height.shape:
        raise ValueError(f"fg {fg.shape} and height {height.shape} must be the same (H, W)")
    boxes = _to_numpy(boxes, np.float32).reshape(-1, 4)
    scores = _to_numpy(scores, np.float32).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    finite = np.isfinite(boxes).all(1) & np.isfinite(scores)
    boxes, scores = boxes[finite], scores[finite]
    keep = drop_nested_boxes(boxes, scores, p.nested_thresh, p.nested_block)
    fg_mask = fg > p.fg_thresh
    core = fg_mask & (height >= p.core_thresh)
    elevation = -height
    markers = box_markers(boxes[keep], core, fg_mask, p)
    labels = flood(elevation, markers, core | (markers > 0))
    fg_components = ndi.label(fg_mask)
    seeds = peak_markers(labels, fg_components, height, p.peak_thresh, len(keep) + 1,
                         box_cover(boxes[keep], fg_mask.shape))
    np.copyto(seeds, labels, where=labels > 0)
    labels = fill_holes(flood(elevation, seeds, fg_mask, fg_components))
    return relabel_raster(remove_small(labels, p.min_size))
