"""Fiji ROI sets and QuPath GeoJSON (utils/shapes.py, predict.py --save-rois --save-geojson),
read back with roifile and json and rasterised back to the label map."""
import json

import numpy as np
import pytest
from skimage.draw import polygon as fill_polygon

from tests.conftest import REPO
from utils.io import read_label
from utils.shapes import label_polygons, write_geojson, write_rois
from utils.synthetic import make_sample

roifile = pytest.importorskip("roifile")


def fill(rings, shape) -> np.ndarray:
    """Rasterise rings of corner-origin (x, y) pixel coordinates by pixel centre (as ImageJ and
    QuPath fill): the first ring is the outline, the others holes."""
    mask = np.zeros(shape, bool)
    for k, ring in enumerate(np.asarray(r, float) for r in rings):
        rr, cc = fill_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape)
        part = np.zeros(shape, bool)
        part[rr, cc] = True
        mask = mask | part if k == 0 else mask & ~part
    return mask


def geojson_masks(path, shape) -> dict[int, np.ndarray]:
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    out = {}
    for feat in doc["features"]:
        geom = feat["geometry"]
        polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        assert geom["type"] in ("Polygon", "MultiPolygon")
        assert feat["properties"]["objectType"] == "detection"
        mask = np.zeros(shape, bool)
        for rings in polys:
            assert all(ring[0] == ring[-1] for ring in rings)  # closed rings (RFC 7946)
            mask |= fill(rings, shape)
        out[int(feat["properties"]["label"])] = mask
    return out


def roi_masks(path, shape) -> dict[int, np.ndarray]:
    return {int(roi.name): fill([roi.coordinates()], shape) for roi in roifile.roiread(path)}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max((a | b).sum(), 1)


def tricky_label() -> np.ndarray:
    """Synthetic cells plus a cell with a hole, a cell in two diagonal pieces, a 1-pixel cell, a
    cell on the image border and non-consecutive ids."""
    _, label = make_sample("fl", (160, 180), seed=4, size_range=(6, 28))
    label = label.astype(np.int32) * 2
    label[:12, :12] = 0
    label[1:11, 1:11] = 901
    label[4:7, 4:7] = 0                      # hole
    label[11, 11] = 901                      # diagonal neighbour (8-connected piece)
    label[150:, 170:] = 0
    label[159, 179] = 902                    # one pixel, in the corner
    label[159, 150:165] = 903                # a 1-pixel-high cell on the bottom border
    return label


def test_geojson_rasterises_back_exactly(tmp_path):
    label = tricky_label()
    n = write_geojson(tmp_path / "a.geojson", label)
    masks = geojson_masks(tmp_path / "a.geojson", label.shape)
    ids = set(np.unique(label)) - {0}
    assert n == len(masks) == len(ids) and set(masks) == ids
    for cell_id, mask in masks.items():
        assert np.array_equal(mask, label == cell_id), cell_id


def test_roi_zip_opens_with_roifile_and_rasterises_back(tmp_path):
    label = tricky_label()
    n = write_rois(tmp_path / "a_rois.zip", label)
    masks = roi_masks(tmp_path / "a_rois.zip", label.shape)
    assert n == len(masks) == len(set(np.unique(label)) - {0})
    for cell_id, mask in masks.items():
        # an ImageJ polygon ROI has no holes: the cell with a hole is its outline filled
        assert iou(mask, label == cell_id) >= (0.9 if cell_id == 901 else 1.0), cell_id


def test_polygons_are_corner_origin_pixel_coordinates():
    label = np.zeros((5, 6), np.int32)
    label[1:3, 2:5] = 7                      # rows 1-2, columns 2-4
    (rings,) = label_polygons(label)[7]
    xy = rings[0]
    # the outline passes half-way between border pixels and their neighbours
    assert xy[:, 0].min() == 2.0 and xy[:, 0].max() == 5.0
    assert xy[:, 1].min() == 1.0 and xy[:, 1].max() == 3.0


def test_no_cells_writes_an_empty_collection_and_no_roi_set(tmp_path):
    label = np.zeros((20, 20), np.int32)
    (tmp_path / "a_rois.zip").write_bytes(b"stale")
    assert write_rois(tmp_path / "a_rois.zip", label) == 0
    assert not (tmp_path / "a_rois.zip").exists()
    assert write_geojson(tmp_path / "a.geojson", label) == 0
    assert json.loads((tmp_path / "a.geojson").read_text())["features"] == []


def test_predict_writes_rois_and_geojson_matching_the_labels(tmp_path, run_script):
    """predict.py on a bundled example with the shipped weights: every cell of the label map
    comes back from both files."""
    out = tmp_path / "out"
    run_script(["predict.py", "-i", REPO / "examples", "-o", out, "--device", "cpu",
                "--save-rois", "--save-geojson"], env_extra={"OMP_NUM_THREADS": "1"})
    for stem in ("fl_cells", "gs_phase"):
        label = read_label(out / f"{stem}_label.tiff")
        ids = set(np.unique(label)) - {0}
        assert len(ids) >= 5  # gs_phase (a real Usiigaci crop): 11 whole cells
        for masks in (geojson_masks(out / f"{stem}.geojson", label.shape),
                      roi_masks(out / f"{stem}_rois.zip", label.shape)):
            assert set(masks) == ids
            assert min(iou(masks[i], label == i) for i in ids) >= 0.9
    assert not list(out.glob(".*tmp*"))
