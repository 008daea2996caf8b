"""utils.synthetic: determinism, image/label properties, dataset layout."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops


from utils import synthetic
from utils.io import list_images, read_image, read_label
from utils.synthetic import make_label, make_sample, write_dataset

CASES = [("fl", {}), ("fl", {"channels": 3}), ("fl", {"dtype": "uint16"}), ("bf", {}),
         ("gs", {}), ("gs", {"dtype": "uint16"}), ("dic", {})]


def touching_pairs(label: np.ndarray) -> int:
    """Number of 4-adjacent pixel pairs with two different cell ids."""
    n = 0
    for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
        n += int(((a != b) & (a > 0) & (b > 0)).sum())
    return n


@pytest.mark.parametrize("modality,kw", CASES)
def test_deterministic_for_a_seed(modality, kw):
    img1, lab1 = make_sample(modality, (96, 128), seed=7, **kw)
    img2, lab2 = make_sample(modality, (96, 128), seed=7, **kw)
    img3, _ = make_sample(modality, (96, 128), seed=8, **kw)
    assert np.array_equal(img1, img2) and np.array_equal(lab1, lab2)
    assert not np.array_equal(img1, img3)


@pytest.mark.parametrize("modality,kw,shape,dtype", [
    ("fl", {}, (80, 100), np.uint8),
    ("fl", {"channels": 3}, (80, 100, 3), np.uint8),
    ("fl", {"dtype": "uint16"}, (80, 100), np.uint16),
    ("bf", {}, (80, 100, 3), np.uint8),
    ("gs", {}, (80, 100), np.uint8),
    ("gs", {"dtype": "uint16"}, (80, 100), np.uint16),
    ("dic", {"dtype": "uint16"}, (80, 100), np.uint16),
])
def test_shapes_and_dtypes(modality, kw, shape, dtype):
    img, lab = make_sample(modality, (80, 100), seed=0, **kw)
    assert img.shape == shape and img.dtype == dtype
    assert lab.shape == (80, 100) and lab.dtype == np.int32
    ids = np.unique(lab)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids)))  # 1..n consecutive
    assert len(ids) > 2


def test_three_channel_fluorescence_has_an_almost_empty_red():
    img, _ = make_sample("fl", (128, 128), seed=1, channels=3)
    means = img.reshape(-1, 3).mean(0)
    assert means[0] < 0.05 * means.sum()


def test_backgrounds_per_modality():
    for seed in range(3):
        fl, lab = make_sample("fl", (128, 128), seed=seed)
        assert fl[lab == 0].mean() < 40 < fl[lab > 0].mean()  # dark background, bright cells
        bf, lab = make_sample("bf", (128, 128), seed=seed)
        bg, cells = bf[lab == 0].mean(0), bf[lab > 0].mean(0)
        assert bg.mean() > 170 and cells.mean() < bg.mean() - 30  # light background, stained cells
        assert cells[2] > cells[1]  # haematoxylin: blue above green (purple)
        gs, lab = make_sample("gs", (128, 128), seed=seed, dtype="uint16")
        assert 20000 < np.median(gs[lab == 0]) < 45000  # mid-grey background (raw 16-bit)


def test_instances_are_connected():
    lab = make_label((160, 160), seed=3)
    for idx, sl in enumerate(ndimage.find_objects(lab), start=1):
        assert ndimage.label(lab[sl] == idx)[1] == 1


def test_touching_cells_exist_when_asked():
    for seed in range(3):
        assert touching_pairs(make_label((128, 128), seed=seed, touching=True)) > 0


def test_no_touching_cells_when_not_asked():
    for seed in range(3):
        lab = make_label((128, 128), seed=seed, touching=False)
        assert lab.max() > 3
        # not even diagonally: every cell has a background gap around it
        grown = ndimage.grey_dilation(lab, size=(3, 3))
        assert not ((grown != lab) & (lab > 0) & (grown > 0)).any()


@pytest.mark.parametrize("shapes", [("round",), ("rod",), ("curved",), ("branched",),
                                    synthetic.SHAPES])
def test_sizes_in_range(shapes):
    lo, hi = 15, 40
    lab = make_label((192, 192), seed=5, shapes=shapes, size_range=(lo, hi), touching=False)
    sizes = [r.feret_diameter_max for r in regionprops(lab)
             if r.bbox[0] > 0 and r.bbox[1] > 0 and r.bbox[2] < 192 and r.bbox[3] < 192]
    assert len(sizes) >= 5
    assert lo - 2 <= min(sizes) and max(sizes) <= hi + 2  # +-2: rasterisation


def test_large_cells():
    lab = make_label((400, 400), n_cells=4, seed=0, shapes=("round",), size_range=(150, 200),
                     touching=False)
    sizes = [r.feret_diameter_max for r in regionprops(lab)]
    assert len(sizes) >= 1 and max(sizes) > 140


def test_shapes_differ():
    def props(shapes):
        rs = regionprops(make_label((256, 256), seed=2, shapes=shapes, size_range=(25, 50),
                                    touching=False))
        elong = np.median([r.axis_major_length / max(r.axis_minor_length, 1) for r in rs])
        return elong, np.median([r.solidity for r in rs])

    round_elong, round_sol = props(("round",))
    rod_elong, rod_sol = props(("rod",))
    curved_elong, curved_sol = props(("curved",))
    _, branched_sol = props(("branched",))
    assert round_elong < 2.0 < rod_elong
    assert round_sol > 0.9 and rod_sol > 0.9
    assert curved_sol < rod_sol and branched_sol < rod_sol  # bent / branched: not convex


def test_n_cells_and_bad_arguments():
    lab = make_label((128, 128), n_cells=5, seed=0)
    assert 1 <= lab.max() <= 5
    with pytest.raises(ValueError):
        make_sample("xray", seed=0)
    with pytest.raises(ValueError):
        make_label(seed=0, shapes=("square",))
    with pytest.raises(ValueError):
        make_label(seed=0, size_range=(60, 10))
    with pytest.raises(ValueError):
        make_sample("fl", seed=0, channels=2)


def test_write_dataset_layout(tmp_path):
    root = write_dataset(tmp_path / "synth", 12, size=(256, 256), seed=0)
    assert root == tmp_path / "synth"
    images = list_images(root / "images")
    assert len(images) == 12
    with open(root / "meta.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["name", "modality", "height", "width", "cells"]
    assert [r["modality"] for r in rows] == ["fl", "bf", "gs"] * 4
    by_stem = {p.stem: p for p in images}
    for row in rows:
        path = by_stem[row["name"]]
        img = read_image(path)
        lab = read_label(root / "labels" / f"{row['name']}_label.tiff", img.shape)
        assert img.shape[:2] == (int(row["height"]), int(row["width"])) == (256, 256)
        assert int(row["cells"]) == len(np.unique(lab)) - 1 > 0
        if row["modality"] == "gs":
            assert path.suffix == ".tif" and img.dtype == np.uint16 and img.shape[2] == 1
        elif row["modality"] == "bf":
            assert path.suffix == ".png" and img.dtype == np.uint8 and img.shape[2] == 3
            assert img[..., 0].mean() > img[..., 1].mean()  # stored RGB, not BGR: pink/purple
        else:
            assert path.suffix == ".png" and img.dtype == np.uint8 and img.shape[2] in (1, 3)
    # the same seed writes the same files
    again = write_dataset(tmp_path / "again", 2, size=(256, 256), seed=0)
    for name in ("synth_0000", "synth_0001"):
        a = read_label(root / "labels" / f"{name}_label.tiff")
        b = read_label(again / "labels" / f"{name}_label.tiff")
        assert np.array_equal(a, b)


def test_command_line(tmp_path, capsys):
    synthetic.main(["--out", str(tmp_path / "q"), "-n", "4", "--size", "64", "96",
                    "--modalities", "fl", "dic"])
    assert len(list_images(tmp_path / "q" / "images")) == 4
    assert "wrote 4" in capsys.readouterr().out
