"""Sliding windows, Gaussian blending and seam-free chunked segmentation."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label as connected_components

from utils.tiling import (WindowAccumulator, chunk_grid, gaussian_weight,
                          segment_chunked, segment_chunked_parts, window_grid)


@pytest.mark.parametrize("shape", [(640, 640), (1000, 1500), (300, 200), (641, 1281), (5, 2000)])
def test_window_grid_covers_every_pixel(shape):
    windows = window_grid(*shape, window=640, overlap=0.125)
    cover = np.zeros(shape, np.int32)
    for y0, x0, y1, x1 in windows:
        assert 0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]
        assert y1 - y0 == min(640, shape[0]) and x1 - x0 == min(640, shape[1])
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    assert max(w[2] for w in windows) == shape[0] and max(w[3] for w in windows) == shape[1]
    if shape[0] <= 640 and shape[1] <= 640:
        assert windows == [(0, 0, shape[0], shape[1])]


def test_gaussian_weight_positive_symmetric():
    w = gaussian_weight(64)
    assert w.shape == (64, 64) and w.dtype == np.float32
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(w, w[::-1])
    np.testing.assert_array_equal(w, w[:, ::-1])
    np.testing.assert_array_equal(w, w.T)
    assert w[32, 32] > w[32, 10] > w[32, 0]
    assert gaussian_weight((30, 50)).shape == (30, 50)


@pytest.mark.parametrize("shape", [(2, 300, 450), (1, 100, 90)])
def test_accumulator_reproduces_constant_and_linear_maps(shape):
    _, h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    target = np.stack([0.5 * yy - 0.25 * xx + 3.0, np.full((h, w), 7.0, np.float32)])[:shape[0]]
    windows = window_grid(h, w, window=128, overlap=0.25)
    acc = WindowAccumulator(shape)
    for y0, x0, y1, x1 in windows:
        acc.add(target[:, y0:y1, x0:x1], y0, x0)
    np.testing.assert_allclose(acc.result(), target, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError):
        acc.add(target[:, :10, :10], h - 5, 0)  # does not fit
    custom = WindowAccumulator(shape)  # an explicit weight (a cropped full-window Gaussian)
    full = gaussian_weight(256)
    for y0, x0, y1, x1 in windows:
        custom.add(target[:, y0:y1, x0:x1], y0, x0, full[: y1 - y0, : x1 - x0])
    np.testing.assert_allclose(custom.result(), target, rtol=1e-5, atol=1e-4)


def test_chunk_grid_cores_partition_the_image():
    cover = np.zeros((1200, 1000), np.int32)
    for (y0, x0, y1, x1), (ry0, rx0, ry1, rx1) in chunk_grid(1200, 1000, chunk=512, margin=96):
        assert y1 - y0 <= 512 and x1 - x0 <= 512
        assert (ry0, rx0) == (max(0, y0 - 96), max(0, x0 - 96))
        assert (ry1, rx1) == (min(1200, y1 + 96), min(1000, x1 + 96))
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()


def seam_lines(shape, chunk, margin) -> tuple[list[int], list[int]]:
    """(core seams, region borders) coordinates of the chunk grid (square images)."""
    seams = sorted({b for (y0, x0, _, _), _ in chunk_grid(*shape, chunk, margin) for b in (y0, x0) if b})
    return seams, sorted({s + d for s in seams for d in (-margin, margin)})


def seam_scene(shape=(1200, 1200), chunk=512, margin=96, seed=0) -> np.ndarray:
    """GT label: non-overlapping discs/ellipses (radius 10-40) centred on and near the chunk seams,
    their corners and the region borders (seam +- margin, where the segmenter sees cut cells)."""
    rng = np.random.default_rng(seed)
    seams = [c for lines in seam_lines(shape, chunk, margin) for c in lines]
    label = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    n = 0
    for _ in range(3000):
        on_seam = rng.integers(0, 3)  # 0: centre on a vertical seam, 1: horizontal, 2: a corner
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        if seams and on_seam in (0, 2):
            cx = rng.choice(seams) + rng.normal(0, 8)
        if seams and on_seam in (1, 2):
            cy = rng.choice(seams) + rng.normal(0, 8)
        ry, rx = rng.uniform(10, 40, 2)
        y0, y1 = int(max(0, cy - ry - 1)), int(min(shape[0], cy + ry + 2))
        x0, x1 = int(max(0, cx - rx - 1)), int(min(shape[1], cx + rx + 2))
        m = ((yy[y0:y1, x0:x1] - cy) / ry) ** 2 + ((xx[y0:y1, x0:x1] - cx) / rx) ** 2 <= 1
        if m.any() and not label[y0:y1, x0:x1][m].any():  # touching is fine, overlapping not
            n += 1
            label[y0:y1, x0:x1][m] = n
    return label


def fake_segmenter(gt: np.ndarray):
    """segment_fn returning the GT instances of the region it receives, as a model sees them:
    the crop relabelled into connected components, so cells cut by the region border are partial.
    The region's position is encoded in the image it gets (channel 0/1: y, x in 16-bit halves).
    """
    def segment(sub):
        y0 = int(sub[0, 0, 0]) * 256 + int(sub[0, 0, 1])
        x0 = int(sub[0, 0, 2]) * 256 + int(sub[0, 0, 3])
        crop = gt[y0:y0 + sub.shape[0], x0:x0 + sub.shape[1]]
        return connected_components(crop, background=0, connectivity=1).astype(np.int32)
    return segment


def coordinate_image(shape) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.stack([yy // 256, yy % 256, xx // 256, xx % 256], axis=-1).astype(np.uint8)


def test_seam_cells_are_whole_and_unique():
    shape, chunk, margin = (1200, 1200), 512, 96
    gt = seam_scene(shape, chunk, margin)
    seams, borders = seam_lines(shape, chunk, margin)
    boxes = [s for s in ndi.find_objects(gt)]
    crosses = [lambda s, lines=lines: any(s[ax].start < c < s[ax].stop for c in lines for ax in (0, 1))
               for lines in (seams, borders)]
    assert sum(map(crosses[0], boxes)) >= 40 and sum(map(crosses[1], boxes)) >= 40
    assert sum(all(any(s[ax].start < c < s[ax].stop for c in seams) for ax in (0, 1)) for s in boxes) >= 3
    pred = segment_chunked(coordinate_image(shape), fake_segmenter(gt), chunk=chunk, margin=margin)
    assert pred.dtype == np.uint32 and pred.shape == shape
    # with parts: the same label, and each region's part in the order segmented
    with_parts = fake_segmenter(gt)
    label, parts = segment_chunked_parts(coordinate_image(shape),
                                         lambda im: (with_parts(im), im.shape[:2]),
                                         chunk=chunk, margin=margin)
    assert np.array_equal(label, pred)
    assert parts == [(y1 - y0, x1 - x0) for _, (y0, x0, y1, x1) in chunk_grid(*shape, chunk, margin)]
    assert np.array_equal(pred > 0, gt > 0)  # nothing lost, nothing added
    # one-to-one: each GT cell is exactly one predicted instance and vice versa (IoU == 1)
    pairs = np.unique(np.stack([gt[gt > 0], pred[gt > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1])) == gt.max()
    # no fragments: every predicted instance is a single connected piece
    assert connected_components(pred, background=0, connectivity=1).max() == gt.max()


def test_small_image_goes_whole_and_label_checks():
    gt = seam_scene((300, 400), 512, 96)
    calls = []

    def segment(sub):
        calls.append(sub.shape)
        return gt.copy()
    out = segment_chunked(np.zeros((300, 400, 3), np.uint8), segment, chunk=512, margin=96)
    assert calls == [(300, 400, 3)] and out.dtype == np.uint32 and np.array_equal(out, gt)
    with pytest.raises(ValueError):
        segment_chunked(np.zeros((600, 100, 3), np.uint8), lambda s: np.zeros((2, 2), np.int32),
                        chunk=512, margin=96)
