"""Training augmentation that transforms the image and its instance label map together.

Everything happens at the image's native scale (the network segments at native scale): a mosaic of
4 images or one image is cut to an ``S x S`` window by ONE ``cv2.warpAffine`` (random scale, shift,
rotation, shear; image bilinear, label nearest), then flipped / rotated by 90 degrees, jittered
in intensity as suits its modality and given the appearance changes of ``utils.appearance``.
Boxes are never transformed: callers recompute them from the returned label map
(``utils.boxes.label_to_boxes``), so boxes, label and dense targets always agree.

Arrays: image ``(H, W, 3) uint8`` RGB, label ``(H, W) int32`` (0 = background), ignore
``(H, W) bool`` (True = excluded from the loss) or None. All randomness comes from the
``np.random.Generator`` passed in.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from utils.appearance import jitter_appearance
from utils.config import Hyp
from utils.labels import remove_small

LOGGER = logging.getLogger(__name__)

# An instance that a transform shrinks (crop, down-scaling) below this many pixels is removed
# from the label map: such slivers carry no shape and would give degenerate boxes.
MIN_INSTANCE_AREA = 4
# Background colour = per-channel median over a strided subsample of this step (pixels).
BACKGROUND_SAMPLE_STEP = 4
# Number of images in a mosaic (2 x 2).
MOSAIC_TILES = 4
# Below this, an affine coefficient counts as zero (the warp is then an exact integer crop/pad).
IDENTITY_TOL = 1e-9
# Source pixels kept around the pre-image of the output window (bilinear needs 1 neighbour).
CROP_MARGIN = 2
# Smallest random scale factor, whatever hyp.scale says (a scale of 0 would be degenerate).
MIN_SCALE = 0.1
# Hue range of OpenCV's 8-bit HSV (0..179).
HSV_HUE_RANGE = 180


@dataclass
class Tile:
    """One training sample's arrays (any size) and its modality ("bf", "fl", "gs")."""

    img: np.ndarray             # (H, W, 3) uint8 RGB
    label: np.ndarray           # (H, W) int32 instance ids
    ignore: np.ndarray | None   # (H, W) bool, True = not in the loss; None = nothing ignored
    modality: str = "fl"

    @property
    def shape(self) -> tuple[int, int]:
        return self.img.shape[:2]


def _median_u8(values: np.ndarray) -> int:
    """Median of uint8 values by a 256-bin histogram (linear time, unlike a sort)."""
    counts = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return int(np.searchsorted(counts, (counts[-1] + 1) // 2))


def background_colour(img: np.ndarray) -> tuple[int, int, int]:
    """Per-channel median of ``img (H, W, 3) uint8`` (microscopy backgrounds: black or white)."""
    sub = img[::BACKGROUND_SAMPLE_STEP, ::BACKGROUND_SAMPLE_STEP]
    return tuple(_median_u8(sub[..., c]) for c in range(img.shape[2]))


def _overlap(dst_shape, src_shape, x0: int, y0: int):
    """``(dst slices, src slices)`` of a ``src`` placed with its top-left at (x0, y0) of ``dst``,
    cut to ``dst``; None when they do not overlap."""
    h, w = src_shape[:2]
    dx0, dy0 = max(x0, 0), max(y0, 0)
    dx1, dy1 = min(x0 + w, dst_shape[1]), min(y0 + h, dst_shape[0])
    if dx1 <= dx0 or dy1 <= dy0:
        return None
    return ((slice(dy0, dy1), slice(dx0, dx1)),
            (slice(dy0 - y0, dy1 - y0), slice(dx0 - x0, dx1 - x0)))


def paste(dst: np.ndarray, src: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Copy ``src`` into ``dst`` with its top-left corner at pixel (x0, y0); parts outside are cut."""
    region = _overlap(dst.shape, src.shape, x0, y0)
    if region is not None:
        dst[region[0]] = src[region[1]]
    return dst


def crop_or_pad(tile: Tile, size: int, x0: int = 0, y0: int = 0, bg=None) -> Tile:
    """The ``size x size`` window of ``tile`` whose top-left is source pixel (x0, y0), exactly.

    Outside the source the image is ``bg`` (default: its background colour), the label 0 and
    the ignore mask False (letterbox padding is ordinary background).
    """
    bg = background_colour(tile.img) if bg is None else bg
    img = np.empty((size, size, 3), np.uint8)
    img[:] = np.asarray(bg, np.uint8)
    paste(img, tile.img, -x0, -y0)
    label = paste(np.zeros((size, size), np.int32), tile.label, -x0, -y0)
    ignore = None
    if tile.ignore is not None:
        ignore = paste(np.zeros((size, size), bool), tile.ignore, -x0, -y0)
    return Tile(img, label, ignore, tile.modality)


def cut_ids(label: np.ndarray, region: tuple[slice, slice]) -> np.ndarray:
    """Ids of ``label[region]`` touching a side of the region that cuts through ``label``."""
    ys, xs = region
    part = label[ys, xs]
    if part.size == 0:
        return np.zeros(0, np.int32)
    sides = ((part[:, 0], xs.start > 0), (part[:, -1], xs.stop < label.shape[1]),
             (part[0], ys.start > 0), (part[-1], ys.stop < label.shape[0]))
    lines = [line for line, is_cut in sides if is_cut]
    return np.unique(np.concatenate(lines)) if lines else np.zeros(0, np.int32)


def load_mosaic(tiles: list[Tile], size: int, rng: np.random.Generator):
    """Place 4 tiles at native scale around a random centre of a ``2S x 2S`` canvas.

    Each tile contributes a random window of at most ``S x S`` (so every part of a large image
    can appear), touching the centre with its inner corner (top-left, top-right, bottom-left,
    bottom-right quadrants) and cut by the canvas. Label ids of tile k are shifted by the largest
    id of the previous tiles, so ids stay unique. Returns ``(canvas Tile (2S, 2S), background
    colour (3 ints), ids cut by a window or the canvas (k,) int)``.
    """
    if len(tiles) != MOSAIC_TILES:
        raise ValueError(f"a mosaic needs {MOSAIC_TILES} tiles, got {len(tiles)}")
    s2 = 2 * size
    bg = tuple(int(v) for v in np.median([background_colour(t.img) for t in tiles], axis=0))
    xc, yc = (int(v) for v in rng.integers(size // 2, size + size // 2 + 1, size=2))
    img = np.empty((s2, s2, 3), np.uint8)
    img[:] = np.asarray(bg, np.uint8)
    label = np.zeros((s2, s2), np.int32)
    ignore = np.zeros((s2, s2), bool) if any(t.ignore is not None for t in tiles) else None
    offset, cut = 0, []
    for k, t in enumerate(tiles):
        wx, wy = (max(v, 0) for v in random_window_origin(t.shape, size, rng))
        h, w = min(t.shape[0], size), min(t.shape[1], size)
        x0 = xc - w if k in (0, 2) else xc   # left column ends at the centre
        y0 = yc - h if k in (0, 1) else yc   # top row ends at the centre
        region = _overlap(img.shape, (h, w), x0, y0)
        if region is not None:
            dst, (ys, xs) = region
            src = (slice(ys.start + wy, ys.stop + wy), slice(xs.start + wx, xs.stop + wx))
            img[dst] = t.img[src]
            part = t.label[src]
            label[dst] = np.where(part > 0, part + offset, 0)
            if t.ignore is not None:
                ignore[dst] = t.ignore[src]
            ids = cut_ids(t.label, src)
            cut.append(ids[ids > 0] + offset)
        offset += int(t.label.max(initial=0))
    cut = np.concatenate(cut) if cut else np.zeros(0, np.int32)
    return Tile(img, label, ignore, tiles[0].modality), bg, cut


# ----------------------------------------------------------------------------- geometry
def random_window_origin(shape: tuple[int, int], size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left ``(x0, y0)`` of a random ``size x size`` window on an ``(H, W)`` image, pixels.

    Larger than ``size``: a random crop. Smaller: negative offsets placing the whole image at a
    random position of the window (letterbox padding at native scale).
    """
    origin = []
    for n in (shape[1], shape[0]):
        lo, hi = (0, n - size) if n >= size else (n - size, 0)
        origin.append(int(rng.integers(lo, hi + 1)))
    return origin[0], origin[1]


def translation(x0: float, y0: float) -> np.ndarray:
    """``(2, 3)`` affine matrix mapping source pixel (x0, y0) to output pixel (0, 0)."""
    return np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])


def random_affine_matrix(centre, size: int, hyp: Hyp, rng: np.random.Generator) -> np.ndarray:
    """Random ``(2, 3)`` source -> output pixel map (cv2.warpAffine convention).

    The source point ``centre`` (x, y) lands on the output centre shifted by
    ``U(-translate, translate) * size`` (whole pixels), after scaling by ``U(1 - scale, 1 + scale)``,
    rotating by ``U(-degrees, degrees)`` and shearing by ``U(-shear, shear)`` degrees about it.
    """
    angle = np.deg2rad(rng.uniform(-hyp.degrees, hyp.degrees))
    scale = rng.uniform(max(1.0 - hyp.scale, MIN_SCALE), 1.0 + hyp.scale)
    shear = np.tan(np.deg2rad(rng.uniform(-hyp.shear, hyp.shear, size=2)))
    shift = np.round(rng.uniform(-hyp.translate, hyp.translate, size=2) * size)
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    linear = np.array([[1.0, shear[0]], [shear[1], 1.0]]) @ np.array([[cos, -sin], [sin, cos]])
    if np.abs(linear - np.eye(2)).max() < IDENTITY_TOL:
        linear = np.eye(2)
    offset = size / 2.0 + shift - linear @ np.asarray(centre, np.float64)
    return np.hstack([linear, offset[:, None]])


def _is_integer_shift(M: np.ndarray) -> bool:
    return (np.abs(M[:, :2] - np.eye(2)).max() < IDENTITY_TOL
            and np.abs(M[:, 2] - np.round(M[:, 2])).max() < IDENTITY_TOL)


def _preimage_crop(tile: Tile, M: np.ndarray, size: int, extra_cut: np.ndarray | None):
    """Cut ``tile`` to the source region the output window sees (views, no copy).

    Returns ``(sub-tile, M for the sub-tile, areas_before)``: ``areas_before[id]`` is the pixel
    count of each id in the sub-tile, or int64 max for ids cut by the crop or listed in
    ``extra_cut`` (already cut: they may vanish).
    """
    h, w = tile.shape
    inv = cv2.invertAffineTransform(M)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    src = corners @ inv[:, :2].T + inv[:, 2]
    x0 = int(np.clip(np.floor(src[:, 0].min()) - CROP_MARGIN, 0, w))
    x1 = int(np.clip(np.ceil(src[:, 0].max()) + CROP_MARGIN + 1, 0, w))
    y0 = int(np.clip(np.floor(src[:, 1].min()) - CROP_MARGIN, 0, h))
    y1 = int(np.clip(np.ceil(src[:, 1].max()) + CROP_MARGIN + 1, 0, h))
    x1, y1 = max(x1, x0), max(y1, y0)
    ign = None if tile.ignore is None else tile.ignore[y0:y1, x0:x1]
    sub = Tile(tile.img[y0:y1, x0:x1], tile.label[y0:y1, x0:x1], ign, tile.modality)
    M = M.copy()
    M[:, 2] += M[:, :2] @ np.array([x0, y0], np.float64)
    before = np.bincount(sub.label.ravel()).astype(np.int64)
    cut = cut_ids(tile.label, (slice(y0, y1), slice(x0, x1)))
    if extra_cut is not None:
        cut = np.concatenate([cut, extra_cut])
    before[cut[cut < len(before)]] = np.iinfo(np.int64).max
    return sub, M, before


def _warp(tile: Tile, M: np.ndarray, size: int, bg) -> Tile:
    """Apply ``M`` (source -> output pixels) to image (bilinear), label and ignore (nearest)."""
    if _is_integer_shift(M) or tile.img.size == 0:
        return crop_or_pad(tile, size, int(round(-M[0, 2])), int(round(-M[1, 2])), bg)
    dsize = (size, size)
    img = cv2.warpAffine(tile.img, M, dsize, flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(int(v) for v in bg))
    label = cv2.warpAffine(tile.label, M, dsize, flags=cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ignore = None
    if tile.ignore is not None:
        ignore = cv2.warpAffine(tile.ignore.view(np.uint8), M, dsize, flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    return Tile(img, label, ignore, tile.modality)


def window_transform(tile: Tile, M: np.ndarray, size: int, bg=None, cut=None) -> Tile:
    """The ``size x size`` output of the affine map ``M`` (source -> output pixels), cleaned.

    Image outside the source = ``bg`` (default: the background colour of the region seen), label
    0, ignore False. Instances shrunk below MIN_INSTANCE_AREA are removed (``cut``: ids already
    cut before, e.g. by a mosaic) and ids made consecutive.
    """
    sub, M, before = _preimage_crop(tile, M, size, cut)
    if bg is None:
        bg = background_colour(sub.img if sub.img.size else tile.img)
    out = _warp(sub, M, size, bg)
    out.label = remove_small(out.label, MIN_INSTANCE_AREA, before)
    return out


def random_flip_rot90(tile: Tile, hyp: Hyp, rng: np.random.Generator) -> Tile:
    """Left-right / up-down flips and a random 90-degree rotation of a SQUARE tile, with the
    probabilities hyp.fliplr, hyp.flipud and hyp.rot90."""
    def apply(fn):
        tile.img, tile.label = fn(tile.img), fn(tile.label)
        tile.ignore = None if tile.ignore is None else fn(tile.ignore)

    if rng.random() < hyp.fliplr:
        apply(lambda a: a[:, ::-1])
    if rng.random() < hyp.flipud:
        apply(lambda a: a[::-1])
    if rng.random() < hyp.rot90:
        k = int(rng.integers(1, 4))
        apply(lambda a: np.rot90(a, k, axes=(0, 1)))
    apply(np.ascontiguousarray)
    return tile


# ----------------------------------------------------------------------------- intensity
def jitter_hsv(img: np.ndarray, hue: float, sat: float, val: float,
               rng: np.random.Generator) -> np.ndarray:
    """Colour (brightfield) jitter of ``(H, W, 3) uint8 RGB`` through three HSV look-up tables.

    Hue is shifted by ``U(-hue, hue)`` of the full circle; saturation and value are scaled by
    ``1 + U(-sat, sat)`` and ``1 + U(-val, val)``.
    """
    dh = int(round(rng.uniform(-hue, hue) * HSV_HUE_RANGE))
    gs, gv = 1.0 + rng.uniform(-1.0, 1.0, size=2) * np.array([sat, val])
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x + dh) % HSV_HUE_RANGE).astype(np.uint8)
    lut_s = np.clip(np.round(x * gs), 0, 255).astype(np.uint8)
    lut_v = np.clip(np.round(x * gv), 0, 255).astype(np.uint8)
    h, s, v = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
    hsv = cv2.merge((cv2.LUT(h, lut_h), cv2.LUT(s, lut_s), cv2.LUT(v, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def jitter_grey(img: np.ndarray, brightness: float, contrast: float,
                rng: np.random.Generator) -> np.ndarray:
    """Brightness / contrast / gamma jitter of ``(H, W, 3) uint8`` with ONE look-up table for all
    channels: no hue change, and a grey image (equal channels) stays grey.

    With x in [0, 1]: ``y = x ** g``, then contrast ``c`` about the background level ``b ** g``
    (b = median intensity, so a black or white background stays put), then brightness gain ``k``;
    ``g = exp(U(-contrast, contrast))``, ``c = 1 + U(-contrast, contrast)``,
    ``k = 1 + U(-brightness, brightness)``.
    """
    gamma = float(np.exp(rng.uniform(-contrast, contrast)))
    gain_c = 1.0 + rng.uniform(-contrast, contrast)
    gain_b = 1.0 + rng.uniform(-brightness, brightness)
    level = _median_u8(img[::BACKGROUND_SAMPLE_STEP, ::BACKGROUND_SAMPLE_STEP]) / 255.0
    x = np.arange(256, dtype=np.float64) / 255.0
    y0 = level ** gamma
    y = (y0 + (x ** gamma - y0) * gain_c) * gain_b
    lut = np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)
    return cv2.LUT(img, lut)


def jitter_intensity(img: np.ndarray, modality: str, hyp: Hyp, rng: np.random.Generator) -> np.ndarray:
    """Intensity jitter suited to the modality: HSV for "bf", grey jitter for "fl" and "gs"."""
    if modality == "bf":
        return jitter_hsv(img, hyp.hsv_h, hyp.hsv_s, hyp.hsv_v, rng)
    return jitter_grey(img, hyp.hsv_v, hyp.contrast, rng)


# ----------------------------------------------------------------------------- pipelines
def augment_tiles(tiles: list[Tile], size: int, hyp: Hyp, rng: np.random.Generator) -> Tile:
    """Training transform -> ``size x size`` tile, native scale (times the random affine scale).

    ``tiles``: 4 (a mosaic, tiles[0]'s modality drives the intensity jitter) or 1 (a random
    crop / letterbox window). Label ids of the result are 1..n, tiny fragments removed.
    """
    if len(tiles) == MOSAIC_TILES:
        src, bg, cut = load_mosaic(tiles, size, rng)
        centre = (size, size)
    elif len(tiles) == 1:
        src, bg, cut = tiles[0], None, None
        x0, y0 = random_window_origin(src.shape, size, rng)
        centre = (x0 + size / 2.0, y0 + size / 2.0)
    else:
        raise ValueError(f"augment_tiles takes 1 or {MOSAIC_TILES} tiles, got {len(tiles)}")
    M = random_affine_matrix(centre, size, hyp, rng)
    out = window_transform(src, M, size, bg, cut)
    out = random_flip_rot90(out, hyp, rng)
    out.img = jitter_intensity(out.img, out.modality, hyp, rng)
    out.img = jitter_appearance(out.img, out.modality, hyp, rng)
    return out


def eval_transform(tile: Tile, size: int) -> Tile:
    """Deterministic ``size x size`` window: top-left crop / bottom-right padding at native scale."""
    return window_transform(tile, translation(0, 0), size)
