"""Relabelling, small-instance removal and hole filling of label maps (utils.labels)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from utils import labels as L


def reference_relabel(label, keep_ids=None) -> np.ndarray:
    """Obvious version: the sorted ids kept, searched one by one."""
    ids = [i for i in np.unique(label) if i != 0 and (keep_ids is None or i in keep_ids)]
    out = np.zeros(label.shape, np.int32)
    for new, old in enumerate(ids, start=1):
        out[label == old] = new
    return out


def reference_fill(label) -> np.ndarray:
    """Obvious version: each 4-connected background component off the border, one at a time."""
    out = label.copy()
    bg, n = ndimage.label(label == 0)
    cross = ndimage.generate_binary_structure(2, 1)
    for k in range(1, n + 1):
        region = bg == k
        if region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any():
            continue
        ring = ndimage.binary_dilation(region, cross) & ~region
        owners = np.unique(label[ring])
        if owners.size == 1:
            out[region] = owners[0]
    return out


def random_maps(n, seed=0):
    """Blobby label maps with random (sometimes huge, sometimes absent) ids and dtypes."""
    rng = np.random.default_rng(seed)
    for t in range(n):
        h, w = rng.integers(1, 24, 2)
        k = int(rng.integers(1, 9))
        small = rng.integers(0, k + 1, (h // 3 + 1, w // 3 + 1))
        lab = np.kron(small, np.ones((3, 3), np.int64))[:h, :w]
        if t % 3 == 0:  # sparse ids, far above the pixel count
            ids = np.concatenate([[0], rng.choice(2**31 - 1, k, replace=False) + 1])
            lab = ids[lab]
        yield lab.astype([np.int32, np.uint16, np.uint32, np.int64, np.uint64][t % 5])


def test_relabel_matches_reference_on_both_paths():
    for lab in random_maps(150):
        out, areas = L.relabel(lab)
        expected = reference_relabel(lab)
        assert out.dtype == np.int32 and out.shape == lab.shape
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(areas, np.bincount(expected.ravel(), minlength=out.max() + 1)[1:])
        assert areas.dtype == np.int64
        np.testing.assert_array_equal(L.relabel_consecutive(lab), expected)


def test_relabel_keep_sees_present_ids_and_areas():
    lab = np.array([[0, 7, 7, 7], [3, 0, 9, 9], [2**40, 0, 0, 0]], np.uint64)
    seen = {}

    def keep(ids, areas):
        seen.update(ids=ids.copy(), areas=areas.copy())
        return areas >= 2

    out, areas = L.relabel(lab, keep)
    assert list(seen["ids"]) == [3, 7, 9, 2**40] and list(seen["areas"]) == [1, 3, 2, 1]
    assert seen["ids"].dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 1, 1, 1], [0, 0, 2, 2], [0, 0, 0, 0]])
    assert list(areas) == [3, 2]


def test_relabel_dense_and_sparse_paths_agree():
    lab = np.zeros((4, 5), np.int64)
    lab[0, :2], lab[2, 1:4], lab[3, 4] = 5, 11, 2
    big = lab * (L.DENSE_MIN_IDS + 1)  # same order of ids, past the look-up-table limit
    for m in (lab, big):
        out, areas = L.relabel(m, lambda ids, a: ids != ids[1])
        np.testing.assert_array_equal(out, np.where(lab == 11, 2, np.where(lab == 2, 1, 0)))
        assert list(areas) == [1, 3]


@pytest.mark.parametrize("shape", [(0, 0), (3, 0), (4, 4)])
def test_relabel_empty_and_background_only(shape):
    lab = np.zeros(shape, np.uint16)
    out, areas = L.relabel(lab)
    assert out.shape == shape and out.dtype == np.int32 and not out.any() and areas.size == 0
    assert L.fill_holes(lab).shape == shape


def test_relabel_does_not_modify_its_input():
    lab = np.array([[0, 4], [9, 9]], np.int32)
    L.relabel(lab, lambda ids, a: a > 1)
    L.fill_holes(lab)
    np.testing.assert_array_equal(lab, [[0, 4], [9, 9]])


def test_remove_small_drops_and_keeps_consecutive_ids():
    lab = np.zeros((10, 10), np.int32)
    lab[0, 0] = 3                 # 1 px
    lab[2:4, 2:4] = 8             # 4 px
    lab[6:9, 6:9] = 20            # 9 px
    np.testing.assert_array_equal(L.remove_small(lab, 4), reference_relabel(lab, {8, 20}))
    np.testing.assert_array_equal(L.remove_small(lab, 5), reference_relabel(lab, {20}))
    assert L.remove_small(lab, 100).max() == 0
    for min_size in (0, 1):  # nothing removed, and absent ids leave no gap
        np.testing.assert_array_equal(L.remove_small(lab, min_size), reference_relabel(lab))


def test_remove_small_only_removes_instances_that_lost_pixels():
    lab = np.zeros((10, 10), np.int32)
    lab[0, 0] = 5                 # a 1-pixel cell
    lab[5:8, 5:8] = 9
    lab[9, 9] = 12                # tiny, and beyond the areas given: counts as cut
    before = np.bincount(lab.ravel())[:10]
    out = L.remove_small(lab, 4, before)
    np.testing.assert_array_equal(out, reference_relabel(lab, {5, 9}))
    shrunk = before.copy()
    shrunk[5] = 20                # the tiny one lost pixels: removed
    np.testing.assert_array_equal(L.remove_small(lab, 4, shrunk), reference_relabel(lab, {9}))
    np.testing.assert_array_equal(L.remove_small(lab, 4, np.zeros(0, np.int64)),
                                  reference_relabel(lab, {9}))


def test_fill_holes_cases():
    lab = np.zeros((12, 12), np.int32)
    lab[1:6, 1:6] = 4
    lab[3, 3] = 0                 # hole of mask 4
    lab[6:11, 1:11] = 7
    lab[8, 5] = 0                 # hole of mask 7
    lab[0, 8] = 9                 # small mask at the edge
    lab[7:10, 8:10] = 0           # region enclosed by mask 7 only
    lab[2:5, 8:11] = 2
    lab[3, 9] = 0                 # hole of mask 2 ...
    lab[3, 10] = 4                # ... that also touches mask 4: a gap between cells, kept
    out = L.fill_holes(lab)
    assert out[3, 3] == 4 and out[8, 5] == 7 and np.all(out[7:10, 8:10] == 7)
    assert out[3, 9] == 0 and out[0, 0] == 0 and out[11, 11] == 0
    np.testing.assert_array_equal(out, reference_fill(lab))


def test_fill_holes_diagonal_leak_and_lone_background():
    ring = np.full((5, 5), 3, np.uint16)
    ring[1:4, 1:4] = 0            # the only background, enclosed: still a hole
    out = L.fill_holes(ring)
    assert out.dtype == np.uint16 and (out == 3).all()
    lab = np.full((5, 5), 6, np.int64)
    lab[1, 1] = lab[0, 0] = 0     # touches the border-touching corner only diagonally
    out = L.fill_holes(lab)
    assert out[1, 1] == 6 and out[0, 0] == 0


def test_fill_holes_matches_reference_on_random_maps():
    for lab in random_maps(150, seed=1):
        np.testing.assert_array_equal(L.fill_holes(lab), reference_fill(lab))


def test_relabel_raster_numbers_instances_by_their_first_pixel():
    label = np.array([[0, 7, 7, 0],
                      [3, 0, 9, 9],
                      [3, 0, 0, 5]])
    assert L.relabel_raster(label).tolist() == [[0, 1, 1, 0],
                                                [2, 0, 3, 3],
                                                [2, 0, 0, 4]]
    assert L.relabel_raster(label).dtype == np.int32
    assert L.relabel_raster(np.zeros((2, 3), np.uint16)).tolist() == [[0, 0, 0], [0, 0, 0]]
    # a permutation of the ids changes nothing
    assert np.array_equal(L.relabel_raster(np.where(label > 0, 20 - label, 0)),
                          L.relabel_raster(label))
