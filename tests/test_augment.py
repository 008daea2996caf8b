"""Augmentation of image + instance label map together (utils.augment): fast, on made-up maps."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from utils.augment import (MIN_INSTANCE_AREA, Tile, augment_tiles, crop_or_pad, eval_transform,
                           jitter_grey, jitter_intensity, load_mosaic, random_window_origin,
                           window_transform, translation)
from utils.boxes import label_to_boxes
from utils.config import Hyp

S = 64  # output size of the tests (pixels)
NO_JITTER = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, contrast=0.0)
NO_GEOMETRY = dict(degrees=0.0, translate=0.0, scale=0.0, shear=0.0, mosaic=0.0)


def make_label(shape, n, seed, radius=(3, 7)) -> np.ndarray:
    """Non-overlapping discs (each at least ~28 px), ids 1..n, ``(H, W) int32``."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    k = 0
    for _ in range(n * 20):
        r = rng.integers(*radius)
        cy, cx = rng.integers(r, shape[0] - r), rng.integers(r, shape[1] - r)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if label[ndimage.binary_dilation(disc)].any():
            continue
        k += 1
        label[disc] = k
        if k == n:
            break
    return label


def palette(n, seed=0) -> np.ndarray:
    """``(n + 1, 3) uint8`` distinct colours, black background (index 0)."""
    rng = np.random.default_rng(seed)
    cols = rng.choice(200, size=(n + 1, 3), replace=True).astype(np.uint8) + 40
    cols[0] = 0
    return cols


def coded_tile(shape=(S, S), n=12, seed=0, modality="fl") -> tuple[Tile, np.ndarray]:
    label = make_label(shape, n, seed)
    pal = palette(int(label.max()), seed)
    return Tile(pal[label], label, None, modality), pal


def areas(label) -> np.ndarray:
    return np.sort(np.bincount(label.ravel())[1:])


def test_flips_rot90_keep_every_instance():
    hyp = Hyp(**NO_GEOMETRY, **NO_JITTER, fliplr=1.0, flipud=1.0, rot90=1.0)
    tile, _ = coded_tile()
    for seed in range(10):
        out = augment_tiles([tile], S, hyp, np.random.default_rng(seed))
        assert out.label.max() == tile.label.max()
        np.testing.assert_array_equal(areas(out.label), areas(tile.label))


def test_rotation_without_scale_keeps_inner_instances():
    hyp = Hyp(**NO_JITTER, degrees=45.0, translate=0.0, scale=0.0, shear=0.0, mosaic=0.0)
    tile, _ = coded_tile(n=15, seed=3)
    yy, xx = np.mgrid[:S, :S]
    inner = (yy - S / 2 + 0.5) ** 2 + (xx - S / 2 + 0.5) ** 2 < (S / 2 - 2) ** 2
    n_inner = sum(inner[tile.label == i].all() for i in range(1, tile.label.max() + 1))
    for seed in range(10):
        out = augment_tiles([tile], S, hyp, np.random.default_rng(seed))
        assert n_inner <= out.label.max() <= tile.label.max()


def test_image_and_label_stay_aligned():
    """Each instance has one colour: inside it (3x3 interior) the image shows that colour, up to
    a few bilinear-interpolation pixels at rotated / sheared borders."""
    hyp = Hyp(**NO_JITTER, degrees=30.0, shear=5.0, scale=0.5, translate=0.1, mosaic=0.5)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        tiles = [coded_tile((80, 90), 15, seed * 4 + k)[0] for k in range(4)]
        out = augment_tiles(tiles if rng.random() < 0.5 else tiles[:1], S, hyp, rng)
        inside = ndimage.grey_erosion(out.label, size=3) == ndimage.grey_dilation(out.label, size=3)
        matched = total = 0
        for i in range(1, out.label.max() + 1):
            pix = out.img[(out.label == i) & inside]
            if len(pix) == 0:
                continue
            colours, counts = np.unique(pix, axis=0, return_counts=True)
            if len(pix) >= 10:  # a few-pixel remnant may be all interpolation
                assert counts.max() >= 0.8 * len(pix), f"seed {seed}: instance {i} has mixed colours"
            assert (colours[counts.argmax()] > 0).all()  # a cell colour, not the background
            matched, total = matched + counts.max(), total + len(pix)
        assert matched >= 0.97 * total
        bg = out.img[(out.label == 0) & inside]
        assert (bg == 0).all(axis=1).mean() > 0.97


def test_mosaic_ids_unique_and_from_one_tile():
    rng = np.random.default_rng(0)
    tiles = []
    for k in range(4):
        label = make_label((50 + 10 * k, 70), 10, k)
        tiles.append(Tile(np.full(label.shape + (3,), 50 * (k + 1), np.uint8), label, None, "fl"))
    canvas, _, _ = load_mosaic(tiles, S, rng)
    assert canvas.img.shape == (2 * S, 2 * S, 3) and canvas.label.shape == (2 * S, 2 * S)
    for i in np.unique(canvas.label)[1:]:
        assert len(np.unique(canvas.img[canvas.label == i][:, 0])) == 1  # one tile per id
    offsets = np.cumsum([0] + [int(t.label.max()) for t in tiles])
    tile_of = np.searchsorted(offsets, np.unique(canvas.label)[1:], side="left") - 1
    assert set(tile_of) == {0, 1, 2, 3}


def test_mosaic_shows_every_part_of_large_images():
    """Tiles larger than S contribute a random window: a cell in the far corner of a big image
    (which a corner-anchored placement would never show) appears in some mosaics."""
    big = np.zeros((4 * S, 4 * S), np.int32)
    big[2:8, 2:8] = 1  # top-left corner; tile 0 is placed by its bottom-right corner
    tiles = [Tile(np.zeros(big.shape + (3,), np.uint8), big, None, "fl") for _ in range(4)]
    seen = [bool((load_mosaic(tiles, S, np.random.default_rng(seed))[0].label == 1).any())
            for seed in range(200)]
    assert any(seen) and not all(seen)


@pytest.mark.parametrize("modality", ["fl", "gs"])
def test_grey_images_stay_grey(modality):
    hyp = Hyp(hsv_v=0.6, contrast=0.4)
    label = make_label((S, S), 10, 1)
    grey = np.repeat((np.where(label > 0, 200, 30) + label).astype(np.uint8)[..., None], 3, axis=2)
    for seed in range(10):
        out = jitter_intensity(grey, modality, hyp, np.random.default_rng(seed))
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        full = augment_tiles([Tile(grey, label, None, modality)], S, hyp, np.random.default_rng(seed))
        assert (full.img[..., 0] == full.img[..., 2]).all()


def test_jitter_keeps_background_level():
    img = np.zeros((S, S, 3), np.uint8)
    img[10:20, 10:20] = 180  # dark-background fluorescence: background stays black
    out = jitter_grey(img, 0.4, 0.3, np.random.default_rng(0))
    assert out[0, 0].max() == 0 and out[15, 15].min() > 0


def test_bf_colour_jitter_runs():
    tile, _ = coded_tile(modality="bf")
    out = jitter_intensity(tile.img, "bf", Hyp(), np.random.default_rng(0))
    assert out.shape == tile.img.shape and out.dtype == np.uint8


def test_determinism_with_seed():
    hyp = Hyp(degrees=10.0, shear=2.0)
    tiles = [coded_tile((70, 90), 10, k)[0] for k in range(4)]
    a = augment_tiles(tiles, S, hyp, np.random.default_rng(7))
    b = augment_tiles(tiles, S, hyp, np.random.default_rng(7))
    np.testing.assert_array_equal(a.img, b.img)
    np.testing.assert_array_equal(a.label, b.label)


def test_output_invariants_over_many_seeds():
    """Ids 1..n, no shrunk fragment under MIN_INSTANCE_AREA, boxes of every id present."""
    hyp = Hyp(degrees=20.0, shear=3.0, scale=0.6)
    for seed in range(30):
        rng = np.random.default_rng(seed)
        tiles = [coded_tile((int(rng.integers(30, 120)), int(rng.integers(30, 120))), 10, seed + k)[0]
                 for k in range(4)]
        out = augment_tiles(tiles if seed % 2 else tiles[:1], S, hyp, rng)
        assert out.img.shape == (S, S, 3) and out.label.shape == (S, S) and out.label.dtype == np.int32
        counts = np.bincount(out.label.ravel())[1:]
        assert (counts > 0).all()  # consecutive
        assert (counts >= MIN_INSTANCE_AREA).all()  # source cells have >= 28 px: tiny = shrunk
        ids, boxes = label_to_boxes(out.label)
        assert len(ids) == len(counts)


def test_eval_transform_is_top_left_crop_or_pad():
    tile, _ = coded_tile((90, 40), 8, 2)
    tile.img[tile.label == 0] = (0, 0, 0)
    out = eval_transform(tile, S)
    np.testing.assert_array_equal(out.img[:S, :40], tile.img[:S])
    assert (out.img[:, 40:] == 0).all() and (out.label[:, 40:] == 0).all()
    np.testing.assert_array_equal(out.label[:S, :40] > 0, tile.label[:S] > 0)
    again = eval_transform(tile, S)
    np.testing.assert_array_equal(out.label, again.label)


def test_padding_uses_background_colour():
    img = np.full((20, 20, 3), 230, np.uint8)  # white background (brightfield)
    tile = Tile(img, np.zeros((20, 20), np.int32), np.ones((20, 20), bool), "bf")
    out = crop_or_pad(tile, 32, -4, -4)
    assert (out.img == 230).all()
    assert out.ignore[4:24, 4:24].all() and out.ignore.sum() == 400  # padding is not ignored
    warped = window_transform(tile, np.array([[0.7, 0.2, 3.0], [-0.2, 0.7, 2.0]]), 32)
    assert (warped.img == 230).all()


def test_random_window_origin_ranges():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0 = random_window_origin((100, 20), S, rng)
        assert 0 <= y0 <= 100 - S and 20 - S <= x0 <= 0


def test_integer_shift_is_exact():
    tile, _ = coded_tile((80, 80), 10, 5)
    out = window_transform(tile, translation(5, 7), S)
    np.testing.assert_array_equal(out.img, tile.img[7:7 + S, 5:5 + S])
