"""Synthetic multi-modality cell images with instance labels, for tests and the quickstart only.

Never a substitute for real data in benchmarks: the images are a cartoon of microscopy (a few
shapes, a simple optical model per modality), enough to exercise the whole pipeline end to end.

``make_sample(modality, ...)`` returns one ``(image, label)`` pair, the image as it would be stored:

- ``"fl"``  fluorescence nuclei: dark background, bright textured blobs; single channel
  (``channels=1``, returned 2D) or RGB with the signal in green/blue and an almost empty red
  channel (``channels=3``); uint8 or uint16.
- ``"bf"``  stained brightfield (H&E-like): RGB uint8, light background, purple (haematoxylin)
  cells on patches of pink (eosin) stroma, from a Beer-Lambert stain model.
- ``"gs"``  phase-contrast-like: 2D, mid-grey background, cells darker (a few brighter) than the
  background with bright halos; uint8 or uint16 (16-bit values around 32,000, like raw cameras).
- ``"dic"`` DIC-like: 2D, mid-grey background, cells as a shadow-cast relief. Its class for
  :func:`utils.modality.classify_modality` and in ``meta.csv`` is ``"gs"``.

The label is ``int32 (H, W)``, 0 = background, ids 1..n consecutive. Cells are drawn one at a time
with OpenCV (round/elliptical blobs, straight rods, curved rods, branched cells) and their size is
their largest extent (Feret diameter) in pixels, drawn log-uniformly from ``size_range``. With
``touching=True`` about half of the cells are placed overlapping a neighbour and every overlapped
pixel goes to the cell in which it lies deeper (larger distance to that cell's own outline), so
touching cells share a boundary along the "bisector" of their overlap, as in a watershed; with
``touching=False`` cells keep at least one background pixel between them.

``write_dataset(root, n_images, ...)`` writes the NeurIPS 2022 challenge layout (images/, labels/,
meta.csv). Command line: ``python -m utils.synthetic --out DIR -n 12``.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import cv2
import numpy as np

from utils.io import write_image, write_label

MODALITIES = ("fl", "bf", "gs", "dic")
MODALITY_CLASS = {"fl": "fl", "bf": "bf", "gs": "gs", "dic": "gs"}  # the classify_modality class
SHAPES = ("round", "rod", "curved", "branched")

# Default fraction of the image covered by cells when n_cells is None: dense enough for touching
# clusters, sparse enough that the background stays the most common intensity (as in real slides).
DEFAULT_COVERAGE = 0.3
# Fraction of cells placed against an existing cell when touching=True.
TOUCH_FRACTION = 0.5
# A new cell is rejected if more than this fraction of it overlaps cells already placed.
MAX_OVERLAP = 0.35
# Placement attempts per requested cell before giving up (a dense non-touching request stops early).
PLACEMENT_TRIES = 20
# After overlaps are resolved, a cell keeping less than this fraction of its drawn area is dropped.
MIN_KEPT_FRACTION = 0.3
# Cells with fewer pixels than this (e.g. cut by the image border) are dropped.
MIN_CELL_PIXELS = 8
# Sub-pixel precision (fractional bits) of the OpenCV polygon / polyline drawing.
_SHIFT = 4


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------
# shapes: each returns a uint8 0/1 mask cropped to its bounding box, largest extent ~ ``size``
# ----------------------------------------------------------------------------------------------

def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return np.ones((1, 1), np.uint8)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _rod_width(length: float, rng: np.random.Generator) -> int:
    """Bacteria-like aspect ratio 2.5..5, at least 3 pixels thick."""
    return int(max(3, round(length / rng.uniform(2.5, 5.0))))


def _draw_polylines(lines: list[np.ndarray], width: int, size: float) -> np.ndarray:
    """Rasterise thick polylines (round caps and joints) after scaling them to extent ``size``."""
    pts = np.concatenate(lines)
    # the shape's extent is the point set's diameter plus the line width; scale it to ``size``
    diam = float(np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max())
    target = max(size - width, 1.0)
    scale = target / diam if diam > 0 else 1.0
    lo = pts.min(0)
    side = int(math.ceil(target + width)) + 4
    origin = np.array([side / 2.0, side / 2.0]) - (pts.max(0) + lo) / 2.0 * scale
    canvas = np.zeros((side, side), np.uint8)
    polys = [_fixed(line * scale + origin) for line in lines]
    cv2.polylines(canvas, polys, isClosed=False, color=1, thickness=int(width),
                  lineType=cv2.LINE_8, shift=_SHIFT)
    return _crop(canvas)


def _shape_round(size: float, rng: np.random.Generator) -> np.ndarray:
    """Ellipse (axis ratio 0.55..1) with a slightly irregular outline (low-order Fourier noise)."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3, 4):
        r += rng.uniform(0, 0.05) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    ratio = rng.uniform(0.55, 1.0)
    pts = np.stack([r * np.cos(t), ratio * r * np.sin(t)], 1)
    ang = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    pts = pts @ rot.T
    diam = float(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max())
    pts *= (size - 1.0) / diam
    side = int(math.ceil(size)) + 4
    canvas = np.zeros((side, side), np.uint8)
    cv2.fillPoly(canvas, [_fixed(pts + side / 2.0)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return _crop(canvas)


def _shape_rod(size: float, rng: np.random.Generator) -> np.ndarray:
    ang = rng.uniform(0, np.pi)
    line = np.array([[0.0, 0.0], [np.cos(ang), np.sin(ang)]])
    return _draw_polylines([line], _rod_width(size, rng), size)


def _curved_line(ang0: float, rng: np.random.Generator, n: int = 16) -> np.ndarray:
    """Unit-length curve whose direction turns by a total of 0.8..2.4 rad (C- or S-shaped)."""
    s = np.linspace(0, 1, n)
    turn = rng.uniform(0.8, 2.4) * rng.choice([-1, 1])
    bend = rng.uniform(-1.0, 1.0) * turn if rng.random() < 0.3 else 0.0  # occasional S shape
    ang = ang0 + turn * s + bend * (s - 0.5) ** 2 * 4
    step = np.stack([np.cos(ang), np.sin(ang)], 1) / (n - 1)
    return np.concatenate([[[0.0, 0.0]], np.cumsum(step[:-1], 0)])


def _shape_curved(size: float, rng: np.random.Generator) -> np.ndarray:
    return _draw_polylines([_curved_line(rng.uniform(0, 2 * np.pi), rng)],
                           _rod_width(size, rng), size)


def _shape_branched(size: float, rng: np.random.Generator) -> np.ndarray:
    """A main rod with one or two side branches (Y/T/X-like), each branch 30-60% of its length."""
    ang = rng.uniform(0, 2 * np.pi)
    main = np.array([[0.0, 0.0], [np.cos(ang), np.sin(ang)]])
    lines = [main]
    for _ in range(int(rng.integers(1, 3))):
        at = main[0] + (main[1] - main[0]) * rng.uniform(0.25, 0.75)
        b_ang = ang + rng.choice([-1, 1]) * rng.uniform(np.pi / 6, np.pi / 2)
        length = rng.uniform(0.3, 0.6)
        lines.append(np.array([at, at + length * np.array([np.cos(b_ang), np.sin(b_ang)])]))
    width = int(max(3, round(size / rng.uniform(4.0, 7.0))))
    return _draw_polylines(lines, width, size)


_SHAPE_FUNCS = {"round": _shape_round, "rod": _shape_rod, "curved": _shape_curved,
                "branched": _shape_branched}


# ----------------------------------------------------------------------------------------------
# instance layout
# ----------------------------------------------------------------------------------------------

def _expected_area(size_range, shapes) -> float:
    """Rough mean cell area for log-uniform sizes: E[s^2] times a shape fill factor."""
    a, b = float(size_range[0]), float(size_range[1])
    es2 = a * a if b <= a else (b * b - a * a) / (2.0 * math.log(b / a))
    fill = {"round": 0.6, "rod": 0.25, "curved": 0.22, "branched": 0.25}
    return es2 * float(np.mean([fill[s] for s in shapes]))


def _paste_window(shape_hw, mask_hw, cy, cx):
    """Image and mask slices for a mask centred at (cy, cx), clipped to the image."""
    H, W = shape_hw
    mh, mw = mask_hw
    y0, x0 = cy - mh // 2, cx - mw // 2
    iy0, ix0, iy1, ix1 = max(y0, 0), max(x0, 0), min(y0 + mh, H), min(x0 + mw, W)
    if iy0 >= iy1 or ix0 >= ix1:
        return None
    return ((slice(iy0, iy1), slice(ix0, ix1)),
            (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0)))


def make_label(size=(256, 256), n_cells=None, seed=None, *, shapes=SHAPES,
               size_range=(10, 60), touching: bool = True) -> np.ndarray:
    """An instance label map ``int32 (H, W)`` (ids 1..n) of synthetic cells; see module doc."""
    rng = _rng(seed)
    H, W = int(size[0]), int(size[1])
    shapes = tuple(shapes)
    unknown = set(shapes) - set(SHAPES)
    if not shapes or unknown:
        raise ValueError(f"shapes must be a non-empty subset of {SHAPES}, got {shapes}")
    lo, hi = float(size_range[0]), float(size_range[1])
    if not 3 <= lo <= hi:
        raise ValueError(f"size_range must be (min, max) with 3 <= min <= max, got {size_range}")
    if n_cells is None:
        n_cells = max(1, int(round(DEFAULT_COVERAGE * H * W / _expected_area((lo, hi), shapes))))

    label = np.zeros((H, W), np.int32)
    depth = np.zeros((H, W), np.float32)  # own-outline distance of the cell owning each pixel
    centres: list[tuple[int, int, float]] = []
    drawn_area: list[int] = [0]
    for _ in range(int(n_cells)):
        cell_size = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
        mask = _SHAPE_FUNCS[shapes[int(rng.integers(len(shapes)))]](cell_size, rng)
        local_depth = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        gap = None if touching else cv2.dilate(np.pad(mask, 1), np.ones((3, 3), np.uint8))
        want_touch = touching and centres and rng.random() < TOUCH_FRACTION
        for _try in range(PLACEMENT_TRIES):
            if want_touch:  # next to an existing cell, overlapping it a little
                py, px, psize = centres[int(rng.integers(len(centres)))]
                dist = (psize + max(mask.shape)) / 2.0 * rng.uniform(0.4, 0.8)
                a = rng.uniform(0, 2 * np.pi)
                cy, cx = int(round(py + dist * np.sin(a))), int(round(px + dist * np.cos(a)))
            else:
                cy, cx = int(rng.integers(H)), int(rng.integers(W))
            if gap is not None:  # touching=False: no cell within one pixel
                win = _paste_window((H, W), gap.shape, cy, cx)
                if win is None or (label[win[0]][gap[win[1]] > 0] > 0).any():
                    continue
            win = _paste_window((H, W), mask.shape, cy, cx)
            if win is None:
                continue
            m = mask[win[1]] > 0
            if m.sum() < MIN_CELL_PIXELS:
                continue
            if (label[win[0]][m] > 0).mean() > MAX_OVERLAP:
                continue
            take = m & (local_depth[win[1]] > depth[win[0]])
            new_id = len(drawn_area)
            label[win[0]][take] = new_id
            depth[win[0]][take] = local_depth[win[1]][take]
            drawn_area.append(int(m.sum()))
            centres.append((cy, cx, float(max(mask.shape))))
            break
    return _clean_label(label, np.asarray(drawn_area))


def _clean_label(label: np.ndarray, drawn_area: np.ndarray) -> np.ndarray:
    """Keep each cell's largest connected piece, drop cells mostly swallowed, relabel 1..n."""
    from scipy import ndimage

    out = np.zeros_like(label)
    next_id = 1
    for idx, sl in enumerate(ndimage.find_objects(label), start=1):
        if sl is None:
            continue
        own = (label[sl] == idx).astype(np.uint8)
        n, comp, stats, _ = cv2.connectedComponentsWithStats(own, connectivity=4)
        if n > 2:
            own = (comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
        area = int(own.sum())
        if area < MIN_CELL_PIXELS or area < MIN_KEPT_FRACTION * drawn_area[idx]:
            continue
        out[sl][own > 0] = next_id
        next_id += 1
    return out


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------

def _smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise (texture, stroma, illumination)."""
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return field / max(float(field.std()), 1e-6)


def _illumination(rng, shape, amplitude: float) -> np.ndarray:
    """Smooth multiplicative illumination field 1 +- amplitude (a 3x3 random grid, upsampled)."""
    grid = rng.uniform(-1, 1, (3, 3)).astype(np.float32)
    return 1.0 + amplitude * cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _interior(label: np.ndarray, soft: float) -> np.ndarray:
    """Per-cell interior profile 0..1 (0 at each cell's outline, shared boundaries included)."""
    inner = label > 0
    boundary = np.zeros_like(inner)
    boundary[1:] |= label[1:] != label[:-1]
    boundary[:-1] |= label[:-1] != label[1:]
    boundary[:, 1:] |= label[:, 1:] != label[:, :-1]
    boundary[:, :-1] |= label[:, :-1] != label[:, 1:]
    dist = cv2.distanceTransform((inner & ~boundary).astype(np.uint8), cv2.DIST_L2, 3)
    return (1.0 - np.exp(-dist / soft)).astype(np.float32)


def _per_cell(label: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Image of per-cell values (values[0] is the background's)."""
    return values.astype(np.float32)[label]


def _to_dtype(img: np.ndarray, dtype, full_scale: float | None = None) -> np.ndarray:
    """Float image in 0..1 -> stored dtype (uint8 0..255, uint16 0..full_scale)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        scale = 255.0
    elif dtype == np.uint16:
        scale = float(full_scale or 65535.0)
    else:
        raise ValueError(f"dtype must be uint8 or uint16, got {dtype}")
    return np.clip(img * scale + 0.5, 0, np.iinfo(dtype).max).astype(dtype)


def _render_fl(label, rng, channels: int, dtype) -> np.ndarray:
    H, W = label.shape
    n = int(label.max())
    prof = _interior(label, rng.uniform(1.0, 2.5))
    tex = 1.0 + 0.3 * _smooth_noise(rng, (H, W), rng.uniform(1.0, 2.0))
    illum = _illumination(rng, (H, W), 0.15)

    def channel(amp_lo, amp_hi, bg):
        amp = np.concatenate([[0.0], rng.uniform(amp_lo, amp_hi, n)])
        sig = _per_cell(label, amp) * prof * np.clip(tex, 0.2, None)
        img = (bg + sig) * illum
        img = cv2.GaussianBlur(img, (0, 0), 0.8)  # optics
        img += rng.normal(0, 0.006, img.shape).astype(np.float32) + \
            np.sqrt(np.clip(img, 0, None)) * rng.normal(0, 0.02, img.shape).astype(np.float32)
        return np.clip(img, 0, 1)

    bg = rng.uniform(0.02, 0.06)
    full = 65535.0 * rng.uniform(0.08, 0.5) if np.dtype(dtype) == np.uint16 else None
    if channels == 1:
        return _to_dtype(channel(0.3, 0.9, bg), dtype, full)
    if channels != 3:
        raise ValueError(f"fluorescence channels must be 1 or 3, got {channels}")
    blue = channel(0.3, 0.9, bg)   # nuclear stain
    green = channel(0.0, 0.7, bg * 0.8)  # a second marker, dim or absent in some cells
    red = np.clip(rng.normal(0.003, 0.002, (H, W)), 0, 1).astype(np.float32)  # almost empty
    return _to_dtype(np.stack([red, green, blue], -1), dtype, full)


# Ruifrok & Johnston optical densities (R, G, B) of haematoxylin and eosin: the textbook values.
_OD_HEMATOXYLIN = np.array([0.650, 0.704, 0.286], np.float32)
_OD_EOSIN = np.array([0.072, 0.990, 0.105], np.float32)


def _render_bf(label, rng) -> np.ndarray:
    H, W = label.shape
    n = int(label.max())
    prof = _interior(label, rng.uniform(1.0, 2.0))
    tex = np.clip(1.0 + 0.35 * _smooth_noise(rng, (H, W), rng.uniform(0.8, 1.5)), 0.2, None)
    hema = _per_cell(label, np.concatenate([[0.0], rng.uniform(0.8, 1.8, n)])) * prof * tex
    stroma = _smooth_noise(rng, (H, W), max(H, W) / 16.0)
    eosin = rng.uniform(0.15, 0.45) * np.clip(stroma + rng.uniform(-0.3, 0.6), 0, 1.5)
    eosin += 0.15 * (label > 0)  # cytoplasm around the nuclear stain
    od = hema[..., None] * _OD_HEMATOXYLIN + eosin[..., None] * _OD_EOSIN
    light = rng.uniform(0.9, 0.97) * np.array([1.0, rng.uniform(0.96, 1.0), 1.0], np.float32)
    img = light * _illumination(rng, (H, W), 0.04)[..., None] * np.exp(-od)
    img = cv2.GaussianBlur(img, (0, 0), 0.7)
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return _to_dtype(np.clip(img, 0, 1), np.uint8)


def _render_gs(label, rng, dtype) -> np.ndarray:
    """Phase contrast: mid-grey background, phase-dark (some bright) cells, bright halos."""
    H, W = label.shape
    n = int(label.max())
    prof = _interior(label, rng.uniform(1.5, 3.0))
    tex = 1.0 + 0.3 * _smooth_noise(rng, (H, W), 1.5)
    sign = np.where(rng.random(n) < 0.2, 1.0, -1.0)
    amp = np.concatenate([[0.0], sign * rng.uniform(0.08, 0.3, n)])
    outside = cv2.distanceTransform((label == 0).astype(np.uint8), cv2.DIST_L2, 3)
    halo = rng.uniform(0.08, 0.2) * np.exp(-outside / rng.uniform(1.5, 3.0)) * (label == 0)
    bg = 0.49 if np.dtype(dtype) == np.uint16 else rng.uniform(0.4, 0.6)
    img = (bg + _per_cell(label, amp) * prof * tex + halo) * _illumination(rng, (H, W), 0.05)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.7)
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return _to_dtype(np.clip(img, 0, 1), dtype)


def _render_dic(label, rng, dtype) -> np.ndarray:
    """DIC: mid-grey background, each cell a relief lit from one side (directional derivative)."""
    H, W = label.shape
    n = int(label.max())
    height = _per_cell(label, np.concatenate([[0.0], rng.uniform(0.5, 1.0, n)]))
    height = cv2.GaussianBlur(height * _interior(label, 3.0), (0, 0), 1.5)
    ang = rng.uniform(0, 2 * np.pi)
    relief = np.cos(ang) * cv2.Sobel(height, cv2.CV_32F, 1, 0) + \
        np.sin(ang) * cv2.Sobel(height, cv2.CV_32F, 0, 1)
    relief /= max(float(np.abs(relief).max()), 1e-6)
    img = (0.5 + 0.3 * relief) * _illumination(rng, (H, W), 0.05)
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return _to_dtype(np.clip(img, 0, 1), dtype)


def make_sample(modality: str, size=(256, 256), n_cells=None, seed=None, *, shapes=SHAPES,
                size_range=(10, 60), touching: bool = True, channels: int = 1,
                dtype="uint8") -> tuple[np.ndarray, np.ndarray]:
    """One synthetic ``(image, label)`` pair; see the module docstring for the modalities.

    Args:
        modality: "fl", "bf", "gs" (phase contrast) or "dic".
        size: (H, W) of the image.
        n_cells: cells to place (fewer survive when the image is too crowded); None = enough to
            cover about DEFAULT_COVERAGE of the image.
        seed: int, None or a ``np.random.Generator``; the same int gives the same pair.
        shapes: subset of SHAPES, chosen uniformly per cell.
        size_range: (min, max) largest extent of a cell in pixels (before touching cells clip each
            other); e.g. (10, 60); up to a few hundred.
        touching: place about half of the cells against a neighbour (shared boundaries); False
            keeps a background gap between all cells.
        channels: fluorescence only: 1 (image 2D) or 3 (RGB, signal in green/blue, red ~empty).
        dtype: "uint8" or "uint16" for fl, gs and dic; bf is always uint8 RGB.

    Returns:
        image: ``(H, W)`` (single channel) or ``(H, W, 3)`` RGB, in ``dtype``.
        label: ``int32 (H, W)``, 0 background, ids 1..n.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    rng = _rng(seed)
    label = make_label(size, n_cells, rng, shapes=shapes, size_range=size_range,
                       touching=touching)
    if modality == "fl":
        image = _render_fl(label, rng, int(channels), dtype)
    elif modality == "bf":
        image = _render_bf(label, rng)
    elif modality == "gs":
        image = _render_gs(label, rng, dtype)
    else:
        image = _render_dic(label, rng, dtype)
    return image, label


def write_dataset(root, n_images: int, modalities=("fl", "bf", "gs"), size=(256, 256),
                  seed: int = 0, **sample_kwargs) -> Path:
    """Write ``n_images`` synthetic pairs in the NeurIPS 2022 layout and return ``root``.

    ``root/images/synth_NNNN.png`` (fl: 1- or 3-channel uint8, bf: RGB uint8) or ``.tif``
    (gs/dic: uint16), ``root/labels/synth_NNNN_label.tiff`` and ``root/meta.csv`` with columns
    name, modality (the bf/fl/gs class; dic is gs), height, width, cells. Modalities cycle in the
    given order; image i is generated from its own child seed of ``seed``, so it does not depend on
    ``n_images``. ``sample_kwargs`` go to :func:`make_sample` (shapes, size_range, touching...).
    """
    root = Path(root)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {modalities}")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(int(n_images))):
        rng = np.random.default_rng(child)
        modality = modalities[i % len(modalities)]
        kwargs = dict(sample_kwargs)
        if modality == "fl":
            kwargs.setdefault("channels", int(rng.choice([1, 3])))
            kwargs["dtype"] = "uint8"
            ext = ".png"
        elif modality == "bf":
            ext = ".png"
        else:
            kwargs["dtype"] = "uint16"
            ext = ".tif"
        image, label = make_sample(modality, size, seed=rng, **kwargs)
        name = f"synth_{i:04d}"
        write_image(root / "images" / (name + ext), image)
        write_label(root / "labels" / f"{name}_label.tiff", label)
        rows.append((name, MODALITY_CLASS[modality], label.shape[0], label.shape[1],
                     int(len(np.unique(label)) - 1)))
    with open(root / "meta.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("name", "modality", "height", "width", "cells"))
        writer.writerows(rows)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m utils.synthetic",
        description="Write a synthetic dataset (NeurIPS 2022 layout) for tests and the quickstart.")
    parser.add_argument("--out", required=True, help="output folder (images/, labels/, meta.csv)")
    parser.add_argument("-n", "--n-images", type=int, default=12)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--modalities", nargs="+", default=["fl", "bf", "gs"], choices=MODALITIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size-range", type=float, nargs=2, default=(10, 60),
                        metavar=("MIN", "MAX"), help="largest extent of a cell, pixels")
    args = parser.parse_args(argv)
    root = write_dataset(args.out, args.n_images, tuple(args.modalities), tuple(args.size),
                         args.seed, size_range=tuple(args.size_range))
    print(f"wrote {args.n_images} synthetic images to {root}")


if __name__ == "__main__":
    main()
