"""Sliding windows with Gaussian blending, and chunked segmentation of whole-slide images.

Two levels, so that a 10,000 x 10,000 (or larger) image never needs full-size float maps:

* within an image region, the network runs on overlapping windows (:func:`window_grid`) whose
  per-pixel outputs are blended with Gaussian importance weights (:class:`WindowAccumulator`),
  as in nnU-Net and MONAI's sliding-window inference;
* a large image is cut into chunks (:func:`segment_chunked`): each chunk's core, extended by a
  margin, is segmented on its own and only the instances whose bounding-box centre lies in the
  core are kept, so every cell comes from exactly one chunk and is never cut along a seam --
  provided cells are at most ``2 * margin`` pixels across (see :func:`segment_chunked`).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, TypeVar

import numpy as np
from scipy import ndimage as ndi

from utils.labels import relabel_consecutive

LOGGER = logging.getLogger(__name__)

# Network window (pixels) and fraction of overlap between neighbouring windows.
DEFAULT_WINDOW = 640
DEFAULT_OVERLAP = 0.125
# Gaussian sigma as a fraction of the window side (nnU-Net and MONAI use 1/8).
GAUSSIAN_SIGMA_SCALE = 0.125
# Floor of the importance map (MONAI clamps it to >= 1e-3), so window borders still count where
# no other window covers a pixel (the image border) and weight sums never vanish.
MIN_WEIGHT = 1e-3
# Chunk core side and margin (pixels) of segment_chunked; margin >= the largest cell radius.
DEFAULT_CHUNK = 2048
DEFAULT_MARGIN = 256
# Label ids above this from segment_fn are relabelled first (find_objects allocates one per id).
MAX_DIRECT_ID = 1 << 24

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), pixels, y1/x1 exclusive
Part = TypeVar("Part")


def _starts(length: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis: a regular stride, the last window flush with the border."""
    if length <= window:
        return [0]
    return list(range(0, length - window, stride)) + [length - window]


def window_grid(height: int, width: int, window: int = DEFAULT_WINDOW,
                overlap: float = DEFAULT_OVERLAP) -> list[Box]:
    """Windows ``(y0, x0, y1, x1)`` covering an ``height x width`` image.

    Neighbouring windows overlap by about ``overlap * window`` pixels; the last window of each
    row/column is aligned to the image border. Along an axis shorter than ``window`` the single
    window is the whole axis (so a small image gives one window, the image itself).
    """
    if window < 1 or not 0 <= overlap < 1:
        raise ValueError(f"need window >= 1 and 0 <= overlap < 1, got {window}, {overlap}")
    stride = max(1, round(window * (1 - overlap)))
    wy, wx = min(window, height), min(window, width)
    return [(y, x, y + wy, x + wx)
            for y in _starts(height, window, stride) for x in _starts(width, window, stride)]


def gaussian_weight(window, sigma_scale: float = GAUSSIAN_SIGMA_SCALE,
                    min_weight: float = MIN_WEIGHT) -> np.ndarray:
    """Importance map ``(h, w) float32`` for a window of side ``window`` (int or ``(h, w)``).

    A Gaussian centred on the window with sigma ``sigma_scale * side`` per axis, maximum 1,
    clipped below at ``min_weight`` (> 0). Symmetric under flips.
    """
    h, w = (window, window) if np.isscalar(window) else window
    axes = []
    for n in (h, w):
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        axes.append(np.exp(-0.5 * (x / max(sigma_scale * n, 1e-6)) ** 2))
    weight = np.outer(axes[0], axes[1])
    return np.maximum(weight / weight.max(), min_weight).astype(np.float32)


class WindowAccumulator:
    """Gaussian-weighted blending of per-window maps into a full ``(C, H, W)`` float32 map.

    ``add(maps, y0, x0)`` accumulates ``weight * maps`` and ``weight`` for the window at
    ``(y0, x0)``; ``result()`` divides the two (0 where no window was added). Memory: two
    float32 buffers, ``(C + 1) * H * W * 4`` bytes.
    """

    def __init__(self, shape: tuple[int, int, int], sigma_scale: float = GAUSSIAN_SIGMA_SCALE):
        self.shape = tuple(int(s) for s in shape)
        self.sigma_scale = sigma_scale
        self._sum = np.zeros(self.shape, np.float32)
        self._weight = np.zeros(self.shape[1:], np.float32)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def add(self, maps, y0: int, x0: int, weight: np.ndarray | None = None) -> None:
        """Accumulate ``maps`` ``(C, h, w)`` (ndarray or tensor) covering ``[y0:y0+h, x0:x0+w]``.

        ``weight`` ``(h, w)`` (> 0) replaces the default :func:`gaussian_weight` of an ``h x w``
        window, e.g. the crop of a full window's weight for a window cut by the image border.
        """
        if hasattr(maps, "detach"):
            maps = maps.detach().float().cpu().numpy()
        maps = np.asarray(maps, np.float32)
        c, h, w = maps.shape
        if c != self.shape[0] or y0 < 0 or x0 < 0 or y0 + h > self.shape[1] or x0 + w > self.shape[2]:
            raise ValueError(f"maps {maps.shape} at ({y0}, {x0}) do not fit in {self.shape}")
        if weight is None:
            if (h, w) not in self._cache:
                self._cache[(h, w)] = gaussian_weight((h, w), self.sigma_scale)
            weight = self._cache[(h, w)]
        elif weight.shape != (h, w):
            raise ValueError(f"weight {weight.shape} does not match maps {maps.shape}")
        self._sum[:, y0:y0 + h, x0:x0 + w] += maps * weight
        self._weight[y0:y0 + h, x0:x0 + w] += weight

    def result(self) -> np.ndarray:
        """Blended ``(C, H, W)`` float32 map (a new array; the accumulator stays usable)."""
        out = np.zeros(self.shape, np.float32)
        np.divide(self._sum, self._weight, out=out, where=self._weight > 0)
        return out


def chunk_grid(height: int, width: int, chunk: int = DEFAULT_CHUNK,
               margin: int = DEFAULT_MARGIN) -> list[tuple[Box, Box]]:
    """``(core, region)`` pairs: cores tile the image on a regular grid of at most ``chunk`` per side
    (equal sizes up to one pixel); each region is its core grown by ``margin``, clipped to the image.
    """
    ys = np.linspace(0, height, math.ceil(height / chunk) + 1).round().astype(int)
    xs = np.linspace(0, width, math.ceil(width / chunk) + 1).round().astype(int)
    out = []
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            region = (max(0, y0 - margin), max(0, x0 - margin),
                      min(height, y1 + margin), min(width, x1 + margin))
            out.append(((int(y0), int(x0), int(y1), int(x1)), region))
    return out


def _check_label(label, shape) -> np.ndarray:
    label = np.asarray(label)
    if label.shape != tuple(shape) or label.dtype.kind not in "ui":
        raise ValueError(f"segment_fn must return an integer label of shape {tuple(shape)}, "
                         f"got {label.dtype} {label.shape}")
    if label.dtype.kind == "i" and label.size and label.min() < 0:
        raise ValueError("segment_fn returned negative label ids")
    return label


def core_instance_ids(label: np.ndarray, core: Box) -> np.ndarray:
    """Ids of ``label``'s instances whose bounding-box centre lies in ``core`` (label coordinates).

    The centre is ``((start + stop) / 2)`` per axis (continuous coordinates, stop exclusive); the
    core is half-open, so cores that tile a plane give each centre to exactly one core.
    """
    objects = ndi.find_objects(label)
    ids = np.array([i + 1 for i, s in enumerate(objects) if s is not None], dtype=np.int64)
    if ids.size == 0:
        return ids
    ext = np.array([(s[0].start + s[0].stop, s[1].start + s[1].stop)
                    for s in objects if s is not None], np.float64) / 2
    y0, x0, y1, x1 = core
    inside = (ext[:, 0] >= y0) & (ext[:, 0] < y1) & (ext[:, 1] >= x0) & (ext[:, 1] < x1)
    return ids[inside]


def segment_chunked(image: np.ndarray, segment_fn: Callable[[np.ndarray], np.ndarray],
                    chunk: int = DEFAULT_CHUNK, margin: int = DEFAULT_MARGIN,
                    progress: bool = False) -> np.ndarray:
    """Segment a large ``(H, W[, C])`` image chunk by chunk; returns an ``(H, W) uint32`` label.

    Cores of at most ``chunk`` pixels tile the image (:func:`chunk_grid`); ``segment_fn`` gets
    each core grown by ``margin`` (clipped at the border) and returns its integer label map. Only
    instances whose bounding-box centre lies in the core are kept; they are pasted with fresh ids
    where the output is still 0, so each cell comes from exactly one chunk.

    Margin assumption: a cell at most ``2 * margin`` pixels across (bounding box, per axis) is
    whole in the region of the core holding its centre, and a cut piece of it seen by a
    neighbouring region never has its centre in that region's core; larger cells may be cut or
    duplicated. A real model also needs context around a cell: choose margin >= one cell diameter.

    Memory: the uint32 output plus one region's image, label and temporaries; time is linear in
    the image area. Images of at most ``chunk`` per side go to ``segment_fn`` whole.
    """
    height, width = image.shape[:2]
    if height <= chunk and width <= chunk:
        return _check_label(segment_fn(image), (height, width)).astype(np.uint32)
    out = np.zeros((height, width), np.uint32)
    next_id = 1
    grid = chunk_grid(height, width, chunk, margin)
    if progress:
        from tqdm import tqdm
        grid = tqdm(grid, desc="chunks", unit="chunk")
    for (cy0, cx0, cy1, cx1), (ry0, rx0, ry1, rx1) in grid:
        label = _check_label(segment_fn(image[ry0:ry1, rx0:rx1]), (ry1 - ry0, rx1 - rx0))
        if label.size and label.max() > MAX_DIRECT_ID:
            label = relabel_consecutive(label)
        ids = core_instance_ids(label, (cy0 - ry0, cx0 - rx0, cy1 - ry0, cx1 - rx0))
        mapping = np.zeros(int(label.max(initial=0)) + 1, np.uint32)
        mapping[ids] = np.arange(next_id, next_id + len(ids), dtype=np.uint32)
        next_id += len(ids)
        new = mapping[label]
        view = out[ry0:ry1, rx0:rx1]
        paste = (new > 0) & (view == 0)
        view[paste] = new[paste]
        LOGGER.debug("chunk core (%d, %d): %d instances kept", cy0, cx0, len(ids))
    return out


def segment_chunked_parts(image: np.ndarray,
                          segment_fn: Callable[[np.ndarray], tuple[np.ndarray, Part]],
                          chunk: int = DEFAULT_CHUNK, margin: int = DEFAULT_MARGIN,
                          progress: bool = False) -> tuple[np.ndarray, list[Part]]:
    """:func:`segment_chunked` for a ``segment_fn`` that returns ``(label, part)``: the ``(H, W)
    uint32`` label and the parts of the regions, in the order they were segmented (e.g. the
    statistics of each region, which the caller adds up)."""
    parts: list[Part] = []

    def label_of(region: np.ndarray) -> np.ndarray:
        label, part = segment_fn(region)
        parts.append(part)
        return label

    return segment_chunked(image, label_of, chunk=chunk, margin=margin, progress=progress), parts
