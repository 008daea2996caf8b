"""Instance label maps: ids relabelled 1..n, small instances dropped, holes inside one instance filled.

The one home of these steps for augmentation (``utils.augment``), both post-processings
(``utils.watershed``, ``utils.flows``), the challenge metric (``utils.metrics``), the label cache
(``utils.label_cache``) and chunked stitching (``utils.tiling``).

A label map is an ``(H, W)`` array of non-negative integers (any integer dtype, uint64 included;
ids below 2**63), 0 = background, ids need not be consecutive. Nothing here loops over pixels or
instances: relabelling is one ``np.bincount`` (or one ``np.unique`` when the ids are far larger
than the image) and one look-up-table gather; hole filling is one ``scipy.ndimage.label`` pass
and four shifted gathers.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi

# Ids up to max(DENSE_IDS_PER_PIXEL * pixels, DENSE_MIN_IDS) go through a bincount and a look-up
# table of (max id + 1) entries; larger ids through a sort (np.unique), whose memory is bounded by
# the image. Both give the same result.
DENSE_IDS_PER_PIXEL = 2
DENSE_MIN_IDS = 1 << 16

# keep(ids, areas) -> bool mask: ids (k,) int64 present in the map (0 excluded, increasing),
# areas (k,) int64 their pixel counts.
KeepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _dense(top: int, size: int) -> bool:
    return top <= max(DENSE_IDS_PER_PIXEL * size, DENSE_MIN_IDS)


def relabel(label, keep: KeepFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ids of ``label`` -> 1..n in increasing order of the old ids, minus those ``keep`` rejects.

    Args:
        label: label map ``(H, W)`` (any shape works), non-negative integers; not modified.
        keep: ``keep(ids, areas)`` -> ``(k,) bool``, True for the instances to keep: ``ids (k,)
            int64`` are the ids present (0 excluded, increasing), ``areas (k,) int64`` their pixel
            counts. Rejected instances become background. None keeps every instance.

    Returns:
        ``(out, areas)``: ``out`` ``int32``, ``label``'s shape, 0 background, ids 1..n;
        ``areas`` ``(n,) int64``, the pixel count of new id ``i + 1`` at index ``i``.
    """
    label = np.asarray(label)
    flat = label.ravel()
    top = int(flat.max(initial=0))
    if _dense(top, flat.size):
        counts = np.bincount(flat.astype(np.int64) if flat.dtype == np.uint64 else flat,
                             minlength=top + 1)
        ids = np.flatnonzero(counts[1:]) + 1
        lut, index = np.zeros(top + 1, np.int32), label
        slots, areas = ids, counts[ids].astype(np.int64)
    else:  # ids far larger than the image: sort-based unique
        uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        slots = np.flatnonzero(uniq != 0)
        ids, areas = uniq[slots].astype(np.int64), counts[slots].astype(np.int64)
        lut, index = np.zeros(uniq.size, np.int32), inverse.reshape(label.shape)
    if keep is not None:
        kept = np.asarray(keep(ids, areas), bool)
        slots, areas = slots[kept], areas[kept]
    lut[slots] = np.arange(1, slots.size + 1, dtype=np.int32)
    return lut[index], areas


def relabel_consecutive(label) -> np.ndarray:
    """Ids of ``label (H, W)`` -> 1..n in increasing order of the old ids; ``(H, W) int32``."""
    return relabel(label)[0]


def relabel_raster(label) -> np.ndarray:
    """Ids of ``label (H, W)`` (non-negative, dense: ids up to about the pixel count) -> 1..n in
    the raster order of each instance's first pixel (row by row, then column), ``(H, W) int32``.

    The numbering then depends on the instances' shapes alone, not on the order in which they
    were found: the AWF numbers cells by detection score, and two near-equal scores swapped
    places between 1 and 2 threads (examples/fl_cells.png, an AVX2 CPU), which renumbered the
    same two cells."""
    label = np.asarray(label)
    flat = label.ravel()
    top = int(flat.max(initial=0))
    if top == 0:
        return np.zeros(label.shape, np.int32)
    pixels = np.flatnonzero(flat)
    first = np.full(top + 1, flat.size, np.int64)
    np.minimum.at(first, flat[pixels], pixels)
    present = np.flatnonzero(first < flat.size)
    lut = np.zeros(top + 1, np.int32)
    lut[present[np.argsort(first[present])]] = np.arange(1, present.size + 1, dtype=np.int32)
    return lut[label]


def remove_small(label, min_size: int, areas_before=None) -> np.ndarray:
    """Instances under ``min_size`` pixels -> background, the others relabelled 1..n in id order.

    Args:
        label: label map ``(H, W)``, non-negative integers; not modified.
        min_size: smallest instance kept, in pixels (<= 1 keeps every instance present).
        areas_before: optional ``(m,)`` integer pixel count of each id (index = id) before a
            transform (crop, warp): a small instance is then removed only if it lost pixels, so a
            tiny cell that was not cut stays; ids >= m count as cut.

    Returns:
        ``(H, W) int32``, 0 background, ids 1..n.
    """
    def keep(ids, areas):
        big = areas >= min_size
        if areas_before is None:
            return big
        before = np.asarray(areas_before)
        known = ids < before.size
        uncut = np.zeros(ids.size, bool)
        uncut[known] = areas[known] >= before[ids[known]]
        return big | uncut

    return relabel(label, keep)[0]


def fill_holes(label) -> np.ndarray:
    """Background holes enclosed by a single instance take that instance's id.

    A hole is a 4-connected background component that does not touch the image border; it is
    filled when all the pixels 4-adjacent to it belong to one instance. Holes between several
    instances (gaps between touching cells) stay background.

    Args:
        label: ``(H, W)`` label map, non-negative integers; not modified.

    Returns:
        A new ``(H, W)`` array of ``label``'s dtype.
    """
    label = np.asarray(label)
    out = label.copy(order="C")
    bg, n = ndi.label(label == 0)
    if n == 0:
        return out
    is_hole = np.ones(n + 1, bool)
    is_hole[0] = False
    is_hole[np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]])] = False
    pix = np.flatnonzero(is_hole[bg.ravel()])
    if pix.size == 0:
        return out
    w, flat = label.shape[1], out.ravel()
    # hole pixels are off the border: their 4 neighbours lie inside the image, in the same row
    # for +-1; a neighbour is either the same hole (0) or an instance (> 0)
    steps = np.array([-w, w, -1, 1])
    neighbours = flat[pix[None, :] + steps[:, None]].astype(np.int64).ravel()
    holes = np.tile(bg.ravel()[pix], steps.size)
    inst = neighbours > 0
    lo = np.full(n + 1, np.iinfo(np.int64).max, np.int64)
    hi = np.zeros(n + 1, np.int64)
    np.minimum.at(lo, holes[inst], neighbours[inst])
    np.maximum.at(hi, holes[inst], neighbours[inst])
    region = bg.ravel()[pix]
    single = lo[region] == hi[region]
    flat[pix[single]] = lo[region[single]]
    return out
